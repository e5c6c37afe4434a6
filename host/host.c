/*
 * host: the daemon. One sd-event loop drives everything: the consumer
 * queues' wake pipes, worker channels and exits, timers and signals.
 *
 * Shutdown order (first SIGTERM/SIGINT): stop fetching, drain in-flight
 * results (bounded by shutdown_timeout_ms), commit synchronously, send
 * SHUTDOWN so every worker runs terminate, then close the consumer, which
 * leaves the group. A second signal exits at once; the workers die with
 * the host through PR_SET_PDEATHSIG.
 *
 * Under systemd (NOTIFY_SOCKET) the host says what it does through
 * notify.c: READY=1 and STATUS from the tick, STOPPING=1 when the drain
 * starts, RELOADING=1 then READY=1 around a reload, and WATCHDOG=1 from
 * the tick and, through the keepalive hook, from the drain's wait.
 */
#define _GNU_SOURCE
#include "host.h"
#include "http.h"

#include "admin.h"
#include "dispatch.h"
#include "failure.h"
#include "kafka.h"
#include "kafka_log.h"
#include "log.h"
#include "notify.h"
#include "partition.h"
#include "pipeline.h"
#include "plugin_loader.h"
#include "reload.h"
#include "supervisor.h"
#include "watch.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define KH_TICK_MS 50
#define KH_REPORT_MS 2000
#define KH_STALL_WARN_MS 30000 /* I2: a stuck partition says why */

static void host_shutdown(kh_host *host);
static void host_request_exit(kh_host *host, int code);

/* The shutdown runs on the main thread and calls into librdkafka, which
 * can block there (a commit or a group leave with the broker gone). A
 * second SIGTERM/SIGINT must still exit at once, so after the first one a
 * thread of its own waits for it: sigtimedwait, and the signalfd read on
 * each wake (valgrind's signal emulation serves one or the other). Whichever
 * of it and the main thread takes the second signal exits; a SIGHUP read
 * here is dropped, as no reload runs during a shutdown. */
static void *second_signal_thread(void *ud) {
    int fd = *(int *)ud;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    struct timespec tick = {0, 100 * 1000 * 1000};
    for (;;) {
        int sig = sigtimedwait(&set, NULL, &tick);
        struct signalfd_siginfo si;
        while (sig <= 0 && read(fd, &si, sizeof si) == sizeof si)
            if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT)
                sig = (int)si.ssi_signo;
        if (sig > 0) {
            klog_warn("second %s received: exiting at once without draining",
                      strsignal(sig));
            _exit(1);
        }
    }
    return NULL;
}

static void watch_second_signal(int *signal_fd) {
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&t, &attr, second_signal_thread, signal_fd) != 0)
        klog_warn("cannot start the second-signal watcher: a second signal "
                  "is seen only between librdkafka calls");
    pthread_attr_destroy(&attr);
}

/* Read pending signals. SIGHUP reloads the config file; a second
 * SIGTERM/SIGINT during shutdown exits at once. Returns true when a first
 * SIGTERM/SIGINT asks for a shutdown. */
static bool take_signals(kh_host *host) {
    struct signalfd_siginfo si;
    bool stop = false;
    while (read(host->signal_fd, &si, sizeof si) == sizeof si) {
        const char *name = strsignal((int)si.ssi_signo);
        if (si.ssi_signo == SIGHUP) {
            /* Acted on from the loop (run_pending_reload), never nested
             * inside a drain; many SIGHUPs in a row make one reload of the
             * file as it is then. */
            host->reload_requested = true;
        } else if (host->stop_requested) {
            klog_warn("second %s received: exiting at once without draining",
                      name);
            _exit(1);
        } else {
            /* Only a second stop signal exits at once: a shutdown that
             * khost began itself (on_exhausted = exit) still drains. */
            klog_info("%s received: draining and shutting down (a second "
                      "signal exits at once)",
                      name);
            host->stop_requested = true;
            watch_second_signal(&host->signal_fd);
            stop = true;
        }
    }
    return stop;
}

