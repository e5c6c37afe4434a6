/*
 * kafka: one librdkafka consumer per pipeline, joined to its group.
 *
 * The consumer queue wakes the event loop through a pipe
 * (rd_kafka_queue_io_event_enable), so the host never blocks in a poll
 * call and a slow handler can never push it past max.poll.interval.ms.
 *
 * Offsets: enable.auto.offset.store is off; the host stores acked + 1 of
 * each partition's contiguous watermark and librdkafka's auto-commit
 * commits what was stored. Revoke and shutdown commit synchronously.
 * Auto-commit skips a partition whose offset did not move, so a timer
 * re-commits the assigned partitions' offsets every auto.commit.interval.ms
 * x 10: lag tools (Burrow) then see commits keep coming from a live
 * consumer that is idle.
 *
 * Statistics: with [http] listen set, statistics.interval.ms defaults to
 * 5000; the stats callback, served from the consumer queue (the main
 * queue is forwarded to it), keeps the last parse (kafka_stats.c).
 *
 * Rebalances: eager assignors use rd_kafka_assign; with the COOPERATIVE
 * protocol (cooperative-sticky) the incremental calls are required. Note
 * that librdkafka 1.6.0-2.6.0, Debian 12's 2.0.2 included, has a known
 * infinite-loop bug in cooperative-sticky (confluentinc/librdkafka#4783);
 * the default range/roundrobin assignors are the safe choice.
 */
#define _GNU_SOURCE
#include "kafka.h"
#include "host.h"
#include "kafka_log.h"
#include "kafka_stats.h"
#include "log.h"
#include "pipeline.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define KH_POLL_BUDGET 8192
/* Over the host's prefetch budget with no message leaving any queue for
 * this long, what holds the budget cannot dispatch: polling goes on. */
#define KH_BUDGET_STUCK_MS 1000
/* While held by the budget, one message is polled this often all the
 * same: librdkafka counts max.poll.interval.ms from the last consumer
 * poll, and a slow handler can keep the host over its budget for hours.
 * Longer than KH_BUDGET_STUCK_MS, so that these messages alone do not
 * look like progress to a hold that is stuck. */
#define KH_BUDGET_POLL_MS 2000

/* pl->tix: one entry per topic, its partitions by id. Ids from
 * KH_INDEX_MAX on (no real topic has that many partitions) are found by
 * a scan instead, so a hostile id cannot size an allocation. */
#define KH_INDEX_MAX (1 << 20)

struct kh_topic_index {
    char *topic;
    kh_part **by_p;
    int32_t cap;
};

static struct kh_topic_index *index_topic(kh_pipeline_rt *pl, const char *topic,
                                          bool add) {
    for (size_t i = 0; i < pl->n_tix; i++)
        if (!strcmp(pl->tix[i].topic, topic))
            return &pl->tix[i];
    if (!add)
        return NULL;
    struct kh_topic_index *t =
        realloc(pl->tix, (pl->n_tix + 1) * sizeof *pl->tix);
    if (!t)
        abort();
    pl->tix = t;
    t = &pl->tix[pl->n_tix++];
    *t = (struct kh_topic_index){.topic = strdup(topic)};
    if (!t->topic)
        abort();
    return t;
}

static void index_add(kh_pipeline_rt *pl, kh_part *part) {
    if (part->partition >= KH_INDEX_MAX)
        return;
    struct kh_topic_index *t = index_topic(pl, part->topic, true);
    if (part->partition >= t->cap) {
        int32_t cap = t->cap ? t->cap : 16;
        while (cap <= part->partition)
            cap *= 2;
        kh_part **by_p = realloc(t->by_p, (size_t)cap * sizeof *by_p);
        if (!by_p)
            abort();
        memset(by_p + t->cap, 0, (size_t)(cap - t->cap) * sizeof *by_p);
        t->by_p = by_p;
        t->cap = cap;
    }
    t->by_p[part->partition] = part;
}

void kafka_index_free(kh_pipeline_rt *pl) {
    for (size_t i = 0; i < pl->n_tix; i++) {
        free(pl->tix[i].topic);
        free(pl->tix[i].by_p);
    }
    free(pl->tix);
    pl->tix = NULL;
    pl->n_tix = 0;
}

kh_part *pipeline_part(kh_pipeline_rt *pl, const char *topic, int32_t p,
                       bool create) {
    if (p < 0)
        return NULL;
    if (p < KH_INDEX_MAX) {
        const struct kh_topic_index *t = index_topic(pl, topic, false);
        if (t && p < t->cap && t->by_p[p])
            return t->by_p[p];
    } else {
        for (size_t i = 0; i < pl->n_parts; i++)
            if (pl->parts[i]->partition == p &&
                !strcmp(pl->parts[i]->topic, topic))
                return pl->parts[i];
    }
    if (!create)
        return NULL;
    if (pl->n_parts == pl->cap_parts) {
        pl->cap_parts = pl->cap_parts ? pl->cap_parts * 2 : 16;
        pl->parts = realloc(pl->parts, pl->cap_parts * sizeof *pl->parts);
        if (!pl->parts)
            abort();
    }
    kh_part *part = part_new(pl, pl->cfg->name, &pl->consumer, topic, p,
                             (uint32_t)pl->n_parts);
    part_set_group(part, &pl->budget_group);
    pl->parts[pl->n_parts++] = part;
    index_add(pl, part);
    return part;
}

