/*
 * pipeline: one pipeline's life: start (snapshot the plugin, join the
 * group, spawn workers), stop (drain, commit, terminate workers, leave the
 * group) and free. The host starts them at launch; a config reload starts,
 * stops and restarts them one by one.
 */
#define _GNU_SOURCE
#include "log.h"
#include "plugin_loader.h"
#include "runtime.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void pipeline_free(kh_pipeline_rt *pl) {
    kafka_pipeline_close(pl, pl->cfg->shutdown_timeout_ms);
    failure_pipeline_stop(pl, 0);
    for (size_t p = 0; p < pl->n_parts; p++)
        part_free(pl->parts[p]);
    free(pl->parts);
    for (int w = 0; w < pl->n_workers; w++)
        pl->workers[w].restart_timer =
            sd_event_source_disable_unref(pl->workers[w].restart_timer);
    free(pl->workers);
    free(pl->restarts);
    if (pl->snapshot)
        unlink(pl->snapshot); /* a removed or restarted pipeline's copy */
    free(pl->snapshot);
    reload_free(pl);
    free(pl);
}

kh_pipeline_rt *pipeline_start(kh_host *host, const kh_config *root,
                               const kh_pipeline *cfg) {
    kh_pipeline_rt *pl = calloc(1, sizeof *pl);
    if (!pl)
        return NULL;
    pl->host = host;
    pl->root = root;
    pl->cfg = cfg;
    pl->wake_fd[0] = pl->wake_fd[1] = -1;
    char err[1024];
    struct stat st;
    if (stat(cfg->plugin_path, &st) == 0)
        pl->plugin_stat = st;
    pl->snapshot =
        plugin_snapshot(cfg->plugin_path, host->snapshot_dir, err, sizeof err);
    if (!pl->snapshot) {
        klog_error("pipeline=%s: %s", cfg->name, err);
        goto fail;
    }
    if (kafka_pipeline_start(pl, err, sizeof err) != 0) {
        klog_error("pipeline=%s: %s", cfg->name, err);
        goto fail;
    }
    if (failure_pipeline_start(pl, err, sizeof err) != 0) {
        klog_error("pipeline=%s: %s", cfg->name, err);
        goto fail;
    }
    if (supervisor_start(pl) != 0) {
        klog_error("pipeline=%s: cannot start workers", cfg->name);
        goto fail;
    }
    klog_info("pipeline=%s: group=%s, %zu topic(s), %d worker(s), plugin %s",
              cfg->name, cfg->group, cfg->n_topics, cfg->workers,
              cfg->plugin_path);
    return pl;
fail:
    pl->stopping = true;
    supervisor_stop_all(pl, kh_now_ms() + 1000);
    pipeline_free(pl);
    return NULL;
}

/*
 * The stop order keeps every ack a plugin can still give (I1 holds
 * throughout: the commit comes last):
 *   1. stop fetching and dispatching; REVOKE each partition to its owner,
 *      so on_revoke, the plugin's last chance to ack, runs;
 *   2. wait (bounded) for the results of messages in flight; deferred ones
 *      do not hold this wait up, their acks come in step 3;
 *   3. SHUTDOWN: each worker runs tick and terminate, and the host reads
 *      every ack and result they send until they exit;
 *   4. commit what is acked, then leave the group, each bounded.
 * Every wait ends by shutdown_timeout_ms; terminate gets at least 1 s.
 */
void pipeline_stop(kh_pipeline_rt *pl) {
    if (!pl->rk)
        return;
    pl->stopping = true;
    reload_abort(pl, "the pipeline is stopping");
    int64_t deadline = kh_now_ms() + pl->cfg->shutdown_timeout_ms;
    for (size_t p = 0; p < pl->n_parts; p++) {
        kh_part *part = pl->parts[p];
        if (!part->assigned)
            continue;
        part_pause(part, KH_PAUSE_SHUTDOWN, true);
        part_drop_pending(part);
        dispatch_send_partition_event(part, KH_F_REVOKE);
    }
    dispatch_drain(pl, pl->parts, pl->n_parts, deadline, true);
    /* Dead-letter copies confirmed now still get their offsets acked
     * before the final commit. */
    if (pl->dlq) {
        int64_t left = deadline - kh_now_ms();
        rd_kafka_flush(pl->dlq, left > 0 ? (int)left : 0);
        parts_store(pl->parts, pl->n_parts);
    }
    int64_t stop_by =
        deadline > kh_now_ms() + 1000 ? deadline : kh_now_ms() + 1000;
    supervisor_stop_all(pl, stop_by);
    parts_store(pl->parts, pl->n_parts);
    /* The commit and the group leave get what is left, at least 1 s. */
    int64_t left = deadline - kh_now_ms();
    int bound = left > 1000 ? (int)left : 1000;
    kafka_commit_sync(pl, NULL, 0, bound);
    left = deadline - kh_now_ms();
    kafka_pipeline_close(pl, left > 1000 ? (int)left : 1000);
    failure_pipeline_stop(pl, 0);
    klog_info(
        "pipeline=%s stopped: handled=%llu crashes=%llu restarts=%llu "
        "failed=%llu dead-lettered=%llu skipped=%llu",
        pl->cfg->name, (unsigned long long)pl->handled,
        (unsigned long long)pl->crashes, (unsigned long long)pl->restarts_total,
        (unsigned long long)pl->failures, (unsigned long long)pl->dlq_written,
        (unsigned long long)pl->skipped);
}
