/*
 * swap: a plugin swap of one pipeline, while consumption runs.
 *
 * A plugin swap is transactional. The next generation of workers
 * (supervisor.c, pl->next) starts on a fresh snapshot of the new plugin
 * while the current one keeps serving. Only when every new worker's init
 * succeeded do partitions move, one at a time: the old owner gets REVOKE
 * (its on_revoke can ack), its in-flight work drains, the partition
 * rewinds to acked + 1 (partition.c) and the new owner gets it. If a new
 * worker fails to start, the swap is abandoned and nothing moved. If the
 * new workers crash more than reload_max_crashes times within
 * reload_probation_ms after the cutover, the same procedure brings the
 * previous plugin back. With reload_strategy = canary, one partition moves
 * first and the rest follow once it passed its probation. The consumer
 * group never notices.
 *
 * Calls the supervisor (generations), dispatch (hand-over events and the
 * drain) and partition.c. reload.c starts swaps; the pipeline passes the
 * new generation's READY and deaths in; the host's tick drives time.
 */
#define _GNU_SOURCE
#include "swap.h"
#include "dispatch.h"
#include "drain.h"
#include "host.h"
#include "log.h"
#include "pipeline.h"
#include "plugin_loader.h"
#include "supervisor.h"

#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define KH_SWAP_START_TIMEOUT_MS 30000
#define KH_HANDOVER_DRAIN_MAX_MS 5000

typedef struct kh_swap {
    /* The new generation (pl->next, the supervisor's) and its config. */
    const kh_pipeline *cfg;
    int ready;
    bool cut; /* every new worker was ready: the cutover began */
    char *snapshot;
    struct stat plugin_stat;
    int64_t deadline_ms;
    bool is_rollback;
    bool canary; /* one partition moved, the rest waiting */
    kh_part *canary_part;
    /* After the cutover: the probation window and what to go back to. */
    bool probation;
    int64_t probation_until_ms;
    int crashes;
    bool rollback_due;
    const kh_pipeline *prev_cfg;
    char *prev_snapshot;
    struct stat prev_stat;
    char prev_version[64];
} kh_swap;

static void finish_cutover(kh_pipeline_rt *pl);

/* The outcome of the swap a reload began (pl->swap_outcome, written here
 * only). A rollback is not a reload's: it leaves the outcome alone. */
__attribute__((format(printf, 3, 4))) static void
set_outcome(kh_pipeline_rt *pl, kh_outcome o, const char *fmt, ...) {
    kh_swap *r = pl->swap;
    if ((r && r->is_rollback) || pl->swap_outcome != KH_OUTCOME_PENDING)
        return;
    pl->swap_outcome = o;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pl->swap_why, sizeof pl->swap_why, fmt, ap);
    va_end(ap);
}

static void hand_over(kh_pipeline_rt *pl, kh_part **parts, size_t n,
                      kh_worker *ws, int n_ws, const char *why);
static size_t owned_by(kh_pipeline_rt *pl, kh_worker *ws, int n_ws,
                       kh_part ***out);
static kh_worker *least_loaded(kh_worker *ws, int n);

void swap_end_probation(kh_pipeline_rt *pl) {
    kh_swap *r = pl->swap;
    if (!r)
        return;
    if (r->prev_snapshot) {
        unlink(r->prev_snapshot);
        free(r->prev_snapshot);
    }
    free(r);
    pl->swap = NULL;
}

void swap_free(kh_pipeline_rt *pl) {
    kh_swap *r = pl->swap;
    if (!r)
        return;
    if (r->snapshot)
        unlink(r->snapshot);
    if (r->prev_snapshot)
        unlink(r->prev_snapshot);
    free(r->snapshot);
    free(r->prev_snapshot);
    free(r);
    pl->swap = NULL;
}

void swap_abort(kh_pipeline_rt *pl, const char *why) {
    kh_swap *r = pl->swap;
    if (!r)
        return;
    if (pl->next) {
        klog_error("pipeline=%s: %s ABANDONED before cutover: %s; the "
                   "running plugin (%s) keeps every partition",
                   pl->cfg->name, r->is_rollback ? "rollback" : "reload", why,
                   pl->plugin_version);
        set_outcome(pl, KH_OUTCOME_FAILED,
                    "plugin swap abandoned: %s; plugin %s keeps running", why,
                    pl->plugin_version);
        /* A canary's partition goes back before its workers go. */
        kh_part **back;
        size_t n = owned_by(pl, pl->next, pl->n_next, &back);
        hand_over(pl, back, n, pl->workers, pl->n_workers,
                  "swap abandoned: back to the running plugin");
        free(back);
        r->canary = false;
        drain_stop_workers(pl, pl->next, pl->n_next, kh_now_ms());
        supervisor_drop_next(pl);
        r->ready = 0;
        if (r->snapshot) {
            unlink(r->snapshot);
            free(r->snapshot);
            r->snapshot = NULL;
        }
    }
    if (!r->probation)
        swap_end_probation(pl);
}