static rd_kafka_topic_partition_list_t *one_partition(kh_part *part) {
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, part->topic, part->partition);
    return l;
}

/* ---- the consumer port (partition.h): what a partition asks of rk ---- */

static void port_set_paused(void *ud, kh_part *part, bool paused);
static int port_seek(void *ud, kh_part *part, int64_t offset, char *why,
                     size_t len);
static int port_store(void *ud, kh_part *part, int64_t offset, char *why,
                      size_t len);

void kafka_port_init(kh_pipeline_rt *pl) {
    pl->consumer = (kh_consumer_port){.ud = pl,
                                      .set_paused = port_set_paused,
                                      .seek = port_seek,
                                      .store = port_store};
}

/* Not while the handle closes: rd_kafka_pause/resume_partitions wait
 * without a bound for librdkafka's main thread to answer, and a resume
 * there (part_release) only serves a later assignment on this handle,
 * which never comes. Seen once in CI under valgrind: a revoke served
 * inside the close, during a rebalance, committed and then never logged
 * its "revoked" line; that resume is the one wait between the two, and
 * the host outlived the 20 s its test gives a shutdown. */
static void port_set_paused(void *ud, kh_part *part, bool paused) {
    kh_pipeline_rt *pl = ud;
    if (pl->closing)
        return;
    rd_kafka_topic_partition_list_t *l = one_partition(part);
    rd_kafka_resp_err_t e = paused ? rd_kafka_pause_partitions(pl->rk, l)
                                   : rd_kafka_resume_partitions(pl->rk, l);
    if (e)
        klog_warn("pipeline=%s topic=%s partition=%d: %s failed: %s",
                  pl->cfg->name, part->topic, part->partition,
                  paused ? "pause" : "resume", rd_kafka_err2str(e));
    rd_kafka_topic_partition_list_destroy(l);
}

static int port_seek(void *ud, kh_part *part, int64_t offset, char *why,
                     size_t len) {
    kh_pipeline_rt *pl = ud;
    rd_kafka_topic_partition_list_t *l = one_partition(part);
    l->elems[0].offset = offset;
    /* librdkafka 2.0.2 waits for the seek's reply with the remaining time
     * in milliseconds handed to a microsecond queue pop (its #4230), so
     * 2000 would wait 2 ms and the seek would finish later, behind our
     * back: messages fetched before it could then be dispatched ahead of
     * the rewound ones. 2000 * 1000 makes it really wait about 2 s. */
    rd_kafka_error_t *error = rd_kafka_seek_partitions(pl->rk, l, 2000 * 1000);
    int rc = 0;
    if (error) {
        snprintf(why, len, "%s", rd_kafka_error_string(error));
        rd_kafka_error_destroy(error);
        rc = -1;
    } else if (l->elems[0].err) {
        snprintf(why, len, "%s", rd_kafka_err2str(l->elems[0].err));
        rc = -1;
    }
    rd_kafka_topic_partition_list_destroy(l);
    return rc;
}

static int port_store(void *ud, kh_part *part, int64_t offset, char *why,
                      size_t len) {
    kh_pipeline_rt *pl = ud;
    rd_kafka_topic_partition_list_t *l = one_partition(part);
    l->elems[0].offset = offset;
    rd_kafka_resp_err_t e = rd_kafka_offsets_store(pl->rk, l);
    if (!e)
        e = l->elems[0].err;
    if (e)
        snprintf(why, len, "%s", rd_kafka_err2str(e));
    rd_kafka_topic_partition_list_destroy(l);
    return e ? -1 : 0;
}

/* One line per commit that moved something, e.g.
 * "pipeline=demo committed offsets: demo[0]=751 demo[1]=749". */
static void log_committed(kh_pipeline_rt *pl,
                          const rd_kafka_topic_partition_list_t *offsets,
                          const char *how) {
    char line[1024];
    size_t used = 0;
    int moved = 0;
    for (int i = 0; i < offsets->cnt; i++) {
        const rd_kafka_topic_partition_t *tp = &offsets->elems[i];
        kh_part *part = pipeline_part(pl, tp->topic, tp->partition, false);
        if (tp->err || tp->offset < 0 || !part || part->committed == tp->offset)
            continue;
        part->committed = tp->offset;
        moved++;
        int n = snprintf(line + used, sizeof line - used, " %s[%d]=%lld",
                         tp->topic, tp->partition, (long long)tp->offset);
        if (n > 0 && (size_t)n < sizeof line - used)
            used += (size_t)n;
    }
    if (moved)
        klog_info("pipeline=%s committed offsets (%s):%s", pl->cfg->name, how,
                  line);
}

typedef struct commit_wait {
    kh_pipeline_rt *pl;
    bool done;
} commit_wait;

