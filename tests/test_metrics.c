/*
 * metrics: the deeper /metrics families (issue 12) against real hosts and
 * the in-process mock cluster, with the fault plugin made to do known
 * things:
 *  - one partition, 15 messages: one answered RETRY once, one FAIL
 *    (on_failure = skip), one DEFERRED and never acked. Exact counts of
 *    khost_handler_results_total by result; the handler-duration
 *    histogram (measured in the worker) counts 16 calls, its buckets
 *    cumulative; the end-to-end latency histogram counts the 13 acks;
 *    the oldest-unresolved age grows while the deferred message waits;
 *    khost_pipeline_state says running; promtool and prometheus_client
 *    accept the output.
 *    A second pipeline defers all 10 of its messages and acks them at a
 *    tick: deferred 10, khost_deferred_acks_total 10, latency count 10.
 *    A third, with a handle_batch plugin, observes once per batch call:
 *    as many as the calls the plugin recorded.
 *  - crashes by cause: a SIGSEGV (signal), an _exit (exit), a hang over
 *    handler_timeout_ms (hang), each once, and in a second pipeline a
 *    worker acking a token it was never given (lie); the handler-duration
 *    count does not go back when workers are replaced, and with slow_ms
 *    = 2 no call falls in the 1 ms bucket and the sum is 2 ms a call or
 *    more.
 */
#define _GNU_SOURCE
#include "harness.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FAULT KHOST_BUILD_DIR "/plugins/fault.so"
#define HOSTILE KHOST_FIXTURE_DIR "/fxh_hostile.so"
#define BATCH KHOST_FIXTURE_DIR "/fxw_batch.so"
#define WAIT_MS 30000

static th_host h;
static char current_dir[256];

static void kill_leftovers(void) {
    if (h.pid)
        th_host_stop(&h, SIGKILL, 5000);
    h.pid = 0;
    if (current_dir[0])
        tu_rmdir(current_dir);
    current_dir[0] = '\0';
}

TestSuite(metrics, .fini = kill_leftovers);

/* A fresh directory for the host, removed on teardown. */
static const char *new_dir(void) {
    char *dir = tu_tmpdir();
    snprintf(current_dir, sizeof current_dir, "%s", dir);
    free(dir);
    return current_dir;
}

/* Start a host in current_dir (new_dir first when not made yet). */
static int start(th_cluster *c, const char *pipelines) {
    const char *dir = current_dir[0] ? current_dir : new_dir();
    int port = tu_free_port();
    char *ini;
    cr_assert_neq(asprintf(&ini,
                           "[host]\nbrokers = %s\n"
                           "[kafka]\nsession.timeout.ms = 6000\n"
                           "heartbeat.interval.ms = 500\n"
                           "[http]\nlisten = 127.0.0.1:%d\n%s",
                           c->bootstraps, port, pipelines),
                  -1);
    th_host_start(&h, dir, "host", ini);
    free(ini);
    cr_assert(th_wait_log(&h, "http: listening on", 1, WAIT_MS), "%s",
              th_log(&h));
    return port;
}

/* The exposition (malloc'd body). */
static char *scrape(int port) {
    char *resp = NULL;
    cr_assert_eq(tu_http(port, "GET", "/metrics", NULL, NULL, 0, &resp), 200);
    char *body = strdup(tu_http_body(resp));
    free(resp);
    return body;
}

/* The value of sample `line` (name{labels}), -1 when absent. */
#define sample tu_metric

static double result(const char *text, const char *pl, const char *r) {
    char *l;
    cr_assert_neq(asprintf(&l,
                           "khost_handler_results_total{pipeline=\"%s\","
                           "result=\"%s\"}",
                           pl, r),
                  -1);
    double v = sample(text, l);
    free(l);
    return v;
}

static double cause(const char *text, const char *pl, const char *c) {
    char *l;
    cr_assert_neq(asprintf(&l,
                           "khost_worker_crashes_total{pipeline=\"%s\","
                           "cause=\"%s\"}",
                           pl, c),
                  -1);
    double v = sample(text, l);
    free(l);
    return v;
}

