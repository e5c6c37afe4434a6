/*
 * regress_reload: a plugin swap that lands while a partition waits out a
 * retry backoff must not lose the messages queued behind the retried one.
 *
 * The reported bug: one partition, the fault plugin answers RETRY for
 * offset 500 once, retry_backoff_ms = 4000. About 1.5 s into the backoff
 * the plugin file is overwritten and the host gets SIGHUP. The swap's
 * hand-over dropped the partition's queue (500..1999, refetched by the
 * retry's rewind) before the drain, so the rewind that follows saw
 * nothing pending and did not seek: 501..1999 were never handled, and
 * once more messages arrived the committed offset moved past them.
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
#define TOPIC "rr1"
#define GROUP "g-rr"
#define FIRST 2000  /* offsets 0..1999, produced before the host starts */
#define SECOND 1000 /* offsets 2000..2999, produced after the swap */
#define TOTAL (FIRST + SECOND)
#define RETRY_AT 500
#define MARKER "RETRY-ME"

/* The host of the current test, so that a failed assertion does not leave
 * a khost process behind (fini runs after a failure too; the test's stack
 * is gone by then, so keep copies). */
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

TestSuite(regress_reload, .fini = kill_leftovers);

/* What the ledger and the committed offset say at one moment. */
typedef struct sample {
    int64_t committed; /* -1: none yet */
    int distinct;      /* distinct offsets of 0..TOTAL-1 handled */
    int missing;       /* offsets below `committed` never handled */
    int first_missing, last_missing;
    int retried_seen, retried_attempt; /* records of RETRY_AT, top attempt */
} sample;

/* The committed offset first, then the ledger: a message is recorded
 * before it is acked, and acked before it is committed, so everything
 * below the committed offset is already in the file when it is read. */
static sample take_sample(th_cluster *c, const char *rec) {
    sample s = {.first_missing = -1, .last_missing = -1};
    s.committed = th_committed(c, GROUP, TOPIC, 0);
    th_ledger l;
    th_ledger_init(&l, 1, TOTAL);
    th_ledger_add_file(&l, rec);
    s.distinct = th_ledger_distinct(&l);
    for (int o = 0; o < TOTAL && o < s.committed; o++)
        if (!l.seen[0][o]) {
            if (s.first_missing < 0)
                s.first_missing = o;
            s.last_missing = o;
            s.missing++;
        }
    s.retried_seen = l.seen[0][RETRY_AT];
    s.retried_attempt = l.attempt[0][RETRY_AT];
    th_ledger_free(&l);
    return s;
}

/* Invariant (2): the committed offset never passes a message that no
 * handler saw. */
static void assert_commit_covered(const sample *s) {
    cr_assert_eq(s->missing, 0,
                 "committed offset %lld passes %d message(s) that were never "
                 "handled (first %d, last %d; %d of %d offsets handled)",
                 (long long)s->committed, s->missing, s->first_missing,
                 s->last_missing, s->distinct, TOTAL);
}

/* Poll until `distinct` offsets were handled and `committed` reached,
 * checking the invariant at every sample. Returns the last sample. */
static sample watch(th_cluster *c, const char *rec, int distinct,
                    int64_t committed, int timeout_ms) {
    int64_t deadline = th_now_ms() + timeout_ms;
    sample s;
    for (;;) {
        s = take_sample(c, rec);
        assert_commit_covered(&s);
        if ((s.distinct >= distinct && s.committed >= committed) ||
            th_now_ms() > deadline)
            return s;
        th_sleep_ms(200);
    }
}

Test(regress_reload, swap_during_retry_backoff_loses_nothing, .timeout = 180) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, TOPIC, 1);
    th_produce(&c, TOPIC, 1, FIRST, 0, RETRY_AT, MARKER);

    char *dir = tu_tmpdir();
    snprintf(current_dir, sizeof current_dir, "%s", dir);
    char *so, *rec, *ini;
    cr_assert_neq(asprintf(&so, "%s/plugin.so", dir), -1);
    cr_assert_neq(asprintf(&rec, "%s/p.jsonl", dir), -1);
    tu_cp_over(FAULT, so);
    cr_assert_neq(asprintf(&ini,
                           "[host]\nbrokers = %s\n"
                           "[kafka]\nsession.timeout.ms = 6000\n"
                           "heartbeat.interval.ms = 500\n"
                           "[pipeline.p]\ntopics = " TOPIC "\n"
                           "group = " GROUP "\nplugin = %s\nworkers = 1\n"
                           "retry_backoff_ms = 4000\n"
                           "[pipeline.p.config]\nrecord = %s\n"
                           "retry_on = " MARKER "\nmisbehave_attempts = 1\n",
                           c.bootstraps, so, rec),
                  -1);
    th_host h;
    th_host_start(&h, dir, "host", ini);
    current_pid = h.pid;

    /* The RETRY for offset 500 starts a 3..5 s backoff (4000 ms +-25%). */
    cr_assert(th_wait_log(&h, "handler asked for a retry", 1, 60000), "%s",
              th_log(&h));
    th_sleep_ms(1500);
    /* A hot-reload swap in the middle of it: same bytes, new file. */
    tu_cp_over(FAULT, so);
    cr_assert_eq(kill(h.pid, SIGHUP), 0);
    cr_assert(th_wait_log(&h, "plugin reload", 1, 60000), "%s", th_log(&h));
    cr_assert(th_wait_log(&h, "reloaded: plugin", 1, 60000), "%s", th_log(&h));
    cr_assert(th_host_alive(&h), "%s", th_log(&h));

    /* Let the first batch finish. Not fatal when slow (valgrind): the
     * checks after the second batch decide. */
    sample s = watch(&c, rec, FIRST, FIRST, 20000);

    /* More traffic moves the consumer, and with it the commit. */
    th_produce(&c, TOPIC, 1, SECOND, -1, -1, NULL);
    s = watch(&c, rec, TOTAL, TOTAL, 60000);

    /* (1) every offset was handled at least once. */
    th_ledger l;
    th_ledger_init(&l, 1, TOTAL);
    th_ledger_add_file(&l, rec);
    int lost = 0, first_lost = -1, last_lost = -1;
    for (int o = 0; o < TOTAL; o++)
        if (!l.seen[0][o]) {
            if (first_lost < 0)
                first_lost = o;
            last_lost = o;
            lost++;
        }
    cr_assert_eq(lost, 0,
                 "%d of %d offsets were never handled (first %d, last %d); "
                 "committed offset %lld",
                 lost, TOTAL, first_lost, last_lost, (long long)s.committed);
    /* The retried message came again and went through. */
    cr_assert_geq(l.attempt[0][RETRY_AT], 2,
                  "offset %d was recorded %d time(s), never redelivered",
                  RETRY_AT, l.seen[0][RETRY_AT]);
    th_ledger_free(&l);
    /* (2) and the commit got to the end, covering only handled ones. */
    cr_assert_eq(s.committed, TOTAL, "committed %lld, expected %d: %s",
                 (long long)s.committed, TOTAL, th_log(&h));
    cr_assert(th_wait_committed(&c, GROUP, TOPIC, 1, TOTAL, 5000));
    cr_assert_eq(th_log_count(&h, "crashed"), 0, "%s", th_log(&h));

    int rc = th_host_stop(&h, SIGTERM, 30000);
    current_pid = 0;
    cr_assert_eq(rc, 0, "khost exit status %d: %s", rc, th_log(&h));
    th_host_free(&h);
    th_cluster_stop(&c);
    free(ini);
    free(rec);
    free(so);
    free(dir);
    kill_leftovers();
}