static void on_commit_done(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                           rd_kafka_topic_partition_list_t *offsets,
                           void *opaque) {
    commit_wait *cw = opaque;
    (void)rk;
    cw->done = true;
    if (!err)
        cw->pl->commits_sync++;
    if (err && err != RD_KAFKA_RESP_ERR__NO_OFFSET)
        klog_warn("pipeline=%s commit failed: %s; the partitions resume "
                  "from the last commit that went through",
                  cw->pl->cfg->name, rd_kafka_err2str(err));
    else if (!err && offsets)
        log_committed(cw->pl, offsets, "sync");
}

/* The commit is asynchronous and its result is waited for on a queue of
 * its own, at most timeout_ms: with the broker gone, a synchronous
 * rd_kafka_commit can block for as long as the connection stalls (seen:
 * 58 minutes inside rd_kafka_consumer_close). A commit given up on is
 * not lost work: offsets past the last commit are redelivered. Its
 * callback can never run later, as nothing serves the queue again. */
void kafka_commit_sync(kh_pipeline_rt *pl, kh_part **parts, size_t n,
                       int timeout_ms) {
    if (!parts) {
        parts = pl->parts;
        n = pl->n_parts;
    }
    rd_kafka_topic_partition_list_t *l =
        rd_kafka_topic_partition_list_new((int)n ? (int)n : 1);
    for (size_t i = 0; i < n; i++) {
        int64_t offset = part_commit_offset(parts[i]);
        if (offset < 0 || offset == parts[i]->committed)
            continue;
        rd_kafka_topic_partition_list_add(l, parts[i]->topic,
                                          parts[i]->partition)
            ->offset = offset;
    }
    if (l->cnt) {
        rd_kafka_queue_t *q = rd_kafka_queue_new(pl->rk);
        commit_wait cw = {.pl = pl};
        rd_kafka_resp_err_t e =
            rd_kafka_commit_queue(pl->rk, l, q, on_commit_done, &cw);
        int64_t deadline = kh_now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
        if (e)
            klog_warn("pipeline=%s commit failed: %s", pl->cfg->name,
                      rd_kafka_err2str(e));
        while (!e && !cw.done) {
            int64_t left = deadline - kh_now_ms();
            if (left <= 0) {
                klog_warn("pipeline=%s commit not confirmed within %d ms; "
                          "giving up on it (messages after the last "
                          "confirmed commit will be redelivered)",
                          pl->cfg->name, timeout_ms);
                break;
            }
            rd_kafka_queue_poll_callback(q, left < 50 ? (int)left : 50);
        }
        rd_kafka_queue_destroy(q);
    }
    rd_kafka_topic_partition_list_destroy(l);
}

static void on_commit(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                      rd_kafka_topic_partition_list_t *offsets, void *opaque) {
    kh_pipeline_rt *pl = opaque;
    (void)rk;
    if (err == RD_KAFKA_RESP_ERR__NO_OFFSET)
        return; /* nothing new to commit */
    if (err) {
        klog_warn("pipeline=%s offset commit failed: %s (will retry)",
                  pl->cfg->name, rd_kafka_err2str(err));
        return;
    }
    kafka_conn_ok(rk, kh_now_ms());
    pl->commits_auto++;
    if (offsets)
        log_committed(pl, offsets, "auto");
}

/* ---- re-commits for lag tools ---- */

static void on_recommit(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                        rd_kafka_topic_partition_list_t *offsets,
                        void *opaque) {
    kh_pipeline_rt *pl = opaque;
    if (err) {
        if (err != RD_KAFKA_RESP_ERR__NO_OFFSET)
            klog_warn("pipeline=%s re-commit failed: %s (next one in "
                      "%lld ms)",
                      pl->cfg->name, rd_kafka_err2str(err),
                      (long long)pl->recommit_ms);
        return;
    }
    kafka_conn_ok(rk, kh_now_ms());
    pl->commits_recommit++;
    if (offsets)
        log_committed(pl, offsets, "recommit");
}

/* Commit every assigned partition's offset again, asynchronously, the
 * result served from the consumer queue (on_recommit). The offset is
 * part_commit_offset's (I1), else the last one committed; a partition
 * with neither is skipped. */
static void recommit(kh_pipeline_rt *pl) {
    if (!pl->rk || !pl->queue || pl->stopping)
        return;
    rd_kafka_topic_partition_list_t *l =
        rd_kafka_topic_partition_list_new(pl->n_parts ? (int)pl->n_parts : 1);
    char line[1024];
    size_t used = 0;
    for (size_t i = 0; i < pl->n_parts; i++) {
        kh_part *part = pl->parts[i];
        if (!part->assigned)
            continue;
        int64_t offset = part_commit_offset(part);
        if (offset < 0)
            offset = part->committed;
        if (offset < 0)
            continue;
        rd_kafka_topic_partition_list_add(l, part->topic, part->partition)
            ->offset = offset;
        int n = snprintf(line + used, sizeof line - used, " %s[%d]=%lld",
                         part->topic, part->partition, (long long)offset);
        if (n > 0 && (size_t)n < sizeof line - used)
            used += (size_t)n;
    }
    if (l->cnt) {
        rd_kafka_resp_err_t e =
            rd_kafka_commit_queue(pl->rk, l, pl->queue, on_recommit, pl);
        if (e)
            klog_warn("pipeline=%s re-commit failed: %s", pl->cfg->name,
                      rd_kafka_err2str(e));
        else
            klog_debug("pipeline=%s re-committing offsets:%s", pl->cfg->name,
                       used ? line : "");
    }
    rd_kafka_topic_partition_list_destroy(l);
}

