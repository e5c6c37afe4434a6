/*
 * runtime: one khost process against the mock cluster, checked with a
 * delivery ledger (every produced offset handled; duplicates only where
 * messages were in flight and unacked when a worker died).
 */
#define _GNU_SOURCE
#include "harness.h"
#include "testutil.h"
#include "transport.h"

#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FAULT KHOST_BUILD_DIR "/plugins/fault.so"

/* A pipeline section with the fault plugin recording to dir/name.jsonl. */
static char *pipeline_ini(const char *dir, const char *name, const char *topic,
                          int workers, const char *extra_pipeline,
                          const char *extra_config) {
    char *s;
    cr_assert_neq(asprintf(&s,
                           "[pipeline.%s]\n"
                           "topics = %s\n"
                           "group = g-%s\n"
                           "plugin = " FAULT "\n"
                           "workers = %d\n"
                           "%s\n"
                           "[pipeline.%s.config]\n"
                           "record = %s/%s.jsonl\n"
                           "%s\n",
                           name, topic, name, workers,
                           extra_pipeline ? extra_pipeline : "", name, dir,
                           name, extra_config ? extra_config : ""),
                  -1);
    return s;
}

static char *host_ini(th_cluster *c, const char *kafka_extra,
                      const char *pipelines) {
    char *s;
    cr_assert_neq(asprintf(&s,
                           "[host]\nbrokers = %s\n"
                           "[kafka]\n"
                           "session.timeout.ms = 6000\n"
                           "heartbeat.interval.ms = 500\n"
                           "%s\n%s",
                           c->bootstraps, kafka_extra ? kafka_extra : "",
                           pipelines),
                  -1);
    return s;
}

static char *record_path(const char *dir, const char *name) {
    char *s;
    cr_assert_neq(asprintf(&s, "%s/%s.jsonl", dir, name), -1);
    return s;
}

/* Every produced (partition, offset) handled at least once. */
static void assert_complete(th_ledger *l) {
    for (int p = 0; p < l->parts; p++)
        for (int o = 0; o < l->per_part; o++)
            cr_assert_gt(l->seen[p][o], 0, "partition %d offset %d was lost", p,
                         o);
    cr_assert_eq(l->bad_lines, 0, "record lines outside the produced range");
}

static void assert_committed_all(th_cluster *c, const char *group,
                                 const char *topic, int parts, int end) {
    for (int p = 0; p < parts; p++)
        cr_assert_eq(th_committed(c, group, topic, p), end,
                     "partition %d committed %lld, expected %d", p,
                     (long long)th_committed(c, group, topic, p), end);
}