/* Check histogram `name` of pipeline `pl`: buckets cumulative and
 * monotonic, ending with +Inf equal to _count; returns _count. */
static double check_hist(const char *text, const char *name, const char *pl) {
    char *prefix;
    cr_assert_neq(
        asprintf(&prefix, "\n%s_bucket{pipeline=\"%s\",le=\"", name, pl), -1);
    double last = 0, prev_le = 0;
    int n = 0;
    bool inf = false;
    for (const char *p = strstr(text, prefix); p; p = strstr(p + 1, prefix)) {
        const char *le = p + strlen(prefix);
        const char *close = strstr(le, "\"} ");
        cr_assert(close, "%s", p);
        double v = strtod(close + 3, NULL);
        cr_assert(!inf, "a bucket after +Inf: %s", text);
        if (!strncmp(le, "+Inf", 4))
            inf = true;
        else {
            double bound = strtod(le, NULL);
            cr_assert_gt(bound, prev_le, "bounds not increasing: %s", text);
            prev_le = bound;
        }
        cr_assert_geq(v, last, "buckets not cumulative: %s", text);
        last = v;
        n++;
    }
    cr_assert(inf && n >= 5, "%s: %d buckets, +Inf %d: %s", name, n, inf, text);
    char *l;
    cr_assert_neq(asprintf(&l, "%s_count{pipeline=\"%s\"}", name, pl), -1);
    double count = sample(text, l);
    cr_assert_eq(count, last, "%s _count %g, +Inf %g", name, count, last);
    free(l);
    cr_assert_neq(asprintf(&l, "%s_sum{pipeline=\"%s\"}", name, pl), -1);
    cr_assert_geq(sample(text, l), 0, "%s", text);
    free(l);
    free(prefix);
    return count;
}

static double oldest_age(const char *text) {
    return sample(text, "khost_partition_oldest_unresolved_age_seconds{"
                        "pipeline=\"p\",group=\"g-mr\",topic=\"mr\","
                        "partition=\"0\"}");
}

/* Both reference parsers accept it. */
static void parsers(const char *text) {
    tu_metrics_parse(current_dir, text);
}

