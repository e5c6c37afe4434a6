/*
 * reload: apply a changed config file while consumption runs.
 *
 * An invalid new file is rejected whole; the old one keeps running. For a
 * valid one, each pipeline is compared with its running self:
 *
 *   only policy keys changed     applied in place
 *   plugin, its config, workers  plugin swap, below: no rebalance
 *   topics, group, Kafka props   the pipeline restarts (a rebalance)
 *   added / removed              started / drained and stopped
 *
 * A plugin swap is transactional. New workers start on a fresh snapshot of
 * the new plugin while the old ones keep serving. Only when every new
 * worker's init succeeded do partitions move, one at a time: the old
 * owner gets REVOKE (its on_revoke can ack), its in-flight work drains,
 * the partition rewinds to acked + 1 and the new owner gets it. If a new
 * worker fails to start, the swap is abandoned and nothing moved. If the
 * new workers crash more than reload_max_crashes times within
 * reload_probation_ms after the cutover, the same procedure brings the
 * previous plugin back. The consumer group never notices.
 */
#define _GNU_SOURCE
#include "log.h"
#include "plugin_loader.h"
#include "runtime.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define KH_RELOAD_START_TIMEOUT_MS 30000
#define KH_HANDOVER_DRAIN_MAX_MS 5000

typedef struct kh_reload {
    /* Candidates: the new generation, not cut over yet. */
    const kh_pipeline *cfg;
    kh_worker *workers;
    int n;
    int ready;
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
} kh_reload;

static void sweep_configs(kh_host *host);

static void finish_cutover(kh_pipeline_rt *pl);
static void hand_over(kh_pipeline_rt *pl, kh_part *part, kh_worker *to,
                      const char *why);
static kh_worker *least_loaded(kh_worker *ws, int n);

static bool kv_same(const kh_kv *a, size_t na, const kh_kv *b, size_t nb) {
    if (na != nb)
        return false;
    for (size_t i = 0; i < na; i++) {
        const char *v = config_kv_get(b, nb, a[i].key);
        if (!v || strcmp(v, a[i].value))
            return false;
    }
    return true;
}

static bool kafka_same(const kh_config *oa, const kh_pipeline *a,
                       const kh_config *ob, const kh_pipeline *b) {
    if (a->n_topics != b->n_topics || strcmp(a->group, b->group))
        return false;
    for (size_t i = 0; i < a->n_topics; i++)
        if (strcmp(a->topics[i], b->topics[i]))
            return false;
    return kv_same(oa->kafka, oa->n_kafka, ob->kafka, ob->n_kafka) &&
           kv_same(a->kafka, a->n_kafka, b->kafka, b->n_kafka) &&
           a->on_failure == b->on_failure &&
           !strcmp(a->dlq_topic ? a->dlq_topic : "",
                   b->dlq_topic ? b->dlq_topic : "");
}

static bool file_changed(const struct stat *was, const char *path) {
    struct stat now;
    if (stat(path, &now) != 0)
        return true;
    return now.st_dev != was->st_dev || now.st_ino != was->st_ino ||
           now.st_size != was->st_size ||
           now.st_mtim.tv_sec != was->st_mtim.tv_sec ||
           now.st_mtim.tv_nsec != was->st_mtim.tv_nsec;
}

static bool plugin_same(kh_pipeline_rt *pl, const kh_pipeline *b) {
    const kh_pipeline *a = pl->cfg;
    return !strcmp(a->plugin_path, b->plugin_path) &&
           !file_changed(&pl->plugin_stat, b->plugin_path) &&
           kv_same(a->config, a->n_config, b->config, b->n_config) &&
           a->workers == b->workers &&
           a->tick_interval_ms == b->tick_interval_ms;
}

/* ---- the plugin swap ---- */

static void free_candidates(kh_reload *r) {
    for (int i = 0; r->workers && i < r->n; i++)
        r->workers[i].restart_timer =
            sd_event_source_disable_unref(r->workers[i].restart_timer);
    free(r->workers);
    r->workers = NULL;
    r->n = r->ready = 0;
}

static void end_probation(kh_pipeline_rt *pl) {
    kh_reload *r = pl->reload;
    if (r->prev_snapshot) {
        unlink(r->prev_snapshot);
        free(r->prev_snapshot);
    }
    free(r);
    pl->reload = NULL;
}