Test(runtime, every_message_once_with_fields_intact, .timeout = 90) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "t1", 4);
    int64_t produced_at = th_produce(&c, "t1", 4, 500, -1, -1, NULL);
    char *dir = tu_tmpdir();
    char *pl = pipeline_ini(dir, "p", "t1", 2, NULL, NULL);
    char *ini = host_ini(&c, NULL, pl);
    th_host h;
    th_host_start(&h, dir, "host", ini);
    char *rec = record_path(dir, "p");
    const char *paths[] = {rec};
    cr_assert(th_wait_distinct(paths, 1, 4, 500, 2000, 40000),
              "not all messages handled; log:\n%s", th_log(&h));
    th_sleep_ms(1500); /* one auto-commit interval */
    cr_assert_eq(th_host_stop(&h, SIGTERM, 20000), 0, "unclean exit:\n%s",
                 th_log(&h));

    th_ledger l;
    th_ledger_init(&l, 4, 500);
    th_ledger_add_file(&l, rec);
    assert_complete(&l);
    cr_assert_eq(th_ledger_duplicates(&l), 0, "no crash, so no duplicates");
    assert_committed_all(&c, "g-p", "t1", 4, 500);

    /* Field by field for a few messages: key, value, header, timestamp. */
    char *text = tu_read_file(rec, NULL);
    const int probes[][2] = {{0, 0}, {1, 17}, {2, 250}, {3, 499}};
    for (size_t i = 0; i < sizeof probes / sizeof probes[0]; i++) {
        int p = probes[i][0], o = probes[i][1];
        char want[256];
        snprintf(want, sizeof want,
                 "{\"topic\":\"t1\",\"partition\":%d,\"offset\":%d,"
                 "\"key\":\"k%d-%d\",\"value\":\"v %d %d\",\"timestamp\":",
                 p, o, p, o, p, o);
        char *line = strstr(text, want);
        cr_assert_not_null(line, "no record for %s", want);
        long long ts = strtoll(line + strlen(want), NULL, 10);
        cr_assert(ts >= produced_at - 1000 && ts <= produced_at + 60000,
                  "timestamp %lld not from the produce time", ts);
        char *end = strchr(line, '\n');
        char hdr[160];
        snprintf(hdr, sizeof hdr,
                 "\"timestamp_type\":\"create\",\"headers\":[{\"name\":"
                 "\"idx\",\"value\":\"%d\"}],\"attempt\":1}",
                 o);
        char *found = strstr(line, hdr);
        cr_assert(found && found < end, "headers/attempt wrong in: %.*s",
                  (int)(end - line), line);
    }
    /* Both workers and the spare (spare_workers = 1) ran terminate on
     * shutdown; none had to be killed. */
    cr_assert_eq(th_log_count(&h, ": terminated"), 3, "%s", th_log(&h));
    cr_assert_eq(th_log_count(&h, "did not stop in time"), 0, "%s", th_log(&h));
    free(text);
    th_ledger_free(&l);
    th_host_free(&h);
    th_cluster_stop(&c);
    tu_rmdir(dir);
}

/* Parse "partition=P rewound to offset=O" lines of the host log. */
static void rewind_points(th_host *h, int parts, long *rewound) {
    char *log = th_log(h);
    for (int p = 0; p < parts; p++)
        rewound[p] = -1;
    for (char *s = log; (s = strstr(s, " rewound to offset=")); s++) {
        char *line = s;
        while (line > log && line[-1] != '\n')
            line--;
        char *pp = strstr(line, "partition=");
        if (!pp || pp > s)
            continue;
        int p = atoi(pp + 10);
        long o = atol(s + strlen(" rewound to offset="));
        if (p >= 0 && p < parts && (rewound[p] < 0 || o < rewound[p]))
            rewound[p] = o;
    }
    free(log);
}

Test(runtime, kill_worker_resumes_at_acked_without_rebalance, .timeout = 90) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "t2", 4);
    th_produce(&c, "t2", 4, 1000, -1, -1, NULL);
    char *dir = tu_tmpdir();
    char *pl = pipeline_ini(dir, "p", "t2", 2, NULL, "slow_ms = 1");
    char *ini = host_ini(&c, NULL, pl);
    th_host h;
    th_host_start(&h, dir, "host", ini);
    char *rec = record_path(dir, "p");
    const char *paths[] = {rec};
    pid_t host_pid = h.pid;
    cr_assert(th_wait_distinct(paths, 1, 4, 1000, 600, 40000), "%s",
              th_log(&h));
    pid_t victim = th_worker_pid(&h, 0);
    cr_assert_gt(victim, 0);
    cr_assert_eq(kill(victim, SIGKILL), 0);
    cr_assert(th_wait_log(&h, "crashed: killed by SIGKILL", 1, 10000), "%s",
              th_log(&h));
    cr_assert(th_wait_distinct(paths, 1, 4, 1000, 4000, 60000), "%s",
              th_log(&h));
    cr_assert(th_host_alive(&h), "host died");
    cr_assert_eq(h.pid, host_pid);
    cr_assert_neq(th_worker_pid(&h, 0), victim, "worker 0 not replaced");
    /* The group never rebalanced: one assignment, no revoke. */
    cr_assert_eq(th_log_count(&h, "rebalance #"), 1, "%s", th_log(&h));
    cr_assert_eq(th_log_count(&h, "revoked"), 0);

    th_sleep_ms(1500);
    cr_assert_eq(th_host_stop(&h, SIGTERM, 20000), 0);
    th_ledger l;
    th_ledger_init(&l, 4, 1000);
    th_ledger_add_file(&l, rec);
    assert_complete(&l);
    /* Duplicates only at or after each rewind point (acked + 1), and no
     * more than one worker can have in flight. */
    long rewound[4];
    rewind_points(&h, 4, rewound);
    int dups = 0;
    for (int p = 0; p < 4; p++)
        for (int o = 0; o < 1000; o++)
            if (l.seen[p][o] > 1) {
                dups += l.seen[p][o] - 1;
                cr_assert(rewound[p] >= 0 && o >= rewound[p],
                          "partition %d offset %d duplicated but it was "
                          "acked before the crash (rewound to %ld)",
                          p, o, rewound[p]);
                cr_assert_eq(l.attempt[p][o], 2,
                             "a redelivery carries attempt 2");
            }
    cr_assert_leq(dups, 4096, "more duplicates than a worker has in flight");
    assert_committed_all(&c, "g-p", "t2", 4, 1000);
    th_ledger_free(&l);
    th_host_free(&h);
    th_cluster_stop(&c);
    tu_rmdir(dir);
}