/* Called from bounded waits outside the event loop (revoke drains): a
 * first SIGTERM/SIGINT ends such a wait early, and the shutdown runs once
 * control is back in the loop. During the shutdown's own waits it returns
 * false: they are already bounded, and a second signal exits at once. */
static bool host_check_signals(kh_host *host) {
    if (take_signals(host) && !host->shutting_down) {
        host_request_exit(host, 0);
        return true;
    }
    return false;
}

static void run_pending_reload(kh_host *host) {
    if (host->shutting_down || host->stop_requested)
        return;
    bool watched = host->watch_due_ms && kh_now_ms() >= host->watch_due_ms;
    if (!host->reload_requested && !watched)
        return;
    /* One reload at a time: this one begins once the last has settled. */
    if (reload_busy(host))
        return;
    klog_info("%s: reloading %s",
              host->reload_requested ? "SIGHUP received"
                                     : "watched file changed",
              host->cfg->path);
    if (host->reload_requested)
        admin_check_socket(host); /* a deleted control socket: bind again */
    host->reload_requested = false;
    host->watch_due_ms = 0;
    char msg[512];
    notify_reloading();
    if (reload_apply(host, msg, sizeof msg) == 0)
        watch_arm(host); /* plugin paths may have changed */
    else
        notify_reload_done(msg); /* rejected: READY=1 again at once */
    /* Accepted: READY=1 once its outcome is known (notify_tick). */
}

static int on_signal(sd_event_source *s, int fd, uint32_t revents, void *ud) {
    kh_host *host = ud;
    (void)s;
    (void)fd;
    (void)revents;
    if (take_signals(host)) {
        host_shutdown(host);
        sd_event_exit(host->ev, host->exit_code);
        return 0;
    }
    run_pending_reload(host);
    return 0;
}

static int on_exit_request(sd_event_source *s, void *ud) {
    kh_host *host = ud;
    /* A floating source: the loop owns it; just make sure it stays off. */
    sd_event_source_set_enabled(s, SD_EVENT_OFF);
    host_shutdown(host);
    sd_event_exit(host->ev, host->exit_code);
    return 0;
}

static void host_request_exit(kh_host *host, int code) {
    /* A failure's exit status is never overwritten by a later clean
     * request (a SIGTERM caught inside a drain asks for 0). */
    if (code > host->exit_code)
        host->exit_code = code;
    sd_event_add_defer(host->ev, NULL, on_exit_request, host);
}

/* Has w answered READY since its slot exists? supervisor_worker_ready
 * sets plugin_name, and nothing clears it (a restart keeps it). */
static bool worker_was_ready(const kh_worker *w) {
    return w->state == KH_W_READY || w->plugin_name[0] != '\0';
}

/* The one-line STATUS for systemd, and whether the host is up: every
 * pipeline either has had each of its workers READY at least once, or
 * FAILED. Counts only change on worker and pipeline events, so the text
 * stays the same from tick to tick while nothing happens. */
static bool host_status(kh_host *host, char *buf, size_t len) {
    bool up = true;
    int ready = 0, was_ready = 0, total = 0;
    size_t failed = 0;
    const kh_pipeline_rt *first_failed = NULL;
    char names[160] = "";
    for (size_t i = 0; i < host->n_pipelines; i++) {
        kh_pipeline_rt *pl = host->pipelines[i];
        bool all = true;
        /* Workers of both generations; spares serve nothing yet. */
        for (int w = 0; w < pl->n_workers + pl->n_next; w++) {
            kh_worker *wk = pl_worker(pl, w);
            total++;
            ready += wk->state == KH_W_READY;
            was_ready += worker_was_ready(wk);
            if (w < pl->n_workers && !worker_was_ready(wk))
                all = false;
        }
        if (pl->failed) {
            size_t n = strlen(names);
            snprintf(names + n, sizeof names - n, "%s%s", failed ? ", " : "",
                     pl->cfg->name);
            if (!failed++)
                first_failed = pl;
        } else if (!all) {
            up = false;
        }
    }
    size_t n_pl = host->n_pipelines;
    if (!up)
        snprintf(buf, len, "starting: %d of %d workers ready", was_ready,
                 total);
    else if (failed == 0)
        snprintf(buf, len,
                 "running: %zu pipeline%s, %d of %d workers ready, "
                 "0 failed",
                 n_pl, n_pl == 1 ? "" : "s", ready, total);
    else if (failed == n_pl)
        snprintf(buf, len, "all pipelines FAILED (%s)", names);
    else
        snprintf(buf, len,
                 "pipeline%s %s FAILED (on_exhausted=%s), %zu of %zu "
                 "pipelines running, %d of %d workers ready",
                 failed > 1 ? "s" : "", names,
                 first_failed->cfg->on_exhausted == KH_ON_EXHAUSTED_EXIT
                     ? "exit"
                     : "pause",
                 n_pl - failed, n_pl, ready, total);
    return up;
}

