/*
 * regress_acks: a clean shutdown keeps a plugin's last deferred acks.
 * Before, the drain waited out shutdown_timeout_ms for deferred messages
 * nothing asked the worker to ack, khost committed, and only then did the
 * workers tick and terminate, so every clean stop redelivered the whole
 * last deferred batch; on_revoke was not called at shutdown either.
 */
#define _GNU_SOURCE
#include "harness.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#define FAULT KHOST_BUILD_DIR "/plugins/fault.so"

/* The host of the running test (each test runs in a process of its own).
 * A failed assertion skips the test's own stop; fini ends the host by its
 * pid then, so no host outlives a failing test. */
static th_host h;

static void stop_leftover_host(void) {
    if (h.pid)
        th_host_stop(&h, SIGKILL, 5000);
}

TestSuite(regress_acks, .fini = stop_leftover_host);
#define PARTS 4
#define PER 500

/* defer_all: every message DEFERRED, acked at the next tick, or at
 * on_revoke unless ack_on_revoke = false. The tick is a minute away, so
 * only the shutdown can bring the acks. */
static void run(const char *topic, const char *ack_on_revoke) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, topic, PARTS);
    th_produce(&c, topic, PARTS, PER, -1, -1, NULL);
    char *dir = tu_tmpdir();
    char *ini;
    cr_assert_neq(asprintf(&ini,
                           "[host]\nbrokers = %s\n"
                           "[kafka]\nsession.timeout.ms = 6000\n"
                           "heartbeat.interval.ms = 500\n"
                           "[pipeline.p]\ntopics = %s\ngroup = g-%s\n"
                           "plugin = " FAULT "\nworkers = 2\n"
                           "tick_interval_ms = 60000\n"
                           "shutdown_timeout_ms = 5000\n"
                           "[pipeline.p.config]\nrecord = %s/p.jsonl\n"
                           "defer_all = true\nack_on_revoke = %s\n",
                           c.bootstraps, topic, topic, dir, ack_on_revoke),
                  -1);
    char group[64];
    snprintf(group, sizeof group, "g-%s", topic);
    th_host_start(&h, dir, "acks", ini);
    char *rec;
    cr_assert_neq(asprintf(&rec, "%s/p.jsonl", dir), -1);
    const char *paths[] = {rec};
    cr_assert(th_wait_distinct(paths, 1, PARTS, PER, PARTS * PER, 60000),
              "not every message was handled:\n%s", th_log(&h));
    /* Handled and deferred, none acked yet: nothing past the start. */
    for (int p = 0; p < PARTS; p++)
        cr_assert_leq(th_committed(&c, group, topic, p), 0);
    int64_t t0 = th_now_ms();
    int status = th_host_stop(&h, SIGTERM, 60000);
    int64_t took = th_now_ms() - t0;
    cr_assert_eq(status, 0, "exit status %d:\n%s", status, th_log(&h));
    for (int p = 0; p < PARTS; p++)
        cr_assert_eq(th_committed(&c, group, topic, p), PER,
                     "partition %d committed %lld of %d after a clean stop "
                     "(%lld ms); the last deferred acks were lost:\n%s",
                     p, (long long)th_committed(&c, group, topic, p), PER,
                     (long long)took, th_log(&h));
    free(rec);
    free(ini);
    th_host_free(&h);
    tu_rmdir(dir);
    free(dir);
    th_cluster_stop(&c);
}

Test(regress_acks, tick_and_terminate_acks_count_at_shutdown, .timeout = 180) {
    run("acks-tick", "false");
}

Test(regress_acks, on_revoke_acks_count_at_shutdown, .timeout = 180) {
    run("acks-revoke", "true");
}