static int on_recommit_timer(sd_event_source *s, uint64_t usec, void *ud) {
    kh_pipeline_rt *pl = ud;
    recommit(pl);
    sd_event_source_set_time(s, usec + (uint64_t)pl->recommit_ms * 1000);
    sd_event_source_set_enabled(s, SD_EVENT_ON);
    return 0;
}

/* librdkafka's statistics; runs inside rd_kafka_consumer_poll, on the
 * loop thread. Returns 0: librdkafka frees the JSON. */
static int on_stats(rd_kafka_t *rk, char *json, size_t len, void *opaque) {
    kh_pipeline_rt *pl = opaque;
    (void)rk;
    char err[256];
    kh_kstats *st = kafka_stats_parse(json, len, kh_now_ms(), err, sizeof err);
    if (!st) {
        klog_warn("pipeline=%s librdkafka statistics unreadable: %s",
                  pl->cfg->name, err);
        return 0;
    }
    kafka_stats_free(pl->kstats);
    pl->kstats = st;
    return 0;
}

static void on_error(rd_kafka_t *rk, int err, const char *reason,
                     void *opaque) {
    kh_pipeline_rt *pl = opaque;
    char who[192];
    snprintf(who, sizeof who, "pipeline=%s kafka", pl->cfg->name);
    if (kafka_conn_error(rk, who, pl->host->bootstraps, err, reason,
                         kh_now_ms()))
        return;
    klog_warn("pipeline=%s kafka: %s: %s", pl->cfg->name,
              rd_kafka_err2name((rd_kafka_resp_err_t)err), reason);
}

/* Runs on librdkafka's threads, also while a destroy given up on
 * (destroy_bounded) finishes after its pipeline was freed: so it names
 * the pipeline from the handle's own name ("khost-NAME#consumer-1", from
 * client.id), never through the opaque. */
static void on_log(const rd_kafka_t *rk, int level, const char *fac,
                   const char *buf) {
    char name[160], who[192];
    kafka_log_pipeline(rk, NULL, name, sizeof name);
    snprintf(who, sizeof who, "pipeline=%s", name);
    kafka_log_line(who, level, fac, buf);
}

static void describe_list(const rd_kafka_topic_partition_list_t *l, char *buf,
                          size_t len) {
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < l->cnt; i++) {
        int n = snprintf(buf + used, len - used, "%s%s[%d]", i ? " " : "",
                         l->elems[i].topic, l->elems[i].partition);
        if (n < 0 || (size_t)n >= len - used)
            break;
        used += (size_t)n;
    }
}

/* The partitions of a rebalance list, as the host's (created on assign). */
static size_t parts_of(kh_pipeline_rt *pl, rd_kafka_topic_partition_list_t *l,
                       bool create, kh_part ***out) {
    kh_part **parts = calloc((size_t)l->cnt + 1, sizeof *parts);
    if (!parts)
        abort();
    size_t n = 0;
    for (int i = 0; i < l->cnt; i++) {
        kh_part *part =
            pipeline_part(pl, l->elems[i].topic, l->elems[i].partition, create);
        if (part && (create || part->assigned))
            parts[n++] = part;
    }
    *out = parts;
    return n;
}

/* A librdkafka call that can block without a bound runs on a thread of
 * its own and is waited for, bounded (run_bounded). One given up on
 * finishes by itself later, or never; kafka_abandoned() tells the host,
 * which then leaves with _exit rather than run exit handlers under it.
 * - rd_kafka_destroy joins librdkafka's main thread, which waits for the
 *   group to terminate, and that waits for a commit still looking for its
 *   coordinator (up to a session timeout, 45 s by default).
 * - rd_kafka_assign(NULL) in a revoke served inside the close waits for
 *   the group's ops queue, which 2.0.2 can stop serving: seen when a
 *   revoke's commit got "Unknown member" while the group rebalanced
 *   (another member had just left), the host stuck for good in
 *   rd_kafka_assign with librdkafka's threads idle (test_regress_stop). */
typedef struct bounded_job {
    rd_kafka_t *rk;
    int flags;                             /* destroy's */
    rd_kafka_topic_partition_list_t *list; /* incremental unassign's, owned */
    void (*fn)(struct bounded_job *);
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done, abandoned;
} bounded_job;

static atomic_int n_abandoned;

int kafka_abandoned(void) {
    return atomic_load(&n_abandoned);
}

static void free_job(bounded_job *job) {
    if (job->list)
        rd_kafka_topic_partition_list_destroy(job->list);
    pthread_mutex_destroy(&job->mu);
    pthread_cond_destroy(&job->cv);
    free(job);
}

static void *bounded_main(void *ud) {
    bounded_job *job = ud;
    job->fn(job);
    pthread_mutex_lock(&job->mu);
    job->done = true;
    bool abandoned = job->abandoned;
    pthread_cond_signal(&job->cv);
    pthread_mutex_unlock(&job->mu);
    if (abandoned) {
        atomic_fetch_sub(&n_abandoned, 1);
        free_job(job);
    }
    return NULL;
}