/* From the tick: READY=1 once the host is up, then STATUS as it changes
 * (notify.c sends only changed text, at most once a second). */
static void notify_tick(kh_host *host) {
    if (!notify_active() || host->shutting_down)
        return;
    /* A reload (SIGHUP, watch, the control socket) sent RELOADING=1 when
     * it began; READY=1 follows when its outcome is known. */
    if (host->reload.gen != host->notified_reload_gen && !reload_busy(host)) {
        char out[sizeof host->reload.outcome];
        reload_outcome(host, out, sizeof out);
        notify_reload_done(out);
        host->notified_reload_gen = host->reload.gen;
    }
    char status[256];
    bool up = host_status(host, status, sizeof status);
    if (up && !notify_ready_sent())
        notify_ready(status);
    else
        notify_status(status);
}

static void host_keepalive(kh_host *host) {
    (void)host;
    notify_keepalive();
}

static int on_tick(sd_event_source *s, uint64_t usec, void *ud) {
    kh_host *host = ud;
    int64_t now = kh_now_ms();
    notify_keepalive();
    for (size_t i = 0; i < host->n_pipelines; i++) {
        kh_pipeline_rt *pl = host->pipelines[i];
        supervisor_check_hangs(pl, now);
        dispatch_expire_deferred(pl, now);
        failure_poll(pl);
        parts_retry_seeks(pl->parts, pl->n_parts);
        /* I2: a partition stuck longer than this says why. A plugin that
         * defers on purpose for a tick gets two ticks. */
        int64_t stall_ms = 2LL * pl->cfg->tick_interval_ms > KH_STALL_WARN_MS
                               ? 2LL * pl->cfg->tick_interval_ms
                               : KH_STALL_WARN_MS;
        for (size_t p = 0; p < pl->n_parts; p++)
            part_check_stall(pl->parts[p], now, stall_ms);
        /* Retry backoffs expire here, and librdkafka events that arrive
         * while its queue is not empty are picked up. */
        kafka_poll(pl);
    }
    reload_tick(host, now);
    admin_tick(host, now);
    http_tick(host, now);
    run_pending_reload(host);
    notify_tick(host);
    sd_event_source_set_time(s, usec + KH_TICK_MS * 1000);
    sd_event_source_set_enabled(s, SD_EVENT_ON);
    return 0;
}

static int on_report(sd_event_source *s, uint64_t usec, void *ud) {
    kh_host *host = ud;
    for (size_t i = 0; i < host->n_pipelines; i++) {
        kh_pipeline_rt *pl = host->pipelines[i];
        if (pl->handled == pl->reported_handled)
            continue;
        int assigned = 0;
        for (size_t p = 0; p < pl->n_parts; p++)
            assigned += pl->parts[p]->assigned;
        klog_info("pipeline=%s progress: handled=%llu (+%llu) acked=%llu "
                  "crashes=%llu restarts=%llu retries=%llu failed=%llu "
                  "partitions=%d",
                  pl->cfg->name, (unsigned long long)pl->handled,
                  (unsigned long long)(pl->handled - pl->reported_handled),
                  (unsigned long long)pl->acked_count,
                  (unsigned long long)pl->crashes,
                  (unsigned long long)pl->restarts_total,
                  (unsigned long long)pl->retries,
                  (unsigned long long)pl->failures, assigned);
        pl->reported_handled = pl->handled;
    }
    sd_event_source_set_time(s, usec + KH_REPORT_MS * 1000);
    sd_event_source_set_enabled(s, SD_EVENT_ON);
    return 0;
}