Test(runtime, deferred_without_ack_holds_commit_and_redelivers, .timeout = 90) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "t3", 2);
    /* Partition 0's message 40 is deferred and never acked. */
    th_produce(&c, "t3", 2, 100, 0, 40, "LATER");
    char *dir = tu_tmpdir();
    char *pl = pipeline_ini(dir, "p", "t3", 1, "shutdown_timeout_ms = 1000",
                            "defer_on = LATER");
    char *ini = host_ini(&c, NULL, pl);
    th_host h;
    th_host_start(&h, dir, "host", ini);
    char *rec = record_path(dir, "p");
    const char *paths[] = {rec};
    cr_assert(th_wait_distinct(paths, 1, 2, 100, 200, 40000), "%s", th_log(&h));
    th_sleep_ms(2000);
    /* Acks after the deferred one do not move the commit past it. */
    cr_assert_eq(th_committed(&c, "g-p", "t3", 0), 40);
    cr_assert_eq(th_committed(&c, "g-p", "t3", 1), 100);
    cr_assert_eq(th_host_stop(&h, SIGTERM, 20000), 0);
    cr_assert_eq(th_committed(&c, "g-p", "t3", 0), 40,
                 "shutdown committed past an unacked message");

    /* Restart without the defer: redelivery starts at acked + 1 = 40. */
    char *pl2 = pipeline_ini(dir, "p2", "t3", 1, NULL, NULL);
    /* Same group as before: rename the group line. */
    char *g = strstr(pl2, "group = g-p2");
    memcpy(g, "group = g-p \n", 13);
    char *ini2 = host_ini(&c, NULL, pl2);
    th_host h2;
    th_host_start(&h2, dir, "host2", ini2);
    char *rec2 = record_path(dir, "p2");
    const char *paths2[] = {rec2};
    cr_assert(th_wait_distinct(paths2, 1, 2, 100, 60, 40000), "%s",
              th_log(&h2));
    th_sleep_ms(1500);
    cr_assert_eq(th_host_stop(&h2, SIGTERM, 20000), 0);
    th_ledger l;
    th_ledger_init(&l, 2, 100);
    th_ledger_add_file(&l, rec2);
    cr_assert_eq(l.first[0], 40, "redelivery started at %d", l.first[0]);
    for (int o = 0; o < 40; o++)
        cr_assert_eq(l.seen[0][o], 0, "acked offset %d delivered again", o);
    for (int o = 40; o < 100; o++)
        cr_assert_eq(l.seen[0][o], 1);
    for (int o = 0; o < 100; o++)
        cr_assert_eq(l.seen[1][o], 0, "partition 1 was fully committed");
    th_ledger_free(&l);
    th_host_free(&h);
    th_host_free(&h2);
    th_cluster_stop(&c);
    tu_rmdir(dir);
}

