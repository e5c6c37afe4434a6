/*
 * pipeline: one pipeline's life: start (snapshot the plugin, join the
 * group, spawn workers), stop (drain, commit, terminate workers, leave the
 * group) and free. The host starts them at launch; a config reload starts,
 * stops and restarts them one by one.
 */
#define _GNU_SOURCE
#include "pipeline.h"
#include "dispatch.h"
#include "drain.h"
#include "failure.h"
#include "host.h"
#include "kafka.h"
#include "log.h"
#include "plugin_loader.h"
#include "supervisor.h"
#include "swap.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define KH_REVOKE_DRAIN_MAX_MS 5000

/* ---- what the consumer tells the pipeline ---- */

static void on_assigned(kh_pipeline_rt *pl, kh_part **parts, size_t n) {
    for (size_t i = 0; i < n; i++) {
        kh_part *part = parts[i];
        /* Failure memory is per assignment. */
        part->crash_offset = -1;
        part->crash_count = 0;
        part->isolate_through = -1;
        part->fail_offset = -1;
        part->owner = supervisor_assign_owner(pl);
        if (part->operator_paused) /* an operator's pause outlives it */
            part_pause(part, KH_PAUSE_OPERATOR, true);
        if (pl->failed)
            part_pause(part, KH_PAUSE_FAILED, true);
        else if (part->owner->state != KH_W_READY)
            part_pause(part, KH_PAUSE_WORKER, true);
        else
            dispatch_send_partition_event(part, KH_F_ASSIGN);
    }
}

static void on_revoking(kh_pipeline_rt *pl, kh_part **parts, size_t n) {
    for (size_t i = 0; i < n; i++)
        part_drop_pending(parts[i]);
    /* REVOKE goes out first so the plugin's on_revoke, its last chance to
     * ack deferred messages, runs while those acks can still count. */
    for (size_t i = 0; i < n; i++)
        dispatch_send_partition_event(parts[i], KH_F_REVOKE);
    int bound = pl->cfg->shutdown_timeout_ms < KH_REVOKE_DRAIN_MAX_MS
                    ? pl->cfg->shutdown_timeout_ms
                    : KH_REVOKE_DRAIN_MAX_MS;
    drain_parts(pl, parts, n, kh_now_ms() + bound, false);
    kafka_commit_sync(pl, parts, n, bound);
    for (size_t i = 0; i < n; i++) {
        if (parts[i]->owner)
            parts[i]->owner->n_parts--;
        parts[i]->owner = NULL;
    }
    drain_end(pl);
}

static void on_polled(kh_pipeline_rt *pl) {
    dispatch_pump(pl);
}

static const kh_consumer_events consumer_events = {
    .assigned = on_assigned,
    .revoking = on_revoking,
    .polled = on_polled,
};

/* ---- what the supervisor tells the pipeline ---- */

static void on_ready(kh_worker *w) {
    kh_pipeline_rt *pl = w->pl;
    if (w->candidate) {
        swap_worker_ready(w); /* the swap counts its new workers */
        return;
    }
    /* A canary's worker is not the pipeline's plugin yet. */
    if (w >= pl->workers && w < pl->workers + pl->n_workers) {
        snprintf(pl->plugin_name, sizeof pl->plugin_name, "%s", w->plugin_name);
        snprintf(pl->plugin_version, sizeof pl->plugin_version, "%s",
                 w->plugin_version);
    }
    for (size_t i = 0; i < pl->n_parts; i++) {
        kh_part *part = pl->parts[i];
        if (!part->assigned || part->owner != w)
            continue;
        dispatch_send_partition_event(part, KH_F_ASSIGN);
        part_pause(part, KH_PAUSE_WORKER, false);
    }
    int ready = 0;
    for (int i = 0; i < pl->n_workers; i++)
        ready += pl->workers[i].served;
    /* The spares start once every worker is READY: they never delay a
     * start, nor take a failing plugin's init attempts from it. */
    if (ready == pl->n_workers && !pl->spares && !pl->swap)
        supervisor_start_spares(pl);
    if (pl->start_outcome == KH_OUTCOME_PENDING) {
        if (ready == pl->n_workers) {
            pl->start_outcome = KH_OUTCOME_OK;
            snprintf(pl->start_why, sizeof pl->start_why,
                     "%d worker(s) ready: plugin %s %s", ready, pl->plugin_name,
                     pl->plugin_version);
        }
    }
    dispatch_pump(pl);
}

