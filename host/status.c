/*
 * status: the host's status as JSON, built with jansson from the host's
 * structures (pipelines, workers, partitions, the reload state and the
 * rings of recent crashes and reloads). Called by admin.c and http.c on
 * the loop's thread; calls reload_outcome (which may settle a reload) and
 * librdkafka's cached watermarks, nothing that waits.
 */
#define _GNU_SOURCE
#include "status.h"

#include "host.h"
#include "pipeline.h"
#include "reload.h"

#include <khost/plugin.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *const worker_states[KH_W_N_STATES] = {
    "stopped", "starting", "ready", "backoff", "stopping", "killed"};

void status_not_ready(kh_host *host, char *why, size_t len) {
    why[0] = '\0';
    if (host->shutting_down || host->stop_requested) {
        snprintf(why, len, "shutting down");
        return;
    }
    for (size_t i = 0; i < host->n_pipelines; i++) {
        kh_pipeline_rt *pl = host->pipelines[i];
        const char *name = pl->cfg->name;
        if (pl->failed) {
            snprintf(why, len, "pipeline %s: FAILED", name);
            return;
        }
        if (pl->swap || pl->n_next) {
            snprintf(why, len, "pipeline %s: plugin swap in progress", name);
            return;
        }
        for (int w = 0; w < pl->n_workers; w++) {
            if (pl->workers[w].state != KH_W_READY) {
                snprintf(why, len, "pipeline %s: worker %d not ready", name, w);
                return;
            }
        }
        size_t assigned = 0;
        for (size_t j = 0; j < pl->n_parts; j++)
            assigned += pl->parts[j] && pl->parts[j]->assigned;
        if (!assigned) {
            snprintf(why, len, "pipeline %s: no partition assigned", name);
            return;
        }
    }
}

const char *status_pipeline_state(const kh_pipeline_rt *pl) {
    return pipeline_state_name(pl);
}

/* A JSON string of any bytes: plugin texts (set_error, init errors,
 * names) need not be UTF-8, and jansson refuses what is not, which would
 * lose the whole status. Bytes of an invalid sequence become '?'. */
static json_t *jstr(const char *s) {
    json_t *j = json_string(s ? s : "");
    if (j)
        return j;
    size_t n = strlen(s);
    char *copy = malloc(n + 1);
    if (!copy)
        return json_string("");
    for (size_t i = 0; i <= n; i++)
        copy[i] = (unsigned char)s[i] < 0x80 ? s[i] : '?';
    j = json_string(copy);
    free(copy);
    return j;
}

