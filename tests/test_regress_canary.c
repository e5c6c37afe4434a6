/*
 * regress_canary: a canary partition that a rebalance takes away and
 * gives back during its probation must not keep a freed owner.
 *
 * The risk from issue 10: with reload_strategy = canary one partition
 * moves to the new generation and the others wait out the probation on
 * the old one. A rebalance in that window revokes the canary partition;
 * when it comes back, on_assign gives it to an old-generation worker (the
 * pipeline's current workers). finish_cutover skipped the canary partition
 * by identity, moved the others, and freed the old workers, so the canary
 * partition kept a pointer into freed memory as its owner. No live worker
 * matches it again: its messages queue up and are never handled, its
 * commit stops, and its next revoke writes through the freed pointer.
 * (On 8bbd0ca itself this test fails too, for a second bug of the same
 * scenario fixed in dc6643a: the canary worker kept the drain flag of the
 * revoke, so it held every message of the partitions it got later.)
 *
 * Here host A runs fxr_v1 on 4 partitions, gets fxr_v2 by `khost reload`
 * as a canary with a long probation, and host B joins the group and then
 * leaves it inside that probation, so A loses and regains partitions
 * (eager rebalances: all of them). After the probation every offset must
 * be handled, every partition committed to the end, the new messages on
 * v2, and A must exit 0 on SIGTERM.
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
#include <unistd.h>

#define FX(name) KHOST_FIXTURE_DIR "/" name ".so"
#define TOPIC "rc"
#define GROUP "g-rc"
#define PARTS 4
#define FIRST 200  /* offsets 0..199, before the reload */
#define SECOND 100 /* 200..299, during the probation */
#define THIRD 100  /* 300..399, after the cutover */
#define TOTAL (FIRST + SECOND + THIRD)
/* Long enough for a join and a leave of B (two rebalances of the mock
 * group, a few seconds each) on a loaded 2-core machine. */
#define PROBATION_MS 20000

/* The hosts of the current test, so that a failed assertion does not
 * leave a khost process behind (fini runs after a failure too; the test's
 * stack is gone by then, so keep copies). */
static pid_t current_pids[2];
static char current_dir[256];

static void kill_leftovers(void) {
    for (int i = 0; i < 2; i++) {
        if (current_pids[i] > 0) {
            kill(current_pids[i], SIGKILL);
            waitpid(current_pids[i], NULL, 0);
        }
        current_pids[i] = 0;
    }
    if (current_dir[0])
        tu_rmdir(current_dir);
    current_dir[0] = '\0';
}

TestSuite(regress_canary, .fini = kill_leftovers);

/* One member of the group: plugin dir/<name>.so, recording "partition
 * offset version" lines to dir/<name>.rec (the fxr fixtures). */
static char *member_ini(th_cluster *c, const char *dir, const char *name,
                        int workers, const char *extra) {
    char *s;
    cr_assert_neq(asprintf(&s,
                           "[host]\nbrokers = %s\n"
                           "[kafka]\nsession.timeout.ms = 4500\n"
                           "heartbeat.interval.ms = 300\n"
                           "auto.commit.interval.ms = 200\n"
                           "[pipeline.p]\ntopics = " TOPIC "\n"
                           "group = " GROUP "\nplugin = %s/%s.so\n"
                           "workers = %d\npoison_after = 50\n"
                           "max_restarts = 200\n%s\n"
                           "[pipeline.p.config]\nrecord = %s/%s.rec\n",
                           c->bootstraps, dir, name, workers,
                           extra ? extra : "", dir, name),
                  -1);
    return s;
}

static tu_result reload_cmd(th_host *h) {
    return tu_run(
        (char *[]){KHOST_BUILD_DIR "/khost", "reload", "-c", h->cfg_path, NULL},
        60000);
}

/* What the record files say: per (partition, offset) how often it was
 * handled and the version that handled it last. */
typedef struct rec {
    int seen[PARTS][TOTAL];
    char ver[PARTS][TOTAL][16];
} rec;

