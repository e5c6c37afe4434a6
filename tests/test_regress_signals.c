/*
 * regress_signals: stop signals, exit statuses and a worker that cannot
 * be restarted, end to end (issue 10, "Signals" and "A hardening failure
 * at spawn").
 *
 *  - A pipeline that exhausts its restarts with on_exhausted = exit starts
 *    an orderly shutdown with exit status 1. A SIGTERM that arrives during
 *    that shutdown is a first stop signal: it must not _exit the host as
 *    if it were the second (it did: take_signals treated "shutting down"
 *    as "a stop signal was already seen"). The shutdown goes on in order,
 *    to its bound, commits, and the status stays 1. Only a second signal
 *    exits at once. The hung handler of one partition makes the drain
 *    last shutdown_timeout_ms (handler_timeout_ms = 0: nothing kills it
 *    before), so the signal lands inside it.
 *  - A worker whose restart fails the identity check (user = changed in
 *    place by a reload, khost not root) fails its pipeline loudly. Before,
 *    the host logged "restart failed; retrying", never retried, and left
 *    the partition paused with no further word.
 *  - A SIGTERM during a plugin swap's probation (all at once, and canary)
 *    shuts down with status 0 and commits every deferred ack.
 */
#define _GNU_SOURCE
#include "harness.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define FAULT KHOST_BUILD_DIR "/plugins/fault.so"

/* Generous: CI also runs the host under valgrind, several times slower,
 * on 2 loaded cores. */
#define LOG_WAIT_MS 60000

/* The host of the running test (each test runs in a process of its own)
 * and its folder. A failed assertion skips the test's own stop; fini ends
 * the host by its pid then (th_host_stop zeroes it once reaped), so no
 * host outlives a failing test. */
static th_host h;
static char current_dir[256];

static void kill_leftovers(void) {
    if (h.pid)
        th_host_stop(&h, SIGKILL, 5000);
    if (current_dir[0])
        tu_rmdir(current_dir);
    current_dir[0] = '\0';
}

TestSuite(regress_signals, .fini = kill_leftovers);

static char *new_dir(void) {
    char *dir = tu_tmpdir();
    snprintf(current_dir, sizeof current_dir, "%s", dir);
    return dir;
}

static void end_test(th_cluster *c, char *dir) {
    if (h.pid)
        th_host_stop(&h, SIGKILL, 5000);
    th_host_free(&h);
    memset(&h, 0, sizeof h);
    th_cluster_stop(c);
    tu_rmdir(dir);
    free(dir);
    current_dir[0] = '\0';
}

/* Wait for the host to exit by itself (no signal sent). Returns its
 * status, or -1 when it still ran after timeout_ms (then SIGKILLed). */
static int wait_exit(int timeout_ms) {
    return th_host_stop(&h, 0, timeout_ms);
}

/* Wait until the log holds `needle`, or the host has exited. */
static bool wait_log_or_exit(const char *needle, int timeout_ms) {
    int64_t deadline = th_now_ms() + timeout_ms;
    while (th_now_ms() < deadline) {
        if (th_log_count(&h, needle) > 0)
            return true;
        if (!th_host_alive(&h))
            return th_log_count(&h, needle) > 0;
        th_sleep_ms(50);
    }
    return false;
}

/* Position of the first `needle` in the log, -1 when absent. */
static long log_pos(const char *needle) {
    char *s = th_log(&h);
    char *p = strstr(s, needle);
    long pos = p ? (long)(p - s) : -1;
    free(s);
    return pos;
}

/* ---------------------------------------------------------------------- */
/* on_exhausted = exit, then SIGTERM */

#define EX_SHUTDOWN_MS 5000
#define EX_PER 5 /* messages per partition before the crash */

/* Three partitions, one worker each, every message DEFERRED (defer_all,
 * acked by on_revoke; the tick is a minute away) and no auto-commit, so
 * only the shutdown acks and commits. Partition 1's first message hangs
 * its worker. Once partitions 0 and 2 are handled too, the next message
 * of partition 0 crashes its worker, and max_restarts = 0 makes that
 * crash exhaust the pipeline: an on_exhausted shutdown whose drain waits
 * shutdown_timeout_ms for the hung call. Its REVOKE lets partition 2's
 * worker ack, and the shutdown's commit is the only one partition 2 gets;
 * partition 0's deferred messages died with their worker. */
