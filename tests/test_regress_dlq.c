/*
 * regress_dlq: a dead-letter write in flight keeps its failed mark when a
 * crash rewinds its partition (fixed in 8fad7b8). Before the fix the
 * rewind turned the ledger entry of the write into an ordinary replay, so
 * Kafka's redelivery of the failed message went to a handler again
 * (attempt 2) and could be dead-lettered a second time.
 *
 * Partition 0, offset 100 fails (fail_on) and goes to the DLQ. Its write
 * is kept in flight for seconds by retriable Produce errors (librdkafka
 * retries them inside the producer, so the host sees no failed report and
 * keeps dispatching). Offset 150 of the same partition, dispatched right
 * after 100 was handed to the DLQ, crashes the worker (crash_on) while
 * the write is still on its way. With misbehave_attempts = 1 both markers
 * act once only: a second handler call for offset 100 would succeed and
 * show up in the record file as attempt 2.
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
#include <sys/wait.h>

#define FAULT KHOST_BUILD_DIR "/plugins/fault.so"
#define TOPIC "rd1"
#define PARTS 2
#define PER_PART 200
#define FAIL_P 0
#define FAIL_O 100
#define CRASH_O 150
/* Produce requests that fail with a retriable error before the DLQ copy
 * goes through; librdkafka waits retry.backoff.ms (100 ms) between them,
 * so the write is in flight for at least PRODUCE_ERRORS * 100 ms. */
#define PRODUCE_ERRORS 40
#define MIN_INFLIGHT_MS (PRODUCE_ERRORS * 100)

/* The host of the running test, killed by fini when a failed assertion
 * skipped its stop (the test's stack is gone by then). */
static pid_t current_pid;
static char current_dir[256];

static void kill_leftovers(void) {
    if (current_pid > 0) {
        kill(current_pid, SIGKILL);
        waitpid(current_pid, NULL, 0);
    }
    current_pid = 0;
    if (current_dir[0])
        tu_rmdir(current_dir);
    current_dir[0] = '\0';
}

TestSuite(regress_dlq, .fini = kill_leftovers);

/* Like th_produce (same keys, values and idx header), with two markers on
 * partition FAIL_P. */
static void produce_all(th_cluster *c) {
    char errstr[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", c->bootstraps, errstr,
                      sizeof errstr);
    rd_kafka_conf_set(conf, "linger.ms", "5", errstr, sizeof errstr);
    rd_kafka_t *rk =
        rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    cr_assert_not_null(rk, "%s", errstr);
    for (int i = 0; i < PER_PART; i++) {
        for (int p = 0; p < PARTS; p++) {
            char key[64], value[256], idx[32];
            const char *marker = p != FAIL_P    ? ""
                                 : i == FAIL_O  ? " BADMSG"
                                 : i == CRASH_O ? " CRASHMSG"
                                                : "";
            snprintf(key, sizeof key, "k%d-%d", p, i);
            snprintf(value, sizeof value, "v %d %d%s", p, i, marker);
            snprintf(idx, sizeof idx, "%d", i);
            rd_kafka_resp_err_t e;
            while ((e = rd_kafka_producev(
                        rk, RD_KAFKA_V_TOPIC(TOPIC), RD_KAFKA_V_PARTITION(p),
                        RD_KAFKA_V_KEY(key, strlen(key)),
                        RD_KAFKA_V_VALUE(value, strlen(value)),
                        RD_KAFKA_V_HEADER("idx", idx, (ssize_t)strlen(idx)),
                        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                        RD_KAFKA_V_END)) == RD_KAFKA_RESP_ERR__QUEUE_FULL)
                rd_kafka_poll(rk, 10);
            cr_assert_eq(e, 0, "produce: %s", rd_kafka_err2str(e));
        }
    }
    cr_assert_eq(rd_kafka_flush(rk, 30000), 0, "flush timed out");
    rd_kafka_destroy(rk);
}

/* Time of day in ms (from the "YYYY-MM-DDTHH:MM:SS.mmmZ" prefix) of the
 * first log line holding both a and b; -1 when there is none. */
