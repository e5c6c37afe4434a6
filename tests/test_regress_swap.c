/*
 * regress_swap: a plugin swap's cutover is bounded as a whole, and a
 * canary's probation may outlast the 30 s start deadline.
 *
 * 1. The cutover used to run inside the READY frame's handling and drained
 *    each partition on its own, up to 5 s apiece: with handlers hung in
 *    long calls on 8 partitions, the event loop stood still for about
 *    8 x 5 s. It now runs from the tick and drains every partition it
 *    moves in one wait, bounded by 5 s in all.
 * 2. The swap's 30 s deadline for its new workers to start also applied
 *    while a canary ran, so a reload_probation_ms above about 30 s
 *    abandoned every canary ("new workers were not ready within 30 s").
 * 3. A partition named its pipeline in log lines through the config's own
 *    string, which a swap frees once nothing else needs the old config:
 *    the next line from partition.c (here a retry's rewind) read freed
 *    memory (seen by ASan; a plain build prints whatever is there).
 */
#define _GNU_SOURCE
#include "harness.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#define FAULT KHOST_BUILD_DIR "/plugins/fault.so"

static pid_t current_pid;
static char current_dir[256];

static void kill_leftovers(void) {
    if (current_pid > 0) {
        kill(current_pid, SIGKILL);
        waitpid(current_pid, NULL, 0);
    }
    if (current_dir[0])
        tu_rmdir(current_dir);
    current_pid = 0;
    current_dir[0] = '\0';
}

TestSuite(regress_swap, .fini = kill_leftovers);

static void start_host(th_cluster *c, th_host *h, char **dir, char **so,
                       const char *topic, int parts, const char *extra,
                       const char *plugin_config) {
    th_cluster_start(c, 1);
    th_create_topic(c, topic, parts);
    *dir = tu_tmpdir();
    snprintf(current_dir, sizeof current_dir, "%s", *dir);
    cr_assert_neq(asprintf(so, "%s/plugin.so", *dir), -1);
    tu_cp_over(FAULT, *so);
    char *ini;
    cr_assert_neq(asprintf(&ini,
                           "[host]\nbrokers = %s\n"
                           "[kafka]\nsession.timeout.ms = 6000\n"
                           "heartbeat.interval.ms = 500\n"
                           "[pipeline.p]\ntopics = %s\ngroup = g-%s\n"
                           "plugin = %s\n%s\n"
                           "[pipeline.p.config]\n%s\n",
                           c->bootstraps, topic, topic, *so, extra,
                           plugin_config),
                  -1);
    th_host_start(h, *dir, "host", ini);
    current_pid = h->pid;
    free(ini);
}

static void stop_host(th_cluster *c, th_host *h, char *dir, char *so) {
    int rc = th_host_stop(h, SIGTERM, 60000);
    current_pid = 0;
    cr_assert_eq(rc, 0, "khost exit status %d: %s", rc, th_log(h));
    th_host_free(h);
    th_cluster_stop(c);
    tu_rmdir(dir);
    current_dir[0] = '\0';
    free(dir);
    free(so);
}

Test(regress_swap, cutover_of_many_hung_partitions_is_bounded_in_all,
     .timeout = 240) {
    th_cluster c;
    th_host h;
    char *dir, *so;
    /* One worker per partition, each stuck in a 60 s handler call when the
     * swap comes: every partition's drain runs out its bound. */
    start_host(&c, &h, &dir, &so, "sw1", 8,
               "workers = 8\nhandler_timeout_ms = 0\n"
               "shutdown_timeout_ms = 5000",
               "slow_ms = 60000");
    cr_assert(th_wait_log(&h, "rebalance #1: assigned 8", 1, 60000), "%s",
              th_log(&h));
    th_produce(&c, "sw1", 8, 1, -1, -1, NULL);
    th_sleep_ms(2000); /* dispatched: every worker is in its call */
    tu_cp_over(FAULT, so);
    int64_t t0 = th_now_ms();
    cr_assert_eq(kill(h.pid, SIGHUP), 0);
    cr_assert(th_wait_log(&h, "reloaded: plugin", 1, 120000), "%s", th_log(&h));
    int64_t took = th_now_ms() - t0;
    /* One drain of 5 s for all 8, plus up to 5 s for the old workers to
     * stop (they are still in their calls, so they are killed), plus the
     * new workers' start. Per partition it was 8 x 5 s = 40 s and more. */
    cr_assert_lt(took, 25000,
                 "the swap took %lld ms: the cutover drained partition by "
                 "partition: %s",
                 (long long)took, th_log(&h));
    cr_assert(th_host_alive(&h), "%s", th_log(&h));
    stop_host(&c, &h, dir, so);
}

Test(regress_swap, canary_probation_longer_than_30s_passes, .timeout = 240) {
    th_cluster c;
    th_host h;
    char *dir, *so;
    start_host(&c, &h, &dir, &so, "sw2", 2,
               "workers = 1\nreload_strategy = canary\n"
               "reload_probation_ms = 36000",
               "");
    cr_assert(th_wait_log(&h, "rebalance #1: assigned 2", 1, 60000), "%s",
              th_log(&h));
    th_produce(&c, "sw2", 2, 50, -1, -1, NULL);
    tu_cp_over(FAULT, so);
    cr_assert_eq(kill(h.pid, SIGHUP), 0);
    cr_assert(th_wait_log(&h, "canary: sw2 partition=", 1, 60000), "%s",
              th_log(&h));
    cr_assert(th_wait_log(&h, "canary passed", 1, 90000),
              "the canary did not pass its 36 s probation: %s", th_log(&h));
    cr_assert_eq(th_log_count(&h, "ABANDONED"), 0, "%s", th_log(&h));
    cr_assert(th_wait_log(&h, "reloaded: plugin", 1, 30000), "%s", th_log(&h));
    th_produce(&c, "sw2", 2, 50, -1, -1, NULL);
    cr_assert(th_wait_committed(&c, "g-sw2", "sw2", 2, 100, 60000), "%s",
              th_log(&h));
    stop_host(&c, &h, dir, so);
}

Test(regress_swap, partition_log_lines_after_a_swap_name_the_pipeline,
     .timeout = 180) {
    th_cluster c;
    th_host h;
    char *dir, *so;
    start_host(&c, &h, &dir, &so, "sw3", 1,
               "workers = 1\nreload_probation_ms = 0\nretry_backoff_ms = 100",
               "retry_on = RETRY-ME\nmisbehave_attempts = 1");
    cr_assert(th_wait_log(&h, "rebalance #1: assigned 1", 1, 60000), "%s",
              th_log(&h));
    tu_cp_over(FAULT, so);
    cr_assert_eq(kill(h.pid, SIGHUP), 0);
    /* No probation: the old config is freed right after the cutover. */
    cr_assert(th_wait_log(&h, "reloaded: plugin", 1, 60000), "%s", th_log(&h));
    th_sleep_ms(500);
    th_produce(&c, "sw3", 1, 10, 0, 5, "RETRY-ME");
    cr_assert(th_wait_committed(&c, "g-sw3", "sw3", 1, 10, 60000), "%s",
              th_log(&h));
    cr_assert(th_log_count(&h, "pipeline=p topic=sw3 partition=0 rewound to "
                               "offset=5") >= 1,
              "the retry's rewind does not name its pipeline: %s", th_log(&h));
    cr_assert(th_host_alive(&h), "%s", th_log(&h));
    stop_host(&c, &h, dir, so);
}
