/*
 * worker_start: how workers start, end to end (issue 11, "Init failures",
 * "Workers", "Snapshots", "Leftovers").
 *
 *  - A worker whose plugin init fails is restarted after a backoff that
 *    doubles from 100 ms (+-25% jitter), read from the log's own lines
 *    and timestamps. Before, it was the crash backoff: 10 ms doubling to
 *    a 100 ms cap, which hammers whatever init connects to.
 *  - An init that overruns init_timeout_ms is a failed start too.
 *  - Two hosts draw different jitter (it was an unseeded rand(): every
 *    host drew the same sequence).
 *  - A worker shows as "khost-worker PIPELINE/N" in ps (it showed as the
 *    fd number it was exec'd from).
 *  - The snapshot folder of a host killed with SIGKILL is removed by the
 *    next host that starts under the same base folder; a live host's is
 *    not.
 */
#define _GNU_SOURCE
#include "harness.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FX(name) KHOST_FIXTURE_DIR "/" name ".so"
#define LOG_WAIT_MS 60000

static th_host h, h2;
static char current_dir[256];

static void kill_leftovers(void) {
    if (h.pid)
        th_host_stop(&h, SIGKILL, 5000);
    if (h2.pid)
        th_host_stop(&h2, SIGKILL, 5000);
    if (current_dir[0])
        tu_rmdir(current_dir);
    current_dir[0] = '\0';
}

TestSuite(worker_start, .fini = kill_leftovers);

static char *new_dir(void) {
    char *dir = tu_tmpdir();
    snprintf(current_dir, sizeof current_dir, "%s", dir);
    return dir;
}

/* A passing test's end: both hosts freed (killed if still running). */
static void end_test(char *dir) {
    th_host_free(&h);
    th_host_free(&h2);
    memset(&h, 0, sizeof h);
    memset(&h2, 0, sizeof h2);
    tu_rmdir(dir);
    free(dir);
    current_dir[0] = '\0';
}

/* Stop a host with SIGTERM: it must exit 0. */
static void stop_clean(th_host *host) {
    cr_assert_eq(th_host_stop(host, SIGTERM, LOG_WAIT_MS), 0, "%s",
                 th_log(host));
}

/* A host on the embedded mock cluster (no assignment needed: workers
 * start with the pipeline). */
static void start_host(th_host *host, const char *dir, const char *name,
                       const char *plugin, const char *extra) {
    char *ini;
    cr_assert_neq(asprintf(&ini,
                           "[host]\nbrokers = mock\n"
                           "[pipeline.%s]\ntopics = t-%s\ngroup = g-%s\n"
                           "plugin = %s\nworkers = 1\n%s",
                           name, name, name, plugin, extra),
                  -1);
    th_host_start(host, dir, name, ini);
    free(ini);
}

/* Time of day of a log line in ms: the first "HH:MM:SS.mmm" in it (the
 * text format carries one, with or without the date in front). */
static long line_ms(const char *line) {
    for (const char *p = line; p[0] && p[1]; p++) {
        int hh, mm, ss, ms, n = 0;
        if (sscanf(p, "%2d:%2d:%2d.%3d%n", &hh, &mm, &ss, &ms, &n) == 4 &&
            n == 12)
            return ((hh * 60L + mm) * 60 + ss) * 1000 + ms;
    }
    return -1;
}

/* Up to max lines of the log holding needle, with their times, and the
 * "restarting in N ms" delay each names (-1 when none). */
typedef struct {
    long at_ms;
    long delay_ms;
} log_hit;

static int find_lines(th_host *host, const char *needle, log_hit *out,
                      int max) {
    char *log = th_log(host);
    int n = 0;
    for (char *line = strtok(log, "\n"); line && n < max;
         line = strtok(NULL, "\n")) {
        if (!strstr(line, needle))
            continue;
        out[n].at_ms = line_ms(line);
        const char *r = strstr(line, "restarting in ");
        out[n].delay_ms = r ? atol(r + strlen("restarting in ")) : -1;
        n++;
    }
    free(log);
    return n;
}

#define N_FAIL 5

