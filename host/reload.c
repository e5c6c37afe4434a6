/*
 * reload: apply a changed config file while consumption runs.
 *
 * An invalid new file is rejected whole; the old one keeps running. For a
 * valid one, each pipeline is compared with its running self:
 *
 *   only policy keys changed     applied in place
 *   plugin, its config, workers  a plugin swap (swap.c): no rebalance
 *   topics, group, Kafka props   the pipeline restarts (a rebalance)
 *   added / removed              started / drained and stopped
 *
 * A FAILED pipeline (restart limit exceeded) is restarted by any reload,
 * changed or not: a reload is the operator saying "try again". `khost
 * restart NAME` restarts one pipeline the same way (reload_restart).
 *
 * The outcome: a reload is settled when each of its steps is (every
 * pipeline it started has all workers READY, or one died before READY;
 * every plugin swap it began reached its cutover, or was abandoned). Until
 * then host->reload.pending holds and no other reload begins; the control
 * socket's client waits (admin.c) and reload_outcome gives the answer.
 *
 * Configurations replaced by a reload are kept (host->retired) while a
 * pipeline or a swap still points into them, and freed when nothing does.
 * Calls pipeline (start, stop, free), swap (begin, abort) and the
 * supervisor (spares to refresh after an in-place change); nothing below
 * calls it.
 */
#define _GNU_SOURCE
#include "reload.h"
#include "host.h"
#include "log.h"
#include "partition.h"
#include "pipeline.h"
#include "plugin_loader.h"
#include "supervisor.h"
#include "swap.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void sweep_configs(kh_host *host);

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
           a->workers == b->workers && a->spare_workers == b->spare_workers &&
           a->tick_interval_ms == b->tick_interval_ms;
}

/* ---- config reload ---- */