void reload_free(kh_pipeline_rt *pl) {
    kh_reload *r = pl->reload;
    if (!r)
        return;
    free_candidates(r);
    if (r->snapshot)
        unlink(r->snapshot);
    if (r->prev_snapshot)
        unlink(r->prev_snapshot);
    free(r->snapshot);
    free(r->prev_snapshot);
    free(r);
    pl->reload = NULL;
}

void reload_abort(kh_pipeline_rt *pl, const char *why) {
    kh_reload *r = pl->reload;
    if (!r)
        return;
    if (r->workers) {
        klog_error("pipeline=%s: %s ABANDONED before cutover: %s; the "
                   "running plugin (%s) keeps every partition",
                   pl->cfg->name, r->is_rollback ? "rollback" : "reload", why,
                   pl->plugin_version);
        /* A canary's partition goes back before its workers go. */
        for (size_t i = 0; i < pl->n_parts; i++) {
            kh_part *part = pl->parts[i];
            if (part->assigned && part->owner >= r->workers &&
                part->owner < r->workers + r->n)
                hand_over(pl, part, least_loaded(pl->workers, pl->n_workers),
                          "swap abandoned: back to the running plugin");
        }
        r->canary = false;
        supervisor_stop_workers(pl, r->workers, r->n, kh_now_ms());
        free_candidates(r);
        if (r->snapshot) {
            unlink(r->snapshot);
            free(r->snapshot);
            r->snapshot = NULL;
        }
    }
    if (!r->probation)
        end_probation(pl);
}

static int start_candidates(kh_pipeline_rt *pl, kh_reload *r) {
    r->workers = calloc((size_t)r->cfg->workers, sizeof *r->workers);
    if (!r->workers)
        return -1;
    r->n = r->cfg->workers;
    r->ready = 0;
    r->deadline_ms = kh_now_ms() + KH_RELOAD_START_TIMEOUT_MS;
    for (int i = 0; i < r->n; i++) {
        kh_worker *w = &r->workers[i];
        w->pl = pl;
        w->cfg = r->cfg;
        w->plugin_path = r->snapshot;
        w->candidate = true;
        w->index = i;
        w->conn.fd = -1;
        if (supervisor_spawn(w) != 0)
            return -1;
    }
    return 0;
}

/* Begin a swap of pl's workers to `cfg`'s plugin (a reload), or back to
 * the previous one (a rollback: snapshot given). */
static void begin_swap(kh_pipeline_rt *pl, const kh_pipeline *cfg,
                       char *snapshot, const struct stat *st,
                       bool is_rollback) {
    kh_reload *r = calloc(1, sizeof *r);
    if (!r)
        abort();
    r->cfg = cfg;
    r->is_rollback = is_rollback;
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
            free(r);
            return;
        }
    }
    pl->reload = r;
    klog_info("pipeline=%s: %s: starting %d new worker(s) on %s while the "
              "current ones keep serving",
              pl->cfg->name, is_rollback ? "rollback" : "plugin reload",
              cfg->workers, cfg->plugin_path);
    if (start_candidates(pl, r) != 0)
        reload_abort(pl, "could not start the new workers");
}

static kh_worker *least_loaded(kh_worker *ws, int n) {
    kh_worker *best = &ws[0];
    for (int i = 1; i < n; i++)
        if (ws[i].n_parts < best->n_parts)
            best = &ws[i];
    return best;
}

kh_worker *reload_workers(kh_pipeline_rt *pl, int *n) {
    kh_reload *r = pl->reload;
    *n = r && r->workers ? r->n : 0;
    return *n ? r->workers : NULL;
}

/* Move one partition to `to`: REVOKE to the old owner (its on_revoke can
 * still ack), drain what it has in flight, rewind to acked + 1, ASSIGN. */
