/*
 * drain: the host's one bounded wait. Rebalances, plugin swaps and the
 * shutdown must wait, inside an event handler, for workers to answer or to
 * exit; this is the only place that does, so there is one loop to get
 * right: it serves every worker of both generations (their results and
 * acks count), dead-letter reports, hang and init-timeout kills and the
 * exits of stopping workers, and it ends at its deadline, when its goal is
 * reached, or when the host's should_stop hook says so (a first stop
 * signal arrived).
 *
 * Calls dispatch (read what workers sent), the supervisor (SHUTDOWN, reap,
 * hang checks, kill) and failure (the DLQ poll); called by the pipeline
 * and the swap. Re-entrancy: frames read here can raise supervisor events
 * (READY: only counted by a swap; a crash: handled at once).
 */
#define _GNU_SOURCE
#include "drain.h"

#include "dispatch.h"
#include "failure.h"
#include "host.h"
#include "log.h"
#include "supervisor.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>

/* The wait itself. Workers of reap[0..n_reap) (every worker of both
 * generations with REAP_ALL) are reaped here as they exit (they are being
 * stopped); any other exit is left to the supervisor's handler in the
 * loop, so a crash is still a crash. */
#define REAP_ALL (-1)
static void drain_until(kh_pipeline_rt *pl,
                        bool (*reached)(kh_pipeline_rt *, void *), void *ud,
                        kh_worker *reap, int n_reap, int64_t deadline_ms) {
    for (;;) {
        /* The event loop's tick does not run during this wait: systemd's
         * watchdog pings come from here. The wait is bounded, so this
         * cannot hide a host that hangs for good. */
        if (pl->host->hooks.keepalive)
            pl->host->hooks.keepalive(pl->host);
        failure_poll(pl);
        /* The loop is not running while we wait here: a handler that
         * hangs now must still be killed on time (and named: its ledger
         * entry still exists). A killed worker stops counting as busy. */
        supervisor_check_hangs(pl, kh_now_ms());
        if (n_reap == REAP_ALL)
            for (int i = 0; i < pl_n_all_workers(pl); i++)
                supervisor_reap(pl_worker(pl, i));
        for (int i = 0; i < n_reap; i++)
            supervisor_reap(&reap[i]);
        int64_t left = deadline_ms - kh_now_ms();
        if (reached(pl, ud) || left <= 0 ||
            pl->host->hooks.should_stop(pl->host))
            return;
        /* Every worker of both generations: a pipeline may have 256, and
         * a swap runs two generations at once. */
        int total = pl_n_all_workers(pl);
        struct pollfd *fds = calloc((size_t)total + 1, sizeof *fds);
        kh_worker **who = calloc((size_t)total + 1, sizeof *who);
        if (!fds || !who)
            abort();
        int nfds = 0;
        for (int i = 0; i < total; i++) {
            kh_worker *w = pl_worker(pl, i);
            if (w->conn.fd < 0 ||
                (w->state != KH_W_READY && w->state != KH_W_STOPPING))
                continue;
            fds[nfds] = (struct pollfd){
                .fd = w->conn.fd,
                .events = POLLIN | (buf_pending(&w->conn.out) ? POLLOUT : 0)};
            who[nfds++] = w;
        }
        /* With no worker to hear from, dead-letter reports and exits
         * remain: check again soon. */
        int rc = poll(fds, (nfds_t)nfds, left < 10 ? (int)left : 10);
        bool failed = rc < 0 && errno != EINTR;
        for (int i = 0; rc > 0 && i < nfds; i++) {
            if (fds[i].revents & POLLOUT)
                conn_flush(&who[i]->conn);
            if (fds[i].revents & (POLLIN | POLLHUP | POLLERR))
                if (dispatch_read(who[i]) < 0)
                    supervisor_lost(who[i]); /* gone: stop waiting on it */
        }
        free(fds);
        free(who);
        if (failed)
            return;
    }
}

/* ---- answers of partitions ---- */

typedef struct parts_goal {
    kh_part **parts;
    size_t n;
    bool results_only;
} parts_goal;

static bool parts_settled(kh_pipeline_rt *pl, void *ud) {
    (void)pl;
    parts_goal *g = ud;
    for (size_t i = 0; i < g->n; i++) {
        kh_worker *w = g->parts[i]->owner;
        if ((part_unsettled(g->parts[i], g->results_only) && w &&
             (w->state == KH_W_READY || w->state == KH_W_STOPPING)) ||
            g->parts[i]->dlq_pending > 0)
            return false;
    }
    return true;
}

void drain_parts(kh_pipeline_rt *pl, kh_part **parts, size_t n,
                 int64_t deadline_ms, bool results_only) {
    /* Ask the owners to skip what they have not started: the wait is then
     * for the calls in progress, not for whole in-flight windows. */
    for (size_t i = 0; i < n; i++) {
        kh_worker *w = parts[i]->owner;
        if (w && w->status)
            status_set_drain(w->status, true);
    }
    parts_goal g = {.parts = parts, .n = n, .results_only = results_only};
    drain_until(pl, parts_settled, &g, NULL, 0, deadline_ms);
    parts_store(pl->parts, pl->n_parts);
}

void drain_end(kh_pipeline_rt *pl) {
    for (int i = 0; i < pl_n_all_workers(pl); i++)
        if (pl_worker(pl, i)->status)
            status_set_drain(pl_worker(pl, i)->status, false);
}

/* ---- exits of workers ---- */

typedef struct workers_goal {
    kh_worker *ws;
    int n;
} workers_goal;

static bool workers_gone(kh_pipeline_rt *pl, void *ud) {
    (void)pl;
    workers_goal *g = ud;
    for (int i = 0; i < g->n; i++)
        if (g->ws[i].pid)
            return false;
    return true;
}

static bool all_gone(kh_pipeline_rt *pl, void *ud) {
    (void)ud;
    for (int i = 0; i < pl_n_all_workers(pl); i++)
        if (pl_worker(pl, i)->pid)
            return false;
    return true;
}

void drain_stop_pipeline(kh_pipeline_rt *pl, int64_t deadline_ms) {
    for (int i = 0; i < pl_n_all_workers(pl); i++)
        supervisor_shutdown(pl_worker(pl, i));
    drain_until(pl, all_gone, NULL, NULL, REAP_ALL, deadline_ms);
    for (int i = 0; i < pl_n_all_workers(pl); i++)
        supervisor_kill_and_reap(pl_worker(pl, i), "did not stop in time");
}

void drain_stop_workers(kh_pipeline_rt *pl, kh_worker *ws, int n,
                        int64_t deadline_ms) {
    for (int i = 0; i < n; i++)
        supervisor_shutdown(&ws[i]);
    workers_goal g = {.ws = ws, .n = n};
    drain_until(pl, workers_gone, &g, ws, n, deadline_ms);
    for (int i = 0; i < n; i++)
        supervisor_kill_and_reap(&ws[i], "did not stop in time");
}
