/*
 * group: several khost processes in one consumer group, as on several
 * machines. Short session timeouts keep the mock cluster's rebalances
 * quick (see ../shared/librdkafka-notes.md).
 */
#define _GNU_SOURCE
#include "harness.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FAULT KHOST_BUILD_DIR "/plugins/fault.so"

/* One host of group g on topic, recording to dir/<name>.jsonl. */
static char *member_ini(th_cluster *c, const char *dir, const char *name,
                        const char *topic, const char *config) {
    char *s;
    cr_assert_neq(asprintf(&s,
                           "[host]\nbrokers = %s\n"
                           "[kafka]\nsession.timeout.ms = 4500\n"
                           "heartbeat.interval.ms = 300\n"
                           "auto.commit.interval.ms = 200\n"
                           "[pipeline.p]\ntopics = %s\ngroup = g\n"
                           "plugin = " FAULT "\nworkers = 2\n"
                           "[pipeline.p.config]\nrecord = %s/%s.jsonl\n%s\n",
                           c->bootstraps, topic, dir, name,
                           config ? config : ""),
                  -1);
    return s;
}

static char *rec_path(const char *dir, const char *name) {
    char *s;
    cr_assert_neq(asprintf(&s, "%s/%s.jsonl", dir, name), -1);
    return s;
}

Test(group, second_host_splits_then_leaves_nothing_lost, .timeout = 150) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "gt", 4);
    th_produce(&c, "gt", 4, 300, -1, -1, NULL);
    char *dir = tu_tmpdir();
    th_host a, b;
    th_host_start(&a, dir, "a", member_ini(&c, dir, "a", "gt", "slow_ms = 5"));
    cr_assert(th_wait_log(&a, "assigned 4 partition(s)", 1, 20000), "%s",
              th_log(&a));
    th_host_start(&b, dir, "b", member_ini(&c, dir, "b", "gt", "slow_ms = 5"));
    /* The group splits: each host gets 2 of the 4 partitions. */
    cr_assert(th_wait_log(&b, "assigned 2 partition(s)", 1, 30000),
              "a:\n%s\nb:\n%s", th_log(&a), th_log(&b));
    cr_assert(th_wait_log(&a, "assigned 2 partition(s)", 1, 30000), "%s",
              th_log(&a));
    th_sleep_ms(1000);
    th_produce(&c, "gt", 4, 0, -1, -1, NULL);
    /* b leaves; a takes all four back. */
    cr_assert_eq(th_host_stop(&b, SIGTERM, 20000), 0, "%s", th_log(&b));
    cr_assert(th_wait_log(&a, "assigned 4 partition(s)", 2, 30000), "%s",
              th_log(&a));
    char *ra = rec_path(dir, "a"), *rb = rec_path(dir, "b");
    const char *paths[] = {ra, rb};
    cr_assert(th_wait_distinct(paths, 2, 4, 300, 1200, 60000), "%s",
              th_log(&a));
    cr_assert_eq(th_host_stop(&a, SIGTERM, 20000), 0);
    th_ledger l;
    th_ledger_init(&l, 4, 300);
    th_ledger_add_file(&l, ra);
    th_ledger_add_file(&l, rb);
    for (int p = 0; p < 4; p++)
        for (int o = 0; o < 300; o++)
            cr_assert_gt(l.seen[p][o], 0, "partition %d offset %d lost", p, o);
    /* A revoke drains in-flight results and commits before release. On
     * real Kafka that commit succeeds; librdkafka 2.0.2's mock refuses
     * OffsetCommit while the group is JOINING, so here a handover repeats
     * what was acked since the last auto-commit (200 ms): at 4 workers x
     * 200 msg/s, two handovers stay far below this bound. */
    cr_assert_leq(th_ledger_duplicates(&l), 600, "duplicates: %d",
                  th_ledger_duplicates(&l));
    cr_assert_gt(l.lines, 0);
    th_ledger_free(&l);
    th_host_free(&a);
    th_host_free(&b);
    th_cluster_stop(&c);
    tu_rmdir(dir);
}