Test(runtime, shutdown_midstream_then_restart_no_loss_no_dup, .timeout = 120) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "t5", 4);
    th_produce(&c, "t5", 4, 500, -1, -1, NULL);
    char *dir = tu_tmpdir();
    char *pl = pipeline_ini(dir, "p", "t5", 2, NULL, "slow_ms = 2");
    th_host h;
    th_host_start(&h, dir, "host", host_ini(&c, NULL, pl));
    char *rec = record_path(dir, "p");
    const char *paths[] = {rec};
    cr_assert(th_wait_distinct(paths, 1, 4, 500, 400, 40000), "%s", th_log(&h));
    cr_assert_eq(th_host_stop(&h, SIGTERM, 20000), 0, "%s", th_log(&h));
    cr_assert_eq(th_log_count(&h, "did not stop in time"), 0, "%s", th_log(&h));
    th_ledger first;
    th_ledger_init(&first, 4, 500);
    th_ledger_add_file(&first, rec);
    cr_assert_lt(th_ledger_distinct(&first), 2000, "stopped too late");
    int64_t committed[4];
    for (int p = 0; p < 4; p++) {
        committed[p] = th_committed(&c, "g-p", "t5", p);
        /* Everything handled was acked and committed before exit. */
        for (int o = 0; o < 500; o++)
            cr_assert_eq(first.seen[p][o] > 0, o < committed[p],
                         "partition %d offset %d: handled=%d committed=%lld", p,
                         o, first.seen[p][o], (long long)committed[p]);
    }

    char *rec2 = record_path(dir, "p-run2");
    char *pl2;
    cr_assert_neq(asprintf(&pl2,
                           "[pipeline.p]\ntopics = t5\ngroup = g-p\n"
                           "plugin = " FAULT "\nworkers = 2\n"
                           "[pipeline.p.config]\nrecord = %s\n",
                           rec2),
                  -1);
    th_host h2;
    th_host_start(&h2, dir, "host2", host_ini(&c, NULL, pl2));
    const char *both[] = {rec, rec2};
    cr_assert(th_wait_distinct(both, 2, 4, 500, 2000, 40000), "%s",
              th_log(&h2));
    cr_assert_eq(th_host_stop(&h2, SIGTERM, 20000), 0);
    th_ledger second;
    th_ledger_init(&second, 4, 500);
    th_ledger_add_file(&second, rec2);
    for (int p = 0; p < 4; p++) {
        int want = committed[p] < 0     ? 0
                   : committed[p] < 500 ? committed[p]
                                        : -1;
        cr_assert_eq(second.first[p], want,
                     "partition %d restarted at %d, committed %lld", p,
                     second.first[p], (long long)committed[p]);
        for (int o = 0; o < 500; o++)
            cr_assert_eq(first.seen[p][o] + second.seen[p][o], 1,
                         "partition %d offset %d handled %d times", p, o,
                         first.seen[p][o] + second.seen[p][o]);
    }
    th_ledger_free(&first);
    th_ledger_free(&second);
    th_host_free(&h);
    th_host_free(&h2);
    th_cluster_stop(&c);
    tu_rmdir(dir);
}

