/*
 * bench_produce_rate BOOTSTRAP TOPIC PARTITIONS RATE SECONDS [VALUE_BYTES]
 *
 * The producer of the latency benchmark (tests/bench/latency.sh): sends
 * RATE messages a second for SECONDS, round-robin over PARTITIONS, each
 * value starting with its send time in microseconds since the epoch
 * (CLOCK_REALTIME, ASCII decimal, then a space, padded with '.' to
 * VALUE_BYTES, default 100). The stamp is taken just before
 * rd_kafka_produce. Pacing: message i is due at start + i / RATE; the
 * loop sends whatever is due, then sleeps until the next one is (a 1 us
 * timer slack keeps bursts short). With BENCH_PACE_US=N (env) it wakes at
 * most every N us instead and sends what is due then, in a burst: fewer
 * wakeups for the producer at high rates, where waking per message takes
 * most of a core. linger.ms = 1. At the end it flushes
 * and prints one line:
 *
 *   PRODUCE_RATE start_us=S end_us=E sent=N delivered=D failed=F
 *                rate=R late_max_ms=L cpu_s=C
 *
 * late_max_ms: the most a message was sent after its due time (the
 * producer kept up if this stays small); cpu_s: this process's CPU
 * time (getrusage, librdkafka's threads included). Exit 0 only when every
 * message was delivered.
 */
#define _GNU_SOURCE
#include "bench_common.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>

static long delivered, failed;

static void on_dr(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    (void)rk;
    (void)opaque;
    if (m->err)
        failed++;
    else
        delivered++;
}

static int64_t wall_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int main(int argc, char **argv) {
    if (argc != 6 && argc != 7) {
        fprintf(stderr, "usage: bench_produce_rate BOOTSTRAP TOPIC PARTITIONS "
                        "RATE SECONDS [VALUE_BYTES]\n");
        return 2;
    }
    const char *topic = argv[2];
    int parts = (int)bench_num("PARTITIONS", argv[3], 1, 10000);
    long rate = bench_num("RATE", argv[4], 1, 10000000);
    long seconds = bench_num("SECONDS", argv[5], 1, 3600);
    long vlen =
        argc == 7 ? bench_num("VALUE_BYTES", argv[6], 24, 1 << 20) : 100;
    long total = rate * seconds;

    const char *pace_env = getenv("BENCH_PACE_US");
    long pace_us = pace_env && *pace_env
                       ? bench_num("BENCH_PACE_US", pace_env, 0, 1000000)
                       : 0;
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    bench_set(conf, "bootstrap.servers", argv[1]);
    bench_set(conf, "linger.ms", "1");
    bench_set(conf, "queue.buffering.max.messages", "1000000");
    rd_kafka_conf_set_dr_msg_cb(conf, on_dr);
    rd_kafka_t *rk = bench_new(RD_KAFKA_PRODUCER, conf, "bench_produce_rate");
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    /* Metadata first, so the first messages do not wait for it. */
    const struct rd_kafka_metadata *md = NULL;
    if (rd_kafka_metadata(rk, 0, rkt, &md, 5000) == RD_KAFKA_RESP_ERR_NO_ERROR)
        rd_kafka_metadata_destroy(md);

    char *payload = malloc((size_t)vlen);
    if (!payload)
        return 1;
    memset(payload, '.', (size_t)vlen);
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int64_t start_us = wall_us();
    double late_max = 0;
    long sent = 0;
    while (sent < total) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        double el = (double)(now.tv_sec - t0.tv_sec) +
                    (double)(now.tv_nsec - t0.tv_nsec) / 1e9;
        long due = (long)(el * (double)rate) + 1;
        if (due > total)
            due = total;
        if (due > sent) {
            double late = el - (double)sent / (double)rate;
            if (late > late_max)
                late_max = late;
        }
        while (sent < due) {
            int n =
                snprintf(payload, (size_t)vlen, "%lld ", (long long)wall_us());
            payload[n] = '.'; /* snprintf's NUL */
            while (rd_kafka_produce(rkt, (int32_t)(sent % parts),
                                    RD_KAFKA_MSG_F_COPY, payload, (size_t)vlen,
                                    NULL, 0, NULL) != 0) {
                if (rd_kafka_last_error() != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
                    fprintf(stderr, "bench_produce_rate: %s\n",
                            rd_kafka_err2str(rd_kafka_last_error()));
                    return 1;
                }
                rd_kafka_poll(rk, 1);
            }
            sent++;
        }
        rd_kafka_poll(rk, 0);
        if (sent >= total)
            break;
        /* Sleep until the next message is due, or the next pacing tick. */
        double next = (double)sent / (double)rate;
        double tick = el + (double)pace_us / 1e6;
        if (tick > next)
            next = tick;
        struct timespec at = t0;
        long long ns = (long long)(next * 1e9) + t0.tv_nsec;
        at.tv_sec += (time_t)(ns / 1000000000LL);
        at.tv_nsec = (long)(ns % 1000000000LL);
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &at, NULL) ==
               EINTR)
            ;
    }
    int64_t end_us = wall_us();
    rd_kafka_flush(rk, 30000);
    rd_kafka_poll(rk, 0);
    rd_kafka_topic_destroy(rkt);
    rd_kafka_destroy(rk);
    free(payload);
    double secs = (double)(end_us - start_us) / 1e6;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)ru.ru_utime.tv_sec +
                 (double)ru.ru_utime.tv_usec / 1e6 +
                 (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    printf("PRODUCE_RATE start_us=%lld end_us=%lld sent=%ld delivered=%ld "
           "failed=%ld rate=%.0f late_max_ms=%.3f cpu_s=%.3f\n",
           (long long)start_us, (long long)end_us, sent, delivered, failed,
           secs > 0 ? (double)sent / secs : 0.0, late_max * 1000, cpu);
    return delivered == total ? 0 : 1;
}