static void seed_on_log(const rd_kafka_t *rk, int level, const char *fac,
                        const char *buf) {
    (void)rk;
    kafka_log_line("mock seeding:", level, fac, buf);
}

/* Produce `count` messages into every topic of the config, spread over
 * its partitions, so the demo and quick trials have data to consume. */
static int seed_topics(kh_host *host) {
    const kh_config *cfg = host->cfg;
    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", host->bootstraps, errstr,
                      sizeof errstr);
    rd_kafka_conf_set(conf, "linger.ms", "5", errstr, sizeof errstr);
    rd_kafka_conf_set_log_cb(conf, seed_on_log);
    rd_kafka_t *rk =
        rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (!rk) {
        klog_error("mock seeding: cannot create producer: %s", errstr);
        return -1;
    }
    for (size_t p = 0; p < cfg->n_pipelines; p++) {
        for (size_t t = 0; t < cfg->pipelines[p].n_topics; t++) {
            const char *topic = cfg->pipelines[p].topics[t];
            for (int i = 0; i < cfg->mock_seed; i++) {
                char key[32], value[128];
                snprintf(key, sizeof key, "key-%d", i);
                snprintf(value, sizeof value, "seed message %d of %d", i,
                         cfg->mock_seed);
                rd_kafka_resp_err_t e;
                while ((e = rd_kafka_producev(
                            rk, RD_KAFKA_V_TOPIC(topic),
                            RD_KAFKA_V_PARTITION(i % cfg->mock_partitions),
                            RD_KAFKA_V_KEY(key, strlen(key)),
                            RD_KAFKA_V_VALUE(value, strlen(value)),
                            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                            RD_KAFKA_V_HEADER("seeded-by", "khost", 5),
                            RD_KAFKA_V_END)) == RD_KAFKA_RESP_ERR__QUEUE_FULL)
                    rd_kafka_poll(rk, 10);
                if (e) {
                    klog_error("mock seeding: produce to %s: %s", topic,
                               rd_kafka_err2str(e));
                    rd_kafka_destroy(rk);
                    return -1;
                }
            }
            klog_info("mock cluster: seeded topic=%s with %d messages over %d "
                      "partitions",
                      topic, cfg->mock_seed, cfg->mock_partitions);
        }
    }
    rd_kafka_resp_err_t e = rd_kafka_flush(rk, 30000);
    rd_kafka_destroy(rk);
    if (e) {
        klog_error("mock seeding: flush: %s", rd_kafka_err2str(e));
        return -1;
    }
    return 0;
}

static int start_mock(kh_host *host) {
    const kh_config *cfg = host->cfg;
    char err[512];
    if (mock_cluster_start(&host->mock, cfg->mock_brokers, err, sizeof err)) {
        klog_error("%s", err);
        return -1;
    }
    host->has_mock = true;
    host->bootstraps = strdup(mock_cluster_bootstraps(&host->mock));
    for (size_t p = 0; p < cfg->n_pipelines; p++)
        for (size_t t = 0; t < cfg->pipelines[p].n_topics; t++)
            if (mock_cluster_create_topic(
                    &host->mock, cfg->pipelines[p].topics[t],
                    cfg->mock_partitions, err, sizeof err)) {
                klog_error("%s", err);
                return -1;
            }
    klog_info("embedded mock cluster: %d broker(s) at %s, %d partitions per "
              "topic",
              cfg->mock_brokers, host->bootstraps, cfg->mock_partitions);
    return cfg->mock_seed > 0 ? seed_topics(host) : 0;
}

static void host_shutdown(kh_host *host) {
    if (host->shutting_down)
        return;
    host->shutting_down = true;
    notify_stopping();
    for (size_t i = 0; i < host->n_pipelines; i++)
        pipeline_stop(host->pipelines[i]);
}

/* Remove the files of a snapshot folder, then the folder. */
static void remove_dir_files(const char *dir) {
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char *p = NULL;
        if (asprintf(&p, "%s/%s", dir, e->d_name) >= 0)
            unlink(p);
        free(p);
    }
    if (d)
        closedir(d);
    rmdir(dir);
}

