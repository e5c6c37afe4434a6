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
 * Configurations replaced by a reload are kept (host->retired) while a
 * pipeline or a swap still points into them, and freed when nothing does.
 * Calls pipeline (start, stop, free) and swap (begin, abort); nothing
 * below calls it.
 */
#define _GNU_SOURCE
#include "reload.h"
#include "host.h"
#include "log.h"
#include "pipeline.h"
#include "plugin_loader.h"
#include "swap.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
           a->workers == b->workers &&
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

void reload_tick(kh_host *host, int64_t now_ms) {
    bool released = false;
    for (size_t i = 0; i < host->n_pipelines; i++)
        released |= swap_tick(host->pipelines[i], now_ms);
    if (released)
        sweep_configs(host);
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
        cur->mock_seed != next->mock_seed ||
        cur->log_format != next->log_format)
        return reject(next, &errs, msg, len,
                      "[host] changed, which needs a restart of khost");
    if (strcmp(cur->control_socket ? cur->control_socket : "",
               next->control_socket ? next->control_socket : ""))
        klog_warn("reload: [host] control_socket changed; the control socket "
                  "stays where it is until khost restarts");

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
            swap_abort(pl, "a newer reload arrived");
            /* One in probation ends: the fresh swap replaces it. */
            swap_end_probation(pl);
            pl->root = next;
            swap_begin(pl, np, NULL, NULL, false);
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
    apply_log_level(cur, next);
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