/* Runs fn(job) on its own thread, waits at most bound_ms: did it finish?
 * The job owns list. */
static bool run_bounded(rd_kafka_t *rk, int flags,
                        rd_kafka_topic_partition_list_t *list,
                        void (*fn)(bounded_job *), int64_t bound_ms) {
    bounded_job *job = calloc(1, sizeof *job);
    if (!job)
        abort();
    job->rk = rk;
    job->flags = flags;
    job->list = list;
    job->fn = fn;
    pthread_mutex_init(&job->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&job->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_t t;
    if (pthread_create(&t, NULL, bounded_main, job) != 0) {
        fn(job); /* no thread: here, unbounded */
        free_job(job);
        return true;
    }
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += bound_ms / 1000;
    until.tv_nsec += (bound_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&job->mu);
    while (!job->done &&
           pthread_cond_timedwait(&job->cv, &job->mu, &until) == 0)
        ;
    bool done = job->done;
    if (!done) {
        job->abandoned = true;
        atomic_fetch_add(&n_abandoned, 1);
    }
    pthread_mutex_unlock(&job->mu);
    if (done) {
        pthread_join(t, NULL);
        free_job(job);
        return true;
    }
    pthread_detach(t);
    return false;
}

static void destroy_fn(bounded_job *job) {
    rd_kafka_destroy_flags(job->rk, job->flags);
}

static void destroy_bounded(kh_pipeline_rt *pl, int flags, int64_t bound_ms) {
    if (!run_bounded(pl->rk, flags, NULL, destroy_fn, bound_ms))
        klog_warn("pipeline=%s: the consumer did not shut down within %lld "
                  "ms (a commit still waits for an unreachable "
                  "coordinator); leaving it behind",
                  pl->cfg->name, (long long)bound_ms);
}

static void unassign_fn(bounded_job *job) {
    if (job->list)
        rd_kafka_error_destroy(
            rd_kafka_incremental_unassign(job->rk, job->list));
    else
        rd_kafka_assign(job->rk, NULL);
}

/* Gives revoked partitions back to librdkafka (eager: all of them), at
 * once, or inside the close bounded by its deadline (run_bounded): past
 * it the close goes on without, and the handle is destroyed without
 * leaving the group, which then expires the member. */
static void unassign(kh_pipeline_rt *pl, rd_kafka_topic_partition_list_t *l,
                     bool cooperative, const char *answer) {
    if (!pl->closing) {
        if (cooperative)
            rd_kafka_error_destroy(rd_kafka_incremental_unassign(pl->rk, l));
        else
            rd_kafka_assign(pl->rk, NULL);
        return;
    }
    int64_t left = pl->close_deadline_ms - kh_now_ms();
    if (left < 100)
        left = 100;
    if (!run_bounded(pl->rk, 0,
                     cooperative ? rd_kafka_topic_partition_list_copy(l) : NULL,
                     unassign_fn, left))
        klog_warn("pipeline=%s: leaving the group, librdkafka did not "
                  "answer the %s of %d partition(s) within %lld ms; "
                  "closing without it",
                  pl->cfg->name, answer, l->cnt, (long long)left);
}

static void on_assign(kh_pipeline_rt *pl, rd_kafka_topic_partition_list_t *l,
                      bool cooperative) {
    pl->rebalances++;
    kh_part **parts;
    size_t n = parts_of(pl, l, true, &parts);
    for (size_t i = 0; i < n; i++)
        part_assign(parts[i]);
    rd_kafka_error_t *error = NULL;
    rd_kafka_resp_err_t e = 0;
    if (cooperative)
        error = rd_kafka_incremental_assign(pl->rk, l);
    else
        e = rd_kafka_assign(pl->rk, l);
    if (error) {
        klog_error("pipeline=%s assign failed: %s", pl->cfg->name,
                   rd_kafka_error_string(error));
        rd_kafka_error_destroy(error);
    } else if (e) {
        klog_error("pipeline=%s assign failed: %s", pl->cfg->name,
                   rd_kafka_err2str(e));
    }
    char desc[1024];
    describe_list(l, desc, sizeof desc);
    klog_info("pipeline=%s rebalance #%llu: assigned %d partition(s): %s",
              pl->cfg->name, (unsigned long long)pl->rebalances, l->cnt, desc);
    pl->consumer_events->assigned(pl, parts, n);
    free(parts);
}

static void on_revoke(kh_pipeline_rt *pl, rd_kafka_topic_partition_list_t *l,
                      bool cooperative) {
    kh_part **parts;
    size_t n = parts_of(pl, l, false, &parts);
    pl->consumer_events->revoking(pl, parts, n);
    for (size_t i = 0; i < n; i++)
        part_release(parts[i]);
    free(parts);
    char desc[1024];
    describe_list(l, desc, sizeof desc);
    klog_info("pipeline=%s rebalance: revoked %d partition(s): %s",
              pl->cfg->name, l->cnt, desc);
    unassign(pl, l, cooperative, "revoke");
}

/* 2 (cooperative) when partition.assignment.strategy names only
 * cooperative assignors, else 1 (eager): read from the handle's conf,
 * no call into the group. */
static int configured_protocol(rd_kafka_t *rk) {
    char buf[256];
    size_t len = sizeof buf;
    if (rd_kafka_conf_get(rd_kafka_conf(rk), "partition.assignment.strategy",
                          buf, &len) != RD_KAFKA_CONF_OK)
        return 1;
    return strstr(buf, "cooperative") && !strstr(buf, "range") &&
                   !strstr(buf, "roundrobin")
               ? 2
               : 1;
}

static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *l, void *opaque) {
    kh_pipeline_rt *pl = opaque;
    /* Asked of the group's ops queue, as rd_kafka_assign is (unassign):
     * inside the close, an earlier answer, or the configured assignor
     * (librdkafka takes the protocol from it) when there was none. */
    if (!pl->closing)
        pl->rebalance_protocol =
            strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") ? 1 : 2;
    else if (!pl->rebalance_protocol)
        pl->rebalance_protocol = configured_protocol(rk);
    bool cooperative = pl->rebalance_protocol == 2;
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS ||
        err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS)
        kafka_conn_ok(rk, kh_now_ms()); /* the coordinator answered */
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS && pl->closing) {
        /* Leaving the group, librdkafka takes any assignment as an
         * unassignment; its synchronous rd_kafka_assign there was seen
         * never to return (test_notify under ASan, stacks from the
         * harness), so it goes the bounded way too. */
        klog_info("pipeline=%s: %d partition(s) assigned while leaving the "
                  "group: not taken",
                  pl->cfg->name, l->cnt);
        unassign(pl, l, cooperative, "assignment");
    } else if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        on_assign(pl, l, cooperative);
    } else if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS) {
        on_revoke(pl, l, cooperative);
    } else {
        klog_error("pipeline=%s rebalance error: %s", pl->cfg->name,
                   rd_kafka_err2str(err));
        unassign(pl, l, cooperative, "rebalance error");
    }
}

