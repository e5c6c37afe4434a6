/*
 * bench_commit_start: commit offset 0 of every partition of a topic for a
 * consumer group, before any member joins it, so that the group's first
 * consumer starts each partition from a committed offset, as a consumer
 * that restarts in production does.
 *
 * Without it, a fresh group has no committed offset, and librdkafka 2.0.2
 * resolves auto.offset.reset with one ListOffsets request per partition:
 * at 1000 partitions those take most of a second against the mock, and
 * the partitions start spread over it (tests/bench/README.md, run 10).
 *
 *   bench_commit_start BOOTSTRAP TOPIC GROUP PARTITIONS
 *
 * Exit status 0 when the broker accepted every offset, 1 when not, 2 on
 * bad arguments.
 */
#include "bench_common.h"

#include <string.h>

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr,
                "usage: bench_commit_start BOOTSTRAP TOPIC GROUP PARTITIONS\n");
        return 2;
    }
    int parts = (int)bench_num("PARTITIONS", argv[4], 1, 100000);
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    bench_set(conf, "bootstrap.servers", argv[1]);
    bench_set(conf, "group.id", argv[3]);
    bench_set(conf, "enable.auto.commit", "false");
    rd_kafka_t *rk = bench_new(RD_KAFKA_CONSUMER, conf, "bench_commit_start");
    rd_kafka_topic_partition_list_t *l =
        rd_kafka_topic_partition_list_new(parts);
    for (int p = 0; p < parts; p++)
        rd_kafka_topic_partition_list_add(l, argv[2], p)->offset = 0;
    /* Synchronous: the group has no member, so the coordinator takes the
     * commit as a simple consumer's (generation -1). */
    rd_kafka_resp_err_t err = rd_kafka_commit(rk, l, 0);
    int bad = 0;
    for (int i = 0; i < l->cnt; i++)
        if (l->elems[i].err)
            bad++;
    if (err || bad)
        fprintf(stderr, "bench_commit_start: %s; %d partition(s) failed\n",
                rd_kafka_err2str(err), bad);
    rd_kafka_topic_partition_list_destroy(l);
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    return err || bad ? 1 : 0;
}
