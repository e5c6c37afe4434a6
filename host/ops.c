/*
 * ops: the operator's steps (ops.h), shared by the control socket and the
 * HTTP admin API so that both behave alike and log alike. Calls reload.c
 * (reload, pipeline restart), partition.c (pause/resume), supervisor.c
 * (worker restart), notify.c (RELOADING=1) and watch.c; emits nothing:
 * its callers answer their clients.
 */
#define _GNU_SOURCE
#include "ops.h"

#include "dispatch.h"
#include "host.h"
#include "log.h"
#include "notify.h"
#include "partition.h"
#include "pipeline.h"
#include "reload.h"
#include "supervisor.h"
#include "watch.h"

#include <stdio.h>
#include <string.h>

static kh_pipeline_rt *find_pipeline(kh_host *host, const char *name) {
    for (size_t i = 0; i < host->n_pipelines; i++)
        if (!strcmp(host->pipelines[i]->cfg->name, name))
            return host->pipelines[i];
    return NULL;
}

static kh_ops_rc not_now(kh_host *host, char *msg, size_t len) {
    if (host->shutting_down || host->stop_requested) {
        snprintf(msg, len, "khost is shutting down");
        return KH_OPS_CONFLICT;
    }
    if (reload_busy(host)) {
        snprintf(msg, len,
                 "busy: a reload is still under way; try again once it "
                 "settled (khost status shows it)");
        return KH_OPS_CONFLICT;
    }
    return KH_OPS_OK;
}

kh_ops_rc ops_reload(kh_host *host, const char *who, kh_ops_wait *wait,
                     char *msg, size_t len) {
    kh_ops_rc rc = not_now(host, msg, len);
    if (rc != KH_OPS_OK)
        return rc;
    klog_info("reload requested %s", who);
    notify_reloading(); /* READY=1 follows from the host's tick */
    if (reload_apply(host, msg, len) != 0) {
        notify_reload_done(msg);
        return KH_OPS_REJECTED;
    }
    watch_arm(host); /* plugin paths may have changed */
    wait->kind = KH_OPS_WAIT_RELOAD;
    return KH_OPS_OK;
}

kh_ops_rc ops_restart_pipeline(kh_host *host, const char *pipeline,
                               const char *who, kh_ops_wait *wait, char *msg,
                               size_t len) {
    if (!find_pipeline(host, pipeline)) {
        snprintf(msg, len, "no pipeline named '%s'", pipeline);
        return KH_OPS_NOT_FOUND;
    }
    kh_ops_rc rc = not_now(host, msg, len);
    if (rc != KH_OPS_OK)
        return rc;
    klog_info("restart of pipeline=%s requested %s", pipeline, who);
    notify_reloading();
    int r = reload_restart(host, pipeline, msg, len);
    if (r != 0) {
        notify_reload_done(msg);
        return r == -2 ? KH_OPS_NOT_FOUND : KH_OPS_CONFLICT;
    }
    wait->kind = KH_OPS_WAIT_RELOAD;
    return KH_OPS_OK;
}