Test(worker_start, failed_init_backs_off_exponentially, .timeout = 120) {
    char *dir = new_dir();
    start_host(&h, dir, "fi", FX("fx_init_fails"),
               "max_restarts = 1000\nmax_seconds = 60\n");
    cr_assert(th_wait_log(&h, "restarting in", N_FAIL, LOG_WAIT_MS), "%s",
              th_log(&h));
    log_hit fails[N_FAIL], restarts[N_FAIL];
    cr_assert_eq(find_lines(&h, "plugin failed to start: ", fails, N_FAIL),
                 N_FAIL, "%s", th_log(&h));
    cr_assert_eq(find_lines(&h, "after a failed start", restarts, N_FAIL),
                 N_FAIL, "%s", th_log(&h));
    for (int i = 0; i < N_FAIL; i++) {
        long nominal = 100L << i;
        cr_log_info("failed start %d: restart in %ld ms (nominal %ld)", i + 1,
                    restarts[i].delay_ms, nominal);
        cr_assert(restarts[i].delay_ms >= nominal * 75 / 100 &&
                      restarts[i].delay_ms <= nominal * 125 / 100,
                  "restart %d after a failed init: %ld ms, expected %ld "
                  "+-25%%:\n%s",
                  i + 1, restarts[i].delay_ms, nominal, th_log(&h));
        /* The log's timestamps agree: the next failure comes no sooner
         * than the delay announced (minus the timer's 1 ms slack). */
        if (i + 1 < N_FAIL) {
            long gap = fails[i + 1].at_ms - fails[i].at_ms;
            if (gap < 0)
                gap += 86400000L; /* midnight */
            cr_log_info("  failure %d -> %d: %ld ms apart", i + 1, i + 2, gap);
            cr_assert_geq(gap, restarts[i].delay_ms - 2,
                          "failure %d came %ld ms after failure %d, sooner "
                          "than its backoff of %ld ms:\n%s",
                          i + 2, gap, i + 1, restarts[i].delay_ms, th_log(&h));
        }
    }
    stop_clean(&h);
    end_test(dir);
}

Test(worker_start, init_timeout_is_a_failed_start, .timeout = 120) {
    char *dir = new_dir();
    start_host(&h, dir, "it", FX("fxs_slow_init"),
               "init_timeout_ms = 300\nmax_restarts = 1000\n"
               "max_seconds = 60\n");
    cr_assert(th_wait_log(&h, "after a failed start", 2, LOG_WAIT_MS), "%s",
              th_log(&h));
    char *log = th_log(&h);
    cr_assert(strstr(log, "plugin failed to start: killed by SIGKILL before "
                          "init finished; plugin init did not finish within "
                          "init_timeout_ms=300"),
              "%s", log);
    free(log);
    log_hit r[2];
    cr_assert_eq(find_lines(&h, "after a failed start", r, 2), 2);
    cr_assert(r[0].delay_ms >= 75 && r[0].delay_ms <= 125, "%ld",
              r[0].delay_ms);
    cr_assert(r[1].delay_ms >= 150 && r[1].delay_ms <= 250, "%ld",
              r[1].delay_ms);
    stop_clean(&h);
    end_test(dir);
}

Test(worker_start, hosts_draw_different_jitter, .timeout = 120) {
    char *dir = new_dir();
    start_host(&h, dir, "ja", FX("fx_init_fails"),
               "max_restarts = 1000\nmax_seconds = 60\n");
    start_host(&h2, dir, "jb", FX("fx_init_fails"),
               "max_restarts = 1000\nmax_seconds = 60\n");
    cr_assert(th_wait_log(&h, "after a failed start", 4, LOG_WAIT_MS));
    cr_assert(th_wait_log(&h2, "after a failed start", 4, LOG_WAIT_MS));
    log_hit a[4], b[4];
    cr_assert_eq(find_lines(&h, "after a failed start", a, 4), 4);
    cr_assert_eq(find_lines(&h2, "after a failed start", b, 4), 4);
    int same = 0;
    for (int i = 0; i < 4; i++) {
        cr_log_info("restart %d: %ld ms and %ld ms", i + 1, a[i].delay_ms,
                    b[i].delay_ms);
        same += a[i].delay_ms == b[i].delay_ms;
    }
    /* Each delay has 50 to 400 possible values: four equal pairs are
     * what an unseeded generator gives. */
    cr_assert_lt(same, 4, "two hosts drew the same jitter:\n%s\n---\n%s",
                 th_log(&h), th_log(&h2));
    stop_clean(&h);
    stop_clean(&h2);
    end_test(dir);
}