static void hand_over(kh_pipeline_rt *pl, kh_part *part, kh_worker *to,
                      const char *why) {
    kh_worker *from = part->owner;
    dispatch_send_partition_event(part, KH_F_REVOKE);
    part_drop_pending(part);
    int bound = pl->cfg->shutdown_timeout_ms < KH_HANDOVER_DRAIN_MAX_MS
                    ? pl->cfg->shutdown_timeout_ms
                    : KH_HANDOVER_DRAIN_MAX_MS;
    dispatch_drain(pl, &part, 1, kh_now_ms() + bound, false);
    if (from && from->status)
        status_set_drain(from->status, false);
    part_rewind_all(part, why);
    if (from)
        from->n_parts--;
    to->n_parts++;
    part->owner = to;
    dispatch_send_partition_event(part, KH_F_ASSIGN);
    part_pause(part, KH_PAUSE_WORKER, to->state != KH_W_READY);
}

/* Every candidate is ready: hand the partitions over, one at a time. With
 * reload_strategy = canary, only the first one now (see reload_tick). */
static void cutover(kh_pipeline_rt *pl) {
    kh_reload *r = pl->reload;
    for (int i = 0; i < r->n; i++)
        r->workers[i].candidate = false; /* live now: crashes count */
    if (pl->cfg->reload_canary && !r->is_rollback && !r->canary) {
        for (size_t i = 0; i < pl->n_parts; i++) {
            kh_part *part = pl->parts[i];
            if (!part->assigned)
                continue;
            hand_over(pl, part, least_loaded(r->workers, r->n),
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
                      r->workers[0].plugin_version,
                      pl->cfg->reload_probation_ms);
            dispatch_pump(pl);
            return;
        }
    }
    finish_cutover(pl);
}

/* Move every partition still on the old generation, stop it, and make the
 * new generation the pipeline's workers. */
static void finish_cutover(kh_pipeline_rt *pl) {
    kh_reload *r = pl->reload;
    kh_worker *old = pl->workers;
    int n_old = pl->n_workers;
    char old_version[64];
    snprintf(old_version, sizeof old_version, "%s", pl->plugin_version);
    int moved = r->canary ? 1 : 0;
    /* Every partition the old generation owns moves, the canary's too if
     * a rebalance gave it back to an old worker during its probation:
     * the old workers are freed below, so no partition may keep one. */
    for (size_t i = 0; i < pl->n_parts; i++) {
        kh_part *part = pl->parts[i];
        if (!part->assigned || part->owner < old || part->owner >= old + n_old)
            continue;
        hand_over(pl, part, least_loaded(r->workers, r->n),
                  "handed over to the reloaded plugin");
        moved++;
    }
    parts_store(pl->parts, pl->n_parts);
    /* The old generation runs terminate and exits. */
    supervisor_stop_workers(pl, old, n_old, kh_now_ms() + 5000);
    for (int i = 0; i < n_old; i++)
        old[i].restart_timer =
            sd_event_source_disable_unref(old[i].restart_timer);
    free(old);
    pl->workers = r->workers;
    pl->n_workers = r->n;
    r->workers = NULL;
    r->n = 0;

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
        pl->reload = NULL;
    }
    dispatch_pump(pl);
}

void reload_worker_ready(kh_worker *w) {
    kh_pipeline_rt *pl = w->pl;
    kh_reload *r = pl->reload;
    if (!w->candidate || !r || !r->workers)
        return;
    if (++r->ready == r->n)
        cutover(pl);
}

void reload_worker_died(kh_worker *w, const char *how) {
    kh_pipeline_rt *pl = w->pl;
    kh_reload *r = pl->reload;
    if (!r)
        return;
    if (w->candidate) {
        char why[700];
        snprintf(why, sizeof why, "new worker %d %s%s%s", w->index, how,
                 w->init_error[0] ? ": " : "", w->init_error);
        reload_abort(pl, why); /* frees w: nothing may touch it after */
        return;
    }
    /* During a canary only the new generation is on probation. */
    bool on_probation =
        !r->canary || (w >= r->workers && w < r->workers + r->n);
    if (r->probation && on_probation && kh_now_ms() <= r->probation_until_ms &&
        ++r->crashes > pl->cfg->reload_max_crashes && !r->rollback_due) {
        klog_error("pipeline=%s: the reloaded plugin crashed %d times "
                   "within reload_probation_ms=%d (more than "
                   "reload_max_crashes=%d): rolling back to %s",
                   pl->cfg->name, r->crashes, pl->cfg->reload_probation_ms,
                   pl->cfg->reload_max_crashes,
                   r->canary ? pl->plugin_version : r->prev_version);
        r->rollback_due = true; /* started from reload_tick, outside the
                                   child handler */
    }
}

