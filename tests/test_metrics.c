/*
 * metrics: the deeper /metrics families (issue 12) against real hosts and
 * the fault plugin, each value checked against what the test caused.
 *  - results by result: 2 retries then an ack, 1 fail (skipped), every
 *    other message deferred and acked at the tick; deferred acks;
 *  - the handler duration histogram (measured in the workers) counts one
 *    call per result, with cumulative buckets and +Inf equal to _count;
 *  - end-to-end latency counts every acked message;
 *  - crashes by cause: one SIGSEGV (signal), one _exit (exit), one hang
 *    past handler_timeout_ms (hang);
 *  - the oldest unresolved message's age grows while a deferred message
 *    stays unacked; pipeline state and plugin info;
 *  - promtool accepts the whole exposition.
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
#define WAIT_MS 60000

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

static int start(th_cluster *c, const char *topic, const char *pipeline_extra,
                 const char *config) {
    char *dir = tu_tmpdir();
    snprintf(current_dir, sizeof current_dir, "%s", dir);
    int port = tu_free_port();
    char *ini;
    cr_assert_neq(asprintf(&ini,
                           "[host]\nbrokers = %s\n"
                           "[kafka]\nsession.timeout.ms = 6000\n"
                           "heartbeat.interval.ms = 500\n"
                           "[http]\nlisten = 127.0.0.1:%d\n"
                           "[pipeline.p]\ntopics = %s\ngroup = g-%s\n"
                           "plugin = " FAULT "\n"
                           "retry_backoff_ms = 10\n%s"
                           "[pipeline.p.config]\n%s",
                           c->bootstraps, port, topic, topic, pipeline_extra,
                           config),
                  -1);
    th_host_start(&h, dir, "host", ini);
    free(ini);
    free(dir);
    cr_assert(th_wait_log(&h, "http: listening on", 1, WAIT_MS), "%s",
              th_log(&h));
    return port;
}

static void stop(th_cluster *c) {
    cr_assert_eq(th_host_stop(&h, SIGTERM, 30000), 0, "%s", th_log(&h));
    th_host_free(&h);
    memset(&h, 0, sizeof h);
    th_cluster_stop(c);
    tu_rmdir(current_dir);
    current_dir[0] = '\0';
}

static char *scrape(int port) {
    char *resp;
    cr_assert_eq(tu_http(port, "GET", "/metrics", NULL, NULL, 0, &resp), 200);
    char *text = strdup(tu_http_body(resp));
    free(resp);
    return text;
}

static double m(const char *text, const char *line) {
    return tu_metric(text, line);
}

/* Cumulative buckets: non-decreasing, +Inf equal to _count. */
static void check_histogram(const char *text, const char *name) {
    char *needle;
    cr_assert_neq(asprintf(&needle, "\n%s_bucket{pipeline=\"p\",le=\"", name),
                  -1);
    double last = 0, inf = -1;
    int n = 0;
    for (const char *p = strstr(text, needle); p;
         p = strstr(p + 1, needle), n++) {
        const char *q = strchr(p + strlen(needle), '}');
        cr_assert(q);
        double v = strtod(q + 2, NULL);
        cr_assert_geq(v, last, "%s buckets go down", name);
        last = v;
        if (!strncmp(p + strlen(needle), "+Inf", 4))
            inf = v;
    }
    free(needle);
    cr_assert_eq(n, 17, "%s: %d buckets", name, n);
    char *count;
    cr_assert_neq(asprintf(&count, "%s_count{pipeline=\"p\"}", name), -1);
    cr_assert_eq(inf, m(text, count), "%s +Inf vs _count", name);
    free(count);
}

static void promtool_ok(const char *text) {
    char path[] = "/tmp/khost-metrics-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    char *cmd;
    cr_assert_neq(asprintf(&cmd, "promtool check metrics < %s", path), -1);
    tu_result r = tu_run((char *[]){"/bin/sh", "-c", cmd, NULL}, 30000);
    cr_assert_eq(r.exit_code, 0, "promtool: %s%s", r.out, r.err);
    tu_result_free(&r);
    free(cmd);
    unlink(path);
}