static void read_rec(rec *r, const char *path) {
    char *text = tu_read_file(path, NULL);
    if (!text)
        return;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save)) {
        int p, o;
        char v[16];
        if (sscanf(line, "%d %d %15s", &p, &o, v) != 3 || p < 0 || p >= PARTS ||
            o < 0 || o >= TOTAL)
            continue;
        r->seen[p][o]++;
        strcpy(r->ver[p][o], v);
    }
    free(text);
}

static int distinct(const char *a, const char *b, int per) {
    rec *r = calloc(1, sizeof *r);
    read_rec(r, a);
    read_rec(r, b);
    int n = 0;
    for (int p = 0; p < PARTS; p++)
        for (int o = 0; o < per; o++)
            n += r->seen[p][o] > 0;
    free(r);
    return n;
}

/* "partition P: N of per handled" for each partition, in a static buffer:
 * what a failed wait names. */
static const char *per_partition(const char *a, const char *b, int per) {
    static char out[256];
    rec *r = calloc(1, sizeof *r);
    read_rec(r, a);
    read_rec(r, b);
    size_t used = 0;
    for (int p = 0; p < PARTS; p++) {
        int n = 0;
        for (int o = 0; o < per; o++)
            n += r->seen[p][o] > 0;
        used += (size_t)snprintf(out + used, sizeof out - used,
                                 "%spartition %d: %d of %d", p ? ", " : "", p,
                                 n, per);
    }
    free(r);
    return out;
}

/* Wait until a and b together handled offsets 0..per-1 of each partition.
 * Fails early when host A is gone. */
static bool wait_handled(th_host *a, const char *ra, const char *rb, int per,
                         int timeout_ms) {
    int64_t deadline = th_now_ms() + timeout_ms;
    while (th_now_ms() < deadline) {
        if (distinct(ra, rb, per) >= PARTS * per)
            return true;
        if (!th_host_alive(a))
            return false;
        th_sleep_ms(100);
    }
    return false;
}

