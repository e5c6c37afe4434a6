/*
 * kafka_stats: librdkafka's statistics (statistics.interval.ms) reduced
 * to the few numbers /metrics shows, and their exposition. See
 * host/README.md.
 */
#ifndef KHOST_KAFKA_STATS_H
#define KHOST_KAFKA_STATS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef struct kh_pipeline_rt kh_pipeline_rt;

/* One broker the consumer talks to (not librdkafka's internal or logical
 * ones, such as GroupCoordinator): its round-trip time over the last
 * statistics window, in seconds. */
typedef struct kh_kstats_broker {
    char *name; /* "host:port/nodeid", as librdkafka names it */
    double rtt_avg_s, rtt_p99_s;
} kh_kstats_broker;

/* One partition (not the unassigned -1): librdkafka's fetch queue and
 * its own view of the consumer lag; -1 where the JSON had no number. */
typedef struct kh_kstats_part {
    char *topic;
    int32_t partition;
    int64_t fetchq_cnt, fetchq_size, consumer_lag;
} kh_kstats_part;

typedef struct kh_kstats {
    int64_t at_ms; /* kh_now_ms() (CLOCK_MONOTONIC, ms) when it arrived */
    kh_kstats_broker *brokers;
    size_t n_brokers;
    kh_kstats_part *parts;
    size_t n_parts;
} kh_kstats;

/* Parse one statistics JSON document into a new kh_kstats (at_ms set to
 * now_ms). Missing or mistyped fields are skipped, never trusted; NULL
 * with a reason in err when the text is not a JSON object. */
kh_kstats *kafka_stats_parse(const char *json, size_t len, int64_t now_ms,
                             char *err, size_t errlen);
void kafka_stats_free(kh_kstats *st);

/* Write the khost_rdkafka_* families (from each pipeline's kstats; RTT
 * per broker, fetch queue and lag only for partitions the host has
 * assigned) and khost_offset_commits_total (from its commit counters)
 * for the n pipelines, each family whole. The stats' age is measured
 * on CLOCK_MONOTONIC, kh_now_ms's clock. */
void kafka_stats_render(FILE *out, kh_pipeline_rt *const *pipelines, size_t n);

#endif
