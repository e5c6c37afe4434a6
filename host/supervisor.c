/*
 * supervisor: worker processes of a pipeline, started, watched, restarted.
 *
 * A worker is `khost worker` exec'd by posix_spawn (librdkafka's threads
 * do not survive a bare fork). Its death is seen at once in the event
 * loop: sd-event watches a pidfd where the kernel offers pidfd_open, and
 * falls back to SIGCHLD where it does not (kernels before 5.3, seccomp
 * profiles that refuse it, valgrind 3.19). A crash costs that worker's
 * partitions a rewind to their acked watermark and the worker a restart: at
 * once after the first crash in a row, then after an exponential, jittered
 * backoff; group membership is never touched.
 *
 * The restart limit follows the reference (Elsa's supervisor): more than
 * max_restarts within max_seconds marks the pipeline failed. The backoff
 * is capped at KH_BACKOFF_MAX_MS so that a worker crashing on every start
 * still reaches that limit (30 restarts in 5 s) instead of crawling on.
 *
 * A worker that dies before READY (its plugin's init failed, crashed or
 * overran init_timeout_ms) is a failed start, not a crash: whatever the
 * plugin connects to in init is likely down, so its restarts back off
 * much further (KH_INIT_BACKOFF_*: 100 ms doubling to 30 s) and the count
 * resets only when a worker of it becomes READY. They still count towards
 * max_restarts within max_seconds.
 *
 * Every delay is jittered by +-25% (jitter.c, seeded per process), so
 * that workers and hosts that failed together do not retry in lockstep.
 *
 * Spare workers (spare_workers, default 1) make a restart cost no spawn
 * and no init: a spare is a process of the current generation that passed
 * init and owns nothing. When a worker is to be restarted and a READY
 * spare of its generation exists, the spare's process moves into the
 * worker (take_spare): its channel, ring, status page and event sources,
 * and the worker is READY at once; the spare's slot then starts a new
 * process. A spare's process keeps the worker_index it was given at INIT:
 * the indices of a pipeline's live processes stay distinct, 0 ..
 * workers + spare_workers - 1, though a worker's may no longer be its
 * slot's. Spares start once every worker was READY (pipeline.c), and
 * again on each plugin swap's cutover (swap.c); their own deaths back off
 * like failed starts and count neither as crashes nor towards
 * max_restarts. Rule: a spare never owns a partition (assignments go to
 * pl->workers only, swaps to pl->next).
 */
#define _GNU_SOURCE
#include "supervisor.h"
#include "hardening.h"
#include "host.h"
#include "jitter.h"
#include "log.h"
#include "pipeline.h"
#include "plugin_loader.h"
#include "worker.h"
#include "worker_proc.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define KH_BACKOFF_BASE_MS 10
#define KH_BACKOFF_MAX_MS 100
#define KH_INIT_BACKOFF_BASE_MS 100
#define KH_INIT_BACKOFF_MAX_MS 30000

/* ---- the state table ---- */

typedef enum kh_worker_event {
    KH_WE_SPAWNED,     /* process started, INIT sent */
    KH_WE_RETRY,       /* no process (yet): restart timer armed */
    KH_WE_UNSTARTABLE, /* cannot start in this process at all */
    KH_WE_READY,       /* READY frame */
    KH_WE_KILL,        /* the host sent SIGKILL */
    KH_WE_SHUTDOWN,    /* SHUTDOWN queued */
    KH_WE_LOST,        /* its channel failed during a bounded wait */
    KH_WE_EXITED,      /* reaped */
    KH_WE_HANDOFF,     /* a spare's process moved into a worker */
    KH_WE_N_EVENTS
} kh_worker_event;

/* transitions[state][event]: the next state, or NO when the event cannot
 * happen in that state. */
#define STOP KH_W_STOPPED
#define START KH_W_STARTING
#define READY KH_W_READY
#define BACK KH_W_BACKOFF
#define STOPG KH_W_STOPPING
#define KILLD KH_W_KILLED
#define NO -1
/* clang-format off */
static const signed char transitions[KH_W_N_STATES][KH_WE_N_EVENTS] = {
    /*       SPAWNED RETRY UNSTART READY  KILL   SHUTDN LOST   EXITED HANDOFF */
    [STOP]  = {START, BACK, STOP,   NO,    NO,    NO,    NO,    NO,    NO},
    [START] = {NO,    NO,   NO,     READY, KILLD, STOPG, KILLD, STOP,  NO},
    [READY] = {NO,    NO,   NO,     NO,    KILLD, STOPG, KILLD, STOP,  STOP},
    [BACK]  = {START, BACK, STOP,   NO,    NO,    NO,    NO,    NO,    NO},
    [STOPG] = {NO,    NO,   NO,     NO,    KILLD, NO,    KILLD, STOP,  NO},
    [KILLD] = {NO,    NO,   NO,     NO,    KILLD, NO,    KILLD, STOP,  NO},
};
/* clang-format on */
#undef STOP
#undef START
#undef READY
#undef BACK
#undef STOPG
#undef KILLD
#undef NO

