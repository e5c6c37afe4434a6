/*
 * bench_common: small helpers shared by the benchmark tools.
 */
#ifndef KHOST_BENCH_COMMON_H
#define KHOST_BENCH_COMMON_H

#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static inline double bench_mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Wall clock, seconds since the epoch: comparable with khost's log
 * timestamps and with other processes. */
static inline double bench_wall(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static inline void bench_set(rd_kafka_conf_t *conf, const char *k,
                             const char *v) {
    char errstr[512];
    if (rd_kafka_conf_set(conf, k, v, errstr, sizeof errstr) !=
        RD_KAFKA_CONF_OK) {
        fprintf(stderr, "bench: %s = %s: %s\n", k, v, errstr);
        exit(2);
    }
}

/* rd_kafka_new, or exit 1 with the tool's name and librdkafka's reason. */
static inline rd_kafka_t *bench_new(rd_kafka_type_t type, rd_kafka_conf_t *conf,
                                    const char *tool) {
    char errstr[512];
    rd_kafka_t *rk = rd_kafka_new(type, conf, errstr, sizeof errstr);
    if (!rk) {
        fprintf(stderr, "%s: %s\n", tool, errstr);
        exit(1);
    }
    return rk;
}

static inline long bench_num(const char *what, const char *s, long lo,
                             long hi) {
    char *end;
    long n = strtol(s, &end, 10);
    if (*s == '\0' || *end || n < lo || n > hi) {
        fprintf(stderr, "bench: %s must be %ld..%ld, not '%s'\n", what, lo, hi,
                s);
        exit(2);
    }
    return n;
}

#endif
