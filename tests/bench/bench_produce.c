/*
 * bench_produce BOOTSTRAP TOPIC PARTITIONS COUNT
 *
 * Produce COUNT messages of 100 bytes round-robin over PARTITIONS partitions
 * of TOPIC, flush, and exit 0 only if every message was delivered.
 */
#define _GNU_SOURCE
#include "bench_common.h"

#include <string.h>

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
    if (argc != 5) {
        fprintf(stderr,
                "usage: bench_produce BOOTSTRAP TOPIC PARTITIONS COUNT\n");
        return 2;
    }
    const char *topic = argv[2];
    int parts = (int)bench_num("PARTITIONS", argv[3], 1, 10000);
    long count = bench_num("COUNT", argv[4], 1, 100000000);

    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    bench_set(conf, "bootstrap.servers", argv[1]);
    bench_set(conf, "linger.ms", "5");
    bench_set(conf, "batch.num.messages", "10000");
    bench_set(conf, "queue.buffering.max.messages", "1000000");
    bench_set(conf, "queue.buffering.max.kbytes", "1048576");
    rd_kafka_conf_set_dr_msg_cb(conf, on_dr);
    char errstr[512];
    rd_kafka_t *rk =
        rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (!rk) {
        fprintf(stderr, "bench_produce: %s\n", errstr);
        return 1;
    }
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);

    char payload[100];
    double t0 = bench_mono();
    for (long i = 0; i < count; i++) {
        /* 100 bytes: a readable prefix, padded with '.'. */
        memset(payload, '.', sizeof payload);
        int n = snprintf(payload, sizeof payload, "bench message %ld", i);
        payload[n] = '.';
        while (rd_kafka_produce(rkt, (int32_t)(i % parts), RD_KAFKA_MSG_F_COPY,
                                payload, sizeof payload, NULL, 0, NULL) != 0) {
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
    rd_kafka_topic_destroy(rkt);
    rd_kafka_destroy(rk);
    printf("PRODUCE topic=%s messages=%ld failed=%ld seconds=%.3f\n", topic,
           delivered, failed, secs);
    return delivered == count ? 0 : 1;
}
