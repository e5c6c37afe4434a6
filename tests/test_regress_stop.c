/*
 * regress_stop: shutdown when the broker goes away at the same moment.
 *
 * Regression for "Shutdown never ends when the broker goes away with it":
 * the broker stops as khost gets SIGTERM, mid-stream. The host must still
 * exit within shutdown_timeout_ms (every librdkafka call on the shutdown
 * path bounded by it), and a second signal must exit at once (status 1)
 * even while the main thread is inside librdkafka.
 *
 * The broker is taken away with rd_kafka_mock_broker_set_down on every
 * broker, at the moment of the SIGTERM. The unfixed host then blocks in
 * synchronous rd_kafka_commit calls that wait for the coordinator (see
 * host_ini), with the signalfd unread, so a second signal does nothing.
 * librdkafka 2.0.2's mock can also keep an established connection open
 * but unserved after set_down, so a request on it waits out
 * socket.timeout.ms (left at its 60 s default here); these rounds mostly
 * see "Connection refused" instead, but either stall must be bounded.
 */
#define _GNU_SOURCE
#include "harness.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <librdkafka/rdkafka_mock.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NOOP KHOST_BUILD_DIR "/plugins/noop.so"
#define FAULT KHOST_BUILD_DIR "/plugins/fault.so"

#define BROKERS 1
#define PARTS 8
#define PER_PART 12500 /* 100k messages in all, well under retention */
#define SHUTDOWN_TIMEOUT_MS 3000
/* Generous: CI also runs the host under valgrind, several times slower. */
#define STOP_MARGIN_MS 12000
#define SECOND_SIGNAL_DELAY_MS 500
#define SECOND_SIGNAL_BOUND_MS 5000

typedef struct stop_round {
    th_cluster c;
    th_host h;
    char *dir;
} stop_round;

/* Even rounds: the fault plugin at 1 ms a message (no record file), so
 * the first commit comes mid-stream with messages in flight and the
 * drain has work. Odd rounds: noop, which has handled all 100k by the
 * first auto-commit, so only the commits and the group leave remain.
 *
 * session.timeout.ms and heartbeat.interval.ms are librdkafka's defaults,
 * set here so they stay so: with the coordinator gone, a synchronous
 * commit waits for it up to session.timeout.ms, and the shutdown path
 * makes two (pipeline_stop, then on_revoke inside
 * rd_kafka_consumer_close). With the 6000 the other suites use, the
 * unfixed host takes about 13 s, inside the valgrind margin below. */
static char *host_ini(th_cluster *c, const char *topic, int i) {
    bool mid_stream = i % 2 == 0;
    char *s;
    cr_assert_neq(
        asprintf(&s,
                 "[host]\nbrokers = %s\n"
                 "[kafka]\n"
                 "session.timeout.ms = 45000\n"
                 "heartbeat.interval.ms = 3000\n"
                 "[pipeline.p]\n"
                 "topics = %s\n"
                 "group = g-stop\n"
                 "plugin = %s\n"
                 "workers = 2\n"
                 "shutdown_timeout_ms = %d\n"
                 "%s",
                 c->bootstraps, topic, mid_stream ? FAULT : NOOP,
                 SHUTDOWN_TIMEOUT_MS,
                 mid_stream ? "[pipeline.p.config]\nslow_ms = 1\n" : ""),
        -1);
    return s;
}

/* The last `n` bytes of the host's log, for failure messages. */
static char *log_tail(th_host *h, size_t n) {
    char *s = th_log(h);
    size_t len = strlen(s);
    if (len > n)
        memmove(s, s + len - n, n + 1);
    return s;
}

/* Fresh cluster, topic and host; returns once the host has committed
 * offsets, i.e. consumption is going. */