/* "worker" or "spare", for log lines: a spare's slot is not a worker's. */
static const char *role(const kh_worker *w) {
    return w->spare ? "spare" : "worker";
}

static void transition(kh_worker *w, kh_worker_event ev) {
    static const char *const ev_names[] = {"spawned", "retry",  "unstartable",
                                           "ready",   "kill",   "shutdown",
                                           "lost",    "exited", "handoff"};
    int next = transitions[w->state][ev];
    if (next < 0) {
        klog_error("pipeline=%s %s=%d: BUG: event %s in state %d",
                   w->pl->cfg->name, role(w), w->index, ev_names[ev],
                   (int)w->state);
#ifdef KHOST_CHECKED
        abort();
#endif
        return;
    }
    w->state = (kh_worker_state)next;
}

int supervisor_spawn(kh_worker *w);

static void send_init(kh_worker *w) {
    worker_proc_put_init(&w->conn.out, w->cfg, w->proc_index, w->plugin_path);
}

static int on_worker_io(sd_event_source *s, int fd, uint32_t revents,
                        void *userdata) {
    kh_worker *w = userdata;
    (void)s;
    (void)fd;
    if (revents & EPOLLOUT) {
        int rc = conn_flush(&w->conn);
        if (rc == 0)
            sd_event_source_set_io_events(w->io_src, EPOLLIN);
    }
    if (revents & (EPOLLIN | EPOLLHUP | EPOLLERR))
        w->pl->supervisor_events->read(w);
    w->pl->supervisor_events->pump(w->pl);
    return 0;
}

static void close_output(kh_worker *w) {
    if (w->out_fd < 0)
        return;
    /* What a dead worker wrote last is still in the pipe. */
    plugin_output_read(&w->output, w->out_fd, w->out_tag);
    plugin_output_finish(&w->output, w->out_tag);
    w->out_src = sd_event_source_disable_unref(w->out_src);
    close(w->out_fd);
    w->out_fd = -1;
}

static int on_worker_output(sd_event_source *s, int fd, uint32_t revents,
                            void *userdata) {
    kh_worker *w = userdata;
    (void)s;
    (void)revents;
    if (plugin_output_read(&w->output, fd, w->out_tag) <= 0)
        close_output(w);
    return 0;
}

static void release_process(kh_worker *w) {
    close_output(w);
    w->io_src = sd_event_source_disable_unref(w->io_src);
    w->eof_timer = sd_event_source_disable_unref(w->eof_timer);
    w->child_src = sd_event_source_disable_unref(w->child_src);
    conn_close(&w->conn);
    if (w->status) {
        /* Its handler durations outlive it (they are counters). */
        if (w->pl)
            status_read_hist(w->status, &w->pl->handle_hist_gone);
        worker_proc_unmap(w->status);
        w->status = NULL;
    }
    w->ring = NULL;
    w->inflight = 0;
    if (w->pid)
        w->last_pid = w->pid;
    w->pid = 0;
}

/* Which message was the worker handling? That is the crash's suspect.
 * Returns the partition, or NULL when it was between messages or in a
 * callback that is not about a message. */
static kh_part *find_suspect(kh_worker *w, int64_t *offset, uint32_t *count,
                             char *buf, size_t len) {
    uint64_t token;
    int64_t started;
    snprintf(buf, len, "between messages");
    if (!w->status)
        return NULL;
    status_read(w->status, &token, count, &started);
    if (!started)
        return NULL;
    if (*count == 0) {
        snprintf(buf, len, "in a tick, assign, revoke or terminate callback");
        return NULL;
    }
    uint32_t slot = kh_token_slot(token);
    if (slot >= w->pl->n_parts)
        return NULL;
    kh_part *part = w->pl->parts[slot];
    kh_entry *e;
    /* The status page is the worker's to write: it names a suspect only
     * among the messages it was given (I3), or a lying worker could make
     * another partition's message look poisonous. */
    if (!part->assigned || part->owner != w ||
        part_find(part, kh_token_seq(token), &e) != KH_LOOKUP_OK)
        return NULL;
    *offset = e->offset;
    snprintf(buf, len, "while handling %s partition=%d offset=%lld%s",
             part->topic, part->partition, (long long)e->offset,
             *count > 1 ? " (first of a batch call)" : "");
    return part;
}

static bool intensity_exceeded(kh_pipeline_rt *pl, int64_t now) {
    const kh_pipeline *cfg = pl->cfg;
    size_t cap = (size_t)cfg->max_restarts + 1;
    /* Keep the last max_restarts+1 restart times; the limit is exceeded
     * when the oldest of them is still inside the window. */
    if (pl->n_restarts < cap) {
        pl->restarts[pl->n_restarts++] = now;
        return pl->n_restarts == cap &&
               now - pl->restarts[0] <= cfg->max_seconds * 1000LL;
    }
    memmove(pl->restarts, pl->restarts + 1, (cap - 1) * sizeof *pl->restarts);
    pl->restarts[cap - 1] = now;
    return now - pl->restarts[0] <= cfg->max_seconds * 1000LL;
}