kh_ops_rc ops_pause(kh_host *host, const char *pipeline, const char *topic,
                    int32_t partition, bool pause, const char *who, char *msg,
                    size_t len) {
    kh_pipeline_rt *pl = find_pipeline(host, pipeline);
    if (!pl) {
        snprintf(msg, len, "no pipeline named '%s'", pipeline);
        return KH_OPS_NOT_FOUND;
    }
    kh_part *part = NULL;
    for (size_t i = 0; i < pl->n_parts && !part; i++)
        if (pl->parts[i]->partition == partition &&
            !strcmp(pl->parts[i]->topic, topic))
            part = pl->parts[i];
    if (!part || !part->assigned) {
        snprintf(msg, len,
                 "pipeline %s has no partition %s/%d assigned to this host",
                 pipeline, topic, (int)partition);
        return KH_OPS_NOT_FOUND;
    }
    if (host->shutting_down || host->stop_requested) {
        snprintf(msg, len, "khost is shutting down");
        return KH_OPS_CONFLICT;
    }
    if (!pause && pl->failed && part->held) {
        snprintf(msg, len,
                 "pipeline %s is FAILED: restart it (khost restart %s) "
                 "instead",
                 pipeline, pipeline);
        return KH_OPS_CONFLICT;
    }
    bool was = part->operator_paused;
    int64_t at = part->held_offset;
    bool released = part_operator_pause(part, pause);
    const char *base;
    if (pause)
        base = was ? "already paused" : "paused";
    else if (released)
        base = "resumed, released the hold";
    else
        base = was ? "resumed" : "was not paused";
    if (released)
        snprintf(msg, len,
                 "pipeline=%s topic=%s partition=%d: %s at offset=%lld (the "
                 "message goes to the handler again)",
                 pipeline, topic, (int)partition, base, (long long)at);
    else
        snprintf(msg, len, "pipeline=%s topic=%s partition=%d: %s", pipeline,
                 topic, (int)partition, base);
    klog_info("%s (%s %s)", msg, pause ? "pause" : "resume", who);
    if (!pause)
        dispatch_pump(pl); /* what waited goes out now, not at the tick */
    return KH_OPS_OK;
}

kh_ops_rc ops_restart_worker(kh_host *host, const char *pipeline, int worker,
                             const char *who, kh_ops_wait *wait, char *msg,
                             size_t len) {
    kh_pipeline_rt *pl = find_pipeline(host, pipeline);
    if (!pl) {
        snprintf(msg, len, "no pipeline named '%s'", pipeline);
        return KH_OPS_NOT_FOUND;
    }
    if (worker < 0 || worker >= pl->n_workers) {
        snprintf(msg, len, "pipeline %s has no worker %d (it has %d: 0..%d)",
                 pipeline, worker, pl->n_workers, pl->n_workers - 1);
        return KH_OPS_NOT_FOUND;
    }
    kh_ops_rc rc = not_now(host, msg, len);
    if (rc != KH_OPS_OK)
        return rc;
    if (pl->failed) {
        snprintf(msg, len, "pipeline %s is FAILED: restart it instead",
                 pipeline);
        return KH_OPS_CONFLICT;
    }
    if (pl->swap || pl->n_next) {
        snprintf(msg, len, "pipeline %s: a plugin swap is under way", pipeline);
        return KH_OPS_CONFLICT;
    }
    kh_worker *w = &pl->workers[worker];
    pid_t pid = w->pid;
    klog_info("restart of pipeline=%s worker=%d requested %s", pipeline, worker,
              who);
    if (supervisor_restart(w, msg, len) != 0)
        return KH_OPS_CONFLICT;
    wait->kind = KH_OPS_WAIT_WORKER;
    snprintf(wait->pipeline, sizeof wait->pipeline, "%s", pipeline);
    wait->worker = worker;
    wait->old_pid = pid;
    return KH_OPS_OK;
}

int ops_check(kh_host *host, const kh_ops_wait *wait, char *msg, size_t len) {
    if (wait->kind == KH_OPS_WAIT_RELOAD)
        return reload_outcome(host, msg, len);
    kh_pipeline_rt *pl = find_pipeline(host, wait->pipeline);
    if (!pl || wait->worker >= pl->n_workers) {
        snprintf(msg, len, "failed: pipeline %s or its worker %d is gone",
                 wait->pipeline, wait->worker);
        return -1;
    }
    kh_worker *w = &pl->workers[wait->worker];
    if (pl->failed) {
        snprintf(msg, len, "failed: pipeline %s FAILED", wait->pipeline);
        return -1;
    }
    if (w->state == KH_W_READY && w->pid && w->pid != wait->old_pid) {
        snprintf(msg, len,
                 "restarted: pipeline=%s worker=%d pid=%d ready (was pid=%d)",
                 wait->pipeline, wait->worker, (int)w->pid, (int)wait->old_pid);
        return 0;
    }
    snprintf(msg, len, "pipeline=%s worker=%d is %s", wait->pipeline,
             wait->worker,
             w->pid == wait->old_pid ? "stopping" : "starting again");
    return 1;
}