/* A host killed with SIGKILL cannot remove its snapshot folder; the next
 * host to start under the same base does. A folder is stale when it is
 * named like ours (khost-PID-XXXXXX), is owned by our user, and PID is
 * gone. A reused PID only keeps a stale folder a little longer. */
static void remove_stale_snapshots(const char *base) {
    DIR *d = opendir(base);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        int pid = 0, n = 0;
        if (sscanf(e->d_name, "khost-%d-%*6[A-Za-z0-9]%n", &pid, &n) != 1 ||
            n == 0 || e->d_name[n] != '\0' || pid <= 0 || pid == getpid())
            continue;
        char *path = NULL;
        struct stat st;
        if (asprintf(&path, "%s/%s", base, e->d_name) < 0)
            continue;
        if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode) &&
            st.st_uid == geteuid() && kill(pid, 0) != 0 && errno == ESRCH) {
            remove_dir_files(path);
            klog_info("removed the plugin snapshot folder %s of a host that "
                      "is gone (pid %d)",
                      path, pid);
        }
        free(path);
    }
    if (d)
        closedir(d);
}

/* Plugin snapshots live in a private folder: $RUNTIME_DIRECTORY under
 * systemd (its first entry: several are colon separated), else $TMPDIR or
 * /tmp. */
static int make_snapshot_dir(kh_host *host) {
    const char *base = getenv("RUNTIME_DIRECTORY");
    int len = base ? (int)strcspn(base, ":") : 0;
    if (!len) {
        base = getenv("TMPDIR");
        if (!base || !*base)
            base = "/tmp";
        len = (int)strlen(base);
    }
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%.*s", len, base);
    remove_stale_snapshots(dir);
    if (asprintf(&host->snapshot_dir, "%s/khost-%d-XXXXXX", dir,
                 (int)getpid()) < 0 ||
        !mkdtemp(host->snapshot_dir)) {
        klog_error("cannot create a folder for plugin snapshots under %s: %s",
                   dir, strerror(errno));
        return -1;
    }
    /* Traversable, not listable: workers that run as another user (user =)
     * must reach their snapshot, and only by its exact name. */
    chmod(host->snapshot_dir, 0711);
    return 0;
}

static void remove_snapshot_dir(kh_host *host) {
    if (!host->snapshot_dir)
        return;
    remove_dir_files(host->snapshot_dir);
    free(host->snapshot_dir);
    host->snapshot_dir = NULL;
}

static void host_free(kh_host *host) {
    http_stop(host);
    for (size_t i = 0; i < host->n_pipelines; i++)
        pipeline_free(host->pipelines[i]);
    free(host->pipelines);
    host->signal_src = sd_event_source_disable_unref(host->signal_src);
    host->hang_timer = sd_event_source_disable_unref(host->hang_timer);
    host->report_timer = sd_event_source_disable_unref(host->report_timer);
    if (host->signal_fd >= 0)
        close(host->signal_fd);
    sd_event_unref(host->ev);
    if (host->has_mock)
        mock_cluster_stop(&host->mock);
    free(host->bootstraps);
    remove_snapshot_dir(host);
    admin_stop(host);
    watch_stop(host);
    for (size_t i = 0; i < host->n_retired; i++) {
        config_free(host->retired[i]);
        free(host->retired[i]);
    }
    free(host->retired);
    config_free(host->cfg);
    free(host->cfg);
    notify_close();
}