static void start_exhausting_host(th_cluster *c, const char *dir,
                                  const char *topic, int shutdown_ms) {
    th_cluster_start(c, 1);
    th_create_topic(c, topic, 3);
    th_produce(c, topic, 3, EX_PER, 1, 0, "HANG-HERE");
    char *rec, *ini;
    cr_assert_neq(asprintf(&rec, "%s/p.jsonl", dir), -1);
    cr_assert_neq(asprintf(&ini,
                           "[host]\nbrokers = %s\n"
                           "[kafka]\nsession.timeout.ms = 6000\n"
                           "heartbeat.interval.ms = 500\n"
                           "auto.commit.interval.ms = 600000\n"
                           "[pipeline.p]\ntopics = %s\ngroup = g-%s\n"
                           "plugin = " FAULT "\nworkers = 3\n"
                           "max_restarts = 0\non_exhausted = exit\n"
                           "handler_timeout_ms = 0\n"
                           "tick_interval_ms = 60000\n"
                           "shutdown_timeout_ms = %d\n"
                           "[pipeline.p.config]\nrecord = %s\n"
                           "defer_all = true\n"
                           "hang_on = HANG-HERE\ncrash_on = CRASH-HERE\n",
                           c->bootstraps, topic, topic, shutdown_ms, rec),
                  -1);
    th_host_start(&h, dir, "host", ini);
    free(ini);
    cr_assert(th_wait_log(&h, "hang_on marker found", 1, LOG_WAIT_MS), "%s",
              th_log(&h));
    /* Partition 1 holds its hung offset 0; 0 and 2 all of theirs. */
    const char *paths[] = {rec};
    cr_assert(
        th_wait_distinct(paths, 1, 3, EX_PER + 1, 2 * EX_PER + 1, LOG_WAIT_MS),
        "%s", th_log(&h));
    free(rec);
    /* Offset EX_PER of each partition; partition 0's crashes its worker. */
    th_produce(c, topic, 3, 1, 0, 0, "CRASH-HERE");
    cr_assert(th_wait_log(&h, "pipeline=p FAILED", 1, LOG_WAIT_MS), "%s",
              th_log(&h));
    cr_assert(strstr(th_log(&h), "(on_exhausted=exit)"), "%s", th_log(&h));
    /* The shutdown starts from the loop's next round and its drain then
     * waits shutdown_timeout_ms; a moment's wait puts the signal inside. */
    th_sleep_ms(300);
    cr_assert(th_host_alive(&h), "the host left before its drain ended:\n%s",
              th_log(&h));
}