Test(runtime, restart_limit_fails_one_pipeline_not_the_other, .timeout = 90) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "bad", 2);
    th_create_topic(&c, "good", 2);
    th_produce(&c, "bad", 2, 50, -1, -1, NULL);
    th_produce(&c, "good", 2, 300, -1, -1, NULL);
    char *dir = tu_tmpdir();
    /* Every message of "bad" makes its worker exit. */
    char *bad =
        pipeline_ini(dir, "bad", "bad", 1, "max_restarts = 3\nmax_seconds = 30",
                     "exit_on = v ");
    char *good = pipeline_ini(dir, "good", "good", 1, NULL, NULL);
    char *both;
    cr_assert_neq(asprintf(&both, "%s\n%s", bad, good), -1);
    th_host h;
    th_host_start(&h, dir, "host", host_ini(&c, NULL, both));
    cr_assert(th_wait_log(&h, "pipeline=bad FAILED", 1, 40000), "%s",
              th_log(&h));
    char *rec = record_path(dir, "good");
    const char *paths[] = {rec};
    cr_assert(th_wait_distinct(paths, 1, 2, 300, 600, 40000), "%s", th_log(&h));
    cr_assert(th_host_alive(&h));
    /* 3 restarts allowed, the 4th crash fails the pipeline. */
    cr_assert_eq(th_log_count(&h, "pipeline=bad worker=0 restarting"), 3, "%s",
                 th_log(&h));
    th_sleep_ms(1500);
    cr_assert_eq(th_host_stop(&h, SIGTERM, 20000), 0);
    cr_assert_eq(th_committed(&c, "g-bad", "bad", 0), -1,
                 "a failed pipeline committed past acked");
    cr_assert_eq(th_committed(&c, "g-bad", "bad", 1), -1);
    assert_committed_all(&c, "g-good", "good", 2, 300);
    th_host_free(&h);
    th_cluster_stop(&c);
    tu_rmdir(dir);
}

Test(runtime, on_exhausted_exit_stops_host_nonzero, .timeout = 60) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "ex", 1);
    th_produce(&c, "ex", 1, 10, -1, -1, NULL);
    char *dir = tu_tmpdir();
    char *pl =
        pipeline_ini(dir, "ex", "ex", 1,
                     "max_restarts = 1\non_exhausted = exit", "crash_on = v ");
    th_host h;
    th_host_start(&h, dir, "host", host_ini(&c, NULL, pl));
    int64_t t0 = 0;
    for (int i = 0; i < 400 && th_host_alive(&h); i++)
        th_sleep_ms(100), t0++;
    cr_assert_not(th_host_alive(&h), "host did not exit: %s", th_log(&h));
    cr_assert_eq(th_host_stop(&h, SIGKILL, 1000), 1, "%s", th_log(&h));
    cr_assert_geq(th_log_count(&h, "pipeline=ex FAILED"), 1);
    th_host_free(&h);
    th_cluster_stop(&c);
    tu_rmdir(dir);
}

Test(runtime, hanging_handler_is_killed_and_partition_resumes, .timeout = 90) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "t9", 2);
    th_produce(&c, "t9", 2, 200, 1, 50, "STUCK");
    char *dir = tu_tmpdir();
    char *pl = pipeline_ini(dir, "p", "t9", 1, "handler_timeout_ms = 1000",
                            "hang_on = STUCK\nmisbehave_attempts = 1");
    th_host h;
    th_host_start(&h, dir, "host", host_ini(&c, NULL, pl));
    char *rec = record_path(dir, "p");
    const char *paths[] = {rec};
    cr_assert(th_wait_distinct(paths, 1, 2, 200, 400, 40000), "%s", th_log(&h));
    cr_assert_geq(th_log_count(&h, "over handler_timeout_ms=1000"), 1);
    cr_assert_geq(th_log_count(&h, "crashed: killed after "
                                   "handler_timeout_ms=1000 (hang) while "
                                   "handling t9 partition=1 offset=50"),
                  1, "%s", th_log(&h));
    th_sleep_ms(1500);
    cr_assert_eq(th_host_stop(&h, SIGTERM, 20000), 0);
    th_ledger l;
    th_ledger_init(&l, 2, 200);
    th_ledger_add_file(&l, rec);
    assert_complete(&l);
    cr_assert_eq(l.attempt[1][50], 2, "the hung message was redelivered");
    assert_committed_all(&c, "g-p", "t9", 2, 200);
    th_ledger_free(&l);
    th_host_free(&h);
    th_cluster_stop(&c);
    tu_rmdir(dir);
}