int host_run(kh_config *cfg) {
    kh_host host = {.cfg = cfg,
                    .signal_fd = -1,
                    .admin_fd = -1,
                    .hooks = {.should_stop = host_check_signals,
                              .request_exit = host_request_exit,
                              .keepalive = host_keepalive}};
    int rc = 1;
    struct timespec start;
    clock_gettime(CLOCK_REALTIME, &start);
    host.start_time_s = (double)start.tv_sec + (double)start.tv_nsec / 1e9;
    /* systemd's NOTIFY_SOCKET and watchdog are the host's alone: taken
     * out of the environment before any worker or thread exists. */
    notify_init();
    /* [host] log_level and log_format, before any thread exists; workers
     * inherit them through the environment (-v still forces debug). */
    klog_set_level(cfg->log_level ? cfg->log_level : KLOG_INFO);
    klog_set_format(cfg->log_format);
    klog_export();
    part_set_budget((size_t)cfg->prefetch_budget_mb << 20);

    /* Block before librdkafka starts threads, so that they inherit the
     * mask: signals then only reach our signalfd, and SIGCHLD stays
     * blocked as sd-event's child sources require. */
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    sigaddset(&mask, SIGCHLD);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    signal(SIGPIPE, SIG_IGN);
    sigdelset(&mask, SIGCHLD);
    host.signal_fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (host.signal_fd < 0 || sd_event_new(&host.ev) < 0) {
        klog_error("cannot set up the event loop: %s", strerror(errno));
        goto out;
    }
    if (make_snapshot_dir(&host) != 0)
        goto out;
    if (cfg->mock_brokers > 0) {
        if (start_mock(&host) != 0)
            goto out;
    } else {
        /* A copy: a reload frees the configuration it replaces, and
         * pipelines it restarts later still connect with this. */
        host.bootstraps = strdup(cfg->brokers);
    }

    host.pipelines =
        calloc(cfg->n_pipelines ? cfg->n_pipelines : 1, sizeof *host.pipelines);
    for (size_t i = 0; i < cfg->n_pipelines; i++) {
        kh_pipeline_rt *pl = pipeline_start(&host, cfg, &cfg->pipelines[i]);
        if (!pl)
            goto out;
        host.pipelines[host.n_pipelines++] = pl;
    }

    char err[512];
    if (admin_start(&host, err, sizeof err) != 0)
        klog_warn("control socket unavailable (khost reload will not "
                  "work; SIGHUP still does): %s",
                  err);
    watch_arm(&host);
    if (http_start(&host, err, sizeof err) != 0) {
        klog_error("http: %s", err);
        goto out;
    }
    sd_event_add_io(host.ev, &host.signal_src, host.signal_fd, EPOLLIN,
                    on_signal, &host);
    uint64_t now;
    sd_event_now(host.ev, CLOCK_MONOTONIC, &now);
    sd_event_add_time(host.ev, &host.hang_timer, CLOCK_MONOTONIC,
                      now + KH_TICK_MS * 1000, 5000, on_tick, &host);
    sd_event_source_set_enabled(host.hang_timer, SD_EVENT_ON);
    sd_event_add_time(host.ev, &host.report_timer, CLOCK_MONOTONIC,
                      now + KH_REPORT_MS * 1000, 100000, on_report, &host);
    sd_event_source_set_enabled(host.report_timer, SD_EVENT_ON);
    klog_info("khost %s running %zu pipeline(s), pid %d, brokers %s",
              KHOST_VERSION, cfg->n_pipelines, (int)getpid(), host.bootstraps);
    rc = sd_event_loop(host.ev);
    if (rc < 0) {
        klog_error("event loop failed: %s", strerror(-rc));
        rc = 1;
    }
    host_shutdown(&host);
    if (kafka_abandoned()) {
        /* A consumer still shuts down in the background: exit handlers
         * and freeing under its threads are not safe. Nothing is lost:
         * what was not committed is redelivered. */
        klog_warn("khost stopped (exit status %d) with %d consumer(s) "
                  "still closing in the background",
                  rc, kafka_abandoned());
        remove_snapshot_dir(&host);
        admin_stop(&host);
        fflush(NULL);
        _exit(rc);
    }
    /* An exit status 0 must not hide a pipeline that was dead. */
    char failed[512] = "";
    for (size_t i = 0; i < host.n_pipelines; i++) {
        size_t used = strlen(failed);
        if (host.pipelines[i]->failed)
            snprintf(failed + used, sizeof failed - used,
                     "; pipeline %s FAILED", host.pipelines[i]->cfg->name);
    }
    klog_info("khost stopped (exit status %d)%s", rc, failed);

out:
    if (rc != 0 && !host.shutting_down && host.ev)
        host_shutdown(&host);
    host_free(&host);
    return rc;
}
