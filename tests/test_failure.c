/*
 * failure: retries, poison messages and the dead-letter topic, end to end
 * against the mock cluster, with the delivery ledger.
 */
#define _GNU_SOURCE
#include "harness.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <librdkafka/rdkafka_mock.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FAULT KHOST_BUILD_DIR "/plugins/fault.so"

static char *ini(th_cluster *c, const char *dir, const char *topic,
                 const char *pipeline_extra, const char *config_extra) {
    char *s;
    cr_assert_neq(asprintf(&s,
                           "[host]\nbrokers = %s\n"
                           "[kafka]\nsession.timeout.ms = 6000\n"
                           "heartbeat.interval.ms = 500\n"
                           "[pipeline.p]\ntopics = %s\ngroup = g\n"
                           "plugin = " FAULT "\nworkers = 2\n%s\n"
                           "[pipeline.p.config]\nrecord = %s/p.jsonl\n%s\n",
                           c->bootstraps, topic, pipeline_extra, dir,
                           config_extra),
                  -1);
    return s;
}

static char *rec(const char *dir) {
    char *s;
    cr_assert_neq(asprintf(&s, "%s/p.jsonl", dir), -1);
    return s;
}

static void assert_all_but(th_ledger *l, int skip_p, int skip_o) {
    for (int p = 0; p < l->parts; p++)
        for (int o = 0; o < l->per_part; o++)
            if (p != skip_p || o != skip_o)
                cr_assert_gt(l->seen[p][o], 0, "partition %d offset %d lost", p,
                             o);
}

/* The poisoned message (p, o) is the only one in the DLQ, with the
 * documented headers; returns nothing, asserts everything. */
static void assert_dlq_holds(th_cluster *c, const char *dlq, int p, int o,
                             const char *error_part) {
    size_t n = 0;
    th_msg *m = th_consume_topic(c, dlq, &n, 20000);
    cr_assert_eq(n, 1, "%zu messages in %s", n, dlq);
    char key[32], value[64], sp[16], so[16];
    snprintf(key, sizeof key, "k%d-%d", p, o);
    snprintf(sp, sizeof sp, "%d", p);
    snprintf(so, sizeof so, "%d", o);
    cr_assert_str_eq(m[0].key, key);
    snprintf(value, sizeof value, "v %d %d ", p, o);
    cr_assert(!strncmp(m[0].value, value, strlen(value)), "%s", m[0].value);
    cr_assert_str_eq(th_header(&m[0], "idx"), so, "original header kept");
    cr_assert_str_eq(th_header(&m[0], "khost-original-partition"), sp);
    cr_assert_str_eq(th_header(&m[0], "khost-original-offset"), so);
    cr_assert_str_eq(th_header(&m[0], "khost-plugin"), "fault");
    cr_assert_not_null(th_header(&m[0], "khost-plugin-version"));
    cr_assert_not_null(th_header(&m[0], "khost-original-timestamp"));
    cr_assert_not_null(th_header(&m[0], "khost-attempts"));
    const char *err = th_header(&m[0], "khost-error");
    cr_assert(err && strstr(err, error_part), "khost-error: %s", err);
    th_msgs_free(m, n);
}

Test(failure, poison_crash_goes_to_dlq_once, .timeout = 120) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "f1", 4);
    th_produce(&c, "f1", 4, 2500, 2, 1234, "POISON");
    char *dir = tu_tmpdir();
    th_host h;
    th_host_start(&h, dir, "host",
                  ini(&c, dir, "f1", "", "crash_on = POISON\nslow_ms = 0"));
    cr_assert(th_wait_committed(&c, "g", "f1", 4, 2500, 60000), "%s",
              th_log(&h));
    cr_assert(th_host_alive(&h));
    /* Restarted poison_after (3) times for the poison, no more; the
     * pipeline kept going. */
    cr_assert_eq(th_log_count(&h, "crashed: killed by SIGSEGV"), 3, "%s",
                 th_log(&h));
    cr_assert_eq(th_log_count(&h, " restarting in "), 3);
    cr_assert_eq(th_log_count(&h, "FAILED"), 0);
    cr_assert_geq(th_log_count(&h, "poison message"), 1);
    cr_assert_eq(th_host_stop(&h, SIGTERM, 20000), 0);
    th_ledger l;
    th_ledger_init(&l, 4, 2500);
    char *r = rec(dir);
    th_ledger_add_file(&l, r);
    assert_all_but(&l, 2, 1234);
    cr_assert_eq(l.seen[2][1234], 3, "the poison was handled %d times",
                 l.seen[2][1234]);
    assert_dlq_holds(&c, "f1.dlq", 2, 1234, "crashed its worker 3 times");
    th_ledger_free(&l);
    th_host_free(&h);
    th_cluster_stop(&c);
    tu_rmdir(dir);
}