static void round_start(stop_round *r, int i) {
    memset(r, 0, sizeof *r);
    th_cluster_start(&r->c, BROKERS);
    char topic[32];
    snprintf(topic, sizeof topic, "stop%d", i);
    th_create_topic(&r->c, topic, PARTS);
    th_produce(&r->c, topic, PARTS, PER_PART, -1, -1, NULL);
    r->dir = tu_tmpdir();
    th_host_start(&r->h, r->dir, "host", host_ini(&r->c, topic, i));
    if (!th_wait_log(&r->h, "committed offsets", 1, 60000)) {
        char *tail = log_tail(&r->h, 4000);
        th_host_stop(&r->h, SIGKILL, 5000);
        cr_assert_fail("round %d: no commit within 60 s:\n%s", i, tail);
    }
}

static void brokers_down(stop_round *r) {
    for (int b = 1; b <= BROKERS; b++)
        cr_assert_eq(rd_kafka_mock_broker_set_down(r->c.mock.cluster, b), 0);
}

static void round_end(stop_round *r) {
    if (r->h.pid)
        th_host_stop(&r->h, SIGKILL, 5000);
    th_host_free(&r->h);
    th_cluster_stop(&r->c);
    tu_rmdir(r->dir);
    free(r->dir);
}

#define ROUNDS 4

Test(regress_stop, bounded_shutdown_broker_gone, .timeout = 240) {
    for (int i = 0; i < ROUNDS; i++) {
        stop_round r;
        round_start(&r, i);
        /* The broker goes away as the SIGTERM arrives. */
        brokers_down(&r);
        int64_t t0 = th_now_ms();
        int st =
            th_host_stop(&r.h, SIGTERM, SHUTDOWN_TIMEOUT_MS + STOP_MARGIN_MS);
        int64_t took = th_now_ms() - t0;
        char *tail = log_tail(&r.h, 4000);
        cr_log_info("round %d: SIGTERM with the broker down: status %d "
                    "after %lld ms",
                    i, st, (long long)took);
        if (st == -1) {
            round_end(&r);
            cr_assert_fail("round %d: host still running %lld ms after "
                           "SIGTERM with the broker gone "
                           "(shutdown_timeout_ms = %d); SIGKILLed. Log "
                           "tail:\n%s",
                           i, (long long)took, SHUTDOWN_TIMEOUT_MS, tail);
        }
        free(tail);
        round_end(&r);
    }
}

Test(regress_stop, second_signal_exits_at_once, .timeout = 240) {
    int exercised = 0;
    for (int i = 0; i < ROUNDS; i++) {
        stop_round r;
        round_start(&r, i);
        brokers_down(&r);
        kill(r.h.pid, SIGTERM);
        th_sleep_ms(SECOND_SIGNAL_DELAY_MS);
        if (!th_host_alive(&r.h)) {
            /* Shut down before the second signal: nothing to test in this
             * round, and not a failure of the bound. */
            int st = th_host_stop(&r.h, SIGTERM, 1000);
            cr_log_warn("round %d: host already exited (status %d) %d ms "
                        "after SIGTERM; second signal not exercised",
                        i, st, SECOND_SIGNAL_DELAY_MS);
            round_end(&r);
            continue;
        }
        exercised++;
        int64_t t0 = th_now_ms();
        int st = th_host_stop(&r.h, SIGTERM, SECOND_SIGNAL_BOUND_MS);
        int64_t took = th_now_ms() - t0;
        char *tail = log_tail(&r.h, 4000);
        cr_log_info("round %d: second SIGTERM: status %d after %lld ms", i, st,
                    (long long)took);
        round_end(&r);
        cr_assert_neq(st, -1,
                      "round %d: host still running %lld ms after a second "
                      "SIGTERM (broker gone); SIGKILLed. Log tail:\n%s",
                      i, (long long)took, tail);
        cr_assert_eq(st, 1,
                     "round %d: exit status %d after a second SIGTERM, "
                     "expected 1. Log tail:\n%s",
                     i, st, tail);
        free(tail);
    }
    cr_assert_gt(exercised, 0,
                 "the host always finished within %d ms of the first SIGTERM: "
                 "the second signal was never tested",
                 SECOND_SIGNAL_DELAY_MS);
}

