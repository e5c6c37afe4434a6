/*
 * regress_drain: a shutdown drain hears from every worker, not only the
 * first 64 (dispatch_drain polled at most 64 fds while `workers` may be
 * 256). With 70 workers each in a slow handler call at SIGTERM, the drain
 * must end when those calls end, not wait out shutdown_timeout_ms for the
 * results of workers 64..69 it never read.
 */
#define _GNU_SOURCE
#include "harness.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FAULT KHOST_BUILD_DIR "/plugins/fault.so"
#define PARTS 70

static int record_lines(const char *path) {
    char *text = tu_read_file(path, NULL);
    int n = text ? tu_count(text, "\n") : 0;
    free(text);
    return n;
}

Test(regress_drain, more_than_64_workers_drain, .timeout = 240) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "wide", PARTS);
    th_produce(&c, "wide", PARTS, 3, -1, -1, NULL);
    char *dir = tu_tmpdir();
    char *ini;
    cr_assert_neq(asprintf(&ini,
                           "[host]\nbrokers = %s\n"
                           "[kafka]\nsession.timeout.ms = 6000\n"
                           "heartbeat.interval.ms = 500\n"
                           "[pipeline.p]\ntopics = wide\ngroup = g-wide\n"
                           "plugin = " FAULT "\nworkers = %d\n"
                           "shutdown_timeout_ms = 60000\n"
                           "handler_timeout_ms = 120000\n"
                           "[pipeline.p.config]\nrecord = %s/p.jsonl\n"
                           "slow_ms = 3000\n",
                           c.bootstraps, PARTS, dir),
                  -1);
    th_host h;
    th_host_start(&h, dir, "wide", ini);
    cr_assert(th_wait_log(&h, "assigned 70 partition(s)", 1, 60000),
              "no assignment:\n%s", th_log(&h));
    /* Every worker is inside its first 3 s call once 70 calls began. */
    char *rec;
    cr_assert_neq(asprintf(&rec, "%s/p.jsonl", dir), -1);
    int64_t until = th_now_ms() + 60000;
    while (record_lines(rec) < PARTS && th_now_ms() < until)
        th_sleep_ms(50);
    cr_assert_geq(record_lines(rec), PARTS, "only %d calls began",
                  record_lines(rec));
    int64_t t0 = th_now_ms();
    /* The calls in progress end within 3 s; terminate and the commit take
     * little more. 60 s is the timeout a 64-fd drain waited out. */
    int status = th_host_stop(&h, SIGTERM, 30000);
    int64_t took = th_now_ms() - t0;
    cr_assert_eq(status, 0, "exit status %d after %lld ms:\n%s", status,
                 (long long)took, th_log(&h));
    cr_assert_lt(took, 30000, "the drain took %lld ms", (long long)took);
    /* Each partition's first message was handled and acked in the drain. */
    for (int p = 0; p < PARTS; p++)
        cr_assert_geq(th_committed(&c, "g-wide", "wide", p), 1,
                      "partition %d committed %lld", p,
                      (long long)th_committed(&c, "g-wide", "wide", p));
    free(rec);
    free(ini);
    th_host_free(&h);
    tu_rmdir(dir);
    free(dir);
    th_cluster_stop(&c);
}