Test(metrics, results_histograms_and_oldest_age) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "mr", 1);
    th_produce(&c, "mr", 1, 5, 0, 1, "RETRYMSG"); /* offsets 0..4 */
    th_produce(&c, "mr", 1, 5, 0, 2, "BADMSG");   /* 5..9 */
    th_produce(&c, "mr", 1, 5, 0, 3, "DEFERMSG"); /* 10..14 */
    th_create_topic(&c, "md", 1);
    th_produce(&c, "md", 1, 10, -1, -1, NULL);
    th_create_topic(&c, "mb", 1);
    th_produce(&c, "mb", 1, 50, -1, -1, NULL);
    char *batch_pipeline, *rec;
    cr_assert_neq(asprintf(&rec, "%s/batch.rec", new_dir()), -1);
    cr_assert_neq(asprintf(&batch_pipeline,
                           "[pipeline.b]\ntopics = mb\ngroup = g-mb\n"
                           "plugin = %s\nworkers = 1\n"
                           "[pipeline.b.config]\nrecord = %s\n",
                           BATCH, rec),
                  -1);
    char *pipelines;
    cr_assert_neq(asprintf(&pipelines, "%s%s", batch_pipeline,
                           "[pipeline.p]\ntopics = mr\ngroup = g-mr\n"
                           "plugin = " FAULT "\nworkers = 1\n"
                           "on_failure = skip\nretry_backoff_ms = 10\n"
                           "[pipeline.p.config]\nretry_on = RETRYMSG\n"
                           "fail_on = BADMSG\ndefer_on = DEFERMSG\n"
                           "misbehave_attempts = 1\n"
                           "[pipeline.q]\ntopics = md\ngroup = g-md\n"
                           "plugin = " FAULT "\nworkers = 1\n"
                           "tick_interval_ms = 100\n"
                           "[pipeline.q.config]\ndefer_all = true\n"),
                  -1);
    int port = start(&c, pipelines);
    free(pipelines);
    free(batch_pipeline);
    /* q: every message deferred, then acked at a tick. */
    cr_assert(th_wait_committed(&c, "g-md", "md", 1, 10, WAIT_MS), "%s",
              th_log(&h));
    cr_assert(th_wait_committed(&c, "g-mb", "mb", 1, 50, WAIT_MS), "%s",
              th_log(&h));
    /* Everything but the deferred message (offset 13) commits. */
    cr_assert(th_wait_committed(&c, "g-mr", "mr", 1, 13, WAIT_MS), "%s",
              th_log(&h));
    char *text = NULL;
    for (int t = 0; t < 100; t++) {
        free(text);
        text = scrape(port);
        if (result(text, "p", "ack") == 13 &&
            result(text, "p", "deferred") == 1)
            break;
        usleep(100 * 1000);
    }
    /* 15 messages, one of them handled twice (the retry). */
    cr_assert_eq(result(text, "p", "ack"), 13, "%s", text);
    cr_assert_eq(result(text, "p", "retry"), 1, "%s", text);
    cr_assert_eq(result(text, "p", "fail"), 1, "%s", text);
    cr_assert_eq(result(text, "p", "deferred"), 1, "%s", text);
    cr_assert_eq(sample(text, "khost_deferred_acks_total{pipeline=\"p\"}"), 0,
                 "%s", text);
    cr_assert_eq(sample(text, "khost_messages_handled_total{pipeline=\"p\"}"),
                 16, "%s", text);
    /* One handle call per handled message, measured in the worker. */
    cr_assert_eq(check_hist(text, "khost_handler_duration_seconds", "p"), 16,
                 "%s", text);
    /* Every ack had a CreateTime. */
    cr_assert_eq(check_hist(text, "khost_end_to_end_latency_seconds", "p"), 13,
                 "%s", text);
    cr_assert_eq(sample(text, "khost_pipeline_state{pipeline=\"p\",state="
                              "\"running\"}"),
                 1, "%s", text);
    cr_assert_eq(sample(text, "khost_pipeline_state{pipeline=\"p\",state="
                              "\"failed\"}"),
                 0, "%s", text);
    cr_assert(strstr(text, "\nkhost_plugin_info{pipeline=\"p\",plugin=\"fault"
                           "\",version=\""),
              "%s", text);
    cr_assert_eq(result(text, "q", "deferred"), 10, "%s", text);
    cr_assert_eq(result(text, "q", "ack"), 0, "%s", text);
    cr_assert_eq(sample(text, "khost_deferred_acks_total{pipeline=\"q\"}"), 10,
                 "%s", text);
    /* Deferred acks are observed too. */
    cr_assert_eq(check_hist(text, "khost_end_to_end_latency_seconds", "q"), 10,
                 "%s", text);
    /* b's plugin has handle_batch: one observation per call, as many as
     * the calls it recorded. */
    char *log = tu_read_file(rec, NULL);
    int calls = 0;
    for (const char *p = log; (p = strstr(p, "batch ")); p++)
        calls++;
    free(log);
    free(rec);
    cr_assert_gt(calls, 0);
    cr_assert_eq(check_hist(text, "khost_handler_duration_seconds", "b"), calls,
                 "%d calls: %s", calls, text);
    cr_assert_eq(check_hist(text, "khost_end_to_end_latency_seconds", "b"), 50,
                 "%s", text);
    cr_assert_eq(result(text, "b", "ack"), 50, "%s", text);
    /* The deferred message is still unresolved: its age grows. */
    double age1 = oldest_age(text);
    cr_assert_geq(age1, 0, "%s", text);
    parsers(text);
    free(text);
    usleep(600 * 1000);
    text = scrape(port);
    double age2 = oldest_age(text);
    cr_assert_geq(age2, age1 + 0.5, "age %g then %g", age1, age2);
    cr_assert_eq(result(text, "p", "ack"), 13, "%s", text);
    free(text);
    cr_assert_eq(th_host_stop(&h, SIGTERM, 30000), 0, "%s", th_log(&h));
    th_cluster_stop(&c);
}