/* Regression for a shutdown that never ended when it came while the group
 * rebalanced: host b leaves the group, and host a gets SIGTERM a few
 * hundred ms later, as its group is between generations. a's close then
 * served a revoke whose commit got "Unknown member", after which
 * librdkafka 2.0.2 never answered the revoke's rd_kafka_assign(NULL) (and,
 * in a CI run under valgrind, before it, rd_kafka_resume_partitions): a
 * stayed in it for good, librdkafka's threads idle (the stacks
 * th_host_stop dumps). The close now runs those calls bounded by
 * shutdown_timeout_ms. This test guards the bound; it rarely meets the
 * interleaving: a stress loop of such rounds hung the unfixed host once
 * in about 120 rounds (once in 22 of those where a's close waited for the
 * group), and these 5 rounds did not hang it in the one run tried. */
static char *member_ini(th_cluster *c, const char *dir, const char *name) {
    char *s;
    cr_assert_neq(asprintf(&s,
                           "[host]\nbrokers = %s\n"
                           "[kafka]\nsession.timeout.ms = 6000\n"
                           "heartbeat.interval.ms = 500\n"
                           "[pipeline.p]\ntopics = rb\ngroup = g-rb\n"
                           "plugin = " FAULT "\nworkers = 2\n"
                           "shutdown_timeout_ms = %d\n"
                           "[pipeline.p.config]\nrecord = %s/%s.jsonl\n"
                           "slow_ms = 2\n",
                           c->bootstraps, SHUTDOWN_TIMEOUT_MS, dir, name),
                  -1);
    return s;
}

Test(regress_stop, bounded_shutdown_while_the_group_rebalances,
     .timeout = 280) {
    /* How long after the split b is stopped, and a after b: pairs that
     * made a's close wait for the group to settle in earlier runs. */
    static const int settle_ms[] = {1400, 800, 1400, 800, 1100};
    static const int delays_ms[] = {111, 185, 259, 333, 370};
    for (int i = 0; i < 5; i++) {
        th_cluster c;
        th_cluster_start(&c, 1);
        th_create_topic(&c, "rb", 4);
        th_produce(&c, "rb", 4, 5000, -1, -1, NULL);
        char *dir = tu_tmpdir();
        th_host a, b;
        char *ia = member_ini(&c, dir, "a"), *ib = member_ini(&c, dir, "b");
        th_host_start(&a, dir, "a", ia);
        cr_assert(th_wait_log(&a, "assigned 4 partition(s)", 1, 30000), "%s",
                  th_log(&a));
        th_host_start(&b, dir, "b", ib);
        cr_assert(th_wait_log(&b, "assigned 2 partition(s)", 1, 30000), "%s",
                  th_log(&b));
        cr_assert(th_wait_log(&a, "assigned 2 partition(s)", 1, 30000), "%s",
                  th_log(&a));
        th_sleep_ms(settle_ms[i]);
        kill(b.pid, SIGTERM);
        th_sleep_ms(delays_ms[i]);
        int64_t t0 = th_now_ms();
        int st =
            th_host_stop(&a, SIGTERM, SHUTDOWN_TIMEOUT_MS + STOP_MARGIN_MS);
        int64_t took = th_now_ms() - t0;
        int stb = th_host_stop(&b, 0, SHUTDOWN_TIMEOUT_MS + STOP_MARGIN_MS);
        char *tail = log_tail(&a, 12000);
        cr_log_info("round %d: b left %d ms before a's SIGTERM: a status %d "
                    "after %lld ms, b status %d",
                    i, delays_ms[i], st, (long long)took, stb);
        cr_assert_eq(st, 0,
                     "round %d: a did not stop within %d ms of its SIGTERM "
                     "(shutdown_timeout_ms = %d) while the group rebalanced; "
                     "log tail:\n%s",
                     i, SHUTDOWN_TIMEOUT_MS + STOP_MARGIN_MS,
                     SHUTDOWN_TIMEOUT_MS, tail);
        cr_assert_eq(stb, 0, "round %d: b status %d:\n%s", i, stb, th_log(&b));
        free(tail);
        free(ia);
        free(ib);
        th_host_free(&a);
        th_host_free(&b);
        th_cluster_stop(&c);
        tu_rmdir(dir);
        free(dir);
    }
}
