/*
 * bench_reference BOOTSTRAP TOPIC GROUP COUNT [COMMIT_INTERVAL_MS]
 *
 * The reference: a plain librdkafka group consumer loop, configured like a
 * khost pipeline (session.timeout.ms=6000, heartbeat.interval.ms=500,
 * auto.offset.reset=earliest, enable.auto.offset.store=false with
 * rd_kafka_offsets_store for every message, auto-commit). It consumes until
 * it has COUNT messages, polls on for 3 commit intervals so that auto-commit
 * commits the end, and prints one machine-readable line:
 *
 *   REFERENCE messages=N seconds=S msgs_per_s=R assign_to_first_s=A ...
 *
 * seconds is from the first message to the last one polled: the initial
 * rebalance delay of the group is not part of it. assign_to_first_s is
 * from the assignment to the first message. run.sh also times this
 * consumer from the outside, through its commits, like khost.
 *
 * BENCH_REFERENCE_KAFKA, if set, holds extra librdkafka properties, one
 * "key = value" per line (the format of khost's [kafka] section), applied
 * after the settings above: run.sh's BENCH_KAFKA gives both contenders
 * the same ones.
 */
#define _GNU_SOURCE
#include "bench_common.h"

#include <ctype.h>
#include <string.h>

#define BENCH_MAX_PARTS 1024

/* Apply "key = value" lines from the environment variable
 * BENCH_REFERENCE_KAFKA. */
static void apply_extra(rd_kafka_conf_t *conf) {
    const char *env = getenv("BENCH_REFERENCE_KAFKA");
    if (!env)
        return;
    char *copy = strdup(env), *save = NULL;
    for (char *line = strtok_r(copy, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save)) {
        char *eq = strchr(line, '=');
        if (!eq)
            continue;
        *eq = '\0';
        char *k = line, *v = eq + 1;
        while (isspace((unsigned char)*k))
            k++;
        while (isspace((unsigned char)*v))
            v++;
        for (char *e = k + strlen(k); e > k && isspace((unsigned char)e[-1]);)
            *--e = '\0';
        for (char *e = v + strlen(v); e > v && isspace((unsigned char)e[-1]);)
            *--e = '\0';
        if (*k)
            bench_set(conf, k, v);
    }
    free(copy);
}

static double t_assign_wall, t_assign_mono;

static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *l, void *opaque) {
    (void)opaque;
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        rd_kafka_assign(rk, l);
        if (t_assign_mono == 0) {
            t_assign_mono = bench_mono();
            t_assign_wall = bench_wall();
        }
    } else {
        rd_kafka_assign(rk, NULL);
    }
}

int main(int argc, char **argv) {
    if (argc != 5 && argc != 6) {
        fprintf(stderr, "usage: bench_reference BOOTSTRAP TOPIC GROUP COUNT "
                        "[COMMIT_INTERVAL_MS]\n");
        return 2;
    }
    long count = bench_num("COUNT", argv[4], 1, 100000000);
    long commit_ms = argc == 6
                         ? bench_num("COMMIT_INTERVAL_MS", argv[5], 1, 86400000)
                         : 1000;
    double linger_s = 3.0 * (double)commit_ms / 1000 + 0.1;
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    bench_set(conf, "bootstrap.servers", argv[1]);
    bench_set(conf, "group.id", argv[3]);
    bench_set(conf, "client.id", "bench-reference");
    bench_set(conf, "session.timeout.ms", "6000");
    bench_set(conf, "heartbeat.interval.ms", "500");
    bench_set(conf, "auto.offset.reset", "earliest");
    bench_set(conf, "enable.auto.offset.store", "false");
    char commit_str[32];
    snprintf(commit_str, sizeof commit_str, "%ld", commit_ms);
    bench_set(conf, "auto.commit.interval.ms", commit_str);
    apply_extra(conf);
    rd_kafka_conf_set_rebalance_cb(conf, on_rebalance);
    rd_kafka_t *rk = bench_new(RD_KAFKA_CONSUMER, conf, "bench_reference");
    rd_kafka_poll_set_consumer(rk);
    rd_kafka_topic_partition_list_t *sub = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(sub, argv[2], RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t e = rd_kafka_subscribe(rk, sub);
    rd_kafka_topic_partition_list_destroy(sub);
    if (e) {
        fprintf(stderr, "bench_reference: subscribe: %s\n",
                rd_kafka_err2str(e));
        return 1;
    }

    /* One reusable one-element list per partition for
     * rd_kafka_offsets_store. Not one list for all: librdkafka caches the
     * partition handle inside the list element on first use. */
    rd_kafka_topic_partition_list_t *store[BENCH_MAX_PARTS] = {0};

    long got = 0, store_errors = 0;
    double t_first = 0, t_last = 0;
    double deadline = bench_mono() + 120;
    while (got < count) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
        if (!m) {
            if (bench_mono() > deadline) {
                fprintf(stderr,
                        "bench_reference: timed out with %ld of %ld "
                        "messages\n",
                        got, count);
                return 1;
            }
            continue;
        }
        if (m->err) {
            if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                fprintf(stderr, "bench_reference: %s\n",
                        rd_kafka_message_errstr(m));
            rd_kafka_message_destroy(m);
            continue;
        }
        if (got++ == 0)
            t_first = bench_mono();
        if (m->partition < 0 || m->partition >= BENCH_MAX_PARTS) {
            fprintf(stderr, "bench_reference: partition %d out of range\n",
                    (int)m->partition);
            return 1;
        }
        rd_kafka_topic_partition_list_t **l = &store[m->partition];
        if (!*l) {
            *l = rd_kafka_topic_partition_list_new(1);
            rd_kafka_topic_partition_list_add(*l, argv[2], m->partition);
        }
        (*l)->elems[0].offset = m->offset + 1;
        if (rd_kafka_offsets_store(rk, *l) || (*l)->elems[0].err)
            store_errors++;
        rd_kafka_message_destroy(m);
    }
    t_last = bench_mono();
    /* Keep polling a little so that auto-commit, not the final commit
     * below, commits the end: khost is timed from its auto-commits. */
    while (bench_mono() < t_last + linger_s) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 10);
        if (m)
            rd_kafka_message_destroy(m);
    }
    e = rd_kafka_commit(rk, NULL, 0 /* sync */);
    if (e && e != RD_KAFKA_RESP_ERR__NO_OFFSET)
        fprintf(stderr, "bench_reference: final commit: %s\n",
                rd_kafka_err2str(e));
    double secs = t_last - t_first;
    printf("REFERENCE messages=%ld seconds=%.4f msgs_per_s=%.0f "
           "assign_to_first_s=%.4f assign_wall=%.3f store_errors=%ld\n",
           got, secs, secs > 0 ? (double)got / secs : 0.0,
           t_first - t_assign_mono, t_assign_wall, store_errors);
    fflush(stdout);
    for (int p = 0; p < BENCH_MAX_PARTS; p++)
        if (store[p])
            rd_kafka_topic_partition_list_destroy(store[p]);
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    return 0;
}
