/*
 * kafka_stats: reads librdkafka's statistics JSON (the stats callback,
 * every statistics.interval.ms, registered by kafka.c) with jansson into
 * a small kh_kstats, and writes the few gauges /metrics shows from it:
 * broker round-trip time, the fetch queue and librdkafka's consumer lag
 * per partition, the age of the statistics; and the commit counters of
 * kafka.c (khost_offset_commits_total). The JSON is not dumped: the rest
 * of it is dropped at parse time. A leaf: calls jansson and libc only;
 * metrics.c calls kafka_stats_render, kafka.c calls the parser, both on
 * the loop thread.
 */
#define _GNU_SOURCE
#include "kafka_stats.h"

#include "config.h"
#include "partition.h"
#include "pipeline.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* An integer field, or -1 when it is missing or not a number. */
static int64_t int_field(const json_t *obj, const char *key) {
    const json_t *v = json_object_get(obj, key);
    if (json_is_integer(v))
        return (int64_t)json_integer_value(v);
    if (json_is_real(v))
        return (int64_t)json_real_value(v);
    return -1;
}

static void parse_brokers(const json_t *brokers, kh_kstats *st) {
    if (!json_is_object(brokers))
        return;
    size_t cap = json_object_size(brokers);
    st->brokers = calloc(cap ? cap : 1, sizeof *st->brokers);
    if (!st->brokers)
        abort();
    const char *key;
    json_t *b;
    json_object_foreach((json_t *)brokers, key, b) {
        if (!json_is_object(b))
            continue;
        /* "internal" is librdkafka's :0/internal broker, "logical" the
         * GroupCoordinator alias of a real one; bootstrap entries not
         * yet matched to a node have nodeid -1. */
        const char *source = json_string_value(json_object_get(b, "source"));
        if (source &&
            (!strcmp(source, "internal") || !strcmp(source, "logical")))
            continue;
        if (int_field(b, "nodeid") < 0)
            continue;
        const json_t *rtt = json_object_get(b, "rtt");
        if (!json_is_object(rtt) || int_field(rtt, "cnt") <= 0)
            continue; /* no request answered in this window */
        int64_t avg = int_field(rtt, "avg"), p99 = int_field(rtt, "p99");
        if (avg < 0 || p99 < 0)
            continue;
        const char *name = json_string_value(json_object_get(b, "name"));
        kh_kstats_broker *kb = &st->brokers[st->n_brokers];
        kb->name = strdup(name ? name : key);
        if (!kb->name)
            abort();
        kb->rtt_avg_s = (double)avg / 1e6; /* microseconds */
        kb->rtt_p99_s = (double)p99 / 1e6;
        st->n_brokers++;
    }
}

static void parse_topics(const json_t *topics, kh_kstats *st) {
    if (!json_is_object(topics))
        return;
    size_t cap = 0;
    const char *key;
    json_t *t;
    json_object_foreach((json_t *)topics, key, t) {
        const json_t *parts = json_object_get(t, "partitions");
        if (json_is_object(parts))
            cap += json_object_size(parts);
    }
    st->parts = calloc(cap ? cap : 1, sizeof *st->parts);
    if (!st->parts)
        abort();
    json_object_foreach((json_t *)topics, key, t) {
        const json_t *parts = json_object_get(t, "partitions");
        if (!json_is_object(t) || !json_is_object(parts))
            continue;
        const char *topic = json_string_value(json_object_get(t, "topic"));
        if (!topic)
            topic = key;
        const char *pkey;
        json_t *p;
        json_object_foreach((json_t *)parts, pkey, p) {
            if (!json_is_object(p) || st->n_parts == cap)
                continue;
            int64_t partition = int_field(p, "partition");
            if (partition < 0 || partition > INT32_MAX)
                continue; /* -1: librdkafka's unassigned partition */
            kh_kstats_part *kp = &st->parts[st->n_parts];
            kp->topic = strdup(topic);
            if (!kp->topic)
                abort();
            kp->partition = (int32_t)partition;
            kp->fetchq_cnt = int_field(p, "fetchq_cnt");
            kp->fetchq_size = int_field(p, "fetchq_size");
            kp->consumer_lag = int_field(p, "consumer_lag");
            st->n_parts++;
        }
    }
}

kh_kstats *kafka_stats_parse(const char *json, size_t len, int64_t now_ms,
                             char *err, size_t errlen) {
    json_error_t jerr;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        snprintf(err, errlen, "line %d: %s", jerr.line, jerr.text);
        return NULL;
    }
    if (!json_is_object(root)) {
        snprintf(err, errlen, "not a JSON object");
        json_decref(root);
        return NULL;
    }
    kh_kstats *st = calloc(1, sizeof *st);
    if (!st)
        abort();
    st->at_ms = now_ms;
    parse_brokers(json_object_get(root, "brokers"), st);
    parse_topics(json_object_get(root, "topics"), st);
    json_decref(root);
    return st;
}

void kafka_stats_free(kh_kstats *st) {
    if (!st)
        return;
    for (size_t i = 0; i < st->n_brokers; i++)
        free(st->brokers[i].name);
    for (size_t i = 0; i < st->n_parts; i++)
        free(st->parts[i].topic);
    free(st->brokers);
    free(st->parts);
    free(st);
}

/* ---- the exposition ---- */