Test(regress_signals, first_sigterm_in_exhausted_shutdown_drains,
     .timeout = 180) {
    th_cluster c;
    char *dir = new_dir();
    start_exhausting_host(&c, dir, "sig-ex1", EX_SHUTDOWN_MS);
    int64_t t0 = th_now_ms();
    cr_assert_eq(kill(h.pid, SIGTERM), 0);
    int st = wait_exit(EX_SHUTDOWN_MS + LOG_WAIT_MS);
    int64_t took = th_now_ms() - t0;
    char *log = th_log(&h);
    cr_log_info("SIGTERM during the on_exhausted shutdown: status %d after "
                "%lld ms",
                st, (long long)took);
    cr_assert_eq(tu_count(log, "exiting at once without draining"), 0,
                 "one SIGTERM during the on_exhausted=exit shutdown made the "
                 "host _exit as if it were the second (after %lld ms):\n%s",
                 (long long)took, log);
    cr_assert_eq(st, 1, "exit status %d, expected 1 (on_exhausted=exit):\n%s",
                 st, log);
    /* Read as a first signal, during the shutdown... */
    cr_assert_eq(tu_count(log, "received: draining and shutting down"), 1, "%s",
                 log);
    /* ...which then ran in order: the drain waited its bound for the hung
     * call, the hung worker was stopped, offsets committed, the consumer
     * closed, and the host said so. */
    long failed = log_pos("pipeline=p FAILED");
    long got = log_pos("received: draining and shutting down");
    long stuck = log_pos("did not stop in time; killing it");
    long commit = log_pos("pipeline=p committed offsets (sync)");
    long stopped = log_pos("pipeline=p stopped: ");
    long bye = log_pos("khost stopped (exit status 1)");
    cr_assert(failed >= 0 && got > failed && stuck > got && commit > stuck &&
                  stopped > commit && bye > stopped,
              "the shutdown did not run in order (log positions: FAILED %ld, "
              "SIGTERM %ld, killing the hung worker %ld, commit %ld, "
              "stopped %ld, exit %ld):\n%s",
              failed, got, stuck, commit, stopped, bye, log);
    /* The drain ran to shutdown_timeout_ms, counted from the shutdown's
     * start, before the signal. */
    cr_assert_geq(took, EX_SHUTDOWN_MS - 1000,
                  "stopped %lld ms after the SIGTERM, before the drain's "
                  "bound of %d ms:\n%s",
                  (long long)took, EX_SHUTDOWN_MS, log);
    /* The shutdown's commit went through: partition 2, acked by its
     * on_revoke during the shutdown, committed everything handled (the
     * offset produced with the crash may or may not have been fetched).
     * And (I1) nothing past an unacked message: partition 0's deferred
     * messages and partition 1's hung one keep them at nothing. */
    int64_t p2 = th_committed(&c, "g-sig-ex1", "sig-ex1", 2);
    cr_assert(p2 == EX_PER || p2 == EX_PER + 1,
              "partition 2 committed %lld, expected %d or %d from the "
              "shutdown's commit:\n%s",
              (long long)p2, EX_PER, EX_PER + 1, log);
    for (int p = 0; p < 2; p++) {
        int64_t off = th_committed(&c, "g-sig-ex1", "sig-ex1", p);
        cr_assert_leq(off, 0,
                      "partition %d committed %lld past unacked messages", p,
                      (long long)off);
    }
    free(log);
    end_test(&c, dir);
}

/* Only a second stop signal exits at once, and with status 1.
 *
 * The status of the first test is also what host_request_exit's "highest
 * status wins" guards: a SIGTERM caught inside a drain asks for 0. During
 * the shutdown host_check_signals does not ask (shutting_down), so that
 * test fails only with both the guard and the max() reverted. The
 * overwrite max() alone prevents needs a drain outside the shutdown (a
 * revoke, a hand-over, a reload) to run after on_exhausted's request and
 * before its deferred exit, in the same round of the loop: an ordering of
 * sd-event sources pending together that no test can force from outside. */
Test(regress_signals, second_sigterm_in_exhausted_shutdown_exits_at_once,
     .timeout = 180) {
    th_cluster c;
    char *dir = new_dir();
    /* A long bound: only the second signal can end this shutdown soon. */
    start_exhausting_host(&c, dir, "sig-ex2", 30000);
    cr_assert_eq(kill(h.pid, SIGTERM), 0);
    cr_assert(
        wait_log_or_exit("received: draining and shutting down", LOG_WAIT_MS),
        "the first SIGTERM was not taken as a first one:\n%s", th_log(&h));
    cr_assert(th_host_alive(&h), "%s", th_log(&h));
    int64_t t0 = th_now_ms();
    int st = th_host_stop(&h, SIGTERM, 10000);
    int64_t took = th_now_ms() - t0;
    char *log = th_log(&h);
    cr_assert_neq(st, -1,
                  "still running %lld ms after a second SIGTERM; SIGKILLed:\n"
                  "%s",
                  (long long)took, log);
    cr_assert_eq(st, 1, "exit status %d after a second SIGTERM:\n%s", st, log);
    cr_assert_eq(tu_count(log, "exiting at once without draining"), 1, "%s",
                 log);
    cr_assert_eq(tu_count(log, "pipeline=p stopped: "), 0, "%s", log);
    free(log);
    end_test(&c, dir);
}

/* ---------------------------------------------------------------------- */
/* A worker that cannot be restarted */

/* th_host_start, with the host running as uid:gid (the log is opened
 * before the switch, as root). */