Test(metrics, crashes_by_cause) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "mc", 1);
    th_create_topic(&c, "ml", 1);
    th_produce(&c, "ml", 1, 5, 0, 2, "LIEMSG");
    th_produce(&c, "mc", 1, 5, 0, 1, "CRASHMSG");
    int port = start(&c, "[pipeline.p]\ntopics = mc\ngroup = g-mc\n"
                         "plugin = " FAULT "\nworkers = 1\n"
                         "handler_timeout_ms = 500\n"
                         "max_restarts = 10\nmax_seconds = 60\n"
                         "[pipeline.p.config]\ncrash_on = CRASHMSG\n"
                         "exit_on = EXITMSG\nhang_on = HANGMSG\n"
                         "misbehave_attempts = 1\nslow_ms = 2\n"
                         "[pipeline.q]\ntopics = ml\ngroup = g-ml\n"
                         "plugin = " HOSTILE "\nworkers = 1\n"
                         "max_restarts = 10\nmax_seconds = 60\n"
                         "[pipeline.q.config]\ntrigger = LIEMSG\n"
                         "mode = fake_ack\n");
    /* One at a time, so that each marker is handled on its first attempt
     * (a crash bumps the attempts of what was in flight with it). */
    cr_assert(th_wait_committed(&c, "g-mc", "mc", 1, 5, WAIT_MS), "%s",
              th_log(&h));
    th_produce(&c, "mc", 1, 5, 0, 1, "EXITMSG");
    cr_assert(th_wait_committed(&c, "g-mc", "mc", 1, 10, WAIT_MS), "%s",
              th_log(&h));
    char *text = scrape(port);
    double calls_before =
        check_hist(text, "khost_handler_duration_seconds", "p");
    free(text);
    th_produce(&c, "mc", 1, 5, 0, 1, "HANGMSG");
    cr_assert(th_wait_committed(&c, "g-mc", "mc", 1, 15, WAIT_MS), "%s",
              th_log(&h));
    cr_assert(th_wait_committed(&c, "g-ml", "ml", 1, 5, WAIT_MS), "%s",
              th_log(&h));
    text = scrape(port);
    cr_assert_eq(cause(text, "p", "signal"), 1, "%s", text);
    cr_assert_eq(cause(text, "p", "exit"), 1, "%s", text);
    cr_assert_eq(cause(text, "p", "hang"), 1, "%s", text);
    cr_assert_eq(cause(text, "p", "lie"), 0, "%s", text);
    cr_assert_eq(cause(text, "q", "lie"), 1, "%s", text);
    cr_assert_eq(cause(text, "q", "signal") + cause(text, "q", "exit") +
                     cause(text, "q", "hang"),
                 0, "%s", text);
    /* Three workers of p died; their calls are still counted, and the
     * 5 messages of the last batch came after. */
    double calls_after =
        check_hist(text, "khost_handler_duration_seconds", "p");
    cr_assert_geq(calls_after, calls_before + 5, "%g then %g", calls_before,
                  calls_after);
    /* slow_ms = 2: every call took 2 ms or more, as the worker measured. */
    cr_assert_eq(sample(text, "khost_handler_duration_seconds_bucket{pipeline="
                              "\"p\",le=\"0.001\"}"),
                 0, "%s", text);
    cr_assert_geq(sample(text, "khost_handler_duration_seconds_sum{pipeline="
                               "\"p\"}"),
                  0.002 * calls_after, "%s", text);
    parsers(text);
    free(text);
    cr_assert_eq(th_host_stop(&h, SIGTERM, 30000), 0, "%s", th_log(&h));
    th_cluster_stop(&c);
}