Test(runtime, handler_slower_than_max_poll_interval_keeps_membership,
     .timeout = 90) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "t10", 2);
    th_produce(&c, "t10", 2, 1, -1, -1, NULL);
    char *dir = tu_tmpdir();
    /* Each handler call takes 8 s, max.poll.interval.ms is 6 s. */
    char *pl = pipeline_ini(dir, "p", "t10", 2, "handler_timeout_ms = 0",
                            "slow_ms = 8000");
    th_host h;
    th_host_start(&h, dir, "host",
                  host_ini(&c, "max.poll.interval.ms = 6000", pl));
    char *rec = record_path(dir, "p");
    const char *paths[] = {rec};
    cr_assert(th_wait_distinct(paths, 1, 2, 1, 2, 30000), "%s", th_log(&h));
    /* Both calls are now running; wait for them to end and commit. */
    th_sleep_ms(10000);
    cr_assert_eq(th_committed(&c, "g-p", "t10", 0), 1, "%s", th_log(&h));
    cr_assert_eq(th_committed(&c, "g-p", "t10", 1), 1);
    cr_assert_eq(th_log_count(&h, "revoked"), 0, "%s", th_log(&h));
    cr_assert_eq(th_log_count(&h, "rebalance #"), 1, "%s", th_log(&h));
    cr_assert_eq(th_log_count(&h, "maximum poll interval"), 0);
    cr_assert_eq(th_host_stop(&h, SIGTERM, 20000), 0);
    th_host_free(&h);
    th_cluster_stop(&c);
    tu_rmdir(dir);
}

Test(runtime, broker_down_then_up_resumes_without_loss, .timeout = 120) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "t11", 2);
    th_produce(&c, "t11", 2, 1000, -1, -1, NULL);
    char *dir = tu_tmpdir();
    char *pl = pipeline_ini(dir, "p", "t11", 1, NULL, "slow_ms = 2");
    th_host h;
    th_host_start(&h, dir, "host", host_ini(&c, NULL, pl));
    char *rec = record_path(dir, "p");
    const char *paths[] = {rec};
    cr_assert(th_wait_distinct(paths, 1, 2, 1000, 300, 40000), "%s",
              th_log(&h));
    cr_assert_eq(rd_kafka_mock_broker_set_down(c.mock.cluster, 1), 0);
    th_sleep_ms(3000);
    cr_assert(th_host_alive(&h), "host died with the broker down");
    cr_assert_eq(rd_kafka_mock_broker_set_up(c.mock.cluster, 1), 0);
    cr_assert(th_wait_distinct(paths, 1, 2, 1000, 2000, 60000), "%s",
              th_log(&h));
    /* Commits wait for the coordinator; if the session expired while the
     * broker was down, the host rejoins and redelivers from the last
     * commit (duplicates, never loss). Either way the commit catches up. */
    cr_assert(th_wait_committed(&c, "g-p", "t11", 2, 1000, 60000), "%s",
              th_log(&h));
    cr_assert(th_host_alive(&h));
    cr_assert_geq(th_log_count(&h, "kafka: "), 1, "no log of the outage");
    cr_assert_eq(th_host_stop(&h, SIGTERM, 20000), 0);
    th_ledger l;
    th_ledger_init(&l, 2, 1000);
    th_ledger_add_file(&l, rec);
    assert_complete(&l);
    assert_committed_all(&c, "g-p", "t11", 2, 1000);
    th_ledger_free(&l);
    th_host_free(&h);
    th_cluster_stop(&c);
    tu_rmdir(dir);
}

/* A producer for c that takes messages up to 10 MB. */
static rd_kafka_t *big_producer(th_cluster *c) {
    char errstr[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", c->bootstraps, errstr,
                      sizeof errstr);
    cr_assert_eq(rd_kafka_conf_set(conf, "message.max.bytes", "10000000",
                                   errstr, sizeof errstr),
                 RD_KAFKA_CONF_OK, "%s", errstr);
    rd_kafka_t *rk =
        rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    cr_assert_not_null(rk, "%s", errstr);
    return rk;
}

