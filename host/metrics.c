/*
 * metrics: writes the Prometheus text exposition (0.0.4) of a host into
 * a memory buffer (open_memstream). Every family is written whole, with
 * its # HELP and # TYPE, before the next one, as the format requires.
 * Reads the host's structures only; nothing it calls blocks:
 * rd_kafka_get_watermark_offsets reads librdkafka's cache of the last
 * fetch response, and /proc/PID/stat and statm are read for workers.
 * Calls supervisor/partition/pipeline structs (reading) and kafka's
 * librdkafka handle; nothing below calls it (http.c does).
 */
#define _GNU_SOURCE
#include "metrics.h"

#include "host.h"
#include "kafka_stats.h"
#include "partition.h"
#include "pipeline.h"

#include <khost/plugin.h>
#include <librdkafka/rdkafka.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void metrics_label_value(FILE *out, const char *v) {
    for (; v && *v; v++) {
        if (*v == '\\')
            fputs("\\\\", out);
        else if (*v == '"')
            fputs("\\\"", out);
        else if (*v == '\n')
            fputs("\\n", out);
        else
            fputc(*v, out);
    }
}

static void family(FILE *out, const char *name, const char *type,
                   const char *help) {
    fprintf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void label(FILE *out, const char *sep, const char *key,
                  const char *value) {
    fprintf(out, "%s%s=\"", sep, key);
    metrics_label_value(out, value);
    fputc('"', out);
}

/* ---- per pipeline ---- */

enum { C_U64, C_BOOL };
static const struct pipeline_metric {
    const char *name, *type, *help;
    size_t field; /* offset of a uint64_t, or of a bool for C_BOOL */
    int kind;
} pipeline_metrics[] = {
    {"khost_messages_handled_total", "counter",
     "Handler results received (acked, deferred, retried or failed).",
     offsetof(kh_pipeline_rt, handled), C_U64},
    {"khost_messages_acked_total", "counter",
     "Messages acked by a handler, at once or after deferring.",
     offsetof(kh_pipeline_rt, acked_count), C_U64},
    {"khost_messages_retried_total", "counter",
     "Handler answers asking for a retry.", offsetof(kh_pipeline_rt, retries),
     C_U64},
    {"khost_messages_failed_total", "counter",
     "Messages given to the failure policy (on_failure) after their "
     "attempts.",
     offsetof(kh_pipeline_rt, failures), C_U64},
    {"khost_dead_lettered_total", "counter",
     "Messages written to the dead-letter topic (delivery confirmed).",
     offsetof(kh_pipeline_rt, dlq_written), C_U64},
    {"khost_dead_letter_errors_total", "counter",
     "Dead-letter writes that failed (retried).",
     offsetof(kh_pipeline_rt, dlq_errors), C_U64},
    {"khost_skipped_total", "counter",
     "Failed messages skipped by on_failure = skip.",
     offsetof(kh_pipeline_rt, skipped), C_U64},
    {"khost_poison_messages_total", "counter",
     "Messages failed for crashing their worker poison_after times.",
     offsetof(kh_pipeline_rt, poison), C_U64},
    {"khost_worker_lies_total", "counter",
     "Workers killed for breaking the protocol.",
     offsetof(kh_pipeline_rt, lies), C_U64},
    {"khost_worker_restarts_total", "counter", "Worker processes restarted.",
     offsetof(kh_pipeline_rt, restarts_total), C_U64},
    {"khost_spare_takeovers_total", "counter",
     "Worker restarts served by a spare worker's process (spare_workers): "
     "no spawn, no init.",
     offsetof(kh_pipeline_rt, spare_takeovers), C_U64},
    {"khost_rebalances_total", "counter", "Consumer group rebalances seen.",
     offsetof(kh_pipeline_rt, rebalances), C_U64},
    {"khost_reloads_total", "counter", "Plugin swaps cut over by a reload.",
     offsetof(kh_pipeline_rt, reloads), C_U64},
    {"khost_deferred_acks_total", "counter",
     "Deferred messages acked later by the plugin (khost_ack).",
     offsetof(kh_pipeline_rt, deferred_acks), C_U64},
    {"khost_deferred_timeouts_total", "counter",
     "Deferred messages not acked within deferred_timeout_ms, retried.",
     offsetof(kh_pipeline_rt, deferred_timeouts), C_U64},
    {"khost_pipeline_failed", "gauge",
     "1 when the pipeline is FAILED (restart limit exceeded), else 0.",
     offsetof(kh_pipeline_rt, failed), C_BOOL},
};

static const char *const result_names[KH_RES_N] = {[KH_RES_ACK] = "ack",
                                                   [KH_RES_DEFERRED] =
                                                       "deferred",
                                                   [KH_RES_RETRY] = "retry",
                                                   [KH_RES_FAIL] = "fail"};
static const char *const cause_names[KH_CRASH_N] = {[KH_CRASH_SIGNAL] =
                                                        "signal",
                                                    [KH_CRASH_EXIT] = "exit",
                                                    [KH_CRASH_HANG] = "hang",
                                                    [KH_CRASH_LIE] = "lie"};
static const char *const state_names[] = {"running", "starting", "swapping",
                                          "failed",  "paused",   "stopping"};

/* A copy of `v`, a worker's to choose, with anything but printable ASCII
 * as '?': invalid UTF-8 or a control byte would make the whole exposition
 * unparsable. */
static void printable(char *dst, size_t len, const char *v) {
    size_t i = 0;
    for (; v[i] && i + 1 < len; i++)
        dst[i] = v[i] >= 0x20 && v[i] < 0x7f ? v[i] : '?';
    dst[i] = '\0';
}

/* A labelled counter per pipeline: one sample per name in names. */
static void write_labelled(FILE *out, kh_host *host, const char *name,
                           const char *help, const char *key,
                           const char *const *names, size_t n, size_t field) {
    family(out, name, "counter", help);
    for (size_t i = 0; i < host->n_pipelines; i++) {
        const kh_pipeline_rt *pl = host->pipelines[i];
        const uint64_t *v = (const uint64_t *)((const char *)pl + field);
        for (size_t k = 0; k < n; k++) {
            fputs(name, out);
            label(out, "{", "pipeline", pl->cfg->name);
            label(out, ",", key, names[k]);
            fprintf(out, "} %llu\n", (unsigned long long)v[k]);
        }
    }
}

static void write_hist(FILE *out, const char *name, const kh_pipeline_rt *pl,
                       const kh_hist *h, const double *bounds) {
    uint64_t cum = 0;
    for (int i = 0; i <= KH_HIST_N; i++) {
        cum += h->bucket[i];
        fprintf(out, "%s_bucket", name);
        label(out, "{", "pipeline", pl->cfg->name);
        if (i < KH_HIST_N)
            fprintf(out, ",le=\"%g\"} %llu\n", bounds[i],
                    (unsigned long long)cum);
        else
            fprintf(out, ",le=\"+Inf\"} %llu\n", (unsigned long long)cum);
    }
    fprintf(out, "%s_sum", name);
    label(out, "{", "pipeline", pl->cfg->name);
    fprintf(out, "} %.6f\n%s_count", h->sum_s, name);
    label(out, "{", "pipeline", pl->cfg->name);
    fprintf(out, "} %llu\n", (unsigned long long)cum);
}

static void write_pipeline_extras(FILE *out, kh_host *host) {
    write_labelled(out, host, "khost_handler_results_total",
                   "Handler results received, by result.", "result",
                   result_names, KH_RES_N, offsetof(kh_pipeline_rt, results));
    write_labelled(out, host, "khost_worker_crashes_total",
                   "Worker processes that died unplanned, by cause: signal "
                   "(not sent by khost), exit (on its own, also a failed "
                   "init), hang (killed after a timeout), lie (killed for "
                   "breaking the protocol).",
                   "cause", cause_names, KH_CRASH_N,
                   offsetof(kh_pipeline_rt, crash_causes));
    family(out, "khost_pipeline_state", "gauge",
           "1 for the pipeline's current state, 0 for the others.");
    for (size_t i = 0; i < host->n_pipelines; i++) {
        const kh_pipeline_rt *pl = host->pipelines[i];
        const char *now = pipeline_state_name(pl);
        for (size_t s = 0; s < sizeof state_names / sizeof *state_names; s++) {
            fputs("khost_pipeline_state", out);
            label(out, "{", "pipeline", pl->cfg->name);
            label(out, ",", "state", state_names[s]);
            fprintf(out, "} %d\n", !strcmp(now, state_names[s]));
        }
    }
    family(out, "khost_plugin_info", "gauge",
           "Always 1; the labels name the plugin the pipeline's workers "
           "reported at READY (absent before any; bytes other than "
           "printable ASCII shown as ?).");
    for (size_t i = 0; i < host->n_pipelines; i++) {
        const kh_pipeline_rt *pl = host->pipelines[i];
        if (!pl->plugin_name[0])
            continue; /* no worker READY yet */
        char name[sizeof pl->plugin_name], version[sizeof pl->plugin_version];
        printable(name, sizeof name, pl->plugin_name);
        printable(version, sizeof version, pl->plugin_version);
        fputs("khost_plugin_info", out);
        label(out, "{", "pipeline", pl->cfg->name);
        label(out, ",", "plugin", name);
        label(out, ",", "version", version);
        fputs("} 1\n", out);
    }
    family(out, "khost_handler_duration_seconds", "histogram",
           "Duration of handler calls, measured in the worker (a "
           "handle_batch call counts once), in seconds.");
    for (size_t i = 0; i < host->n_pipelines; i++) {
        kh_pipeline_rt *pl = host->pipelines[i];
        kh_hist h = pl->handle_hist_gone;
        for (int w = 0; w < pl_n_all_workers(pl); w++) {
            const kh_worker *wk = pl_worker(pl, w);
            if (wk->status)
                status_read_hist(wk->status, &h);
        }
        write_hist(out, "khost_handler_duration_seconds", pl, &h,
                   kh_handle_bounds_s);
    }
    family(out, "khost_end_to_end_latency_seconds", "histogram",
           "From a message's Kafka timestamp to the host receiving its ack, "
           "in seconds (messages without a timestamp are not counted).");
    for (size_t i = 0; i < host->n_pipelines; i++)
        write_hist(out, "khost_end_to_end_latency_seconds", host->pipelines[i],
                   &host->pipelines[i]->e2e_hist, kh_e2e_bounds_s);
}

static void write_host_reloads(FILE *out, kh_host *host) {
    family(out, "khost_config_reloads_total", "counter",
           "Reloads and pipeline restarts asked of the host, by outcome: "
           "applied, failed (a swap abandoned, a start failed) or "
           "rejected (the new file was invalid).");
    fprintf(out,
            "khost_config_reloads_total{outcome=\"applied\"} %llu\n"
            "khost_config_reloads_total{outcome=\"failed\"} %llu\n"
            "khost_config_reloads_total{outcome=\"rejected\"} %llu\n",
            (unsigned long long)host->reload.n_applied,
            (unsigned long long)host->reload.n_failed,
            (unsigned long long)host->reload.n_rejected);
}

/* The prefetch budget ([host] prefetch_budget_mb) and what all partitions
 * queue against it now (partition.c's count). */
static void write_host_budget(FILE *out) {
    size_t queued, assigned, budget = part_budget(&queued, &assigned);
    family(out, "khost_prefetch_budget_bytes", "gauge",
           "The host's prefetch budget: what all partitions may queue "
           "polled but undispatched ([host] prefetch_budget_mb).");
    fprintf(out, "khost_prefetch_budget_bytes %zu\n", budget);
    family(out, "khost_prefetch_queued_bytes", "gauge",
           "What all partitions queue polled but undispatched now, each "
           "message at its value and key plus 320 B.");
    fprintf(out, "khost_prefetch_queued_bytes %zu\n", queued);
}

static void write_pipelines(FILE *out, kh_host *host) {
    for (size_t m = 0; m < sizeof pipeline_metrics / sizeof *pipeline_metrics;
         m++) {
        const struct pipeline_metric *pm = &pipeline_metrics[m];
        family(out, pm->name, pm->type, pm->help);
        for (size_t i = 0; i < host->n_pipelines; i++) {
            const kh_pipeline_rt *pl = host->pipelines[i];
            const char *f = (const char *)pl + pm->field;
            unsigned long long v =
                pm->kind == C_BOOL ? *(const bool *)f : *(const uint64_t *)f;
            fputs(pm->name, out);
            label(out, "{", "pipeline", pl->cfg->name);
            fprintf(out, "} %llu\n", v);
        }
    }
}

/* ---- per partition ---- */

enum {
    P_COMMITTED,
    P_STORED,
    P_ACKED,
    P_HIGH,
    P_LAG,
    P_INFLIGHT,
    P_PENDING,
    P_PAUSED,
    P_REASON,
    P_AGE,
    P_N
};
static const struct {
    const char *name, *type, *help;
} part_families[P_N] = {
    [P_COMMITTED] = {"khost_partition_committed_offset", "gauge",
                     "The last offset committed to the group (the next "
                     "offset to consume)."},
    [P_STORED] = {"khost_partition_stored_offset", "gauge",
                  "The last offset stored for the next commit."},
    [P_ACKED] = {"khost_partition_acked_offset", "gauge",
                 "The contiguous acked watermark (highest offset resolved "
                 "with everything before it)."},
    [P_HIGH] = {"khost_partition_high_watermark_offset", "gauge",
                "The partition's high watermark, from librdkafka's cache "
                "of the last fetch response."},
    [P_LAG] = {"khost_partition_lag", "gauge",
               "High watermark minus the stored (else committed) offset, "
               "in messages."},
    [P_INFLIGHT] = {"khost_partition_unresolved_messages", "gauge",
                    "Messages dispatched to a worker and not yet resolved "
                    "(in flight, deferred or being dead-lettered)."},
    [P_PENDING] = {"khost_partition_pending_messages", "gauge",
                   "Messages fetched and waiting to be dispatched."},
    [P_PAUSED] = {"khost_partition_paused", "gauge",
                  "1 when fetching of the partition is paused or it is "
                  "held at a failed message, else 0."},
    [P_REASON] = {"khost_partition_paused_reason", "gauge",
                  "1 for each reason the partition is paused (flow, "
                  "worker, failed, unacked, shutdown, dlq, seek, "
                  "operator, held)."},
    [P_AGE] = {"khost_partition_oldest_unresolved_age_seconds", "gauge",
               "Seconds since the oldest unresolved message (in flight, "
               "deferred or being dead-lettered) was dispatched; 0 when "
               "none."},
};

static void part_labels(FILE *out, const kh_pipeline_rt *pl,
                        const kh_part *part) {
    label(out, "{", "pipeline", pl->cfg->name);
    label(out, ",", "group", pl->cfg->group);
    label(out, ",", "topic", part->topic);
    fprintf(out, ",partition=\"%d\"", (int)part->partition);
}

static void part_sample(FILE *out, int fam, const kh_pipeline_rt *pl,
                        const kh_part *part, const char *reason, long long v) {
    fputs(part_families[fam].name, out);
    part_labels(out, pl, part);
    if (reason)
        label(out, ",", "reason", reason);
    fprintf(out, "} %lld\n", v);
}

static void write_partition_family(FILE *out, kh_host *host, int fam) {
    int64_t now_ms = kh_now_ms();
    family(out, part_families[fam].name, part_families[fam].type,
           part_families[fam].help);
    for (size_t i = 0; i < host->n_pipelines; i++) {
        kh_pipeline_rt *pl = host->pipelines[i];
        for (size_t j = 0; j < pl->n_parts; j++) {
            const kh_part *part = pl->parts[j];
            if (!part || !part->assigned)
                continue;
            int64_t low = -1, high = -1;
            if ((fam == P_HIGH || fam == P_LAG) && pl->rk &&
                rd_kafka_get_watermark_offsets(pl->rk, part->topic,
                                               part->partition, &low, &high) !=
                    RD_KAFKA_RESP_ERR_NO_ERROR)
                high = -1;
            int64_t pos = part->stored >= 0 ? part->stored : part->committed;
            bool held = part->held;
            switch (fam) {
            case P_COMMITTED:
                if (part->committed >= 0)
                    part_sample(out, fam, pl, part, NULL, part->committed);
                break;
            case P_STORED:
                if (part->stored >= 0)
                    part_sample(out, fam, pl, part, NULL, part->stored);
                break;
            case P_ACKED:
                if (part->off.acked >= 0)
                    part_sample(out, fam, pl, part, NULL, part->off.acked);
                break;
            case P_HIGH:
                if (high >= 0)
                    part_sample(out, fam, pl, part, NULL, high);
                break;
            case P_LAG:
                if (high >= 0 && pos >= 0)
                    part_sample(out, fam, pl, part, NULL,
                                high > pos ? high - pos : 0);
                break;
            case P_INFLIGHT:
                part_sample(out, fam, pl, part, NULL,
                            (long long)offsets_outstanding(&part->off));
                break;
            case P_PENDING:
                part_sample(out, fam, pl, part, NULL,
                            (long long)part->pend_len);
                break;
            case P_PAUSED:
                part_sample(out, fam, pl, part, NULL, part->pause != 0 || held);
                break;
            case P_AGE: {
                int64_t since = offsets_oldest_since(&part->off);
                int64_t age = since > 0 ? now_ms - since : 0;
                fputs(part_families[fam].name, out);
                part_labels(out, pl, part);
                fprintf(out, "} %.3f\n", age > 0 ? (double)age / 1000 : 0.0);
                break;
            }
            case P_REASON:
                for (size_t r = 0; r < KH_PAUSE_N_BITS; r++)
                    if (part->pause & (1u << r))
                        part_sample(out, fam, pl, part, kh_pause_names[r], 1);
                if (held)
                    part_sample(out, fam, pl, part, "held", 1);
                break;
            }
        }
    }
}

/* ---- per worker (the current generation) ---- */

/* Resident bytes and CPU seconds of a live process, from /proc; false
 * when it is gone. */
static bool proc_usage(pid_t pid, double *rss, double *cpu) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/statm", (int)pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return false;
    unsigned long size = 0, res = 0;
    int n = fscanf(f, "%lu %lu", &size, &res);
    fclose(f);
    if (n != 2)
        return false;
    *rss = (double)res * (double)sysconf(_SC_PAGESIZE);
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    f = fopen(path, "re");
    if (!f)
        return false;
    size_t got = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[got] = '\0';
    /* comm may hold spaces and parentheses: fields start after the last
     * ')'. utime and stime are fields 14 and 15, i.e. the 12th and 13th
     * after the state (field 3). */
    char *p = strrchr(buf, ')');
    unsigned long long ut = 0, st = 0;
    if (!p ||
        sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
               &ut, &st) != 2)
        return false;
    *cpu = (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
    return true;
}