void reload_tick(kh_pipeline_rt *pl, int64_t now) {
    kh_reload *r = pl->reload;
    if (!r)
        return;
    if (r->workers && now > r->deadline_ms) {
        reload_abort(pl, "new workers were not ready within 30 s");
        return;
    }
    if (r->canary && r->rollback_due) {
        /* The old generation still runs: give the partition back. */
        kh_part *part = r->canary_part;
        if (part->assigned && part->owner && part->owner->pl == pl)
            hand_over(pl, part, least_loaded(pl->workers, pl->n_workers),
                      "canary failed: back to the previous plugin");
        klog_error("pipeline=%s canary ROLLED BACK: plugin %s stays on every "
                   "partition",
                   pl->cfg->name, pl->plugin_version);
        r->probation = false;
        reload_abort(pl, "the canary crashed too often");
        sweep_configs(pl->host);
        return;
    }
    if (r->canary && now > r->probation_until_ms) {
        klog_info("pipeline=%s canary passed its probation (%d crash(es)); "
                  "moving the other partitions",
                  pl->cfg->name, r->crashes);
        finish_cutover(pl);
        sweep_configs(pl->host);
        return;
    }
    if (r->rollback_due) {
        const kh_pipeline *prev = r->prev_cfg;
        char *snap = r->prev_snapshot;
        struct stat st = r->prev_stat;
        r->prev_snapshot = NULL;
        end_probation(pl);
        begin_swap(pl, prev, snap, &st, true);
        return;
    }
    if (r->probation && !r->workers && now > r->probation_until_ms) {
        klog_info("pipeline=%s: reloaded plugin %s passed its probation "
                  "(%d crash(es) in %d ms)",
                  pl->cfg->name, pl->plugin_version, r->crashes,
                  pl->cfg->reload_probation_ms);
        end_probation(pl);
        sweep_configs(pl->host);
    }
}

/* ---- config reload ---- */

static bool referenced(kh_host *host, const kh_config *c) {
    if (c == host->cfg)
        return true;
    for (size_t i = 0; i < host->n_pipelines; i++) {
        kh_pipeline_rt *pl = host->pipelines[i];
        const kh_pipeline *lo = c->pipelines,
                          *hi = c->pipelines + c->n_pipelines;
        kh_reload *r = pl->reload;
        if (pl->root == c || (pl->cfg >= lo && pl->cfg < hi) ||
            (r && r->cfg >= lo && r->cfg < hi) ||
            (r && r->prev_cfg >= lo && r->prev_cfg < hi))
            return true;
    }
    return false;
}

/* Free configurations nothing points into any more. */
static void sweep_configs(kh_host *host) {
    size_t keep = 0;
    for (size_t i = 0; i < host->n_retired; i++) {
        if (referenced(host, host->retired[i])) {
            host->retired[keep++] = host->retired[i];
        } else {
            config_free(host->retired[i]);
            free(host->retired[i]);
        }
    }
    host->n_retired = keep;
}

static const kh_pipeline *find_new(const kh_config *c, const char *name) {
    for (size_t i = 0; i < c->n_pipelines; i++)
        if (!strcmp(c->pipelines[i].name, name))
            return &c->pipelines[i];
    return NULL;
}

static int reject(kh_config *next, kh_errors *errs, char *msg, size_t len,
                  const char *what) {
    for (size_t i = 0; i < errs->count; i++)
        klog_error("reload rejected: %s", errs->items[i]);
    snprintf(msg, len,
             "rejected: %s%s; the running configuration is "
             "unchanged",
             what, errs->count ? " (see the log for each error)" : "");
    klog_error("reload %s", msg);
    errors_free(errs);
    config_free(next);
    free(next);
    return -1;
}