static void host_start_as(const char *dir, const char *name, const char *ini,
                          uid_t uid, gid_t gid) {
    memset(&h, 0, sizeof h);
    h.dir = strdup(dir);
    char file[256];
    snprintf(file, sizeof file, "%s.ini", name);
    h.cfg_path = tu_write_file(dir, file, ini);
    cr_assert_not_null(h.cfg_path);
    cr_assert_eq(chmod(h.cfg_path, 0644), 0);
    cr_assert_neq(asprintf(&h.log_path, "%s/%s.log", dir, name), -1);
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        int fd = open(h.log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
        dup2(fd, 1);
        dup2(fd, 2);
        if (getuid() != uid &&
            (setgroups(0, NULL) != 0 || setgid(gid) != 0 || setuid(uid) != 0))
            _exit(126);
        tu_execv(KHOST_BUILD_DIR "/khost",
                 (char *[]){"khost", "run", "-c", h.cfg_path, NULL});
        _exit(127);
    }
    h.pid = pid;
}

static char *restart_ini(th_cluster *c, const char *user_line) {
    char *ini;
    cr_assert_neq(asprintf(&ini,
                           "[host]\nbrokers = %s\n"
                           "[kafka]\nsession.timeout.ms = 6000\n"
                           "heartbeat.interval.ms = 500\n"
                           "[pipeline.p]\ntopics = sig-hard\n"
                           "group = g-sig-hard\n"
                           "plugin = " FAULT "\nworkers = 1\n%s"
                           "[pipeline.p.config]\n"
                           "crash_on = CRASH-ONCE\nmisbehave_attempts = 1\n",
                           c->bootstraps, user_line),
                  -1);
    return ini;
}

/* The identity check needs khost not to be root: as root it may become
 * anyone. CI runs as root, so the host runs as nobody there; run as
 * another user, the test keeps that one. A reload then sets user = (a
 * policy key, applied in place) to someone else: the running worker keeps
 * going, and the first restart, after a crash, cannot pass the check. */
Test(regress_signals, unrestartable_worker_fails_its_pipeline, .timeout = 180) {
    uid_t uid = getuid();
    gid_t gid = getgid();
    if (geteuid() == 0) {
        struct passwd *pw = getpwnam("nobody");
        cr_assert_not_null(pw, "no user nobody to run the host as");
        uid = pw->pw_uid;
        gid = pw->pw_gid;
    }
    const char *other = "daemon";
    struct passwd *opw = getpwnam(other);
    if (!opw || opw->pw_uid == uid) {
        other = "nobody";
        opw = getpwnam(other);
    }
    cr_assert(opw && opw->pw_uid != uid, "no user other than uid %u",
              (unsigned)uid);

    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "sig-hard", 1);
    th_produce(&c, "sig-hard", 1, 10, -1, -1, NULL);
    char *dir = new_dir();
    cr_assert_eq(chmod(dir, 0755), 0);
    char *ini = restart_ini(&c, "");
    host_start_as(dir, "host", ini, uid, gid);
    free(ini);
    cr_assert(
        th_wait_committed(&c, "g-sig-hard", "sig-hard", 1, 10, LOG_WAIT_MS),
        "%s", th_log(&h));

    /* Only user = changes: the pipeline is updated in place. */
    char user_line[64];
    snprintf(user_line, sizeof user_line, "user = %s\n", other);
    ini = restart_ini(&c, user_line);
    free(tu_write_file(dir, "host.ini", ini));
    free(ini);
    cr_assert_eq(kill(h.pid, SIGHUP), 0);
    cr_assert(th_wait_log(&h, "reload applied", 1, LOG_WAIT_MS), "%s",
              th_log(&h));
    cr_assert(strstr(th_log(&h), "reload applied: 1 pipeline(s) unchanged or "
                                 "updated in place"),
              "%s", th_log(&h));

    /* Offsets 10..19; 13 crashes its worker once (it would pass on the
     * redelivery, if there were a worker to redeliver it to). */
    th_produce(&c, "sig-hard", 1, 10, 0, 3, "CRASH-ONCE");
    cr_assert(wait_log_or_exit("crashed: killed by SIGSEGV", LOG_WAIT_MS),
              "khost %s:\n%s", th_host_alive(&h) ? "runs" : "has exited",
              th_log(&h));
    cr_assert(wait_log_or_exit("cannot start a worker process", LOG_WAIT_MS),
              "khost %s:\n%s", th_host_alive(&h) ? "runs" : "has exited",
              th_log(&h));
    /* The verdict comes with the failed restart, in the same callback;
     * unfixed, it never comes. */
    (void)wait_log_or_exit("pipeline=p FAILED", 15000);
    char *log = th_log(&h);
    char why[256];
    snprintf(why, sizeof why,
             "pipeline=p worker=0: cannot start a worker process: user = %s "
             "(uid %u) needs khost to run as root",
             other, (unsigned)opw->pw_uid);
    cr_assert(strstr(log, why),
              "the restart did not fail the identity check:\n"
              "%s",
              log);
    cr_assert_eq(tu_count(log, "restart failed; retrying"), 0,
                 "the worker cannot be restarted, but the host said it is "
                 "retrying (and never does; the partition stays paused):\n%s",
                 log);
    cr_assert_eq(tu_count(log, "pipeline=p worker=0: cannot be restarted (see "
                               "above); not retrying"),
                 1, "%s", log);
    cr_assert(strstr(log, "pipeline=p FAILED"),
              "a worker that cannot be restarted did not fail its pipeline "
              "(its partition stays paused, with no word why):\n%s",
              log);
    /* One try, no loop: the verdict is final. (The spare, replaced at the
     * reload since it ran as the old user, fails the same check on its
     * own line, "spare=1: cannot start"; a spare counts no restart.) */
    cr_assert_eq(
        tu_count(log, "pipeline=p worker=0: cannot start a worker process"), 1,
        "%s", log);
    cr_assert(th_host_alive(&h), "on_exhausted = pause keeps khost up:\n%s",
              log);
    free(log);

    /* I1: the crash rewound to the acked watermark; nothing past the
     * crashed offset is committed, at the final commit either. */
    int st = th_host_stop(&h, SIGTERM, LOG_WAIT_MS);
    log = th_log(&h);
    cr_assert_eq(st, 0, "exit status %d:\n%s", st, log);
    cr_assert(strstr(log, "pipeline=p stopped: "), "%s", log);
    int64_t committed = th_committed(&c, "g-sig-hard", "sig-hard", 0);
    cr_assert(committed >= 10 && committed <= 13,
              "committed %lld, expected 10..13:\n%s", (long long)committed,
              log);
    free(log);
    end_test(&c, dir);
}

