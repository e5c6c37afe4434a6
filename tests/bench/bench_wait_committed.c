/*
 * bench_wait_committed BOOTSTRAP TOPIC PARTITIONS GROUP [TIMEOUT_S]
 *
 * Time a consumer from the outside through its group's committed offsets.
 * Reads the high watermark of every partition once, then asks the group
 * coordinator for GROUP's committed offsets every 5 ms (OffsetFetch, with a
 * handle that never joins the group) until every partition's committed
 * offset has reached its high watermark. Prints one line:
 *
 *   COMMITTED end_total=N first_wall=W first_total=C t10=T t50=T t90=T
 *             done_wall=W samples=K
 *
 * first_*: when a committed offset was first seen and how many messages it
 * covered; tP: when the committed total was first seen at or above P% of
 * end_total; done_wall: when every partition was seen at its end. All
 * times are wall clock, seconds since the epoch (comparable with khost's
 * log lines). Exit 1 on timeout (default 120 s).
 */
#define _GNU_SOURCE
#include "bench_common.h"

#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 5 && argc != 6) {
        fprintf(stderr, "usage: bench_wait_committed BOOTSTRAP TOPIC "
                        "PARTITIONS GROUP [TIMEOUT_S]\n");
        return 2;
    }
    const char *topic = argv[2];
    int parts = (int)bench_num("PARTITIONS", argv[3], 1, 10000);
    long timeout = argc == 6 ? bench_num("TIMEOUT_S", argv[5], 1, 3600) : 120;

    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    bench_set(conf, "bootstrap.servers", argv[1]);
    bench_set(conf, "group.id", argv[4]);
    bench_set(conf, "client.id", "bench-wait-committed");
    bench_set(conf, "enable.auto.commit", "false");
    char errstr[512];
    rd_kafka_t *rk =
        rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
    if (!rk) {
        fprintf(stderr, "bench_wait_committed: %s\n", errstr);
        return 1;
    }
    double deadline = bench_mono() + (double)timeout;

    int64_t *end = calloc((size_t)parts, sizeof *end);
    long end_total = 0;
    for (int p = 0; p < parts; p++) {
        int64_t lo, hi;
        rd_kafka_resp_err_t e;
        while ((e = rd_kafka_query_watermark_offsets(rk, topic, p, &lo, &hi,
                                                     5000))) {
            if (bench_mono() > deadline) {
                fprintf(stderr,
                        "bench_wait_committed: watermarks of %s[%d]: "
                        "%s\n",
                        topic, p, rd_kafka_err2str(e));
                return 1;
            }
            usleep(100000);
        }
        end[p] = hi;
        end_total += hi;
    }

    rd_kafka_topic_partition_list_t *l =
        rd_kafka_topic_partition_list_new(parts);
    for (int p = 0; p < parts; p++)
        rd_kafka_topic_partition_list_add(l, topic, p);

    double first_wall = 0, t_pct[3] = {0, 0, 0};
    static const int pct[3] = {10, 50, 90};
    long first_total = 0, samples = 0;
    for (;;) {
        for (int p = 0; p < parts; p++)
            l->elems[p].offset = RD_KAFKA_OFFSET_INVALID;
        rd_kafka_resp_err_t e = rd_kafka_committed(rk, l, 2000);
        double now = bench_wall();
        if (e) {
            fprintf(stderr, "bench_wait_committed: %s\n", rd_kafka_err2str(e));
        } else {
            samples++;
            long total = 0;
            int at_end = 0;
            for (int p = 0; p < parts; p++) {
                int64_t o = l->elems[p].err ? -1 : l->elems[p].offset;
                if (o > 0)
                    total += (long)o;
                at_end += o >= end[p];
            }
            if (total > 0 && first_wall == 0) {
                first_wall = now;
                first_total = total;
            }
            for (int i = 0; i < 3; i++)
                if (t_pct[i] == 0 && total * 100 >= end_total * pct[i])
                    t_pct[i] = now;
            if (at_end == parts) {
                printf("COMMITTED end_total=%ld first_wall=%.4f "
                       "first_total=%ld t10=%.4f t50=%.4f t90=%.4f "
                       "done_wall=%.4f samples=%ld\n",
                       end_total, first_wall, first_total, t_pct[0], t_pct[1],
                       t_pct[2], now, samples);
                break;
            }
        }
        if (bench_mono() > deadline) {
            fprintf(stderr, "bench_wait_committed: timed out\n");
            return 1;
        }
        usleep(5000);
    }
    rd_kafka_topic_partition_list_destroy(l);
    free(end);
    rd_kafka_destroy(rk);
    return 0;
}