static char *read_proc(pid_t pid, const char *what, size_t *len) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/%s", (int)pid, what);
    return tu_read_file(path, len);
}

Test(worker_start, worker_has_a_readable_process_name, .timeout = 120) {
    char *dir = new_dir();
    start_host(&h, dir, "named", FX("fx_good"), "");
    cr_assert(th_wait_log(&h, "worker=0 pid=", 1, LOG_WAIT_MS));
    cr_assert(th_wait_log(&h, " ready: plugin", 1, LOG_WAIT_MS), "%s",
              th_log(&h));
    pid_t pid = th_worker_pid(&h, 0);
    cr_assert_gt(pid, 0, "%s", th_log(&h));
    size_t len = 0;
    char *comm = read_proc(pid, "comm", &len);
    cr_assert(comm);
    cr_assert_str_eq(comm, "khost-worker\n");
    char *cmdline = read_proc(pid, "cmdline", &len);
    cr_assert(cmdline && len > 0);
    /* As ps shows it: NULs are separators, trailing ones dropped. */
    while (len > 0 && cmdline[len - 1] == '\0')
        len--;
    for (size_t i = 0; i < len; i++)
        if (cmdline[i] == '\0')
            cmdline[i] = ' ';
    cmdline[len] = '\0';
    cr_log_info("worker pid %d: comm khost-worker, cmdline '%s'", (int)pid,
                cmdline);
    cr_assert_str_eq(cmdline, "khost-worker named/0");
    free(comm);
    free(cmdline);
    stop_clean(&h);
    end_test(dir);
}

/* The name of the single khost-PID-* folder under base made by pid. */
static char *snapshot_of(const char *base, pid_t pid) {
    char prefix[32];
    snprintf(prefix, sizeof prefix, "khost-%d-", (int)pid);
    DIR *d = opendir(base);
    cr_assert(d);
    struct dirent *e;
    char *found = NULL;
    while ((e = readdir(d)))
        if (!strncmp(e->d_name, prefix, strlen(prefix)))
            cr_assert_neq(asprintf(&found, "%s/%s", base, e->d_name), -1);
    closedir(d);
    return found;
}

static bool exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

Test(worker_start, stale_snapshot_of_a_killed_host_is_removed, .timeout = 120) {
    char *dir = new_dir();
    char *base;
    cr_assert_neq(asprintf(&base, "%s/tmp", dir), -1);
    cr_assert_eq(mkdir(base, 0700), 0);
    /* A live process's folder (ours) must stay. */
    char *live;
    cr_assert_neq(asprintf(&live, "%s/khost-%d-AbC123", base, (int)getpid()),
                  -1);
    cr_assert_eq(mkdir(live, 0700), 0);
    setenv("TMPDIR", base, 1);
    start_host(&h, dir, "snap1", FX("fx_good"), "");
    cr_assert(th_wait_log(&h, " ready: plugin", 1, LOG_WAIT_MS), "%s",
              th_log(&h));
    char *stale = snapshot_of(base, h.pid);
    cr_assert(stale, "no snapshot folder of host %d under %s", (int)h.pid,
              base);
    /* kill -9: the host cannot clean up. */
    th_host_stop(&h, SIGKILL, 10000);
    cr_assert(exists(stale), "%s", stale);
    start_host(&h2, dir, "snap2", FX("fx_good"), "");
    cr_assert(th_wait_log(&h2, " ready: plugin", 1, LOG_WAIT_MS), "%s",
              th_log(&h2));
    unsetenv("TMPDIR");
    cr_assert(th_log_count(&h2, "removed the plugin snapshot folder") == 1,
              "%s", th_log(&h2));
    cr_assert(!exists(stale), "%s is still there:\n%s", stale, th_log(&h2));
    cr_assert(exists(live), "the folder of a live process was removed");
    char *own = snapshot_of(base, h2.pid);
    cr_assert(own && exists(own));
    cr_assert_eq(th_host_stop(&h2, SIGTERM, LOG_WAIT_MS), 0, "%s", th_log(&h2));
    cr_assert(!exists(own), "a clean stop leaves its snapshot folder");
    free(own);
    free(stale);
    free(live);
    free(base);
    end_test(dir);
}

