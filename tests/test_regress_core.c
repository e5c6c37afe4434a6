/*
 * regress_core: regression tests for the pipeline core's risks (issue 10),
 * each failing before its fix:
 *   - a shutdown drain hears from every worker, not only the first 64;
 *   - a hung plugin init is killed after init_timeout_ms, with a log line;
 *   - a pipeline removed by a reload leaves no plugin snapshot behind.
 */
#define _GNU_SOURCE
#include "harness.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <glob.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FAULT KHOST_BUILD_DIR "/plugins/fault.so"

/* The host of the running test (each test runs in a process of its own).
 * A failed assertion skips the test's own stop; fini ends the host by its
 * pid then, so no host outlives a failing test. */
static th_host h;

static void stop_leftover_host(void) {
    if (h.pid)
        th_host_stop(&h, SIGKILL, 5000);
}

TestSuite(regress_core, .fini = stop_leftover_host);
#define PARTS 70

static int record_lines(const char *path) {
    char *text = tu_read_file(path, NULL);
    int n = text ? tu_count(text, "\n") : 0;
    free(text);
    return n;
}

/* dispatch_drain polled at most 64 fds while `workers` may be 256. With 70
 * workers each in a slow handler call at SIGTERM, the drain must end when
 * those calls end, not wait out shutdown_timeout_ms for the results of
 * workers 64..69 it never read. */
Test(regress_core, more_than_64_workers_drain, .timeout = 240) {
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

static char *host_ini(th_cluster *c, const char *pipelines) {
    char *s;
    cr_assert_neq(asprintf(&s,
                           "[host]\nbrokers = %s\n"
                           "[kafka]\nsession.timeout.ms = 6000\n"
                           "heartbeat.interval.ms = 500\n%s",
                           c->bootstraps, pipelines),
                  -1);
    return s;
}

/* Before init_timeout_ms, a hung init kept its partitions paused forever
 * without a word in the log. */
Test(regress_core, hung_init_is_killed_and_logged, .timeout = 180) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "slowinit", 1);
    char *dir = tu_tmpdir();
    char *ini = host_ini(&c, "[pipeline.p]\ntopics = slowinit\ngroup = g-si\n"
                             "plugin = " KHOST_FIXTURE_DIR "/fxs_slow_init.so\n"
                             "init_timeout_ms = 300\nmax_restarts = 1000\n");
    th_host_start(&h, dir, "si", ini);
    cr_assert(th_wait_log(&h,
                          "plugin init did not finish within "
                          "init_timeout_ms=300",
                          2, 60000),
              "no init timeout:\n%s", th_log(&h));
    cr_assert(th_wait_log(&h, "restarting in", 2, 30000), "%s", th_log(&h));
    cr_assert_eq(th_log_count(&h, "ready: plugin slow_init"), 0, "%s",
                 th_log(&h));
    cr_assert_eq(th_host_stop(&h, SIGTERM, 30000), 0, "%s", th_log(&h));
    free(ini);
    th_host_free(&h);
    tu_rmdir(dir);
    free(dir);
    th_cluster_stop(&c);
}

static int snapshot_files(pid_t host) {
    char pattern[512];
    const char *base = getenv("TMPDIR");
    snprintf(pattern, sizeof pattern, "%s/khost-%d-*",
             base && *base ? base : "/tmp", (int)host);
    glob_t g;
    int n = -1;
    if (glob(pattern, 0, NULL, &g) == 0 && g.gl_pathc == 1) {
        n = 0;
        DIR *d = opendir(g.gl_pathv[0]);
        struct dirent *e;
        while (d && (e = readdir(d)))
            n += e->d_name[0] != '.';
        if (d)
            closedir(d);
    }
    if (n != -1 || g.gl_pathc)
        globfree(&g);
    return n;
}

/* pipeline_free freed the snapshot's name but never unlinked the file, so
 * every removed or restarted pipeline left a copy until khost exited. */
Test(regress_core, removed_pipeline_leaves_no_snapshot, .timeout = 180) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "snapa", 1);
    th_create_topic(&c, "snapb", 1);
    char *dir = tu_tmpdir();
    const char *a = "[pipeline.a]\ntopics = snapa\ngroup = g-sa\n"
                    "plugin = " KHOST_BUILD_DIR "/plugins/noop.so\n";
    const char *b = "[pipeline.b]\ntopics = snapb\ngroup = g-sb\n"
                    "plugin = " KHOST_BUILD_DIR "/plugins/noop.so\n";
    char *both;
    cr_assert_neq(asprintf(&both, "%s%s", a, b), -1);
    char *ini = host_ini(&c, both);
    th_host_start(&h, dir, "snap", ini);
    cr_assert(th_wait_log(&h, "ready: plugin noop", 2, 60000), "%s",
              th_log(&h));
    /* The host's snapshot folder is $TMPDIR/khost-PID-* (host.c). */
    cr_assert_eq(snapshot_files(h.pid), 2, "snapshots: %d",
                 snapshot_files(h.pid));
    char *only_a = host_ini(&c, a);
    free(tu_write_file(dir, "snap.ini", only_a));
    kill(h.pid, SIGHUP);
    cr_assert(th_wait_log(&h, "removed: draining and stopping it", 1, 60000),
              "%s", th_log(&h));
    cr_assert(th_wait_log(&h, "reload applied", 1, 60000), "%s", th_log(&h));
    cr_assert_eq(snapshot_files(h.pid), 1, "snapshots after removal: %d",
                 snapshot_files(h.pid));
    cr_assert_eq(th_host_stop(&h, SIGTERM, 30000), 0, "%s", th_log(&h));
    free(only_a);
    free(ini);
    free(both);
    th_host_free(&h);
    tu_rmdir(dir);
    free(dir);
    th_cluster_stop(&c);
}