/* Every partition the dead worker owned goes back to its acked watermark
 * and waits for the replacement; the suspect counts towards poison. */
static void record_death(kh_worker *w, const char *how, const kh_part *part,
                         int64_t offset) {
    kh_pipeline_rt *pl = w->pl;
    kh_crash_rec *r = &pl->recent_crashes[pl->n_recent_crashes++ % KH_RECENT];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    r->time_s = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
    r->worker = w->index;
    r->pid = w->last_pid;
    snprintf(r->how, sizeof r->how, "%s", how);
    snprintf(r->topic, sizeof r->topic, "%s", part ? part->topic : "");
    r->partition = part ? part->partition : -1;
    r->offset = part ? offset : -1;
}

static void on_crashed(kh_worker *w, const kh_crash *c) {
    kh_pipeline_rt *pl = w->pl;
    if (w->served) /* a failed start is recorded by on_died */
        record_death(w, c->how, c->suspect, c->suspect_offset);
    for (size_t i = 0; i < pl->n_parts; i++) {
        kh_part *part = pl->parts[i];
        if (!part->assigned || part->owner != w)
            continue;
        /* Not paused: the rewind puts the messages the partition kept
         * back at the front of its queue (or, when it did not keep them
         * all, seeks, and librdkafka fetches again from the acked
         * watermark while the replacement starts), so its first message
         * is queued when it is READY (crash to resume, issue 14). The
         * queue's own marks bound what piles up meanwhile, and nothing is
         * dispatched to a worker that is not READY. */
        if (c->suspect_count > 1)
            part->isolate_through = offsets_last_dispatched(&part->off);
        part_rewind_all(part, "worker crashed");
    }
    if (c->suspect)
        failure_count_crash(pl, c->suspect, c->suspect_offset, c->suspect_count,
                            c->how);
    parts_store(pl->parts, pl->n_parts);
}

/* An operator restarted w: it answered everything it was sent before it
 * exited; deferred messages it never acked are delivered again, as not
 * attempted (the plugin gave them no answer, and no crash happened). */
static void on_restarted(kh_worker *w) {
    kh_pipeline_rt *pl = w->pl;
    for (size_t i = 0; i < pl->n_parts; i++) {
        kh_part *part = pl->parts[i];
        if (!part->assigned || part->owner != w)
            continue;
        part_pause(part, KH_PAUSE_WORKER, true);
        part_rewind_from(part, part->off.head_seq, KH_BUMP_NONE,
                         "worker restarted by an operator");
    }
    parts_store(pl->parts, pl->n_parts);
}

static void on_died(kh_worker *w, const char *how) {
    kh_pipeline_rt *pl = w->pl;
    /* A start still waiting for its workers fails at the first worker
     * that dies before READY: the one asking learns why now, while the
     * supervisor goes on retrying with its backoff. */
    if (!w->candidate && !w->served) {
        char what[200];
        snprintf(what, sizeof what, "failed to start: %.180s",
                 w->init_error[0] ? w->init_error : how);
        record_death(w, what, NULL, -1);
    }
    if (!w->candidate && !w->served &&
        pl->start_outcome == KH_OUTCOME_PENDING) {
        pl->start_outcome = KH_OUTCOME_FAILED;
        snprintf(pl->start_why, sizeof pl->start_why,
                 "worker=%d failed to start: %.480s (still retrying)", w->index,
                 w->init_error[0] ? w->init_error : how);
    }
    swap_worker_died(w, how); /* may free a candidate w */
}