static kh_part *part_of(kh_pipeline_rt *pl, const rd_kafka_message_t *m) {
    kh_part *c = pl->last_part;
    if (c && c->partition == m->partition &&
        !strcmp(c->topic, rd_kafka_topic_name(m->rkt)))
        return c;
    c = pipeline_part(pl, rd_kafka_topic_name(m->rkt), m->partition, false);
    if (c)
        pl->last_part = c;
    return c;
}

/* The host's prefetch budget (partition.h). Held by it (B1: the host
 * over its budget and this pipeline over its share, or the host a
 * quarter over), what librdkafka fetched stays in librdkafka's queue,
 * whose own limits (queued.min.messages, queued.max.messages.kbytes) then
 * stop its fetching, as they do for a plain consumer: memory stays
 * bounded without pausing anything, and rebalances wait behind the queued
 * messages as they would there. A pipeline within its share is not held
 * by another's backlog (test_budget: a slow pipeline holding the budget
 * does not starve another). Unless no message left this pipeline's
 * queues for KH_BUDGET_STUCK_MS (another pipeline's progress does not
 * count): then what holds the budget cannot dispatch (a hung
 * or restarting worker, a paused partition), and polling goes on
 * (budget_bypass) until the host is back within its budget, so that the
 * other partitions and rebalances do; meanwhile each partition over its
 * share pauses (partition.c), which bounds what it queues. A shutdown
 * always polls, and a hold still polls one message every 2 s
 * (KH_BUDGET_POLL_MS) for the group membership. */
static bool budget_holds(kh_pipeline_rt *pl, int64_t now) {
    uint64_t popped = pl->budget_group.popped;
    if (!part_budget_holds(&pl->budget_group) || pl->stopping) {
        pl->budget_progress_ms = 0;
        pl->budget_bypass = false;
        return false;
    }
    if (pl->budget_bypass)
        return false; /* until the host is back within its budget */
    if (!pl->budget_progress_ms || popped != pl->budget_popped) {
        pl->budget_popped = popped;
        pl->budget_progress_ms = now;
    }
    if (now - pl->budget_progress_ms < KH_BUDGET_STUCK_MS)
        return true;
    size_t queued, budget = part_budget(&queued, NULL);
    klog_info("pipeline=%s: %zu B queued over the prefetch budget of %zu B "
              "and nothing dispatched for %d ms; polling on (partitions "
              "over their share pause)",
              pl->cfg->name, queued, budget, KH_BUDGET_STUCK_MS);
    pl->budget_bypass = true;
    return false;
}

static int on_post(sd_event_source *s, void *ud) {
    (void)s;
    kafka_poll(ud);
    return 0;
}