static void write_workers(FILE *out, kh_host *host) {
    enum { W_UP, W_RSS, W_CPU, W_N };
    static const struct {
        const char *name, *type, *help;
    } fams[W_N] = {
        [W_UP] = {"khost_worker_up", "gauge",
                  "1 when the worker process is READY and serving, else 0."},
        [W_RSS] = {"khost_worker_resident_memory_bytes", "gauge",
                   "Resident memory of the worker process, in bytes."},
        [W_CPU] = {"khost_worker_cpu_seconds_total", "counter",
                   "User and system CPU time of the worker process, in "
                   "seconds (restarts from 0 with the process)."},
    };
    size_t n = 0;
    for (size_t i = 0; i < host->n_pipelines; i++)
        n += (size_t)host->pipelines[i]->n_workers;
    double *rss = calloc(n ? n : 1, sizeof *rss);
    double *cpu = calloc(n ? n : 1, sizeof *cpu);
    bool *have = calloc(n ? n : 1, sizeof *have);
    if (!rss || !cpu || !have)
        goto out;
    size_t k = 0;
    for (size_t i = 0; i < host->n_pipelines; i++) {
        const kh_pipeline_rt *pl = host->pipelines[i];
        for (int w = 0; w < pl->n_workers; w++, k++)
            have[k] = pl->workers[w].pid > 0 &&
                      proc_usage(pl->workers[w].pid, &rss[k], &cpu[k]);
    }
    for (int f = 0; f < W_N; f++) {
        family(out, fams[f].name, fams[f].type, fams[f].help);
        k = 0;
        for (size_t i = 0; i < host->n_pipelines; i++) {
            const kh_pipeline_rt *pl = host->pipelines[i];
            for (int w = 0; w < pl->n_workers; w++, k++) {
                if (f != W_UP && !have[k])
                    continue;
                fputs(fams[f].name, out);
                label(out, "{", "pipeline", pl->cfg->name);
                fprintf(out, ",worker=\"%d\"} ", w);
                if (f == W_UP)
                    fprintf(out, "%d\n", pl->workers[w].state == KH_W_READY);
                else if (f == W_RSS)
                    fprintf(out, "%.0f\n", rss[k]);
                else
                    fprintf(out, "%.2f\n", cpu[k]);
            }
        }
    }
    family(out, "khost_spare_workers_ready", "gauge",
           "Spare worker processes past init, idle, ready to take over a "
           "worker that dies (spare_workers).");
    for (size_t i = 0; i < host->n_pipelines; i++) {
        const kh_pipeline_rt *pl = host->pipelines[i];
        int ready = 0;
        for (int w = 0; w < pl->n_spares; w++)
            ready += pl->spares[w].state == KH_W_READY;
        fputs("khost_spare_workers_ready", out);
        label(out, "{", "pipeline", pl->cfg->name);
        fprintf(out, "} %d\n", ready);
    }
out:
    free(rss);
    free(cpu);
    free(have);
}

char *metrics_render(kh_host *host, double start_time_s, size_t *len) {
    char *buf = NULL;
    size_t n = 0;
    FILE *out = open_memstream(&buf, &n);
    if (!out)
        return NULL;
    family(out, "khost_build_info", "gauge",
           "Always 1; the labels name the khost version and the plugin ABI "
           "it serves.");
    fprintf(out, "khost_build_info{version=\"%s\",abi=\"%d.%d\"} 1\n",
            KHOST_VERSION, KHOST_ABI_MAJOR, KHOST_ABI_MINOR);
    family(out, "khost_start_time_seconds", "gauge",
           "When the host started, in seconds since the Unix epoch.");
    fprintf(out, "khost_start_time_seconds %.3f\n", start_time_s);
    write_host_reloads(out, host);
    write_host_budget(out);
    write_pipelines(out, host);
    write_pipeline_extras(out, host);
    for (int f = 0; f < P_N; f++)
        write_partition_family(out, host, f);
    write_workers(out, host);
    kafka_stats_render(out, host->pipelines, host->n_pipelines);
    if (fclose(out) != 0) {
        free(buf);
        return NULL;
    }
    if (len)
        *len = n;
    return buf;
}