#define PER 20
Test(metrics, results_histograms_and_latency, .timeout = 120) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "mr", 2);
    /* Partition 0: one message retried twice, then acked. Partition 1:
     * one message failed (skipped). Every other message deferred. */
    th_produce(&c, "mr", 2, PER / 2, 0, 3, "RETRYME");
    th_produce(&c, "mr", 2, PER / 2, 1, 4, "FAILME");
    int port =
        start(&c, "mr", "workers = 2\non_failure = skip\nmax_attempts = 5\n",
              "retry_on = RETRYME\nfail_on = FAILME\n"
              "misbehave_attempts = 2\ndefer_all = true\n");
    cr_assert(th_wait_committed(&c, "g-mr", "mr", 2, PER, WAIT_MS), "%s",
              th_log(&h));
    char *text = NULL;
    int64_t deadline = th_now_ms() + WAIT_MS;
    for (;;) {
        free(text);
        text = scrape(port);
        if (m(text, "khost_messages_acked_total{pipeline=\"p\"}") ==
                2 * PER - 1 ||
            th_now_ms() > deadline)
            break;
        th_sleep_ms(100);
    }
    double ack = m(text, "khost_handler_results_total{pipeline=\"p\","
                         "result=\"ack\"}");
    double deferred = m(text, "khost_handler_results_total{pipeline=\"p\","
                              "result=\"deferred\"}");
    double retry = m(text, "khost_handler_results_total{pipeline=\"p\","
                           "result=\"retry\"}");
    double fail = m(text, "khost_handler_results_total{pipeline=\"p\","
                          "result=\"fail\"}");
    double handled = m(text, "khost_messages_handled_total{pipeline=\"p\"}");
    cr_assert_eq(retry, 2, "%s", text);
    cr_assert_eq(fail, 1, "%s", text);
    /* 40 messages: 39 resolved by a handler (one failed and skipped),
     * each an ack or deferred; 2 more results for the retries. */
    cr_assert_eq(ack + deferred, 2 * PER - 1, "%s", text);
    cr_assert_gt(deferred, 0);
    cr_assert_eq(ack + deferred + retry + fail, handled, "%s", text);
    cr_assert_eq(m(text, "khost_deferred_acks_total{pipeline=\"p\"}"), deferred,
                 "%s", text);
    cr_assert_eq(m(text, "khost_messages_acked_total{pipeline=\"p\"}"),
                 2 * PER - 1, "%s", text);
    /* One handler call per result (handle, not handle_batch). */
    check_histogram(text, "khost_handler_duration_seconds");
    cr_assert_eq(m(text, "khost_handler_duration_seconds_count{pipeline="
                         "\"p\"}"),
                 handled, "%s", text);
    cr_assert_gt(m(text, "khost_handler_duration_seconds_sum{pipeline="
                         "\"p\"}"),
                 0);
    /* Every acked message had a CreateTime: each is one observation. */
    check_histogram(text, "khost_end_to_end_latency_seconds");
    cr_assert_eq(m(text, "khost_end_to_end_latency_seconds_count{pipeline="
                         "\"p\"}"),
                 2 * PER - 1, "%s", text);
    cr_assert_eq(m(text, "khost_pipeline_state{pipeline=\"p\",state="
                         "\"running\"}"),
                 1);
    cr_assert_eq(m(text, "khost_pipeline_state{pipeline=\"p\",state="
                         "\"failed\"}"),
                 0);
    cr_assert(strstr(text, "\nkhost_plugin_info{pipeline=\"p\",plugin=\"fault"
                           "\",version=\""),
              "%s", text);
    cr_assert_eq(m(text, "khost_worker_crashes_total{pipeline=\"p\",cause="
                         "\"signal\"}"),
                 0);
    promtool_ok(text);
    free(text);
    stop(&c);
}

Test(metrics, crashes_by_cause_and_unresolved_age, .timeout = 150) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "mc", 4);
    th_produce(&c, "mc", 4, 5, 0, 2, "CRASHME");
    th_produce(&c, "mc", 4, 5, 1, 2, "EXITME");
    th_produce(&c, "mc", 4, 5, 2, 2, "HANGME");
    th_produce(&c, "mc", 4, 5, 3, 2, "DEFERME");
    int port = start(&c, "mc",
                     "workers = 4\nhandler_timeout_ms = 1000\n"
                     "poison_after = 5\nmax_restarts = 10\n",
                     "crash_on = CRASHME\nexit_on = EXITME\nhang_on = HANGME\n"
                     "defer_on = DEFERME\nmisbehave_attempts = 1\n");
    /* One worker per partition. Partitions 0..2 run to their end after
     * one death each; 3 stays at its deferred message (offset 7), which
     * is never acked. */
    cr_assert(th_wait_committed(&c, "g-mc", "mc", 3, 20, WAIT_MS), "%s",
              th_log(&h));
    char *text = scrape(port);
    cr_assert_eq(m(text, "khost_worker_crashes_total{pipeline=\"p\",cause="
                         "\"signal\"}"),
                 1, "%s", text);
    cr_assert_eq(m(text, "khost_worker_crashes_total{pipeline=\"p\",cause="
                         "\"exit\"}"),
                 1, "%s", text);
    cr_assert_eq(m(text, "khost_worker_crashes_total{pipeline=\"p\",cause="
                         "\"hang\"}"),
                 1, "%s\n%s", text, th_log(&h));
    cr_assert_eq(m(text, "khost_worker_crashes_total{pipeline=\"p\",cause="
                         "\"lie\"}"),
                 0, "%s", text);
    const char *age = "khost_partition_oldest_unresolved_age_seconds{pipeline="
                      "\"p\",group=\"g-mc\",topic=\"mc\",partition=\"3\"}";
    double a1 = m(text, age);
    cr_assert_eq(m(text, "khost_partition_oldest_unresolved_age_seconds{"
                         "pipeline=\"p\",group=\"g-mc\",topic=\"mc\","
                         "partition=\"0\"}"),
                 0, "%s", text);
    free(text);
    th_sleep_ms(1500);
    text = scrape(port);
    double a2 = m(text, age);
    cr_assert_gt(a1, 0, "%s", text);
    cr_assert_geq(a2 - a1, 1.3, "age %f then %f", a1, a2);
    cr_assert_lt(a2 - a1, 3.0, "age %f then %f", a1, a2);
    promtool_ok(text);
    free(text);
    stop(&c);
}