static int start_candidates(kh_pipeline_rt *pl, kh_swap *r) {
    r->ready = 0;
    r->deadline_ms = kh_now_ms() + KH_SWAP_START_TIMEOUT_MS;
    return supervisor_start_next(pl, r->cfg, r->snapshot);
}

/* Begin a swap of pl's workers to `cfg`'s plugin (a reload), or back to
 * the previous one (a rollback: snapshot given). */
void swap_begin(kh_pipeline_rt *pl, const kh_pipeline *cfg, char *snapshot,
                const struct stat *st, bool is_rollback) {
    kh_swap *r = calloc(1, sizeof *r);
    if (!r)
        abort();
    r->cfg = cfg;
    r->is_rollback = is_rollback;
    if (!is_rollback) {
        pl->swap_outcome = KH_OUTCOME_PENDING;
        pl->swap_why[0] = '\0';
    }
    char err[1024];
    if (snapshot) {
        r->snapshot = snapshot;
        r->plugin_stat = *st;
    } else {
        stat(cfg->plugin_path, &r->plugin_stat);
        r->snapshot = plugin_snapshot(cfg->plugin_path, pl->host->snapshot_dir,
                                      err, sizeof err);
        if (!r->snapshot) {
            klog_error("pipeline=%s: reload ABANDONED: %s", pl->cfg->name, err);
            pl->swap_outcome = KH_OUTCOME_FAILED;
            snprintf(pl->swap_why, sizeof pl->swap_why,
                     "plugin swap abandoned: %.500s", err);
            free(r);
            return;
        }
    }
    pl->swap = r;
    klog_info("pipeline=%s: %s: starting %d new worker(s) on %s while the "
              "current ones keep serving",
              pl->cfg->name, is_rollback ? "rollback" : "plugin reload",
              cfg->workers, cfg->plugin_path);
    if (start_candidates(pl, r) != 0)
        swap_abort(pl, "could not start the new workers");
}

static kh_worker *least_loaded(kh_worker *ws, int n) {
    kh_worker *best = &ws[0];
    for (int i = 1; i < n; i++)
        if (ws[i].n_parts < best->n_parts)
            best = &ws[i];
    return best;
}

/* The assigned partitions owned by a worker of ws[0..n_ws). */
static size_t owned_by(kh_pipeline_rt *pl, kh_worker *ws, int n_ws,
                       kh_part ***out) {
    kh_part **parts = calloc(pl->n_parts + 1, sizeof *parts);
    if (!parts)
        abort();
    size_t n = 0;
    for (size_t i = 0; i < pl->n_parts; i++) {
        kh_part *part = pl->parts[i];
        if (part->assigned && part->owner >= ws && part->owner < ws + n_ws)
            parts[n++] = part;
    }
    *out = parts;
    return n;
}

/* Move partitions to the least loaded of ws: REVOKE to the old owners
 * (their on_revoke can still ack), one drain of what they have in flight
 * for all of them, bounded by KH_HANDOVER_DRAIN_MAX_MS in all (not per
 * partition: a swap of many partitions must not stall the loop for
 * minutes), then rewind each to acked + 1 and ASSIGN it. */
static void hand_over(kh_pipeline_rt *pl, kh_part **parts, size_t n,
                      kh_worker *ws, int n_ws, const char *why) {
    if (!n)
        return;
    for (size_t i = 0; i < n; i++) {
        dispatch_send_partition_event(parts[i], KH_F_REVOKE);
        part_drop_pending(parts[i]);
    }
    int bound = pl->cfg->shutdown_timeout_ms < KH_HANDOVER_DRAIN_MAX_MS
                    ? pl->cfg->shutdown_timeout_ms
                    : KH_HANDOVER_DRAIN_MAX_MS;
    drain_parts(pl, parts, n, kh_now_ms() + bound, false);
    for (size_t i = 0; i < n; i++) {
        kh_part *part = parts[i];
        kh_worker *from = part->owner;
        if (from && from->status)
            status_set_drain(from->status, false);
        part_rewind_all(part, why);
        if (from)
            from->n_parts--;
        kh_worker *to = least_loaded(ws, n_ws);
        to->n_parts++;
        part->owner = to;
        dispatch_send_partition_event(part, KH_F_ASSIGN);
        part_pause(part, KH_PAUSE_WORKER, to->state != KH_W_READY);
    }
}

/* Every new worker is ready (run from swap_tick, not from inside the
 * READY frame's handling): hand the partitions over. With
 * reload_strategy = canary, only the first one now. */