/* ---------------------------------------------------------------------- */
/* SIGTERM during a plugin swap's probation */

#define SW_PARTS 2
#define SW_PER 200 /* per partition, before the swap and again after it */

/* Every message DEFERRED (defer_all), and the tick a minute away: the
 * acks come from on_revoke (ack_on_revoke = true), or else only when the
 * workers stop (terminate runs the last tick). Either way, every ack the
 * host counts comes from a hand-over or from the shutdown, and a lost one
 * shows in the committed offsets. shutdown_timeout_ms bounds each
 * hand-over's wait for deferred messages too, so it is short. */
static void sigterm_in_probation(const char *strategy,
                                 const char *ack_on_revoke) {
    char topic[64], group[80];
    snprintf(topic, sizeof topic, "sig-swap-%s-%s", strategy,
             !strcmp(ack_on_revoke, "true") ? "revoke" : "terminate");
    snprintf(group, sizeof group, "g-%s", topic);
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, topic, SW_PARTS);
    th_produce(&c, topic, SW_PARTS, SW_PER, -1, -1, NULL);
    char *dir = new_dir();
    char *so, *rec, *ini;
    cr_assert_neq(asprintf(&so, "%s/plugin.so", dir), -1);
    cr_assert_neq(asprintf(&rec, "%s/p.jsonl", dir), -1);
    tu_cp_over(FAULT, so);
    cr_assert_neq(asprintf(&ini,
                           "[host]\nbrokers = %s\n"
                           "[kafka]\nsession.timeout.ms = 6000\n"
                           "heartbeat.interval.ms = 500\n"
                           "[pipeline.p]\ntopics = %s\ngroup = %s\n"
                           "plugin = %s\nworkers = 2\n"
                           "tick_interval_ms = 60000\n"
                           "shutdown_timeout_ms = 1500\n"
                           "reload_strategy = %s\n"
                           "reload_probation_ms = 300000\n"
                           "[pipeline.p.config]\nrecord = %s\n"
                           "defer_all = true\nack_on_revoke = %s\n",
                           c.bootstraps, topic, group, so, strategy, rec,
                           ack_on_revoke),
                  -1);
    th_host_start(&h, dir, "host", ini);
    const char *paths[] = {rec};
    cr_assert(th_wait_distinct(paths, 1, SW_PARTS, 2 * SW_PER,
                               SW_PARTS * SW_PER, LOG_WAIT_MS),
              "not every message was handled:\n%s", th_log(&h));

    /* A swap: same bytes, a new file. */
    tu_cp_over(FAULT, so);
    cr_assert_eq(kill(h.pid, SIGHUP), 0);
    bool canary = !strcmp(strategy, "canary");
    cr_assert(th_wait_log(&h, canary ? "now runs plugin" : "reloaded: plugin",
                          1, LOG_WAIT_MS),
              "%s", th_log(&h));
    /* More traffic, handled (and deferred) by the new plugin's workers,
     * or in a canary by both generations. */
    th_produce(&c, topic, SW_PARTS, SW_PER, -1, -1, NULL);
    cr_assert(th_wait_distinct(paths, 1, SW_PARTS, 2 * SW_PER,
                               2 * SW_PARTS * SW_PER, LOG_WAIT_MS),
              "not every message was handled after the swap:\n%s", th_log(&h));
    cr_assert_eq(th_log_count(&h, "passed its probation"), 0,
                 "the probation ended before the SIGTERM:\n%s", th_log(&h));

    int64_t t0 = th_now_ms();
    int st = th_host_stop(&h, SIGTERM, LOG_WAIT_MS);
    int64_t took = th_now_ms() - t0;
    char *log = th_log(&h);
    cr_log_info("%s, acks from %s: SIGTERM in probation: status %d after "
                "%lld ms",
                strategy, ack_on_revoke[0] == 't' ? "on_revoke" : "terminate",
                st, (long long)took);
    cr_assert_eq(st, 0, "exit status %d after a SIGTERM in probation:\n%s", st,
                 log);
    cr_assert(strstr(log, "pipeline=p stopped: "), "%s", log);
    cr_assert_eq(tu_count(log, "crashed"), 0, "%s", log);
    for (int p = 0; p < SW_PARTS; p++) {
        int64_t got = th_committed(&c, group, topic, p);
        cr_assert_eq(got, 2 * SW_PER,
                     "partition %d committed %lld of %d after a SIGTERM in "
                     "the swap's probation (reload_strategy = %s, "
                     "ack_on_revoke = %s): its last deferred acks were "
                     "lost:\n%s",
                     p, (long long)got, 2 * SW_PER, strategy, ack_on_revoke,
                     log);
    }
    th_ledger l;
    th_ledger_init(&l, SW_PARTS, 2 * SW_PER);
    th_ledger_add_file(&l, rec);
    cr_assert_eq(th_ledger_distinct(&l), 2 * SW_PARTS * SW_PER);
    cr_assert_eq(l.bad_lines, 0);
    th_ledger_free(&l);
    free(log);
    free(ini);
    free(rec);
    free(so);
    end_test(&c, dir);
}

/* All at once: the old workers are gone, the new ones are on probation. */
Test(regress_signals, sigterm_in_swap_probation_keeps_terminate_acks,
     .timeout = 180) {
    sigterm_in_probation("all", "false");
}

/* Canary: one partition on the new plugin, one on the old. The stop
 * REVOKEs each partition to its owner of either generation, and
 * on_revoke's acks count. */
Test(regress_signals, sigterm_in_canary_probation_keeps_revoke_acks,
     .timeout = 180) {
    sigterm_in_probation("canary", "true");
}

/* Acks given from tick/terminate, a SIGTERM during a canary's probation.
 * It failed before 'Shutdown stops both generations' (6bdc43d and
 * earlier): pipeline_stop's swap_abort handed the canary partition back to
 * the old generation first (REVOKE, a drain the deferred messages held
 * for min(shutdown_timeout_ms, 5 s), a rewind to the acked offset), and
 * only then stopped the new workers, whose tick/terminate acks were then
 * "ignored ... revoked or rewound": nothing was committed for the
 * partition. Now both generations stop together and the acks count. */
Test(regress_signals, sigterm_in_canary_probation_keeps_terminate_acks,
     .timeout = 180) {
    sigterm_in_probation("canary", "false");
}