static int64_t line_ms(const char *log, const char *a, const char *b) {
    for (const char *s = log; *s;) {
        const char *end = strchr(s, '\n');
        if (!end)
            end = s + strlen(s);
        const char *ha = strstr(s, a), *hb = b ? strstr(s, b) : s;
        if (ha && ha < end && hb && hb < end) {
            int hh, mm, ss, ms;
            if (sscanf(s, "%*d-%*d-%*dT%d:%d:%d.%d", &hh, &mm, &ss, &ms) == 4)
                return ((int64_t)(hh * 60 + mm) * 60 + ss) * 1000 + ms;
        }
        if (!*end)
            break;
        s = end + 1;
    }
    return -1;
}

/* b - a in ms, across midnight too. */
static int64_t ms_between(int64_t a, int64_t b) {
    int64_t d = b - a;
    return d < -43200000 ? d + 86400000 : d;
}

/* Record lines of (p, o) with the given attempt. */
static int records_of(const char *text, int p, int o, int attempt) {
    char want[128], att[32];
    snprintf(want, sizeof want, "\"partition\":%d,\"offset\":%d,", p, o);
    snprintf(att, sizeof att, "\"attempt\":%d}", attempt);
    int n = 0;
    for (const char *s = text; *s;) {
        const char *end = strchr(s, '\n');
        if (!end)
            break;
        const char *hit = strstr(s, want), *ahit = strstr(s, att);
        if (hit && hit < end && ahit && ahit < end)
            n++;
        s = end + 1;
    }
    return n;
}