static bool referenced(kh_host *host, const kh_config *c) {
    if (c == host->cfg)
        return true;
    for (size_t i = 0; i < host->n_pipelines; i++) {
        kh_pipeline_rt *pl = host->pipelines[i];
        const kh_pipeline *lo = c->pipelines,
                          *hi = c->pipelines + c->n_pipelines;
        if (pl->root == c || (pl->cfg >= lo && pl->cfg < hi) ||
            swap_references(pl, lo, hi))
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

void reload_tick(kh_host *host, int64_t now_ms) {
    bool released = false;
    for (size_t i = 0; i < host->n_pipelines; i++)
        released |= swap_tick(host->pipelines[i], now_ms);
    if (released)
        sweep_configs(host);
    if (host->reload.pending) {
        char msg[sizeof host->reload.outcome];
        reload_outcome(host, msg, sizeof msg); /* settles and logs it */
    }
}

bool reload_busy(const kh_host *host) {
    return host->reload.pending;
}

static void add_failure(kh_reload_state *st, const char *name,
                        const char *why) {
    size_t used = strlen(st->failed);
    snprintf(st->failed + used, sizeof st->failed - used, "%spipeline=%s: %s",
             used ? "; " : "", name, why);
}

/* The ring of settled reloads, newest at (n_recent - 1) % KH_RECENT. */
static void record(kh_host *host, bool ok, const char *outcome) {
    kh_reload_state *st = &host->reload;
    kh_reload_rec *r = &st->recent[st->n_recent++ % KH_RECENT];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    r->time_s = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
    r->ok = ok;
    snprintf(r->outcome, sizeof r->outcome, "%s", outcome);
}

int reload_outcome(kh_host *host, char *msg, size_t len) {
    kh_reload_state *st = &host->reload;
    if (!st->pending) {
        snprintf(msg, len, "%s", st->outcome);
        return st->rc;
    }
    char failed[sizeof st->failed];
    snprintf(failed, sizeof failed, "%s", st->failed);
    char ok[1024] = "";
    for (size_t i = 0; i < host->n_pipelines; i++) {
        kh_pipeline_rt *pl = host->pipelines[i];
        if (pl->reload_gen != st->gen)
            continue;
        const kh_outcome outs[2] = {
            pl->reload_steps & KH_STEP_SWAP ? pl->swap_outcome
                                            : KH_OUTCOME_NONE,
            pl->reload_steps & KH_STEP_START ? pl->start_outcome
                                             : KH_OUTCOME_NONE};
        const char *whys[2] = {pl->swap_why, pl->start_why};
        for (int k = 0; k < 2; k++) {
            if (outs[k] == KH_OUTCOME_PENDING) {
                snprintf(msg, len, "pending: pipeline=%s", pl->cfg->name);
                return 1;
            }
            char *dst = outs[k] == KH_OUTCOME_FAILED ? failed : ok;
            size_t cap =
                outs[k] == KH_OUTCOME_FAILED ? sizeof failed : sizeof ok;
            size_t used = strlen(dst);
            if (outs[k] == KH_OUTCOME_FAILED || outs[k] == KH_OUTCOME_OK)
                snprintf(dst + used, cap - used, "%spipeline=%s: %s",
                         used ? "; " : "", pl->cfg->name, whys[k]);
        }
    }
    st->pending = false;
    st->rc = failed[0] ? -1 : 0;
    *(failed[0] ? &st->n_failed : &st->n_applied) += 1;
    if (failed[0])
        snprintf(st->outcome, sizeof st->outcome, "failed: %s (%s)", failed,
                 st->applied);
    else
        snprintf(st->outcome, sizeof st->outcome, "applied: %s%s%s",
                 st->applied, ok[0] ? "; " : "", ok);
    if (st->rc)
        klog_error("reload %s", st->outcome);
    else
        klog_info("reload %s", st->outcome);
    record(host, st->rc == 0, st->outcome);
    snprintf(msg, len, "%s", st->outcome);
    return st->rc;
}

/* A new reload's bookkeeping. */
static void begin(kh_host *host) {
    kh_reload_state *st = &host->reload;
    st->gen++;
    st->pending = true;
    st->started_ms = kh_now_ms();
    st->applied[0] = st->failed[0] = st->outcome[0] = '\0';
}

/* Stop, free and start one pipeline again (restarted, or revived). The
 * new runtime, or NULL when it could not start (then why is noted). */
static kh_pipeline_rt *restart_pipeline(kh_host *host, kh_pipeline_rt *pl,
                                        const kh_config *root,
                                        const kh_pipeline *np) {
    pipeline_stop(pl);
    pipeline_free(pl);
    kh_pipeline_rt *fresh = pipeline_start(host, root, np);
    if (fresh) {
        fresh->reload_gen = host->reload.gen;
        fresh->reload_steps = KH_STEP_START;
    } else {
        add_failure(&host->reload, np->name,
                    "could not be started (see the log)");
    }
    return fresh;
}

int reload_restart(kh_host *host, const char *name, char *msg, size_t len) {
    if (host->shutting_down || host->stop_requested) {
        snprintf(msg, len, "rejected: khost is shutting down");
        return -1;
    }
    if (host->reload.pending) {
        snprintf(msg, len, "busy: a reload is still under way");
        return -1;
    }
    for (size_t i = 0; i < host->n_pipelines; i++) {
        kh_pipeline_rt *pl = host->pipelines[i];
        if (strcmp(pl->cfg->name, name))
            continue;
        const kh_pipeline *np = find_new(host->cfg, name);
        begin(host);
        klog_info("restart: pipeline=%s%s: stopping and starting it again "
                  "(a rebalance is expected)",
                  name, pl->failed ? " (FAILED)" : "");
        snprintf(host->reload.applied, sizeof host->reload.applied,
                 "pipeline %s restarted", name);
        host->pipelines[i] = restart_pipeline(host, pl, host->cfg, np);
        if (!host->pipelines[i]) {
            memmove(host->pipelines + i, host->pipelines + i + 1,
                    (host->n_pipelines - i - 1) * sizeof *host->pipelines);
            host->n_pipelines--;
        }
        sweep_configs(host);
        snprintf(msg, len, "%s", host->reload.applied);
        return 0;
    }
    snprintf(msg, len, "rejected: no pipeline named '%s'", name);
    return -2;
}

static int reject(kh_host *host, kh_config *next, kh_errors *errs, char *msg,
                  size_t len, const char *what) {
    for (size_t i = 0; i < errs->count; i++)
        klog_error("reload rejected: %s", errs->items[i]);
    /* The first error in the answer itself: an HTTP client sees no log. */
    snprintf(msg, len,
             "rejected: %s%s%.400s%s; the running configuration is "
             "unchanged",
             what, errs->count ? ": " : "", errs->count ? errs->items[0] : "",
             errs->count > 1 ? " (and more: see the log)" : "");
    klog_error("reload %s", msg);
    host->reload.n_rejected++;
    record(host, false, msg);
    errors_free(errs);
    config_free(next);
    free(next);
    return -1;
}

/* [host] log_level applies in place. The line about it is logged at info
 * while the more verbose of the two levels is in effect, so it shows if
 * either shows info. Workers started from now on inherit the new level;
 * running ones keep theirs. */
static void apply_log_level(const kh_config *cur, const kh_config *next) {
    int was = cur->log_level ? cur->log_level : KLOG_INFO;
    int now = next->log_level ? next->log_level : KLOG_INFO;
    if (was == now)
        return;
    const char *forced =
        klog_verbose() && now != KLOG_DEBUG ? " (-v keeps debug)" : "";
    if (now < was)
        klog_info("reload: log_level %s -> %s%s", klog_level_str(was),
                  klog_level_str(now), forced);
    klog_set_level(now);
    klog_export();
    if (now > was)
        klog_info("reload: log_level %s -> %s%s", klog_level_str(was),
                  klog_level_str(now), forced);
}

int reload_apply(kh_host *host, char *msg, size_t len) {
    if (host->shutting_down) {
        snprintf(msg, len, "rejected: khost is shutting down");
        return -1;
    }
    if (host->reload.pending) {
        snprintf(msg, len, "busy: a reload is still under way");
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
        return reject(host, next, &errs, msg, len, what);
    }
    for (size_t i = 0; i < next->warnings.count; i++)
        klog_warn("%s", next->warnings.items[i]);
    plugin_check_all(next, &errs);
    if (errs.count)
        return reject(host, next, &errs, msg, len, "a plugin cannot be loaded");
    if (strcmp(cur->brokers, next->brokers) ||
        cur->mock_partitions != next->mock_partitions ||
        cur->mock_seed != next->mock_seed ||
        cur->log_format != next->log_format ||
        strcmp(cur->http_listen ? cur->http_listen : "",
               next->http_listen ? next->http_listen : "") ||
        strcmp(cur->http_token ? cur->http_token : "",
               next->http_token ? next->http_token : ""))
        return reject(
            host, next, &errs, msg, len,
            "[host] or [http] changed, which needs a restart of khost");
    if (strcmp(cur->control_socket ? cur->control_socket : "",
               next->control_socket ? next->control_socket : ""))
        klog_warn("reload: [host] control_socket changed; the control socket "
                  "stays where it is until khost restarts");

    begin(host);
    int kept = 0, swapped = 0, restarted = 0, added = 0, removed = 0;
    kh_pipeline_rt **list = calloc(next->n_pipelines + 1, sizeof *list);
    size_t n = 0;
    for (size_t i = 0; i < host->n_pipelines; i++) {
        kh_pipeline_rt *pl = host->pipelines[i];
        const kh_pipeline *np = find_new(next, pl->cfg->name);
        if (!np || !kafka_same(pl->root, pl->cfg, next, np) || pl->failed) {
            klog_info("reload: pipeline=%s %s", pl->cfg->name,
                      !np          ? "removed: draining and stopping it"
                      : pl->failed ? "is FAILED: restarting it (a rebalance is "
                                     "expected)"
                                   : "changed topics, group or Kafka settings: "
                                     "restarting it (a rebalance is expected)");
            if (np) {
                kh_pipeline_rt *fresh = restart_pipeline(host, pl, next, np);
                if (fresh)
                    list[n++] = fresh;
                restarted++;
            } else {
                pipeline_stop(pl);
                pipeline_free(pl);
                removed++;
            }
            continue;
        }
        list[n++] = pl;
        if (!plugin_same(pl, np)) {
            /* Abandon a swap still starting; a new one replaces it. */
            swap_abort(pl, "a newer reload arrived");
            /* One in probation ends: the fresh swap replaces it. */
            swap_end_probation(pl);
            pl->root = next;
            pl->reload_gen = host->reload.gen;
            pl->reload_steps = KH_STEP_SWAP;
            swap_begin(pl, np, NULL, NULL, false);
            swapped++;
        } else {
            /* Policy only: swap the settings in place. */
            bool resize = np->max_restarts != pl->cfg->max_restarts;
            pl->root = next;
            pl->cfg = np;
            for (int w = 0; w < pl->n_workers; w++)
                pl->workers[w].cfg = np;
            for (int w = 0; w < pl->n_spares; w++)
                pl->spares[w].cfg = np;
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
        if (fresh) {
            fresh->reload_gen = host->reload.gen;
            fresh->reload_steps = KH_STEP_START;
            list[n++] = fresh;
        } else {
            add_failure(&host->reload, np->name,
                        "could not be started (see the log)");
        }
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
    apply_log_level(cur, next);
    if (cur->prefetch_budget_mb != next->prefetch_budget_mb) {
        klog_info("reload: prefetch_budget_mb %d -> %d",
                  cur->prefetch_budget_mb, next->prefetch_budget_mb);
        part_set_budget((size_t)next->prefetch_budget_mb << 20);
    }
    /* Every setting is in effect now, the log level too: spares started
     * with older limits, user or level are replaced at once, so that the
     * next restart finds one that serves as a new process would. */
    for (size_t i = 0; i < host->n_pipelines; i++)
        supervisor_refresh_spares(host->pipelines[i]);
    sweep_configs(host);
    snprintf(host->reload.applied, sizeof host->reload.applied,
             "%d pipeline(s) unchanged or updated in place, %d plugin "
             "swap(s), %d restarted, %d added, %d removed",
             kept, swapped, restarted, added, removed);
    klog_info("reload accepted: %s; waiting for the new workers",
              host->reload.applied);
    snprintf(msg, len, "accepted: %s", host->reload.applied);
    return 0;
}