/* A worker that crashes after running well is restarted at once; a crash
 * loop backs off from its second crash: 10 ms, then 20 ms (+-25%). The
 * message crashes it every time (poison after 3, then it is
 * dead-lettered). */
Test(worker_start, first_crash_restarts_at_once, .timeout = 120) {
    char *dir = new_dir();
    char *ini;
    cr_assert_neq(asprintf(&ini,
                           "[host]\nbrokers = mock\nmock_partitions = 1\n"
                           "mock_seed = 1\n"
                           "[pipeline.fc]\ntopics = t-fc\ngroup = g-fc\n"
                           "plugin = %s\nworkers = 1\n"
                           "[pipeline.fc.config]\ncrash_on = seed message\n",
                           KHOST_BUILD_DIR "/plugins/fault.so"),
                  -1);
    th_host_start(&h, dir, "fc", ini);
    free(ini);
    cr_assert(th_wait_log(&h, "restarting in", 3, LOG_WAIT_MS), "%s",
              th_log(&h));
    log_hit r[3];
    cr_assert_eq(find_lines(&h, "restarting in", r, 3), 3, "%s", th_log(&h));
    cr_assert_eq(r[0].delay_ms, 0, "first crash: %ld ms\n%s", r[0].delay_ms,
                 th_log(&h));
    cr_assert(r[1].delay_ms >= 7 && r[1].delay_ms <= 13,
              "second crash: %ld ms, expected 10 +-25%%\n%s", r[1].delay_ms,
              th_log(&h));
    cr_assert(r[2].delay_ms >= 15 && r[2].delay_ms <= 25,
              "third crash: %ld ms, expected 20 +-25%%\n%s", r[2].delay_ms,
              th_log(&h));
    stop_clean(&h);
    end_test(dir);
}

/* A worker that answered messages before it was killed is not in a crash
 * loop: each such crash restarts it at once. fault sleeps 5 ms a message,
 * so 1000 seeded messages keep both processes answering until the kills. */
Test(worker_start, crash_after_answering_restarts_at_once, .timeout = 120) {
    char *dir = new_dir();
    char *ini;
    cr_assert_neq(asprintf(&ini,
                           "[host]\nbrokers = mock\nmock_partitions = 1\n"
                           "mock_seed = 1000\n"
                           "[pipeline.cs]\ntopics = t-cs\ngroup = g-cs\n"
                           "plugin = %s\nworkers = 1\n"
                           "[pipeline.cs.config]\nslow_ms = 5\n",
                           KHOST_BUILD_DIR "/plugins/fault.so"),
                  -1);
    th_host_start(&h, dir, "cs", ini);
    free(ini);
    cr_assert(th_wait_log(&h, "rebalance #1: assigned", 1, LOG_WAIT_MS), "%s",
              th_log(&h));
    for (int k = 1; k <= 2; k++) {
        cr_assert(th_wait_log(&h, " ready: plugin", k, LOG_WAIT_MS), "%s",
                  th_log(&h));
        th_sleep_ms(700);
        pid_t pid = th_worker_pid(&h, 0);
        cr_assert_gt(pid, 0, "%s", th_log(&h));
        kill(pid, SIGKILL);
        cr_assert(th_wait_log(&h, "restarting in", k, LOG_WAIT_MS), "%s",
                  th_log(&h));
    }
    log_hit r[2];
    cr_assert_eq(find_lines(&h, "restarting in", r, 2), 2, "%s", th_log(&h));
    cr_assert_eq(r[0].delay_ms, 0, "%s", th_log(&h));
    cr_assert_eq(r[1].delay_ms, 0,
                 "second crash, after answering messages: %ld ms\n%s",
                 r[1].delay_ms, th_log(&h));
    stop_clean(&h);
    end_test(dir);
}