static void cutover(kh_pipeline_rt *pl) {
    kh_swap *r = pl->swap;
    for (int i = 0; i < pl->n_next; i++)
        pl->next[i].candidate = false; /* live now: crashes count */
    /* Applied: every new worker passed init. A later rollback in
     * probation is the log's and status's to tell. */
    set_outcome(pl, KH_OUTCOME_OK, "plugin %s %s ready on %d new worker(s)%s",
                pl->next[0].plugin_name, pl->next[0].plugin_version, pl->n_next,
                pl->cfg->reload_canary ? ", canary partition first" : "");
    if (pl->cfg->reload_canary && !r->is_rollback && !r->canary) {
        for (size_t i = 0; i < pl->n_parts; i++) {
            kh_part *part = pl->parts[i];
            if (!part->assigned)
                continue;
            hand_over(pl, &part, 1, pl->next, pl->n_next,
                      "canary: handed to the new plugin");
            r->canary = true;
            r->canary_part = part;
            r->probation = true;
            r->crashes = 0;
            r->probation_until_ms =
                kh_now_ms() + (pl->cfg->reload_probation_ms > 0
                                   ? pl->cfg->reload_probation_ms
                                   : 10000);
            klog_info("pipeline=%s canary: %s partition=%d now runs plugin "
                      "%s; the other partitions follow once it passes %d ms "
                      "of probation",
                      pl->cfg->name, part->topic, part->partition,
                      pl->next[0].plugin_version, pl->cfg->reload_probation_ms);
            dispatch_pump(pl);
            return;
        }
    }
    finish_cutover(pl);
}

/* Move every partition still on the old generation, stop it, and make the
 * new generation the pipeline's workers. */
static void finish_cutover(kh_pipeline_rt *pl) {
    kh_swap *r = pl->swap;
    kh_worker *old = pl->workers;
    int n_old = pl->n_workers;
    char old_version[64];
    snprintf(old_version, sizeof old_version, "%s", pl->plugin_version);
    int moved = r->canary ? 1 : 0;
    /* Every partition the old generation owns moves, the canary's too if
     * a rebalance gave it back to an old worker during its probation:
     * the old workers are freed below, so no partition may keep one. */
    kh_part **parts;
    size_t n = owned_by(pl, old, n_old, &parts);
    hand_over(pl, parts, n, pl->next, pl->n_next,
              "handed over to the reloaded plugin");
    free(parts);
    moved += (int)n;
    parts_store(pl->parts, pl->n_parts);
    /* The old generation runs terminate and exits. */
    drain_stop_workers(pl, pl->workers, pl->n_workers, kh_now_ms() + 5000);
    supervisor_promote_next(pl);

    const kh_pipeline *prev_cfg = pl->cfg;
    char *prev_snapshot = pl->snapshot;
    struct stat prev_stat = pl->plugin_stat;
    pl->cfg = r->cfg;
    pl->snapshot = r->snapshot;
    pl->plugin_stat = r->plugin_stat;
    r->snapshot = NULL;
    /* The restart-intensity window belongs to the new generation. */
    free(pl->restarts);
    pl->restarts =
        calloc((size_t)pl->cfg->max_restarts + 1, sizeof *pl->restarts);
    pl->n_restarts = 0;
    pl->reloads++;
    snprintf(pl->plugin_name, sizeof pl->plugin_name, "%s",
             pl->workers[0].plugin_name);
    snprintf(pl->plugin_version, sizeof pl->plugin_version, "%s",
             pl->workers[0].plugin_version);
    klog_info("pipeline=%s %s: plugin %s -> %s on %d partition(s), no "
              "rebalance",
              pl->cfg->name, r->is_rollback ? "ROLLED BACK" : "reloaded",
              old_version, pl->plugin_version, moved);
    if (!r->is_rollback && !r->canary && pl->cfg->reload_probation_ms > 0) {
        r->probation = true;
        r->probation_until_ms = kh_now_ms() + pl->cfg->reload_probation_ms;
        r->crashes = 0;
        r->prev_cfg = prev_cfg;
        r->prev_snapshot = prev_snapshot;
        r->prev_stat = prev_stat;
        snprintf(r->prev_version, sizeof r->prev_version, "%s", old_version);
    } else {
        unlink(prev_snapshot);
        free(prev_snapshot);
        free(r);
        pl->swap = NULL;
    }
    dispatch_pump(pl);
    /* The spares run the old plugin: stop them, and start new ones on the
     * new generation's plugin and config (spare_workers may have changed). */
    drain_stop_workers(pl, pl->spares, pl->n_spares, kh_now_ms() + 5000);
    supervisor_start_spares(pl);
}