int reload_apply(kh_host *host, char *msg, size_t len) {
    if (host->shutting_down) {
        snprintf(msg, len, "rejected: khost is shutting down");
        return -1;
    }
    const kh_config *cur = host->cfg;
    kh_config *next = calloc(1, sizeof *next);
    kh_errors errs = {0};
    if (!next)
        abort();
    klog_info("reload: reading %s", cur->path);
    if (config_load(cur->path, next, &errs) != 0) {
        char what[64];
        snprintf(what, sizeof what, "%zu error(s) in %s", errs.count,
                 cur->path);
        return reject(next, &errs, msg, len, what);
    }
    for (size_t i = 0; i < next->warnings.count; i++)
        klog_warn("%s", next->warnings.items[i]);
    plugin_check_all(next, &errs);
    if (errs.count)
        return reject(next, &errs, msg, len, "a plugin cannot be loaded");
    if (strcmp(cur->brokers, next->brokers) ||
        cur->mock_partitions != next->mock_partitions ||
        cur->mock_seed != next->mock_seed)
        return reject(next, &errs, msg, len,
                      "[host] changed, which needs a restart of khost");

    int kept = 0, swapped = 0, restarted = 0, added = 0, removed = 0;
    int failed_start = 0;
    kh_pipeline_rt **list = calloc(next->n_pipelines + 1, sizeof *list);
    size_t n = 0;
    for (size_t i = 0; i < host->n_pipelines; i++) {
        kh_pipeline_rt *pl = host->pipelines[i];
        const kh_pipeline *np = find_new(next, pl->cfg->name);
        if (!np || !kafka_same(pl->root, pl->cfg, next, np)) {
            klog_info("reload: pipeline=%s %s", pl->cfg->name,
                      np ? "changed topics, group or Kafka settings: "
                           "restarting it (a rebalance is expected)"
                         : "removed: draining and stopping it");
            pipeline_stop(pl);
            pipeline_free(pl);
            if (np) {
                kh_pipeline_rt *fresh = pipeline_start(host, next, np);
                if (fresh)
                    list[n++] = fresh;
                else
                    failed_start++;
                restarted++;
            } else {
                removed++;
            }
            continue;
        }
        list[n++] = pl;
        if (!plugin_same(pl, np)) {
            /* Abandon a swap still starting; a new one replaces it. */
            reload_abort(pl, "a newer reload arrived");
            if (pl->reload) /* in probation: keep it, fresh swap anyway */
                end_probation(pl);
            pl->root = next;
            begin_swap(pl, np, NULL, NULL, false);
            swapped++;
        } else {
            /* Policy only: swap the settings in place. */
            bool resize = np->max_restarts != pl->cfg->max_restarts;
            pl->root = next;
            pl->cfg = np;
            for (int w = 0; w < pl->n_workers; w++)
                pl->workers[w].cfg = np;
            if (resize) {
                free(pl->restarts);
                pl->restarts =
                    calloc((size_t)np->max_restarts + 1, sizeof *pl->restarts);
                pl->n_restarts = 0;
            }
            kept++;
        }
    }
    for (size_t i = 0; i < next->n_pipelines; i++) {
        const kh_pipeline *np = &next->pipelines[i];
        /* Only the new list: the old one holds pipelines freed above. */
        bool present = false;
        for (size_t j = 0; j < n && !present; j++)
            present = !strcmp(list[j]->cfg->name, np->name);
        if (present)
            continue;
        if (host->has_mock)
            for (size_t t = 0; t < np->n_topics; t++) {
                char err[256];
                mock_cluster_create_topic(&host->mock, np->topics[t],
                                          next->mock_partitions, err,
                                          sizeof err);
            }
        klog_info("reload: pipeline=%s added: starting it", np->name);
        kh_pipeline_rt *fresh = pipeline_start(host, next, np);
        if (fresh)
            list[n++] = fresh;
        else
            failed_start++;
        added++;
    }
    free(host->pipelines);
    host->pipelines = list;
    host->n_pipelines = n;
    /* Keep the old file's settings while anything still points into it. */
    host->retired =
        realloc(host->retired, (host->n_retired + 1) * sizeof *host->retired);
    host->retired[host->n_retired++] = (kh_config *)cur;
    host->cfg = next;
    sweep_configs(host);
    snprintf(msg, len,
             "applied%s: %d pipeline(s) unchanged or updated in place, %d "
             "plugin swap(s) started, %d restarted, %d added, %d removed%s",
             failed_start ? " WITH ERRORS" : "", kept, swapped, restarted,
             added, removed,
             failed_start ? "; some pipelines failed to start (see the log) "
                            "and are not running"
                          : "");
    klog_info("reload %s", msg);
    return 0;
}
