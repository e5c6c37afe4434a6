/*
 * bench_latency_ref BOOTSTRAP TOPIC GROUP FETCH_WAIT_MS OUT
 *
 * The reference of the latency benchmark (tests/bench/latency.sh): a
 * plain librdkafka group consumer configured like a khost pipeline
 * (session.timeout.ms=6000, heartbeat.interval.ms=500,
 * enable.auto.offset.store=false with one rd_kafka_offsets_store per
 * message, auto-commit every 1000 ms, khost's default) with
 * auto.offset.reset=latest and the given fetch.wait.max.ms, as the
 * benchmark sets them for khost too. Per message it does what
 * latency_plugin does in its handler: parse the send time (microseconds,
 * ASCII decimal at the start of the value) and keep now_us - sent_us.
 *
 * It prints "ASSIGNED n=N" on stdout at its first assignment, runs until
 * SIGTERM or SIGINT, then writes "SENT_US DELAY_US" lines and a
 * "# samples=..." trailer to OUT, the same format as latency_plugin.
 */
#define _GNU_SOURCE
#include "bench_common.h"

#include <signal.h>
#include <stdint.h>
#include <string.h>

#define BENCH_MAX_PARTS 1024

static volatile sig_atomic_t stop;
static void on_signal(int sig) {
    (void)sig;
    stop = 1;
}

static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *l, void *opaque) {
    (void)opaque;
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        rd_kafka_assign(rk, l);
        printf("ASSIGNED n=%d\n", l->cnt);
        fflush(stdout);
    } else {
        rd_kafka_assign(rk, NULL);
    }
}

static int64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* The same parse as latency_plugin's. */
static int64_t stamp_of(const void *value, size_t len) {
    const unsigned char *p = value;
    int64_t v = 0;
    size_t i = 0;
    if (!p)
        return -1;
    for (; i < len && i < 19 && p[i] >= '0' && p[i] <= '9'; i++)
        v = v * 10 + (p[i] - '0');
    return i ? v : -1;
}

typedef struct sample {
    int64_t sent_us, delay_us;
} sample;

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: bench_latency_ref BOOTSTRAP TOPIC GROUP "
                        "FETCH_WAIT_MS OUT\n");
        return 2;
    }
    bench_num("FETCH_WAIT_MS", argv[4], 0, 300000);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    bench_set(conf, "bootstrap.servers", argv[1]);
    bench_set(conf, "group.id", argv[3]);
    bench_set(conf, "client.id", "bench-latency-ref");
    bench_set(conf, "session.timeout.ms", "6000");
    bench_set(conf, "heartbeat.interval.ms", "500");
    bench_set(conf, "auto.offset.reset", "latest");
    bench_set(conf, "enable.auto.offset.store", "false");
    bench_set(conf, "auto.commit.interval.ms", "1000");
    bench_set(conf, "fetch.wait.max.ms", argv[4]);
    rd_kafka_conf_set_rebalance_cb(conf, on_rebalance);
    char errstr[512];
    rd_kafka_t *rk =
        rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
    if (!rk) {
        fprintf(stderr, "bench_latency_ref: %s\n", errstr);
        return 1;
    }
    rd_kafka_poll_set_consumer(rk);
    rd_kafka_topic_partition_list_t *sub = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(sub, argv[2], RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t e = rd_kafka_subscribe(rk, sub);
    rd_kafka_topic_partition_list_destroy(sub);
    if (e) {
        fprintf(stderr, "bench_latency_ref: subscribe: %s\n",
                rd_kafka_err2str(e));
        return 1;
    }

    rd_kafka_topic_partition_list_t *store[BENCH_MAX_PARTS] = {0};
    sample *s = NULL;
    size_t n = 0, cap = 0;
    unsigned long long unstamped = 0, dropped = 0;
    while (!stop) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
        if (!m)
            continue;
        if (m->err) {
            if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                fprintf(stderr, "bench_latency_ref: %s\n",
                        rd_kafka_message_errstr(m));
            rd_kafka_message_destroy(m);
            continue;
        }
        /* The handler's work, as latency_plugin does it. */
        int64_t now = now_us();
        int64_t sent = stamp_of(m->payload, m->len);
        if (sent < 0) {
            unstamped++;
        } else {
            if (n == cap) {
                size_t c2 = cap ? cap * 2 : 65536;
                sample *s2 = realloc(s, c2 * sizeof *s2);
                if (s2) {
                    s = s2;
                    cap = c2;
                }
            }
            if (n < cap) {
                s[n].sent_us = sent;
                s[n].delay_us = now - sent;
                n++;
            } else {
                dropped++;
            }
        }
        if (m->partition >= 0 && m->partition < BENCH_MAX_PARTS) {
            rd_kafka_topic_partition_list_t **l = &store[m->partition];
            if (!*l) {
                *l = rd_kafka_topic_partition_list_new(1);
                rd_kafka_topic_partition_list_add(*l, argv[2], m->partition);
            }
            (*l)->elems[0].offset = m->offset + 1;
            rd_kafka_offsets_store(rk, *l);
        }
        rd_kafka_message_destroy(m);
    }
    FILE *f = fopen(argv[5], "w");
    if (!f) {
        perror(argv[5]);
        return 1;
    }
    for (size_t i = 0; i < n; i++)
        fprintf(f, "%lld %lld\n", (long long)s[i].sent_us,
                (long long)s[i].delay_us);
    fprintf(f, "# samples=%zu unstamped=%llu dropped=%llu\n", n, unstamped,
            dropped);
    fclose(f);
    free(s);
    for (int p = 0; p < BENCH_MAX_PARTS; p++)
        if (store[p])
            rd_kafka_topic_partition_list_destroy(store[p]);
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    return 0;
}