Test(runtime, message_larger_than_a_batch_gets_through, .timeout = 90) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "big", 1);
    /* 3 MiB: three times the transport's 1 MiB batch budget. */
    size_t size = 3u << 20;
    char *value = malloc(size);
    for (size_t i = 0; i < size; i++)
        value[i] = (char)('a' + i % 26);
    rd_kafka_t *rk = big_producer(&c);
    for (int i = 0; i < 3; i++) {
        const char *small = "small";
        int big = i == 1;
        cr_assert_eq(rd_kafka_producev(
                         rk, RD_KAFKA_V_TOPIC("big"), RD_KAFKA_V_PARTITION(0),
                         RD_KAFKA_V_VALUE(big ? value : (char *)small,
                                          big ? size : strlen(small)),
                         RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                         RD_KAFKA_V_END),
                     0);
    }
    cr_assert_eq(rd_kafka_flush(rk, 30000), 0);
    rd_kafka_destroy(rk);

    char *dir = tu_tmpdir();
    char *pl = pipeline_ini(dir, "p", "big", 1, NULL, NULL);
    th_host h;
    th_host_start(&h, dir, "host", host_ini(&c, NULL, pl));
    char *rec = record_path(dir, "p");
    const char *paths[] = {rec};
    cr_assert(th_wait_distinct(paths, 1, 1, 3, 3, 40000), "%s", th_log(&h));
    cr_assert(th_wait_committed(&c, "g-p", "big", 1, 3, 20000), "%s",
              th_log(&h));
    cr_assert_eq(th_host_stop(&h, SIGTERM, 20000), 0);
    /* The recorded value is the whole 3 MiB, byte for byte. */
    size_t len;
    char *text = tu_read_file(rec, &len);
    char *start = strstr(text, "\"offset\":1,");
    cr_assert_not_null(start);
    char *v = strstr(start, "\"value\":\"");
    cr_assert_not_null(v);
    v += strlen("\"value\":\"");
    cr_assert_eq(memcmp(v, value, size), 0, "value corrupted");
    cr_assert_eq(v[size], '"', "value not %zu bytes", size);
    free(text);
    free(value);
    th_host_free(&h);
    th_cluster_stop(&c);
    tu_rmdir(dir);
}

/* Values from 1 B to nearly a whole ring frame (transport.h,
 * KH_RING_FRAME_MAX): the message ring fills, the host waits for the
 * worker to free it and skips to its front, and every value still
 * arrives byte for byte, in order. */
/* About 3.6 MB in all: the mock cluster drops a partition's oldest message
 * sets past a size bound, so a longer stream would lose its start. */
#define RING_MSGS 30
static size_t ring_value(int i, char *buf) {
    size_t len = (size_t)(i * 37 * 1024) % (KH_RING_FRAME_MAX - 4096) + 1;
    if (buf)
        for (size_t k = 0; k < len; k++)
            buf[k] = (char)('a' + (i + (int)k) % 26);
    return len;
}

Test(runtime, ring_sized_values_arrive_whole_and_in_order, .timeout = 90) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "ringv", 1);
    char *value = malloc(KH_RING_FRAME_MAX);
    rd_kafka_t *rk = big_producer(&c);
    for (int i = 0; i < RING_MSGS; i++) {
        size_t len = ring_value(i, value);
        cr_assert_eq(rd_kafka_producev(rk, RD_KAFKA_V_TOPIC("ringv"),
                                       RD_KAFKA_V_PARTITION(0),
                                       RD_KAFKA_V_VALUE(value, len),
                                       RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                       RD_KAFKA_V_END),
                     0);
    }
    cr_assert_eq(rd_kafka_flush(rk, 30000), 0);
    rd_kafka_destroy(rk);

    char *dir = tu_tmpdir();
    char *pl = pipeline_ini(dir, "p", "ringv", 1, NULL, NULL);
    th_host h;
    th_host_start(&h, dir, "host", host_ini(&c, NULL, pl));
    char *rec = record_path(dir, "p");
    /* The handler records before it acks: once committed, all is there. */
    cr_assert(th_wait_committed(&c, "g-p", "ringv", 1, RING_MSGS, 40000), "%s",
              th_log(&h));
    cr_assert_eq(th_host_stop(&h, SIGTERM, 20000), 0);
    size_t flen;
    char *text = tu_read_file(rec, &flen);
    const char *prev = text;
    for (int i = 0; i < RING_MSGS; i++) {
        char key[32];
        snprintf(key, sizeof key, "\"offset\":%d,", i);
        const char *at = strstr(text, key);
        cr_assert_not_null(at, "offset %d not recorded: %.300s", i,
                           text ? text : "(none)");
        cr_assert_geq(at, prev, "offset %d handled out of order", i);
        prev = at;
        const char *v = strstr(at, "\"value\":\"");
        cr_assert_not_null(v);
        v += strlen("\"value\":\"");
        size_t len = ring_value(i, value);
        cr_assert_eq(memcmp(v, value, len), 0, "offset %d: value corrupted", i);
        cr_assert_eq(v[len], '"', "offset %d: value not %zu bytes", i, len);
    }
    free(text);
    free(value);
    free(rec);
    th_host_free(&h);
    th_cluster_stop(&c);
    tu_rmdir(dir);
}