static void label_value(FILE *out, const char *v) {
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

static void pipeline_label(FILE *out, const char *name,
                           const kh_pipeline_rt *pl) {
    fprintf(out, "%s{pipeline=\"", name);
    label_value(out, pl->cfg->name);
    fputc('"', out);
}

static bool host_assigned(const kh_pipeline_rt *pl, const kh_kstats_part *kp) {
    for (size_t i = 0; i < pl->n_parts; i++) {
        const kh_part *part = pl->parts[i];
        if (part && part->partition == kp->partition && part->assigned &&
            !strcmp(part->topic, kp->topic))
            return true;
    }
    return false;
}

enum { K_FETCHQ_CNT, K_FETCHQ_SIZE, K_LAG, K_N };
static const struct {
    const char *name, *help;
} part_fams[K_N] = {
    /* librdkafka counts a forwarded queue at its destination: every
     * partition's fetch queue goes to the pipeline's one consumer queue,
     * so each partition reports that queue, its events included. */
    [K_FETCHQ_CNT] = {"khost_rdkafka_fetch_queue_messages",
                      "Entries in the librdkafka queue the partition's "
                      "fetches go to, not yet polled by the host "
                      "(fetchq_cnt): the pipeline's one consumer queue, "
                      "shared by its partitions, events included."},
    [K_FETCHQ_SIZE] = {"khost_rdkafka_fetch_queue_bytes",
                       "Bytes in the librdkafka queue the partition's "
                       "fetches go to (fetchq_size): the pipeline's one "
                       "consumer queue, shared by its partitions."},
    [K_LAG] = {"khost_rdkafka_consumer_lag",
               "Consumer lag as librdkafka sees it (consumer_lag: high "
               "watermark minus the committed offset), in messages."},
};

void kafka_stats_render(FILE *out, kh_pipeline_rt *const *pipelines, size_t n) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t now_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    family(out, "khost_offset_commits_total", "counter",
           "Offset commits the broker confirmed, by kind: auto (librdkafka's "
           "auto-commit of stored offsets), sync (revoke, shutdown, swap), "
           "recommit (unchanged offsets committed again for lag tools).");
    for (size_t i = 0; i < n; i++) {
        const kh_pipeline_rt *pl = pipelines[i];
        static const char *const kinds[3] = {"auto", "sync", "recommit"};
        const uint64_t v[3] = {pl->commits_auto, pl->commits_sync,
                               pl->commits_recommit};
        for (int k = 0; k < 3; k++) {
            pipeline_label(out, "khost_offset_commits_total", pl);
            fprintf(out, ",kind=\"%s\"} %llu\n", kinds[k],
                    (unsigned long long)v[k]);
        }
    }

    family(out, "khost_rdkafka_stats_age_seconds", "gauge",
           "Seconds since librdkafka's last statistics "
           "(statistics.interval.ms) arrived; absent before the first.");
    for (size_t i = 0; i < n; i++) {
        const kh_pipeline_rt *pl = pipelines[i];
        if (!pl->kstats)
            continue;
        pipeline_label(out, "khost_rdkafka_stats_age_seconds", pl);
        int64_t age = now_ms - pl->kstats->at_ms;
        fprintf(out, "} %.3f\n", (double)(age > 0 ? age : 0) / 1000.0);
    }

    for (int f = 0; f < 2; f++) {
        const char *name = f ? "khost_rdkafka_broker_rtt_p99_seconds"
                             : "khost_rdkafka_broker_rtt_avg_seconds";
        family(out, name, "gauge",
               f ? "99th percentile round-trip time to the broker over the "
                   "last statistics window, in seconds (rtt.p99)."
                 : "Average round-trip time to the broker over the last "
                   "statistics window, in seconds (rtt.avg).");
        for (size_t i = 0; i < n; i++) {
            const kh_pipeline_rt *pl = pipelines[i];
            if (!pl->kstats)
                continue;
            for (size_t b = 0; b < pl->kstats->n_brokers; b++) {
                const kh_kstats_broker *kb = &pl->kstats->brokers[b];
                pipeline_label(out, name, pl);
                fputs(",broker=\"", out);
                label_value(out, kb->name);
                fprintf(out, "\"} %.6f\n", f ? kb->rtt_p99_s : kb->rtt_avg_s);
            }
        }
    }

    for (int f = 0; f < K_N; f++) {
        family(out, part_fams[f].name, "gauge", part_fams[f].help);
        for (size_t i = 0; i < n; i++) {
            const kh_pipeline_rt *pl = pipelines[i];
            if (!pl->kstats)
                continue;
            for (size_t j = 0; j < pl->kstats->n_parts; j++) {
                const kh_kstats_part *kp = &pl->kstats->parts[j];
                int64_t v = f == K_FETCHQ_CNT    ? kp->fetchq_cnt
                            : f == K_FETCHQ_SIZE ? kp->fetchq_size
                                                 : kp->consumer_lag;
                if (v < 0 || !host_assigned(pl, kp))
                    continue;
                pipeline_label(out, part_fams[f].name, pl);
                fputs(",group=\"", out);
                label_value(out, pl->cfg->group);
                fputs("\",topic=\"", out);
                label_value(out, kp->topic);
                fprintf(out, "\",partition=\"%d\"} %lld\n", (int)kp->partition,
                        (long long)v);
            }
        }
    }
}