static int on_restart_timer(sd_event_source *s, uint64_t usec, void *userdata) {
    kh_worker *w = userdata;
    (void)s;
    (void)usec;
    w->restart_timer = sd_event_source_disable_unref(w->restart_timer);
    if (w->pl->failed || w->pl->stopping || w->pl->host->shutting_down)
        return 0;
    /* A failed spawn has either scheduled its own retry (BACKOFF) or
     * cannot work at all in this process (STOPPED: the hardening check,
     * whose ids do not change): then the pipeline fails, loudly, instead
     * of its partitions waiting forever for a worker. */
    if (supervisor_spawn(w) != 0 && w->state == KH_W_STOPPED) {
        klog_error("pipeline=%s %s=%d: cannot be restarted (see above); "
                   "not retrying",
                   w->pl->cfg->name, role(w), w->index);
        if (!w->spare) /* the workers go on without a spare */
            w->pl->supervisor_events->exhausted(w->pl);
    }
    return 0;
}

/* base << n, capped, then +-25%. */
static int64_t backoff_ms(int64_t base, int64_t cap, int n) {
    int shift = n < 16 ? n : 16;
    int64_t delay = base << shift;
    if (delay > cap)
        delay = cap;
    return kh_jitter(delay);
}

static void arm_restart(kh_worker *w, int64_t delay) {
    transition(w, KH_WE_RETRY);
    /* The delay counts from now, not from the loop's wakeup
     * (sd_event_now): a slow turn (valgrind, a long batch) would
     * otherwise shorten the backoff the log line announces. */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t now = (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
    sd_event_add_time(w->pl->host->ev, &w->restart_timer, CLOCK_MONOTONIC,
                      now + (uint64_t)delay * 1000, 1000, on_restart_timer, w);
}

/* A spare that died, or could not start: it serves nothing, so it waits
 * like a failed start (100 ms doubling to 30 s), the count reset only by
 * a spare that lived longer than max_seconds. */
static void schedule_spare_restart(kh_worker *w) {
    if (kh_now_ms() - w->spawned_ms > w->pl->cfg->max_seconds * 1000LL)
        w->consecutive_crashes = 0;
    int64_t delay = backoff_ms(KH_INIT_BACKOFF_BASE_MS, KH_INIT_BACKOFF_MAX_MS,
                               w->consecutive_crashes++);
    arm_restart(w, delay);
    klog_info("pipeline=%s spare=%d starting again in %lld ms",
              w->pl->cfg->name, w->index, (long long)delay);
}

static void schedule_restart(kh_worker *w, bool failed_start) {
    if (w->spare) {
        schedule_spare_restart(w);
        return;
    }
    /* Jitter keeps workers that died together from restarting in
     * lockstep. */
    int64_t delay;
    if (failed_start)
        delay = backoff_ms(KH_INIT_BACKOFF_BASE_MS, KH_INIT_BACKOFF_MAX_MS,
                           w->failed_starts++);
    else if (w->consecutive_crashes++ == 0)
        /* The first crash after a good run restarts at once: its
         * partitions wait for nothing but the new process (crash to
         * resume, issue 14). A crash loop backs off from the second. */
        delay = 0;
    else
        delay = backoff_ms(KH_BACKOFF_BASE_MS, KH_BACKOFF_MAX_MS,
                           w->consecutive_crashes - 2);
    arm_restart(w, delay);
    klog_info("pipeline=%s worker=%d restarting in %lld ms (restart %llu%s)",
              w->pl->cfg->name, w->index, (long long)delay,
              (unsigned long long)w->pl->restarts_total,
              failed_start ? ", after a failed start" : "");
}

static int on_worker_exit(sd_event_source *s, const siginfo_t *si,
                          void *userdata) {
    kh_worker *w = userdata;
    kh_pipeline_rt *pl = w->pl;
    (void)s;
    char how[96], suspect[256];
    worker_proc_describe_exit(si, how, sizeof how);
    int64_t suspect_offset = -1;
    uint32_t suspect_count = 0;
    kh_part *suspect_part = find_suspect(w, &suspect_offset, &suspect_count,
                                         suspect, sizeof suspect);
    if (w->kill_reason[0] && strstr(w->kill_reason, "handler_timeout_ms"))
        snprintf(how, sizeof how, "killed after handler_timeout_ms=%d (hang)",
                 pl->cfg->handler_timeout_ms);
    pid_t pid = w->pid;
    bool orderly = w->state == KH_W_STOPPING && si->si_code == CLD_EXITED &&
                   si->si_status == 0;
    /* Read what it managed to send before dying: acks count, and a
     * starting worker's INIT_FAILED says why (its exit may be seen before
     * its channel is). */
    if (w->state == KH_W_READY || w->state == KH_W_STOPPING ||
        w->state == KH_W_STARTING)
        pl->supervisor_events->read(w);
    release_process(w);
    transition(w, KH_WE_EXITED);
    if (w->spare) {
        bool again = orderly && w->restart_requested && !pl->stopping &&
                     !pl->host->shutting_down && !pl->failed;
        w->restart_requested = false;
        if (again) {
            klog_info("pipeline=%s spare=%d pid=%d %s; starting it again",
                      pl->cfg->name, w->index, (int)pid, how);
            supervisor_spawn(w); /* a failure retries by itself */
            return 0;
        }
        if (orderly || pl->stopping || pl->host->shutting_down) {
            klog_info("pipeline=%s spare=%d pid=%d %s", pl->cfg->name, w->index,
                      (int)pid, how);
            return 0;
        }
        /* It owned nothing: no rewind, no crash counted. */
        klog_error("pipeline=%s spare=%d pid=%d died %s: %s%s%s%s%s",
                   pl->cfg->name, w->index, (int)pid,
                   w->served ? "idle" : "before init finished", how,
                   w->init_error[0] ? ": " : "", w->init_error,
                   w->kill_reason[0] ? "; " : "", w->kill_reason);
        if (!pl->failed)
            schedule_spare_restart(w);
        return 0;
    }
    if (w->candidate) {
        /* A reload's new worker: it owns nothing yet, and its death means
         * the reload cannot go through. */
        klog_error("pipeline=%s new worker=%d pid=%d %s%s%s", pl->cfg->name,
                   w->index, (int)pid, how, w->init_error[0] ? ": " : "",
                   w->init_error);
        pl->supervisor_events->died(w, how); /* may free w */
        return 0;
    }
    if (orderly && w->restart_requested && !pl->stopping &&
        !pl->host->shutting_down && !pl->failed) {
        w->restart_requested = false;
        klog_info("pipeline=%s worker=%d pid=%d %s after a restart request; "
                  "starting it again",
                  pl->cfg->name, w->index, (int)pid, how);
        pl->supervisor_events->restarted(w);
        pl->restarts_total++;
        if (supervisor_spawn(w) != 0 && w->state == KH_W_STOPPED)
            pl->supervisor_events->exhausted(pl);
        return 0;
    }
    w->restart_requested = false;
    if (orderly || pl->stopping || pl->host->shutting_down) {
        klog_info("pipeline=%s worker=%d pid=%d %s", pl->cfg->name, w->index,
                  (int)pid, how);
        return 0;
    }
    pl->crashes++;
    if (w->kill_reason[0])
        pl->crash_causes[strstr(w->kill_reason, "_timeout_ms")
                             ? KH_CRASH_HANG
                             : KH_CRASH_LIE]++;
    else
        pl->crash_causes[si->si_code == CLD_EXITED ? KH_CRASH_EXIT
                                                   : KH_CRASH_SIGNAL]++;
    /* Dead before READY: init failed, crashed or overran its timeout. */
    bool failed_start = !w->served;
    if (si->si_code == CLD_EXITED && si->si_status == KH_EXIT_INIT_FAILED)
        klog_error("pipeline=%s worker=%d pid=%d plugin failed to start: %s",
                   pl->cfg->name, w->index, (int)pid,
                   w->init_error[0] ? w->init_error : "(no reason given)");
    else if (failed_start)
        klog_error("pipeline=%s worker=%d pid=%d plugin failed to start: %s "
                   "before init finished%s%s",
                   pl->cfg->name, w->index, (int)pid, how,
                   w->kill_reason[0] ? "; " : "", w->kill_reason);
    else {
        /* The limits it ran under: a reload may have changed the
         * config's since (spawn_signature puts them first). */
        char limits[128];
        snprintf(limits, sizeof limits, "%.*s",
                 (int)strcspn(w->spawned_as, "|"), w->spawned_as);
        klog_error("pipeline=%s worker=%d pid=%d crashed: %s%s%s%s %s%s%s",
                   pl->cfg->name, w->index, (int)pid, how,
                   limits[0] ? " (" : "", limits, limits[0] ? ")" : "", suspect,
                   w->kill_reason[0] ? "; " : "", w->kill_reason);
    }
    /* kill_reason and init_error stay readable by the handlers of the
     * events below; the next spawn clears them. */

    /* Its partitions go back to their acked watermarks (failure policy,
     * up in the pipeline). */
    kh_crash crash = {.how = how,
                      .suspect = suspect_part,
                      .suspect_offset = suspect_offset,
                      .suspect_count = suspect_count};
    pl->supervisor_events->crashed(w, &crash);

    int64_t now = kh_now_ms();
    /* A worker that answered a message, or ran for a whole window, is not
     * in a crash loop: a fresh backoff (its restart is immediate). One
     * that dies again before answering anything keeps doubling. The
     * restart limit counts every restart either way. */
    if (now - w->spawned_ms > pl->cfg->max_seconds * 1000LL || w->answered)
        w->consecutive_crashes = 0;
    if (intensity_exceeded(pl, now)) {
        pl->supervisor_events->exhausted(pl);
        return 0;
    }
    pl->restarts_total++;
    schedule_restart(w, failed_start);
    pl->supervisor_events->died(w, how); /* a probation counts crashes */
    return 0;
}

/* What a process started now for cfg would be started with, besides the
 * plugin and its config (INIT): kh_worker.spawned_as. */
static void spawn_signature(const kh_pipeline *cfg, char *buf, size_t len) {
    char limits[128];
    hardening_describe_limits(cfg, limits, sizeof limits);
    snprintf(buf, len, "%s|%s|%s|%d", limits, cfg->user ? cfg->user : "",
             cfg->user_group ? cfg->user_group : "", (int)klog_level());
}

/* A READY spare that w could have started itself: the same plugin
 * snapshot and config (its generation), the same limits, user and log
 * level as now. NULL when none. */
static kh_worker *find_spare(const kh_worker *w) {
    kh_pipeline_rt *pl = w->pl;
    char now[sizeof w->spawned_as];
    spawn_signature(w->cfg, now, sizeof now);
    for (int i = 0; i < pl->n_spares; i++) {
        kh_worker *s = &pl->spares[i];
        if (s->state == KH_W_READY && s->pid && s->conn.fd >= 0 &&
            !s->eof_timer && s->plugin_path == w->plugin_path &&
            s->cfg == w->cfg && !strcmp(s->spawned_as, now))
            return s;
    }
    return NULL;
}

/* Move a READY spare's process into w, which is READY at once; the
 * spare's slot starts a new process on the next turn of the loop, after
 * w's partitions were dispatched. False when there is no spare to take. */
/* Spares of w's generation started with other limits, user or log level
 * than w would get now (a reload changed them in place) are stopped in
 * order and started again with the current ones (on_worker_exit). */
static int retire_stale_spares(kh_pipeline_rt *pl, const char *plugin_path,
                               const kh_pipeline *cfg) {
    char now[sizeof pl->spares[0].spawned_as];
    spawn_signature(cfg, now, sizeof now);
    int n = 0;
    for (int i = 0; i < pl->n_spares; i++) {
        kh_worker *s = &pl->spares[i];
        if (s->state != KH_W_READY || s->plugin_path != plugin_path ||
            s->cfg != cfg || !strcmp(s->spawned_as, now))
            continue;
        klog_info("pipeline=%s spare=%d pid=%d was started with other "
                  "limits, user or log level than a worker gets now; "
                  "replacing it",
                  pl->cfg->name, s->index, (int)s->pid);
        s->restart_requested = true;
        s->stop_sent_ms = kh_now_ms();
        supervisor_shutdown(s);
        n++;
    }
    return n;
}

/* Rule: after a reload changed start settings in place, no READY spare of
 * the current generation keeps the old ones. Called by reload.c once the
 * new settings are in effect; during a plugin swap it does nothing, since
 * the swap's cutover replaces every spare anyway (swap.c). A spare still
 * starting is caught when a restart looks for it (take_spare). */
int supervisor_refresh_spares(kh_pipeline_rt *pl) {
    if (pl->swap || !pl->n_workers || pl->stopping || pl->failed)
        return 0;
    return retire_stale_spares(pl, pl->workers[0].plugin_path, pl->cfg);
}

static bool take_spare(kh_worker *w) {
    kh_pipeline_rt *pl = w->pl;
    kh_worker *s = find_spare(w);
    if (!s) {
        retire_stale_spares(pl, w->plugin_path, w->cfg);
        return false;
    }
    int64_t now = kh_now_ms();
    int64_t idle_ms = now - s->spawned_ms;
    int freed_index = w->proc_index;
    w->pid = s->pid;
    w->conn = s->conn;
    w->io_src = s->io_src;
    w->out_fd = s->out_fd;
    w->out_src = s->out_src;
    w->output = s->output;
    w->child_src = s->child_src;
    w->status = s->status;
    w->ring = s->ring;
    w->ring_head = s->ring_head;
    w->ring_tail = s->ring_tail;
    w->inflight = 0;
    w->proc_index = s->proc_index;
    memcpy(w->spawned_as, s->spawned_as, sizeof w->spawned_as);
    w->spawned_ms = now; /* a crash loop counts from the takeover */
    w->answered = 0;
    w->served = false;
    w->kill_reason[0] = '\0';
    w->init_error[0] = '\0';
    snprintf(w->out_tag, sizeof w->out_tag, "pipeline=%s worker=%d pid=%d",
             pl->cfg->name, w->index, (int)w->pid);
    /* Its event sources now report to w. */
    if (w->io_src)
        sd_event_source_set_userdata(w->io_src, w);
    if (w->out_src)
        sd_event_source_set_userdata(w->out_src, w);
    sd_event_source_set_userdata(w->child_src, w);

    s->last_pid = s->pid;
    s->pid = 0;
    s->conn = (kh_conn){.fd = -1};
    s->io_src = s->out_src = s->child_src = NULL;
    s->out_fd = -1;
    memset(&s->output, 0, sizeof s->output);
    s->status = NULL;
    s->ring = NULL;
    s->served = false;
    s->consecutive_crashes = 0; /* its process served: a fresh backoff */
    s->proc_index = freed_index;
    transition(s, KH_WE_HANDOFF);
    pl->spare_takeovers++;

    transition(w, KH_WE_SPAWNED);
    klog_info("pipeline=%s worker=%d: spare=%d pid=%d takes over (idle %lld "
              "ms; its plugin was given worker_index=%d)",
              pl->cfg->name, w->index, s->index, (int)w->pid,
              (long long)idle_ms, w->proc_index);
    supervisor_worker_ready(w, s->plugin_name, s->plugin_version,
                            s->plugin_flags);
    /* The slot's next process, after this turn's dispatch. */
    arm_restart(s, 0);
    return true;
}

int supervisor_spawn(kh_worker *w) {
    kh_pipeline_rt *pl = w->pl;
    kh_worker_proc proc;
    bool permanent;
    char err[512];
    if (!w->candidate && !w->spare && take_spare(w))
        return 0;
    if (worker_proc_spawn(w->cfg, w->proc_index, w->plugin_path, &proc,
                          &permanent, err, sizeof err) != 0) {
        klog_error("pipeline=%s %s=%d: cannot start a worker process: %s",
                   pl->cfg->name, role(w), w->index, err);
        if (permanent)
            transition(w, KH_WE_UNSTARTABLE);
        else
            schedule_restart(w, true);
        return -1;
    }
    w->status = proc.status;
    w->ring = proc.ring;
    w->ring_head = w->ring_tail = 0;
    /* Only this source (or a drain's waitid) reaps the worker, and an
     * unreaped pid cannot be reused: kill() and waitid() by pid are safe. */
    int rc = sd_event_add_child(pl->host->ev, &w->child_src, proc.pid, WEXITED,
                                on_worker_exit, w);
    if (rc < 0) {
        kill(proc.pid, SIGKILL);
        waitpid(proc.pid, NULL, 0);
        close(proc.fd);
        close(proc.out_fd);
        worker_proc_unmap(w->status);
        w->status = NULL;
        w->ring = NULL;
        klog_error("pipeline=%s %s=%d: cannot start a worker process: %s",
                   pl->cfg->name, role(w), w->index, strerror(-rc));
        schedule_restart(w, true);
        return -1;
    }
    pid_t pid = proc.pid;
    w->pid = pid;
    spawn_signature(w->cfg, w->spawned_as, sizeof w->spawned_as);
    w->spawned_ms = kh_now_ms();
    w->answered = 0;
    w->served = false;
    w->inflight = 0;
    w->kill_reason[0] = '\0';
    w->init_error[0] = '\0';
    conn_init(&w->conn, proc.fd, KH_FRAME_MAX_FROM_WORKER);
    w->out_fd = proc.out_fd;
    snprintf(w->out_tag, sizeof w->out_tag, "pipeline=%s worker=%d pid=%d",
             pl->cfg->name, w->index, (int)pid);
    sd_event_add_io(pl->host->ev, &w->out_src, w->out_fd, EPOLLIN,
                    on_worker_output, w);
    sd_event_add_io(pl->host->ev, &w->io_src, w->conn.fd, EPOLLIN, on_worker_io,
                    w);
    transition(w, KH_WE_SPAWNED);
    send_init(w);
    if (conn_flush(&w->conn) == 1)
        sd_event_source_set_io_events(w->io_src, EPOLLIN | EPOLLOUT);
    char limits[128];
    hardening_describe_limits(w->cfg, limits, sizeof limits);
    const kh_pipeline *wc = w->cfg;
    klog_debug("pipeline=%s %s=%d started pid=%d%s%s%s%s%s%s", pl->cfg->name,
               role(w), w->index, (int)pid, limits[0] ? " " : "", limits,
               wc->user ? " user=" : "", wc->user ? wc->user : "",
               wc->user_group ? " user_group=" : "",
               wc->user_group ? wc->user_group : "");
    return 0;
}

int supervisor_start(kh_pipeline_rt *pl) {
    pl->restarts =
        calloc((size_t)pl->cfg->max_restarts + 1, sizeof *pl->restarts);
    pl->workers = calloc((size_t)pl->cfg->workers, sizeof *pl->workers);
    if (!pl->restarts || !pl->workers)
        return -1;
    pl->n_workers = pl->cfg->workers;
    for (int i = 0; i < pl->n_workers; i++) {
        kh_worker *w = &pl->workers[i];
        w->pl = pl;
        w->cfg = pl->cfg;
        w->plugin_path = pl->snapshot;
        w->index = w->proc_index = i;
        w->conn.fd = -1;
        w->out_fd = -1;
        if (supervisor_spawn(w) != 0)
            return -1;
    }
    return 0;
}

void supervisor_start_spares(kh_pipeline_rt *pl) {
    /* Their processes are gone; a restart timer may not be. */
    for (int i = 0; i < pl->n_spares; i++)
        pl->spares[i].restart_timer =
            sd_event_source_disable_unref(pl->spares[i].restart_timer);
    free(pl->spares);
    pl->spares = NULL;
    pl->n_spares = 0;
    int n = pl->cfg->spare_workers;
    if (n <= 0 || pl->failed || pl->stopping || pl->host->shutting_down)
        return;
    pl->spares = calloc((size_t)n, sizeof *pl->spares);
    if (!pl->spares) {
        klog_warn("pipeline=%s: out of memory for %d spare worker(s); "
                  "restarts spawn a new process",
                  pl->cfg->name, n);
        return;
    }
    pl->n_spares = n;
    for (int i = 0; i < n; i++) {
        kh_worker *s = &pl->spares[i];
        s->pl = pl;
        s->cfg = pl->cfg;
        s->plugin_path = pl->snapshot;
        s->spare = true;
        s->index = s->proc_index = pl->n_workers + i;
        s->conn.fd = -1;
        s->out_fd = -1;
        supervisor_spawn(s); /* a failure retries by itself */
    }
}

void supervisor_worker_ready(kh_worker *w, const char *name,
                             const char *version, uint64_t plugin_flags) {
    kh_pipeline_rt *pl = w->pl;
    transition(w, KH_WE_READY);
    w->plugin_flags = plugin_flags;
    w->served = true;
    w->failed_starts = 0;
    snprintf(w->plugin_version, sizeof w->plugin_version, "%s", version);
    snprintf(w->plugin_name, sizeof w->plugin_name, "%s", name);
    if (w->spare) {
        /* Not " ready: plugin", which names a serving worker. */
        klog_info("pipeline=%s spare=%d pid=%d up: plugin %s %s, idle until "
                  "a worker is restarted",
                  pl->cfg->name, w->index, (int)w->pid, name, version);
        return;
    }
    klog_info("pipeline=%s %sworker=%d pid=%d ready: plugin %s %s",
              pl->cfg->name, w->candidate ? "new " : "", w->index, (int)w->pid,
              name, version);
    pl->supervisor_events->ready(w);
}

void supervisor_kill(kh_worker *w, const char *reason) {
    if (!w->pid)
        return;
    if (!w->kill_reason[0])
        snprintf(w->kill_reason, sizeof w->kill_reason, "%s", reason);
    klog_error("pipeline=%s %s=%d pid=%d: %s; killing it", w->pl->cfg->name,
               role(w), w->index, (int)w->pid, reason);
    /* The child source keeps the pid from being reused until the exit is
     * reaped, so kill() by pid is safe here. */
    kill(w->pid, SIGKILL);
    /* Stop reading a worker we no longer believe. */
    if (w->io_src)
        sd_event_source_set_enabled(w->io_src, SD_EVENT_OFF);
    transition(w, KH_WE_KILL); /* no more dispatch until it is replaced */
}

int supervisor_restart(kh_worker *w, char *why, size_t len) {
    static const char *const names[] = {"stopped", "starting", "ready",
                                        "backoff", "stopping", "killed"};
    if (w->state != KH_W_READY || !w->pid || w->conn.fd < 0) {
        snprintf(why, len, "worker %d is %s, not ready", w->index,
                 names[w->state]);
        return -1;
    }
    klog_info("pipeline=%s worker=%d pid=%d: restart requested by an "
              "operator; stopping it in order",
              w->pl->cfg->name, w->index, (int)w->pid);
    w->restart_requested = true;
    w->stop_sent_ms = kh_now_ms();
    supervisor_shutdown(w);
    return 0;
}

void supervisor_lost(kh_worker *w) {
    if (w->pid)
        transition(w, KH_WE_LOST);
}

void supervisor_check_hangs(kh_pipeline_rt *pl, int64_t now_ms) {
    int timeout = pl->cfg->handler_timeout_ms;
    int init_timeout = pl->cfg->init_timeout_ms;
    for (int i = 0; i < pl_n_all_workers(pl); i++) {
        kh_worker *w = pl_worker(pl, i);
        if (w->out_fd >= 0)
            plugin_output_tick(&w->output, w->out_tag);
        /* A hung init would keep the worker's partitions paused forever,
         * with nothing in the log. */
        if (w->state == KH_W_STARTING && w->pid && init_timeout > 0 &&
            now_ms - w->spawned_ms > init_timeout) {
            char reason[160];
            snprintf(reason, sizeof reason,
                     "plugin init did not finish within init_timeout_ms=%d",
                     init_timeout);
            supervisor_kill(w, reason);
            continue;
        }
        if (w->state == KH_W_STOPPING && w->restart_requested && w->pid &&
            now_ms - w->stop_sent_ms > w->cfg->shutdown_timeout_ms) {
            char reason[160];
            snprintf(reason, sizeof reason,
                     "did not exit within shutdown_timeout_ms=%d of a "
                     "restart request",
                     w->cfg->shutdown_timeout_ms);
            w->restart_requested = false;
            supervisor_kill(w, reason);
            continue;
        }
        if (timeout <= 0 || w->state != KH_W_READY || !w->status)
            continue;
        uint64_t token;
        uint32_t count;
        int64_t started;
        status_read(w->status, &token, &count, &started);
        if (!started || now_ms - started <= timeout)
            continue;
        char reason[160];
        snprintf(reason, sizeof reason,
                 "handler call has run %lld ms, over handler_timeout_ms=%d",
                 (long long)(now_ms - started), timeout);
        supervisor_kill(w, reason);
    }
}

kh_worker *supervisor_assign_owner(kh_pipeline_rt *pl) {
    int best = 0;
    for (int i = 1; i < pl->n_workers; i++)
        if (pl->workers[i].n_parts < pl->workers[best].n_parts)
            best = i;
    pl->workers[best].n_parts++;
    return &pl->workers[best];
}

/* ---- generations ---- */

int supervisor_start_next(kh_pipeline_rt *pl, const kh_pipeline *cfg,
                          const char *snapshot) {
    pl->next = calloc((size_t)cfg->workers, sizeof *pl->next);
    if (!pl->next)
        return -1;
    pl->n_next = cfg->workers;
    for (int i = 0; i < pl->n_next; i++) {
        kh_worker *w = &pl->next[i];
        w->pl = pl;
        w->cfg = cfg;
        w->plugin_path = snapshot;
        w->candidate = true;
        w->index = w->proc_index = i;
        w->conn.fd = -1;
        w->out_fd = -1;
        if (supervisor_spawn(w) != 0)
            return -1;
    }
    return 0;
}

static void free_generation(kh_worker *ws, int n) {
    for (int i = 0; ws && i < n; i++)
        ws[i].restart_timer =
            sd_event_source_disable_unref(ws[i].restart_timer);
    free(ws);
}

void supervisor_drop_next(kh_pipeline_rt *pl) {
    free_generation(pl->next, pl->n_next);
    pl->next = NULL;
    pl->n_next = 0;
}

void supervisor_promote_next(kh_pipeline_rt *pl) {
    free_generation(pl->workers, pl->n_workers);
    pl->workers = pl->next;
    pl->n_workers = pl->n_next;
    pl->next = NULL;
    pl->n_next = 0;
}

void supervisor_free(kh_pipeline_rt *pl) {
    free_generation(pl->workers, pl->n_workers);
    free_generation(pl->next, pl->n_next);
    free_generation(pl->spares, pl->n_spares);
    pl->workers = pl->next = pl->spares = NULL;
    pl->n_workers = pl->n_next = pl->n_spares = 0;
}

/* ---- an ordered stop (drain.c waits) ---- */

void supervisor_shutdown(kh_worker *w) {
    w->restart_timer = sd_event_source_disable_unref(w->restart_timer);
    if (!w->pid)
        return;
    /* A worker still starting reads SHUTDOWN right after INIT, so it too
     * runs terminate instead of waiting out the timeout. */
    if (w->state == KH_W_READY ||
        (w->state == KH_W_STARTING && w->conn.fd >= 0)) {
        size_t start = tr_frame_begin(&w->conn.out, KH_F_SHUTDOWN);
        tr_frame_end(&w->conn.out, start);
        transition(w, KH_WE_SHUTDOWN);
        conn_flush(&w->conn);
    }
}

bool supervisor_reap(kh_worker *w) {
    if (!w->pid)
        return true;
    siginfo_t si = {0};
    if (waitid(P_PID, (id_t)w->pid, &si, WEXITED | WNOHANG) != 0 ||
        si.si_pid == 0)
        return false;
    char how[96];
    worker_proc_describe_exit(&si, how, sizeof how);
    klog_info("pipeline=%s %s=%d pid=%d %s", w->pl->cfg->name, role(w),
              w->index, (int)w->pid, how);
    /* What it sends on its way out counts: terminate's and the last
     * tick's acks, before the final commit. */
    if (w->conn.fd >= 0 && w->state == KH_W_STOPPING)
        w->pl->supervisor_events->read(w);
    release_process(w);
    transition(w, KH_WE_EXITED);
    return true;
}

void supervisor_kill_and_reap(kh_worker *w, const char *why) {
    if (!w->pid)
        return;
    klog_warn("pipeline=%s %s=%d pid=%d %s; killing it", w->pl->cfg->name,
              role(w), w->index, (int)w->pid, why);
    kill(w->pid, SIGKILL);
    siginfo_t si;
    waitid(P_PID, (id_t)w->pid, &si, WEXITED);
    release_process(w);
    transition(w, KH_WE_EXITED);
}