void kafka_poll(kh_pipeline_rt *pl) {
    if (!pl->rk)
        return;
    const rd_kafka_t *rk = pl->rk;
    int budget = KH_POLL_BUDGET;
    rd_kafka_message_t *m;
    bool fetched = false, held = false;
    int64_t start = kh_now_ms();
    while (budget-- > 0) {
        if (budget_holds(pl, start) &&
            start - pl->budget_poll_ms < KH_BUDGET_POLL_MS) {
            held = true;
            break;
        }
        pl->budget_poll_ms = start;
        if (!(m = rd_kafka_consumer_poll(pl->rk, 0)))
            break;
        if (m->err) {
            char who[192];
            snprintf(who, sizeof who, "pipeline=%s kafka", pl->cfg->name);
            if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
                fetched = true;
            else if (!kafka_conn_error(pl->rk, who, pl->host->bootstraps,
                                       m->err, rd_kafka_message_errstr(m),
                                       kh_now_ms()))
                klog_warn("pipeline=%s consume error%s%s: %s", pl->cfg->name,
                          m->rkt ? " on topic " : "",
                          m->rkt ? rd_kafka_topic_name(m->rkt) : "",
                          rd_kafka_message_errstr(m));
            rd_kafka_message_destroy(m);
            continue;
        }
        fetched = true;
        kh_part *part = part_of(pl, m);
        if (!part || pl->stopping) {
            rd_kafka_message_destroy(m);
            continue;
        }
        part_accept(part, m);
    }
    /* Only the key: the handle may be closed by now. */
    int64_t now = kh_now_ms();
    if (fetched)
        kafka_conn_ok(rk, now);
    kafka_conn_tick(rk, now);
    pl->consumer_events->polled(pl);
    /* The wake pipe only fires when the queue turns non-empty; if the
     * budget ran out, come back on the next loop iteration. */
    if (budget < 0 && pl->defer_src)
        sd_event_source_set_enabled(pl->defer_src, SD_EVENT_ONESHOT);
    /* Held by the budget: librdkafka's queue stays non-empty, so its wake
     * pipe stays quiet; look again after the next event (a worker's
     * results free the budget) and at least from the tick. */
    if (held && pl->post_src)
        sd_event_source_set_enabled(pl->post_src, SD_EVENT_ONESHOT);
}

static int on_wake(sd_event_source *s, int fd, uint32_t revents, void *ud) {
    (void)s;
    (void)revents;
    char drain[256];
    while (read(fd, drain, sizeof drain) > 0)
        ;
    kafka_poll(ud);
    return 0;
}

static int on_defer(sd_event_source *s, void *ud) {
    (void)s;
    kafka_poll(ud);
    return 0;
}

static int conf_set(rd_kafka_conf_t *conf, const char *k, const char *v,
                    char *err, size_t errlen) {
    char errstr[512];
    if (rd_kafka_conf_set(conf, k, v, errstr, sizeof errstr) !=
        RD_KAFKA_CONF_OK) {
        snprintf(err, errlen, "%s = %s: %s", k, v, errstr);
        return -1;
    }
    return 0;
}