Test(failure, hanging_poison_goes_to_dlq, .timeout = 120) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "f2", 2);
    th_produce(&c, "f2", 2, 300, 1, 77, "STUCK");
    char *dir = tu_tmpdir();
    th_host h;
    th_host_start(
        &h, dir, "host",
        ini(&c, dir, "f2", "handler_timeout_ms = 500\n", "hang_on = STUCK"));
    cr_assert(th_wait_committed(&c, "g", "f2", 2, 300, 60000), "%s",
              th_log(&h));
    cr_assert_eq(th_log_count(&h,
                              "crashed: killed after handler_timeout_ms=500 "
                              "(hang)"),
                 3, "%s", th_log(&h));
    cr_assert_eq(th_host_stop(&h, SIGTERM, 20000), 0);
    th_ledger l;
    th_ledger_init(&l, 2, 300);
    th_ledger_add_file(&l, rec(dir));
    assert_all_but(&l, 1, 77);
    assert_dlq_holds(&c, "f2.dlq", 1, 77, "hang");
    th_ledger_free(&l);
    th_host_free(&h);
    th_cluster_stop(&c);
    tu_rmdir(dir);
}

/* Line index of the first record of (p, o) with the given attempt. */
static int record_index(const char *text, int p, int o, int attempt) {
    char want[128];
    snprintf(want, sizeof want, "\"partition\":%d,\"offset\":%d,", p, o);
    char att[32];
    snprintf(att, sizeof att, "\"attempt\":%d}", attempt);
    int line = 0;
    for (const char *s = text; *s; line++) {
        const char *end = strchr(s, '\n');
        if (!end)
            break;
        const char *hit = strstr(s, want);
        const char *ahit = strstr(s, att);
        if (hit && hit < end && (attempt == 0 || (ahit && ahit < end)))
            return line;
        s = end + 1;
    }
    return -1;
}

Test(failure, retry_succeeds_on_third_attempt_in_order, .timeout = 90) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "f3", 2);
    th_produce(&c, "f3", 2, 200, 0, 50, "AGAIN");
    char *dir = tu_tmpdir();
    th_host h;
    th_host_start(&h, dir, "host",
                  ini(&c, dir, "f3", "retry_backoff_ms = 50\n",
                      "retry_on = AGAIN\nmisbehave_attempts = 2"));
    cr_assert(th_wait_committed(&c, "g", "f3", 2, 200, 60000), "%s",
              th_log(&h));
    cr_assert_eq(th_host_stop(&h, SIGTERM, 20000), 0);
    char *text = tu_read_file(rec(dir), NULL);
    int a1 = record_index(text, 0, 50, 1), a2 = record_index(text, 0, 50, 2),
        a3 = record_index(text, 0, 50, 3);
    cr_assert(a1 >= 0 && a2 > a1 && a3 > a2, "attempts at lines %d %d %d", a1,
              a2, a3);
    cr_assert_eq(record_index(text, 0, 50, 4), -1, "a 4th attempt");
    /* Order: offsets after 50 of partition 0 come after its success. */
    for (int o = 51; o < 200; o++)
        cr_assert_gt(record_index(text, 0, o, 0), a3,
                     "offset %d handled before the retried 50", o);
    th_ledger l;
    th_ledger_init(&l, 2, 200);
    th_ledger_add_file(&l, rec(dir));
    assert_all_but(&l, -1, -1);
    cr_assert_eq(l.seen[0][50], 3);
    cr_assert_eq(th_ledger_duplicates(&l), 2, "only the two retries repeat");
    size_t n = 0;
    th_msg *m = th_consume_topic(&c, "f3.dlq", &n, 3000);
    cr_assert_eq(n, 0, "a retried-then-handled message reached the DLQ");
    th_msgs_free(m, n);
    free(text);
    th_ledger_free(&l);
    th_host_free(&h);
    th_cluster_stop(&c);
    tu_rmdir(dir);
}

/* A plugin that set KHOST_PLUGIN_NO_HEADERS (fault's no_headers = true)
 * gets every message without headers, and its dead letter still carries
 * the original ones: the host reads them from Kafka's copy. */
