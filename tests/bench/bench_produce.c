/*
 * bench_produce BOOTSTRAP TOPIC PARTITIONS COUNT [VALUE_BYTES [RATE]]
 *
 * Produce COUNT messages of VALUE_BYTES bytes (default 100) round-robin
 * over PARTITIONS partitions of TOPIC, flush, and exit 0 only if every
 * message was delivered. With RATE (messages per second, > 0) the messages
 * are paced at that rate, in steps of 1 ms (crash.sh's steady stream);
 * without it they go as fast as librdkafka takes them.
 */
#define _GNU_SOURCE
#include "bench_common.h"

#include <string.h>
#include <unistd.h>

static long delivered, failed;

static void on_dr(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    (void)rk;
    (void)opaque;
    if (m->err)
        failed++;
    else
        delivered++;
}

int main(int argc, char **argv) {
    if (argc < 5 || argc > 7) {
        fprintf(stderr, "usage: bench_produce BOOTSTRAP TOPIC PARTITIONS COUNT "
                        "[VALUE_BYTES [RATE]]\n");
        return 2;
    }
    const char *topic = argv[2];
    int parts = (int)bench_num("PARTITIONS", argv[3], 1, 10000);
    long count = bench_num("COUNT", argv[4], 1, 100000000);
    size_t vbytes = argc >= 6
                        ? (size_t)bench_num("VALUE_BYTES", argv[5], 16, 1048576)
                        : 100;
    long rate = argc >= 7 ? bench_num("RATE", argv[6], 0, 10000000) : 0;

    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    bench_set(conf, "bootstrap.servers", argv[1]);
    bench_set(conf, "linger.ms", rate ? "1" : "5");
    bench_set(conf, "batch.num.messages", "10000");
    bench_set(conf, "queue.buffering.max.messages", "1000000");
    bench_set(conf, "queue.buffering.max.kbytes", "1048576");
    rd_kafka_conf_set_dr_msg_cb(conf, on_dr);
    rd_kafka_t *rk = bench_new(RD_KAFKA_PRODUCER, conf, "bench_produce");
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);

    char *payload = malloc(vbytes);
    if (!payload) {
        fprintf(stderr, "bench_produce: out of memory\n");
        return 1;
    }
    double t0 = bench_mono();
    for (long i = 0; i < count; i++) {
        if (rate) {
            /* Message i is due at t0 + i / rate. */
            double due = t0 + (double)i / (double)rate;
            double now = bench_mono();
            if (due > now + 0.001) {
                rd_kafka_poll(rk, 0);
                usleep((useconds_t)((due - now) * 1e6));
            }
        }
        /* A readable prefix, padded with '.'. */
        memset(payload, '.', vbytes);
        int n = snprintf(payload, vbytes, "bench message %ld", i);
        if (n >= 0 && (size_t)n < vbytes)
            payload[n] = '.';
        while (rd_kafka_produce(rkt, (int32_t)(i % parts), RD_KAFKA_MSG_F_COPY,
                                payload, vbytes, NULL, 0, NULL) != 0) {
            if (rd_kafka_last_error() != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
                fprintf(stderr, "bench_produce: %s\n",
                        rd_kafka_err2str(rd_kafka_last_error()));
                return 1;
            }
            rd_kafka_poll(rk, 10);
        }
        if (i % 10000 == 0)
            rd_kafka_poll(rk, 0);
    }
    rd_kafka_flush(rk, 60000);
    rd_kafka_poll(rk, 0);
    double secs = bench_mono() - t0;
    free(payload);
    rd_kafka_topic_destroy(rkt);
    rd_kafka_destroy(rk);
    printf("PRODUCE topic=%s messages=%ld failed=%ld value_bytes=%zu "
           "seconds=%.3f\n",
           topic, delivered, failed, vbytes, secs);
    return delivered == count ? 0 : 1;
}