int kafka_pipeline_start(kh_pipeline_rt *pl, char *err, size_t errlen) {
    const kh_config *hc = pl->root;
    const kh_pipeline *cfg = pl->cfg;
    kafka_port_init(pl);
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char client_id[160];
    snprintf(client_id, sizeof client_id, "khost-%s", cfg->name);
    /* khost's defaults first, then [kafka], then [pipeline.NAME.kafka]. */
    if (conf_set(conf, "bootstrap.servers", pl->host->bootstraps, err,
                 errlen) ||
        conf_set(conf, "group.id", cfg->group, err, errlen) ||
        conf_set(conf, "client.id", client_id, err, errlen) ||
        conf_set(conf, "enable.auto.offset.store", "false", err, errlen) ||
        conf_set(conf, "auto.commit.interval.ms", "1000", err, errlen) ||
        conf_set(conf, "auto.offset.reset", "earliest", err, errlen) ||
        /* A resumed partition waits for the broker's long-poll; 500 ms
         * (librdkafka's default) stalls it after every flow pause. */
        conf_set(conf, "fetch.wait.max.ms", "100", err, errlen))
        goto error;
    /* /metrics shows a few of librdkafka's statistics (kafka_stats.c). */
    if (hc->http_listen &&
        conf_set(conf, "statistics.interval.ms", "5000", err, errlen))
        goto error;
    for (size_t i = 0; i < hc->n_kafka; i++)
        if (conf_set(conf, hc->kafka[i].key, hc->kafka[i].value, err, errlen))
            goto error;
    for (size_t i = 0; i < cfg->n_kafka; i++)
        if (conf_set(conf, cfg->kafka[i].key, cfg->kafka[i].value, err, errlen))
            goto error;
    rd_kafka_conf_set_opaque(conf, pl);
    rd_kafka_conf_set_rebalance_cb(conf, on_rebalance);
    rd_kafka_conf_set_offset_commit_cb(conf, on_commit);
    rd_kafka_conf_set_error_cb(conf, on_error);
    rd_kafka_conf_set_log_cb(conf, on_log);
    rd_kafka_conf_set_stats_cb(conf, on_stats);

    char errstr[512];
    pl->closing = false;
    pl->rebalance_protocol = 0;
    pl->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
    if (!pl->rk) {
        snprintf(err, errlen, "cannot create consumer: %s", errstr);
        goto error; /* on failure the conf is still ours to free */
    }
    rd_kafka_poll_set_consumer(pl->rk);

    rd_kafka_topic_partition_list_t *topics =
        rd_kafka_topic_partition_list_new((int)cfg->n_topics);
    for (size_t i = 0; i < cfg->n_topics; i++)
        rd_kafka_topic_partition_list_add(topics, cfg->topics[i],
                                          RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t e = rd_kafka_subscribe(pl->rk, topics);
    rd_kafka_topic_partition_list_destroy(topics);
    if (e) {
        snprintf(err, errlen, "cannot subscribe: %s", rd_kafka_err2str(e));
        return -1;
    }

    if (pipe2(pl->wake_fd, O_NONBLOCK | O_CLOEXEC) != 0) {
        snprintf(err, errlen, "pipe: %s", strerror(errno));
        return -1;
    }
    pl->queue = rd_kafka_queue_get_consumer(pl->rk);
    rd_kafka_queue_io_event_enable(pl->queue, pl->wake_fd[1], "1", 1);
    sd_event_add_io(pl->host->ev, &pl->wake_src, pl->wake_fd[0], EPOLLIN,
                    on_wake, pl);
    sd_event_add_defer(pl->host->ev, &pl->defer_src, on_defer, pl);
    sd_event_source_set_enabled(pl->defer_src, SD_EVENT_ONESHOT);
    sd_event_add_post(pl->host->ev, &pl->post_src, on_post, pl);
    sd_event_source_set_enabled(pl->post_src, SD_EVENT_OFF);

    char ms[32];
    size_t ms_len = sizeof ms;
    long long commit_ms = 5000; /* librdkafka's default */
    if (rd_kafka_conf_get(rd_kafka_conf(pl->rk), "auto.commit.interval.ms", ms,
                          &ms_len) == RD_KAFKA_CONF_OK)
        commit_ms = strtoll(ms, NULL, 10);
    if (commit_ms <= 0)
        commit_ms = 5000;
    pl->recommit_ms = commit_ms * 10;
    sd_event_add_time_relative(pl->host->ev, &pl->recommit_src, CLOCK_MONOTONIC,
                               (uint64_t)pl->recommit_ms * 1000, 0,
                               on_recommit_timer, pl);
    return 0;

error:
    rd_kafka_conf_destroy(conf);
    return -1;
}

void kafka_pipeline_close(kh_pipeline_rt *pl, int timeout_ms) {
    pl->recommit_src = sd_event_source_disable_unref(pl->recommit_src);
    kafka_stats_free(pl->kstats);
    pl->kstats = NULL;
    if (!pl->rk)
        return;
    int64_t deadline_ms = kh_now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    pl->closing = true;
    pl->close_deadline_ms = deadline_ms;
    /* Leaves the group; the revoke callback commits what is acked. The
     * close runs in librdkafka's background and its callbacks are served
     * here, bounded: rd_kafka_consumer_close can block as long as the
     * session when the broker is gone. Past the bound, the handle is
     * destroyed without a close: the group then expires the member. */
    rd_kafka_queue_t *q = rd_kafka_queue_new(pl->rk);
    rd_kafka_error_t *error = rd_kafka_consumer_close_queue(pl->rk, q);
    bool closed = false;
    if (error) {
        klog_warn("pipeline=%s leaving the group: %s", pl->cfg->name,
                  rd_kafka_error_string(error));
        rd_kafka_error_destroy(error);
    } else {
        /* Served as events, as rd_kafka_consumer_close serves it: the
         * callback server asserts on ops it cannot pass to a callback
         * (seen: rdkafka_queue.c:516 res != RD_KAFKA_OP_RES_PASS when
         * SIGTERM came right after an assignment). A rebalance event goes
         * to on_rebalance; anything else is dropped. */
        while (!(closed = rd_kafka_consumer_closed(pl->rk))) {
            int64_t left = deadline_ms - kh_now_ms();
            if (left <= 0)
                break;
            rd_kafka_event_t *ev =
                rd_kafka_queue_poll(q, left < 50 ? (int)left : 50);
            if (!ev)
                continue;
            if (rd_kafka_event_type(ev) == RD_KAFKA_EVENT_REBALANCE)
                on_rebalance(pl->rk, rd_kafka_event_error(ev),
                             rd_kafka_event_topic_partition_list(ev), pl);
            rd_kafka_event_destroy(ev);
        }
        if (!closed)
            klog_warn("pipeline=%s did not leave the group within %d ms "
                      "(broker unreachable?); closing without it",
                      pl->cfg->name, timeout_ms);
    }
    rd_kafka_queue_destroy(q);
    for (size_t i = 0; i < pl->n_parts; i++) {
        part_drop_pending(pl->parts[i]);
        part_drop_kept(pl->parts[i]);
    }
    if (pl->queue) {
        rd_kafka_queue_io_event_enable(pl->queue, -1, NULL, 0);
        rd_kafka_queue_destroy(pl->queue);
        pl->queue = NULL;
    }
    int64_t left = deadline_ms - kh_now_ms();
    destroy_bounded(pl, closed ? 0 : RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE,
                    left > 500 ? left : 500);
    kafka_conn_forget(pl->rk);
    pl->rk = NULL;
    pl->wake_src = sd_event_source_disable_unref(pl->wake_src);
    pl->defer_src = sd_event_source_disable_unref(pl->defer_src);
    pl->post_src = sd_event_source_disable_unref(pl->post_src);
    for (int i = 0; i < 2; i++)
        if (pl->wake_fd[i] >= 0)
            close(pl->wake_fd[i]);
    pl->wake_fd[0] = pl->wake_fd[1] = -1;
}