static json_t *offset_or_null(int64_t v) {
    return v >= 0 ? json_integer(v) : json_null();
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static json_t *partition_json(kh_pipeline_rt *pl, kh_part *part) {
    int64_t low = -1, high = -1;
    if (!pl->rk || rd_kafka_get_watermark_offsets(
                       pl->rk, part->topic, part->partition, &low, &high) !=
                       RD_KAFKA_RESP_ERR_NO_ERROR)
        high = -1;
    int64_t pos = part->stored >= 0 ? part->stored : part->committed;
    json_t *reasons = json_array();
    for (size_t r = 0; r < KH_PAUSE_N_BITS; r++)
        if (part->pause & (1u << r))
            json_array_append_new(reasons, json_string(kh_pause_names[r]));
    if (part->held)
        json_array_append_new(reasons, json_string("held"));
    int owner = -1;
    for (int w = 0; w < pl->n_workers; w++)
        if (part->owner == &pl->workers[w])
            owner = w;
    return json_pack(
        "{s:o,s:i,s:b,s:o,s:o,s:o,s:o,s:o,s:o,s:I,s:I,s:b,s:o,s:o,s:o}",
        "topic", jstr(part->topic), "partition", (int)part->partition,
        "assigned", part->assigned, "owner",
        owner >= 0 ? json_integer(owner) : json_null(), "committed",
        offset_or_null(part->committed), "stored", offset_or_null(part->stored),
        "acked", offset_or_null(part->assigned ? part->off.acked : -1),
        "high_watermark", offset_or_null(high), "lag",
        high >= 0 && pos >= 0 ? json_integer(high > pos ? high - pos : 0)
                              : json_null(),
        "unresolved", (json_int_t)offsets_outstanding(&part->off), "pending",
        (json_int_t)part->pend_len, "paused", part->pause != 0 || part->held,
        "paused_reasons", reasons, "held_offset",
        part->held ? offset_or_null(part->held_offset) : json_null(),
        "fail_reason",
        part->fail_reason[0] ? jstr(part->fail_reason) : json_null());
}

static json_t *worker_json(kh_worker *w, const char *generation) {
    return json_pack(
        "{s:i,s:s,s:o,s:s,s:i,s:I,s:i,s:o}", "index", w->index, "generation",
        generation, "pid", w->pid ? json_integer(w->pid) : json_null(), "state",
        worker_states[w->state], "restarts", w->consecutive_crashes, "inflight",
        (json_int_t)w->inflight, "partitions", w->n_parts, "plugin_version",
        jstr(w->plugin_version));
}

static json_t *pipeline_json(kh_pipeline_rt *pl) {
    json_t *topics = json_array();
    for (size_t t = 0; t < pl->cfg->n_topics; t++)
        json_array_append_new(topics, jstr(pl->cfg->topics[t]));
    json_t *counters = json_pack(
        "{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "handled",
        (json_int_t)pl->handled, "acked", (json_int_t)pl->acked_count,
        "retried", (json_int_t)pl->retries, "failed", (json_int_t)pl->failures,
        "dead_lettered", (json_int_t)pl->dlq_written, "dead_letter_errors",
        (json_int_t)pl->dlq_errors, "skipped", (json_int_t)pl->skipped,
        "crashes", (json_int_t)pl->crashes, "restarts",
        (json_int_t)pl->restarts_total, "spare_takeovers",
        (json_int_t)pl->spare_takeovers, "rebalances",
        (json_int_t)pl->rebalances, "reloads", (json_int_t)pl->reloads);
    json_t *workers = json_array();
    for (int i = 0; i < pl->n_workers; i++)
        json_array_append_new(workers, worker_json(&pl->workers[i], "current"));
    for (int i = 0; i < pl->n_next; i++)
        json_array_append_new(workers, worker_json(&pl->next[i], "next"));
    json_t *spares = json_array();
    for (int i = 0; i < pl->n_spares; i++)
        json_array_append_new(spares, worker_json(&pl->spares[i], "spare"));
    json_t *parts = json_array();
    for (size_t j = 0; j < pl->n_parts; j++)
        if (pl->parts[j] && pl->parts[j]->assigned)
            json_array_append_new(parts, partition_json(pl, pl->parts[j]));
    json_t *crashes = json_array();
    uint64_t n = pl->n_recent_crashes;
    for (uint64_t k = 0; k < KH_RECENT && k < n; k++) {
        const kh_crash_rec *r = &pl->recent_crashes[(n - 1 - k) % KH_RECENT];
        json_array_append_new(
            crashes,
            json_pack("{s:f,s:i,s:o,s:o,s:o,s:o,s:o}", "time", r->time_s,
                      "worker", r->worker, "pid",
                      r->pid ? json_integer(r->pid) : json_null(), "how",
                      jstr(r->how), "topic",
                      r->topic[0] ? jstr(r->topic) : json_null(), "partition",
                      r->topic[0] ? json_integer(r->partition) : json_null(),
                      "offset", offset_or_null(r->offset)));
    }
    json_t *plugin =
        json_pack("{s:o,s:o,s:o}", "path", jstr(pl->cfg->plugin_path), "name",
                  jstr(pl->plugin_name), "version", jstr(pl->plugin_version));
    return json_pack("{s:o,s:o,s:o,s:s,s:o,s:i,s:i,s:o,s:o,s:o,s:o,s:o}",
                     "name", jstr(pl->cfg->name), "group", jstr(pl->cfg->group),
                     "topics", topics, "state", status_pipeline_state(pl),
                     "plugin", plugin, "workers_configured", pl->cfg->workers,
                     "spare_workers_configured", pl->cfg->spare_workers,
                     "counters", counters, "workers", workers, "spares", spares,
                     "partitions", parts, "recent_crashes", crashes);
}

json_t *status_json(kh_host *host) {
    char why[256];
    status_not_ready(host, why, sizeof why);
    double now = now_s();
    char abi[32], real[PATH_MAX];
    snprintf(abi, sizeof abi, "%d.%d", KHOST_ABI_MAJOR, KHOST_ABI_MINOR);
    const char *config =
        realpath(host->cfg->path, real) ? real : host->cfg->path;
    json_t *hostj = json_pack(
        "{s:s,s:s,s:i,s:o,s:f,s:f,s:s,s:b,s:o}", "version", KHOST_VERSION,
        "abi", abi, "pid", (int)getpid(), "config", jstr(config), "start_time",
        host->start_time_s, "uptime_seconds", now - host->start_time_s, "state",
        host->shutting_down ? "shutting down" : "running", "ready", !why[0],
        "not_ready_reason", why[0] ? jstr(why) : json_null());
    json_t *pls = json_array();
    for (size_t i = 0; i < host->n_pipelines; i++)
        json_array_append_new(pls, pipeline_json(host->pipelines[i]));
    json_t *last = json_null();
    kh_reload_state *st = &host->reload;
    if (st->gen) {
        char out[sizeof st->outcome];
        int rc = host->shutting_down ? (st->pending ? 1 : st->rc)
                                     : reload_outcome(host, out, sizeof out);
        if (host->shutting_down)
            snprintf(out, sizeof out, "%s", st->outcome);
        json_decref(last);
        last = json_pack(
            "{s:o,s:b,s:o,s:o}", "time",
            rc == 1 || !st->n_recent
                ? json_null()
                : json_real(st->recent[(st->n_recent - 1) % KH_RECENT].time_s),
            "pending", rc == 1, "ok",
            rc == 1 ? json_null() : json_boolean(rc == 0), "outcome",
            jstr(out));
    }
    json_t *recent = json_array();
    uint64_t n = st->n_recent;
    for (uint64_t k = 0; k < KH_RECENT && k < n; k++) {
        const kh_reload_rec *r = &st->recent[(n - 1 - k) % KH_RECENT];
        json_array_append_new(recent, json_pack("{s:f,s:b,s:o}", "time",
                                                r->time_s, "ok", r->ok,
                                                "outcome", jstr(r->outcome)));
    }
    return json_pack("{s:o,s:o,s:o,s:o}", "host", hostj, "pipelines", pls,
                     "last_reload", last, "recent_reloads", recent);
}