void swap_worker_ready(kh_worker *w) {
    kh_pipeline_rt *pl = w->pl;
    kh_swap *r = pl->swap;
    if (!w->candidate || !r || !pl->next)
        return;
    r->ready++; /* the cutover follows from swap_tick */
}

void swap_worker_died(kh_worker *w, const char *how) {
    kh_pipeline_rt *pl = w->pl;
    kh_swap *r = pl->swap;
    if (!r || pl->stopping)
        return; /* a stopping pipeline drops its swap (swap_discard) */
    if (w->candidate) {
        char why[700];
        snprintf(why, sizeof why, "new worker %d %s%s%s", w->index, how,
                 w->init_error[0] ? ": " : "", w->init_error);
        swap_abort(pl, why); /* frees w: nothing may touch it after */
        return;
    }
    /* During a canary only the new generation is on probation. */
    bool on_probation =
        !r->canary || (w >= pl->next && w < pl->next + pl->n_next);
    if (r->probation && on_probation && kh_now_ms() <= r->probation_until_ms &&
        ++r->crashes > pl->cfg->reload_max_crashes && !r->rollback_due) {
        klog_error("pipeline=%s: the reloaded plugin crashed %d times "
                   "within reload_probation_ms=%d (more than "
                   "reload_max_crashes=%d): rolling back to %s",
                   pl->cfg->name, r->crashes, pl->cfg->reload_probation_ms,
                   pl->cfg->reload_max_crashes,
                   r->canary ? pl->plugin_version : r->prev_version);
        r->rollback_due = true; /* started from swap_tick, outside the
                                   child handler */
    }
}

bool swap_tick(kh_pipeline_rt *pl, int64_t now) {
    kh_swap *r = pl->swap;
    if (!r)
        return false;
    if (pl->next && !r->cut && r->ready == pl->n_next) {
        r->cut = true;
        cutover(pl); /* may end the swap (frees r) */
        return true;
    }
    if (pl->next && r->ready < pl->n_next && now > r->deadline_ms) {
        swap_abort(pl, "new workers were not ready within 30 s");
        return true;
    }
    if (r->canary && r->rollback_due) {
        /* The old generation still runs: swap_abort gives back what the
         * new one owns (the canary partition, unless a rebalance already
         * moved it to an old worker, which then keeps it untouched). */
        klog_error("pipeline=%s canary ROLLED BACK: plugin %s stays on every "
                   "partition",
                   pl->cfg->name, pl->plugin_version);
        r->probation = false;
        swap_abort(pl, "the canary crashed too often");
        return true; /* configurations may be free now */
    }
    if (r->canary && now > r->probation_until_ms) {
        klog_info("pipeline=%s canary passed its probation (%d crash(es)); "
                  "moving the other partitions",
                  pl->cfg->name, r->crashes);
        finish_cutover(pl);
        return true; /* configurations may be free now */
    }
    if (r->rollback_due) {
        const kh_pipeline *prev = r->prev_cfg;
        char *snap = r->prev_snapshot;
        struct stat st = r->prev_stat;
        r->prev_snapshot = NULL;
        swap_end_probation(pl);
        swap_begin(pl, prev, snap, &st, true);
        return false;
    }
    if (r->probation && !pl->next && now > r->probation_until_ms) {
        klog_info("pipeline=%s: reloaded plugin %s passed its probation "
                  "(%d crash(es) in %d ms)",
                  pl->cfg->name, pl->plugin_version, r->crashes,
                  pl->cfg->reload_probation_ms);
        swap_end_probation(pl);
        return true;
    }
    return false;
}

bool swap_references(const kh_pipeline_rt *pl, const kh_pipeline *lo,
                     const kh_pipeline *hi) {
    const kh_swap *r = pl->swap;
    return r && ((r->cfg >= lo && r->cfg < hi) ||
                 (r->prev_cfg >= lo && r->prev_cfg < hi));
}

void swap_discard(kh_pipeline_rt *pl) {
    if (!pl->swap && !pl->next)
        return;
    set_outcome(pl, KH_OUTCOME_FAILED,
                "plugin swap dropped: the pipeline stopped");
    if (pl->next) {
        klog_info("pipeline=%s: the plugin swap in progress is dropped: the "
                  "pipeline stopped",
                  pl->cfg->name);
        /* Partitions still on the new generation are being released. */
        for (size_t i = 0; i < pl->n_parts; i++) {
            kh_part *part = pl->parts[i];
            if (part->owner >= pl->next && part->owner < pl->next + pl->n_next)
                part->owner = NULL;
        }
        drain_stop_workers(pl, pl->next, pl->n_next, kh_now_ms());
        supervisor_drop_next(pl);
    }
    swap_free(pl);
}