Test(group, kill9_of_a_host_survivor_takes_over, .timeout = 150) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "gk", 4);
    th_produce(&c, "gk", 4, 1500, -1, -1, NULL);
    char *dir = tu_tmpdir();
    th_host a, b;
    th_host_start(&a, dir, "a", member_ini(&c, dir, "a", "gk", "slow_ms = 2"));
    th_host_start(&b, dir, "b", member_ini(&c, dir, "b", "gk", "slow_ms = 2"));
    cr_assert(th_wait_log(&a, "assigned 2 partition(s)", 1, 40000), "%s",
              th_log(&a));
    cr_assert(th_wait_log(&b, "assigned 2 partition(s)", 1, 40000), "%s",
              th_log(&b));
    th_sleep_ms(1500);
    pid_t wa0 = th_worker_pid(&a, 0), wa1 = th_worker_pid(&a, 1);
    cr_assert_eq(th_host_stop(&a, SIGKILL, 5000), 128 + SIGKILL);
    /* Its workers die with it. */
    th_sleep_ms(500);
    cr_assert(!th_pid_running(wa0) && !th_pid_running(wa1),
              "workers of a killed host still run");
    cr_assert(th_wait_log(&b, "assigned 4 partition(s)", 1, 40000), "%s",
              th_log(&b));
    char *ra = rec_path(dir, "a"), *rb = rec_path(dir, "b");
    const char *paths[] = {ra, rb};
    cr_assert(th_wait_distinct(paths, 2, 4, 1500, 6000, 90000), "%s",
              th_log(&b));
    th_sleep_ms(1500);
    cr_assert_eq(th_host_stop(&b, SIGTERM, 20000), 0);
    th_ledger l;
    th_ledger_init(&l, 4, 1500);
    th_ledger_add_file(&l, ra);
    th_ledger_add_file(&l, rb);
    for (int p = 0; p < 4; p++)
        for (int o = 0; o < 1500; o++)
            cr_assert_gt(l.seen[p][o], 0, "partition %d offset %d lost", p, o);
    /* Redelivered: at most what a handled since its last commit (1 s of
     * auto-commit at ~500 msg/s per worker, plus in flight). */
    cr_assert_leq(th_ledger_duplicates(&l), 2 * 4096);
    for (int p = 0; p < 4; p++)
        cr_assert_eq(th_committed(&c, "g", "gk", p), 1500);
    th_ledger_free(&l);
    th_host_free(&a);
    th_host_free(&b);
    th_cluster_stop(&c);
    tu_rmdir(dir);
}

Test(group, ack_after_revoke_is_dropped_not_committed, .timeout = 240) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "gr", 2);
    th_produce(&c, "gr", 2, 50, -1, -1, NULL);
    char *dir = tu_tmpdir();
    /* a defers every message and acks only at its tick, 20 s after start,
     * never in on_revoke: after the revoke (~5-9 s, 12 s once under ASan
     * on a loaded machine, when a 12 s tick came just before it and its
     * acks counted) its acks for the old assignment arrive once the host
     * has released the partitions. */
    th_host a;
    char *ini = member_ini(&c, dir, "a", "gr",
                           "defer_all = true\nack_on_revoke = false");
    char *pos = strstr(ini, "workers = 2\n");
    char *ini2;
    cr_assert_neq(asprintf(&ini2,
                           "%.*sworkers = 1\ntick_interval_ms = 20000\n"
                           "shutdown_timeout_ms = 500\n%s",
                           (int)(pos - ini), ini,
                           pos + strlen("workers = 2\n")),
                  -1);
    th_host_start(&a, dir, "a", ini2);
    char *ra = rec_path(dir, "a");
    const char *pa[] = {ra};
    cr_assert(th_wait_distinct(pa, 1, 2, 50, 100, 40000), "%s", th_log(&a));
    th_sleep_ms(1500);
    cr_assert_eq(th_committed(&c, "g", "gr", 0), -1, "deferred were committed");

    /* b joins: a's partitions are revoked; its plugin acks in on_revoke,
     * after the release, and those acks must be dropped. */
    th_host b;
    th_host_start(&b, dir, "b", member_ini(&c, dir, "b", "gr", NULL));
    cr_assert(th_wait_log(&a, "revoked", 1, 30000), "%s", th_log(&a));
    cr_assert(th_wait_log(&b, "assigned 1 partition(s)", 1, 30000), "%s",
              th_log(&b));
    th_sleep_ms(1000);
    /* b's partition starts from the beginning: nothing of a's was
     * committed, not even the acks a's plugin sent after the revoke. */
    th_ledger lb;
    char *rb = rec_path(dir, "b");
    const char *pb[] = {rb};
    /* Generous: under valgrind on 2 loaded cores, b (joining, fetching
     * from 0) once took over 30 s. */
    cr_assert(th_wait_distinct(pb, 1, 2, 50, 50, 90000), "%s", th_log(&b));
    th_ledger_init(&lb, 2, 50);
    th_ledger_add_file(&lb, rb);
    int p = lb.first[0] >= 0 ? 0 : 1;
    cr_assert_eq(lb.first[p], 0, "b started partition %d at %d", p,
                 lb.first[p]);
    cr_assert_geq(th_log_count(&a, "with 50 message(s) after it not committed"),
                  1, "%s", th_log(&a));
    /* The tick acks all 100 old-assignment messages: every one dropped.
     * (Under load an extra rebalance can add more stale acks, never fewer.) */
    cr_assert(th_wait_log(&a, "ack(s) for messages revoked", 1, 40000), "%s",
              th_log(&a));
    char *log = th_log(&a);
    const char *hit = strstr(log, "ignored ");
    cr_assert(hit && atoi(hit + strlen("ignored ")) >= 100, "%s", log);
    free(log);
    th_ledger_free(&lb);
    th_host_stop(&b, SIGTERM, 20000);
    th_host_stop(&a, SIGTERM, 20000);
    th_host_free(&a);
    th_host_free(&b);
    th_cluster_stop(&c);
    tu_rmdir(dir);
}