Test(failure, no_headers_plugin_gets_none_dead_letter_keeps_them,
     .timeout = 90) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "f9", 2);
    th_produce(&c, "f9", 2, 100, 1, 30, "BAD");
    char *dir = tu_tmpdir();
    th_host h;
    th_host_start(&h, dir, "host",
                  ini(&c, dir, "f9", "", "fail_on = BAD\nno_headers = true"));
    cr_assert(th_wait_committed(&c, "g", "f9", 2, 100, 60000), "%s",
              th_log(&h));
    cr_assert_eq(th_host_stop(&h, SIGTERM, 20000), 0);
    th_ledger l;
    th_ledger_init(&l, 2, 100);
    char *r = rec(dir);
    th_ledger_add_file(&l, r);
    assert_all_but(&l, -1, -1);
    char *text = tu_read_file(r, NULL);
    cr_assert_not_null(strstr(text, "\"headers\":[]"), "%s", text);
    cr_assert_null(strstr(text, "\"headers\":[{"),
                   "a no_headers plugin was given headers:\n%s", text);
    free(text);
    assert_dlq_holds(&c, "f9.dlq", 1, 30, "handler answered FAIL");
    th_ledger_free(&l);
    th_host_free(&h);
    th_cluster_stop(&c);
    tu_rmdir(dir);
}

Test(failure, fail_with_skip_is_logged_and_acked, .timeout = 90) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "f4", 2);
    th_produce(&c, "f4", 2, 100, 1, 10, "BAD");
    char *dir = tu_tmpdir();
    th_host h;
    th_host_start(&h, dir, "host",
                  ini(&c, dir, "f4", "on_failure = skip\n", "fail_on = BAD"));
    cr_assert(th_wait_committed(&c, "g", "f4", 2, 100, 60000), "%s",
              th_log(&h));
    cr_assert(th_wait_log(&h,
                          "topic=f4 partition=1 offset=10: failed message "
                          "skipped after 1 attempt(s) (handler answered FAIL: "
                          "fault: fail_on marker found)",
                          1, 5000),
              "%s", th_log(&h));
    cr_assert_eq(th_host_stop(&h, SIGTERM, 20000), 0);
    size_t n = 0;
    th_msg *m = th_consume_topic(&c, "f4.dlq", &n, 3000);
    cr_assert_eq(n, 0);
    th_msgs_free(m, n);
    th_ledger l;
    th_ledger_init(&l, 2, 100);
    th_ledger_add_file(&l, rec(dir));
    assert_all_but(&l, -1, -1);
    cr_assert_eq(l.seen[1][10], 1, "a failed message is not retried");
    th_ledger_free(&l);
    th_host_free(&h);
    th_cluster_stop(&c);
    tu_rmdir(dir);
}

Test(failure, fail_with_pause_holds_only_that_partition, .timeout = 90) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "f5", 3);
    th_produce(&c, "f5", 3, 100, 0, 30, "BAD");
    char *dir = tu_tmpdir();
    th_host h;
    th_host_start(&h, dir, "host",
                  ini(&c, dir, "f5", "on_failure = pause\n", "fail_on = BAD"));
    cr_assert(th_wait_committed(&c, "g", "f5", 1, 30, 60000), "%s", th_log(&h));
    for (int p = 1; p < 3; p++)
        cr_assert(th_wait_committed(&c, "g", "f5", 1, 30, 1000));
    /* Partitions 1 and 2 run to the end; 0 stops at 30. */
    th_sleep_ms(2000);
    cr_assert_eq(th_committed(&c, "g", "f5", 1), 100);
    cr_assert_eq(th_committed(&c, "g", "f5", 2), 100);
    cr_assert_eq(th_committed(&c, "g", "f5", 0), 30, "%s", th_log(&h));
    cr_assert_geq(th_log_count(&h, "partition is held at this offset"), 1);
    cr_assert_eq(th_host_stop(&h, SIGTERM, 20000), 0);
    cr_assert_eq(th_committed(&c, "g", "f5", 0), 30);
    th_ledger l;
    th_ledger_init(&l, 3, 100);
    th_ledger_add_file(&l, rec(dir));
    for (int o = 31; o < 100; o++)
        cr_assert_eq(l.seen[0][o], 0, "offset %d after the held one ran", o);
    th_ledger_free(&l);
    th_host_free(&h);
    th_cluster_stop(&c);
    tu_rmdir(dir);
}