/* The restart limit was exceeded: the pipeline stops consuming, loudly. */
static void on_exhausted(kh_pipeline_rt *pl) {
    if (pl->failed)
        return; /* another worker's death after the limit: said already */
    pl->failed = true;
    klog_error("pipeline=%s FAILED: more than %d worker restarts within %d s; "
               "its partitions stay paused and nothing past the acked "
               "offsets is committed (on_exhausted=%s)",
               pl->cfg->name, pl->cfg->max_restarts, pl->cfg->max_seconds,
               pl->cfg->on_exhausted == KH_ON_EXHAUSTED_EXIT ? "exit"
                                                             : "pause");
    for (size_t i = 0; i < pl->n_parts; i++)
        if (pl->parts[i]->assigned)
            part_pause(pl->parts[i], KH_PAUSE_FAILED, true);
    if (pl->start_outcome == KH_OUTCOME_PENDING ||
        pl->start_outcome == KH_OUTCOME_FAILED) {
        pl->start_outcome = KH_OUTCOME_FAILED;
        snprintf(pl->start_why, sizeof pl->start_why,
                 "FAILED: more than %d worker restarts within %d s",
                 pl->cfg->max_restarts, pl->cfg->max_seconds);
    }
    if (pl->cfg->on_exhausted == KH_ON_EXHAUSTED_EXIT)
        pl->host->hooks.request_exit(pl->host, 1);
}

static const kh_supervisor_events supervisor_events = {
    .read = dispatch_read,
    .pump = dispatch_pump,
    .ready = on_ready,
    .crashed = on_crashed,
    .died = on_died,
    .exhausted = on_exhausted,
    .restarted = on_restarted,
};

void pipeline_wire(kh_pipeline_rt *pl) {
    pl->consumer_events = &consumer_events;
    pl->supervisor_events = &supervisor_events;
}

void pipeline_free(kh_pipeline_rt *pl) {
    kafka_pipeline_close(pl, pl->cfg->shutdown_timeout_ms);
    failure_pipeline_stop(pl, 0);
    for (size_t p = 0; p < pl->n_parts; p++)
        part_free(pl->parts[p]);
    free(pl->parts);
    kafka_index_free(pl);
    supervisor_free(pl);
    free(pl->restarts);
    if (pl->snapshot)
        unlink(pl->snapshot); /* a removed or restarted pipeline's copy */
    free(pl->snapshot);
    swap_free(pl);
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
    pipeline_wire(pl);
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
    pl->start_outcome = KH_OUTCOME_PENDING;
    return pl;
fail:
    pl->stopping = true;
    drain_stop_workers(pl, pl->workers, pl->n_workers, kh_now_ms() + 1000);
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
    /* A swap in progress is not undone first: handing a canary partition
     * back would drain and rewind it, and its deferred acks, which come
     * from the new worker's tick and terminate, would be lost. Both
     * generations stop together below; the swap is dropped after. */
    int64_t deadline = kh_now_ms() + pl->cfg->shutdown_timeout_ms;
    for (size_t p = 0; p < pl->n_parts; p++) {
        kh_part *part = pl->parts[p];
        if (!part->assigned)
            continue;
        part_pause(part, KH_PAUSE_SHUTDOWN, true);
        part_drop_pending(part);
        dispatch_send_partition_event(part, KH_F_REVOKE);
    }
    drain_parts(pl, pl->parts, pl->n_parts, deadline, true);
    /* Dead-letter copies confirmed now still get their offsets acked
     * before the final commit. */
    if (pl->dlq) {
        int64_t left = deadline - kh_now_ms();
        rd_kafka_flush(pl->dlq, left > 0 ? (int)left : 0);
        parts_store(pl->parts, pl->n_parts);
    }
    int64_t stop_by =
        deadline > kh_now_ms() + 1000 ? deadline : kh_now_ms() + 1000;
    drain_stop_pipeline(pl, stop_by);
    parts_store(pl->parts, pl->n_parts);
    /* The commit and the group leave get what is left, at least 1 s. */
    int64_t left = deadline - kh_now_ms();
    int bound = left > 1000 ? (int)left : 1000;
    kafka_commit_sync(pl, NULL, 0, bound);
    swap_discard(pl);
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