Test(regress_canary, canary_revoked_and_reassigned_during_probation,
     .timeout = 240) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, TOPIC, PARTS);
    th_produce(&c, TOPIC, PARTS, FIRST, -1, -1, NULL);

    char *dir = tu_tmpdir();
    snprintf(current_dir, sizeof current_dir, "%s", dir);
    char *so_a, *so_b, *ra, *rb;
    cr_assert_neq(asprintf(&so_a, "%s/a.so", dir), -1);
    cr_assert_neq(asprintf(&so_b, "%s/b.so", dir), -1);
    cr_assert_neq(asprintf(&ra, "%s/a.rec", dir), -1);
    cr_assert_neq(asprintf(&rb, "%s/b.rec", dir), -1);
    tu_install(FX("fxr_v1"), so_a);
    tu_install(FX("fxr_v1"), so_b);

    char extra[128];
    snprintf(extra, sizeof extra,
             "reload_strategy = canary\nreload_probation_ms = %d",
             PROBATION_MS);
    char *ini_a = member_ini(&c, dir, "a", 2, extra);
    char *ini_b = member_ini(&c, dir, "b", 1, NULL);
    th_host a, b;
    th_host_start(&a, dir, "a", ini_a);
    current_pids[0] = a.pid;
    cr_assert(wait_handled(&a, ra, rb, FIRST, 60000), "%s", th_log(&a));

    /* v2 over the plugin; one partition moves to it, the others wait. */
    tu_install(FX("fxr_v2"), so_a);
    tu_result r = reload_cmd(&a);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    tu_result_free(&r);
    cr_assert(th_wait_log(&a, "canary: " TOPIC " partition=", 1, 30000), "%s",
              th_log(&a));
    int64_t canary_at = th_now_ms();
    char *log = th_log(&a);
    int canary = -1;
    const char *at = strstr(log, "canary: " TOPIC " partition=");
    cr_assert(at && sscanf(at, "canary: " TOPIC " partition=%d", &canary) == 1,
              "%s", log);
    free(log);
    th_produce(&c, TOPIC, PARTS, SECOND, -1, -1, NULL);

    /* B joins: A's partitions are revoked (the canary's too) and half come
     * back. Then B leaves and A gets all four again, the canary partition
     * on whichever worker on_assign picks: one of the old generation. */
    th_host_start(&b, dir, "b", ini_b);
    current_pids[1] = b.pid;
    cr_assert(th_wait_log(&b, "assigned 2 partition(s)", 1, 40000),
              "a:\n%s\nb:\n%s", th_log(&a), th_log(&b));
    cr_assert(th_wait_log(&a, "assigned 2 partition(s)", 1, 40000),
              "a:\n%s\nb:\n%s", th_log(&a), th_log(&b));
    int rc = th_host_stop(&b, SIGTERM, 30000);
    current_pids[1] = 0;
    cr_assert_eq(rc, 0, "host b exit status %d: %s", rc, th_log(&b));
    cr_assert(th_wait_log(&a, "assigned 4 partition(s)", 2, 40000), "%s",
              th_log(&a));
    /* The scenario needs both rebalances inside the probation. */
    cr_assert_eq(th_log_count(&a, "canary passed"), 0,
                 "probation (%d ms) ended before the group settled again "
                 "(%lld ms after the canary started): the scenario did not "
                 "happen, raise PROBATION_MS\n%s",
                 PROBATION_MS, (long long)(th_now_ms() - canary_at),
                 th_log(&a));

    /* The probation ends: every partition moves to v2, the old workers
     * stop. */
    cr_assert(th_wait_log(&a, "canary passed", 1, PROBATION_MS + 30000), "%s",
              th_log(&a));
    cr_assert(th_wait_log(&a, "reloaded: plugin v1 -> v2", 1, 30000), "%s",
              th_log(&a));
    th_produce(&c, TOPIC, PARTS, THIRD, -1, -1, NULL);

    cr_assert(wait_handled(&a, ra, rb, TOTAL, 60000),
              "%d of %d offsets handled (%s; canary partition %d); host a "
              "%s:\n%s",
              distinct(ra, rb, TOTAL), PARTS * TOTAL,
              per_partition(ra, rb, TOTAL), canary,
              th_host_alive(&a) ? "alive" : "GONE", th_log(&a));
    cr_assert(th_wait_committed(&c, GROUP, TOPIC, PARTS, TOTAL, 30000),
              "committed %lld %lld %lld %lld, expected %d each: %s",
              (long long)th_committed(&c, GROUP, TOPIC, 0),
              (long long)th_committed(&c, GROUP, TOPIC, 1),
              (long long)th_committed(&c, GROUP, TOPIC, 2),
              (long long)th_committed(&c, GROUP, TOPIC, 3), TOTAL, th_log(&a));
    cr_assert(th_host_alive(&a), "%s", th_log(&a));

    /* After the cutover only v2 handles, on every partition. */
    rec *ledger = calloc(1, sizeof *ledger);
    read_rec(ledger, ra);
    for (int p = 0; p < PARTS; p++)
        for (int o = FIRST + SECOND; o < TOTAL; o++)
            cr_assert_str_eq(ledger->ver[p][o], "v2",
                             "partition %d offset %d handled by %s", p, o,
                             ledger->ver[p][o]);
    free(ledger);
    cr_assert_eq(th_log_count(&a, "crashed"), 0, "%s", th_log(&a));

    rc = th_host_stop(&a, SIGTERM, 30000);
    current_pids[0] = 0;
    cr_assert_eq(rc, 0, "host a exit status %d: %s", rc, th_log(&a));
    th_host_free(&a);
    th_host_free(&b);
    th_cluster_stop(&c);
    free(ini_a);
    free(ini_b);
    free(so_a);
    free(so_b);
    free(ra);
    free(rb);
    free(dir);
    kill_leftovers();
}