Test(failure, dlq_write_failing_holds_commit_until_it_succeeds,
     .timeout = 120) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "f6", 2);
    th_produce(&c, "f6", 2, 200, 1, 20, "BAD");
    /* From now on the next 3 Produce requests fail (permanently). */
    rd_kafka_mock_push_request_errors(
        c.mock.cluster, 0 /* ProduceRequest */, 3,
        RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
        RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
        RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED);
    char *dir = tu_tmpdir();
    th_host h;
    th_host_start(&h, dir, "host", ini(&c, dir, "f6", "", "fail_on = BAD"));
    cr_assert(th_wait_log(&h, "dead-letter write to f6.dlq failed", 1, 40000),
              "%s", th_log(&h));
    /* While the copy is not confirmed, partition 1 commits no further. */
    th_sleep_ms(300);
    int64_t held = th_committed(&c, "g", "f6", 1);
    cr_assert(held <= 20, "committed %lld past the unwritten message",
              (long long)held);
    cr_assert(th_wait_committed(&c, "g", "f6", 2, 200, 60000), "%s",
              th_log(&h));
    cr_assert_geq(th_log_count(&h, "dead-letter write to f6.dlq failed"), 3);
    cr_assert_eq(th_host_stop(&h, SIGTERM, 20000), 0);
    th_ledger l;
    th_ledger_init(&l, 2, 200);
    th_ledger_add_file(&l, rec(dir));
    assert_all_but(&l, -1, -1);
    assert_dlq_holds(&c, "f6.dlq", 1, 20, "handler answered FAIL");
    th_ledger_free(&l);
    th_host_free(&h);
    th_cluster_stop(&c);
    tu_rmdir(dir);
}

/* ABI contract: a deferred token never acked. With deferred_timeout_ms
 * the message is retried (attempt 2, which the fault plugin acks), the
 * WARN names its offset, and the partition runs to its end; before, its
 * commit stayed at the deferred message for ever. */
Test(failure, deferred_timeout_retries_a_message_never_acked, .timeout = 90) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "f9", 2);
    th_produce(&c, "f9", 2, 20, 1, 7, "NEVERACK");
    char *dir = tu_tmpdir();
    th_host h;
    th_host_start(&h, dir, "host",
                  ini(&c, dir, "f9", "deferred_timeout_ms = 500\n",
                      "defer_on = NEVERACK\nmisbehave_attempts = 1"));
    cr_assert(th_wait_committed(&c, "g", "f9", 2, 20, 60000), "%s", th_log(&h));
    cr_assert_eq(th_log_count(&h, "topic=f9 partition=1 offset=7: deferred "
                                  "for "),
                 1, "%s", th_log(&h));
    cr_assert(strstr(th_log(&h), "over deferred_timeout_ms=500; treated as a "
                                 "retry"),
              "%s", th_log(&h));
    cr_assert_eq(th_host_stop(&h, SIGTERM, 20000), 0);
    th_ledger l;
    th_ledger_init(&l, 2, 20);
    th_ledger_add_file(&l, rec(dir));
    assert_all_but(&l, -1, -1);
    cr_assert_eq(l.seen[1][7], 2, "deferred once, retried once");
    cr_assert_eq(l.attempt[1][7], 2);
    th_ledger_free(&l);
    th_host_free(&h);
    th_cluster_stop(&c);
    tu_rmdir(dir);
}

/* ABI contract, end to end: a handler that acks its own message inside
 * handle and then answers DEFERRED. Its ack counts (the partition runs to
 * its end, the message handled once); before, it was refused and the
 * commit stayed at it. deferred_timeout_ms = 0 keeps the timeout from
 * rescuing it. */
Test(failure, self_ack_inside_handle_counts, .timeout = 90) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "f10", 2);
    th_produce(&c, "f10", 2, 20, 0, 4, "SELFACK");
    char *dir = tu_tmpdir();
    th_host h;
    th_host_start(&h, dir, "host",
                  ini(&c, dir, "f10", "deferred_timeout_ms = 0\n",
                      "selfack_on = SELFACK"));
    cr_assert(th_wait_committed(&c, "g", "f10", 2, 20, 60000), "%s",
              th_log(&h));
    cr_assert(th_wait_log(&h, "acked it inside handle (0)", 1, 1000), "%s",
              th_log(&h));
    cr_assert_eq(th_host_stop(&h, SIGTERM, 20000), 0);
    th_ledger l;
    th_ledger_init(&l, 2, 20);
    th_ledger_add_file(&l, rec(dir));
    assert_all_but(&l, -1, -1);
    cr_assert_eq(l.seen[0][4], 1, "handled once");
    th_ledger_free(&l);
    th_host_free(&h);
    th_cluster_stop(&c);
    tu_rmdir(dir);
}