Test(regress_dlq, crash_while_dlq_write_in_flight_keeps_it_failed,
     .timeout = 180) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, TOPIC, PARTS);
    produce_all(&c);
    /* Only the host's dead-letter producer produces from now on. */
    rd_kafka_resp_err_t errs[PRODUCE_ERRORS];
    for (int i = 0; i < PRODUCE_ERRORS; i++)
        errs[i] = RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS;
    rd_kafka_mock_push_request_errors_array(c.mock.cluster, 0 /* Produce */,
                                            PRODUCE_ERRORS, errs);
    char *dir = tu_tmpdir();
    cr_assert_not_null(dir);
    snprintf(current_dir, sizeof current_dir, "%s", dir);
    char *ini, *rec;
    cr_assert_neq(asprintf(&ini,
                           "[host]\nbrokers = %s\n"
                           "[kafka]\nsession.timeout.ms = 6000\n"
                           "heartbeat.interval.ms = 500\n"
                           "[pipeline.p]\ntopics = " TOPIC "\ngroup = g\n"
                           "plugin = " FAULT "\nworkers = 2\n"
                           "on_failure = dlq\n"
                           "[pipeline.p.config]\nrecord = %s/p.jsonl\n"
                           "fail_on = BADMSG\ncrash_on = CRASHMSG\n"
                           "misbehave_attempts = 1\n",
                           c.bootstraps, dir),
                  -1);
    cr_assert_neq(asprintf(&rec, "%s/p.jsonl", dir), -1);
    th_host h;
    th_host_start(&h, dir, "host", ini);
    current_pid = h.pid;
    cr_assert(th_wait_committed(&c, "g", TOPIC, PARTS, PER_PART, 120000),
              "not everything committed:\n%s", th_log(&h));
    cr_assert(th_host_alive(&h), "%s", th_log(&h));
    int status = th_host_stop(&h, SIGTERM, 30000);
    current_pid = 0; /* reaped */
    cr_assert_eq(status, 0, "%s", th_log(&h));
    char *log = th_log(&h);

    /* The interleaving happened: offset 100 went to the DLQ, then the
     * worker crashed on 150 sooner than the write could be confirmed, and
     * the crash rewound partition 0 to 100, i.e. 100 was still unresolved
     * then. Otherwise this test proves nothing. */
    int64_t t_write = line_ms(log,
                              "topic=" TOPIC " partition=0 offset=100: failed "
                              "message after 1 attempt(s)",
                              "on_failure=dlq: writing it to " TOPIC ".dlq");
    int64_t t_crash =
        line_ms(log,
                "crash_on marker found at topic " TOPIC " partition 0 "
                "offset 150",
                NULL);
    int64_t t_rewind = line_ms(log,
                               "topic=" TOPIC " partition=0 rewound to "
                               "offset=100 ",
                               ": worker crashed");
    cr_assert_geq(t_write, 0, "offset 100 never went to the DLQ:\n%s", log);
    cr_assert_geq(t_crash, 0, "offset 150 never crashed its worker:\n%s", log);
    cr_assert_geq(t_rewind, 0,
                  "the crash did not rewind partition 0 to the DLQ write "
                  "(write confirmed before the crash?):\n%s",
                  log);
    cr_assert_eq(th_log_count(&h, "crashed: killed by SIGSEGV"), 1, "%s", log);
    int64_t gap = ms_between(t_write, t_crash);
    cr_assert(gap >= 0 && gap < MIN_INFLIGHT_MS - 500,
              "crash %lld ms after the DLQ write began: not while it was in "
              "flight (>= %d ms)\n%s",
              (long long)gap, MIN_INFLIGHT_MS, log);

    /* The failed message was handed to a handler once, on attempt 1. */
    char *text = tu_read_file(rec, NULL);
    cr_assert_not_null(text);
    cr_assert_eq(records_of(text, FAIL_P, FAIL_O, 1), 1, "%s", log);
    for (int a = 2; a <= 4; a++)
        cr_assert_eq(records_of(text, FAIL_P, FAIL_O, a), 0,
                     "offset 100 went back to a handler after the crash "
                     "(attempt %d) instead of staying failed",
                     a);
    th_ledger l;
    th_ledger_init(&l, PARTS, PER_PART);
    th_ledger_add_file(&l, rec);
    cr_assert_eq(l.seen[FAIL_P][FAIL_O], 1, "offset 100 handled %d times",
                 l.seen[FAIL_P][FAIL_O]);
    cr_assert_eq(l.attempt[FAIL_P][FAIL_O], 1);
    for (int p = 0; p < PARTS; p++)
        for (int o = 0; o < PER_PART; o++)
            cr_assert_gt(l.seen[p][o], 0, "partition %d offset %d lost", p, o);
    /* The crash marker fired once and its redelivery went through. */
    cr_assert_eq(records_of(text, FAIL_P, CRASH_O, 1), 1);
    cr_assert_geq(records_of(text, FAIL_P, CRASH_O, 2), 1);

    /* Exactly one dead-letter copy, confirmed after the crash. */
    int64_t t_written = line_ms(log,
                                "topic=" TOPIC " partition=0 offset=100: "
                                "written to dead-letter topic " TOPIC ".dlq",
                                NULL);
    cr_assert_geq(t_written, 0, "the DLQ write was never acknowledged:\n%s",
                  log);
    cr_assert_geq(ms_between(t_crash, t_written), 0);
    cr_assert_eq(tu_count(log, "on_failure=dlq: writing it to " TOPIC ".dlq"),
                 1, "offset 100 dead-lettered more than once:\n%s", log);
    size_t n = 0;
    th_msg *m = th_consume_topic(&c, TOPIC ".dlq", &n, 20000);
    cr_assert_eq(n, 1, "%zu messages in " TOPIC ".dlq", n);
    cr_assert_str_eq(m[0].key, "k0-100");
    cr_assert(!strncmp(m[0].value, "v 0 100 ", 8), "%s", m[0].value);
    cr_assert_str_eq(th_header(&m[0], "khost-original-partition"), "0");
    cr_assert_str_eq(th_header(&m[0], "khost-original-offset"), "100");
    const char *err = th_header(&m[0], "khost-error");
    cr_assert(err && strstr(err, "handler answered FAIL"), "khost-error: %s",
              err);
    th_msgs_free(m, n);

    th_ledger_free(&l);
    free(text);
    free(log);
    free(rec);
    free(ini);
    th_host_free(&h);
    th_cluster_stop(&c);
    tu_rmdir(dir);
    current_dir[0] = '\0';
    free(dir);
}