Test(runtime, cooperative_sticky_uses_incremental_assign, .timeout = 90) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "coop", 3);
    th_produce(&c, "coop", 3, 200, -1, -1, NULL);
    char *dir = tu_tmpdir();
    char *pl = pipeline_ini(dir, "p", "coop", 2, NULL, NULL);
    th_host h;
    th_host_start(
        &h, dir, "host",
        host_ini(&c, "partition.assignment.strategy = cooperative-sticky", pl));
    char *rec = record_path(dir, "p");
    const char *paths[] = {rec};
    cr_assert(th_wait_distinct(paths, 1, 3, 200, 600, 40000), "%s", th_log(&h));
    cr_assert(th_wait_committed(&c, "g-p", "coop", 3, 200, 20000), "%s",
              th_log(&h));
    /* A plain assign() would have been refused under COOPERATIVE. */
    cr_assert_eq(th_log_count(&h, "assign failed"), 0, "%s", th_log(&h));
    cr_assert_eq(th_host_stop(&h, SIGTERM, 20000), 0, "%s", th_log(&h));
    th_ledger l;
    th_ledger_init(&l, 3, 200);
    th_ledger_add_file(&l, rec);
    assert_complete(&l);
    cr_assert_eq(th_ledger_duplicates(&l), 0);
    th_ledger_free(&l);
    th_host_free(&h);
    th_cluster_stop(&c);
    tu_rmdir(dir);
}

Test(runtime, shutdown_while_workers_start_runs_terminate, .timeout = 60) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "st", 1);
    char *dir = tu_tmpdir();
    char *ini;
    cr_assert_neq(asprintf(&ini,
                           "[host]\nbrokers = %s\n"
                           "[pipeline.p]\ntopics = st\ngroup = g-st\n"
                           "plugin = " KHOST_FIXTURE_DIR "/fxs_slow_init.so\n"
                           "workers = 2\nshutdown_timeout_ms = 20000\n",
                           c.bootstraps),
                  -1);
    th_host h;
    th_host_start(&h, dir, "host", ini);
    /* SIGTERM while both workers are inside their 1.5 s init. */
    cr_assert(th_wait_log(&h, "running 1 pipeline(s)", 1, 10000), "%s",
              th_log(&h));
    int64_t t0 = th_now_ms();
    cr_assert_eq(th_host_stop(&h, SIGTERM, 30000), 0, "%s", th_log(&h));
    int64_t took = th_now_ms() - t0;
    /* They finish init, read SHUTDOWN and terminate: no 20 s timeout, no
     * kill. */
    cr_assert_lt(took, 10000, "shutdown took %lld ms", (long long)took);
    cr_assert_eq(th_log_count(&h, "slow_init terminated"), 2, "%s", th_log(&h));
    cr_assert_eq(th_log_count(&h, "did not stop in time"), 0, "%s", th_log(&h));
    th_host_free(&h);
    th_cluster_stop(&c);
    tu_rmdir(dir);
}
