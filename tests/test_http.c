/*
 * http: the [http] server (issue 12, first slice): GET /health, /ready and
 * /metrics against real hosts and the in-process mock cluster.
 *  - /health answers 200; /ready 503 before the group join, 200 once
 *    partitions are assigned and workers READY, 503 naming a FAILED
 *    pipeline;
 *  - /metrics counts what the fault plugin was made to do (one crash, one
 *    dead-lettered message), shows the committed offsets, passes
 *    `promtool check metrics` and parses with prometheus_client;
 *  - wrong method 405 with Allow, unknown path 404, 100 KiB body 413, and
 *    200 connections left mid-request do not stop consumption;
 *  - check-config refuses a non-loopback listen without a token;
 *  - label values are escaped per the text format (metrics.c).
 */
#define _GNU_SOURCE
#include "harness.h"
#include "metrics.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define FX(name) KHOST_FIXTURE_DIR "/" name ".so"
#define FAULT KHOST_BUILD_DIR "/plugins/fault.so"
#define NOOP KHOST_BUILD_DIR "/plugins/noop.so"
#define KHOST KHOST_BUILD_DIR "/khost"
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

TestSuite(http, .fini = kill_leftovers);

static char *start_host(th_cluster *c, const char *topic, int parts,
                        const char *plugin, const char *extra,
                        const char *config, int *port) {
    char *dir = tu_tmpdir();
    snprintf(current_dir, sizeof current_dir, "%s", dir);
    *port = tu_free_port();
    char *ini;
    cr_assert_neq(asprintf(&ini,
                           "[host]\nbrokers = %s\n"
                           "[kafka]\nsession.timeout.ms = 6000\n"
                           "heartbeat.interval.ms = 500\n"
                           "[http]\nlisten = 127.0.0.1:%d\n"
                           "[pipeline.p]\ntopics = %s\ngroup = g-%s\n"
                           "plugin = %s\nworkers = 2\n%s"
                           "[pipeline.p.config]\n%s",
                           c->bootstraps, *port, topic, topic, plugin, extra,
                           config),
                  -1);
    (void)parts;
    th_host_start(&h, dir, "host", ini);
    free(ini);
    cr_assert(th_wait_log(&h, "http: listening on", 1, WAIT_MS), "%s",
              th_log(&h));
    return dir;
}

static int wait_ready(int port, int timeout_ms) {
    char *resp = NULL;
    int st = 0;
    for (int t = 0; t < timeout_ms; t += 100) {
        st = tu_http(port, "GET", "/ready", NULL, NULL, 0, &resp);
        free(resp);
        if (st == 200)
            break;
        usleep(100 * 1000);
    }
    return st;
}

Test(http, health_and_ready_across_the_join) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "hr", 4);
    int port;
    start_host(&c, "hr", 4, NOOP, "", "", &port);
    char *resp;
    int st = tu_http(port, "GET", "/health", NULL, NULL, 0, &resp);
    cr_assert_eq(st, 200, "%s", resp);
    cr_assert(strstr(resp, "Content-Type: application/json"), "%s", resp);
    cr_assert_str_eq(tu_http_body(resp), "{\"status\":\"ok\"}\n");
    free(resp);
    /* Before the group join: no partition yet. */
    st = tu_http(port, "GET", "/ready", NULL, NULL, 0, &resp);
    bool joined = th_log_count(&h, "rebalance #1: assigned") > 0;
    cr_assert(joined || st == 503, "ready before the join: %d %s", st, resp);
    if (!joined)
        cr_assert(strstr(tu_http_body(resp), "\"ready\":false") &&
                      strstr(tu_http_body(resp), "\"reason\":\"pipeline p: "),
                  "%s", resp);
    free(resp);
    cr_assert(th_wait_log(&h, "rebalance #1: assigned", 1, WAIT_MS), "%s",
              th_log(&h));
    cr_assert_eq(wait_ready(port, 20000), 200, "%s", th_log(&h));
    st = tu_http(port, "GET", "/ready", NULL, NULL, 0, &resp);
    cr_assert_str_eq(tu_http_body(resp), "{\"ready\":true}\n");
    free(resp);
    cr_assert_eq(th_host_stop(&h, SIGTERM, 30000), 0, "%s", th_log(&h));
    th_cluster_stop(&c);
}

Test(http, ready_names_a_failed_pipeline) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "fl", 2);
    int port;
    start_host(&c, "fl", 2, FX("fx_init_fails"),
               "max_restarts = 2\nmax_seconds = 60\non_exhausted = pause\n", "",
               &port);
    cr_assert(th_wait_log(&h, "pipeline=p FAILED", 1, WAIT_MS), "%s",
              th_log(&h));
    char *resp;
    int st = tu_http(port, "GET", "/ready", NULL, NULL, 0, &resp);
    cr_assert_eq(st, 503, "%s", resp);
    cr_assert_str_eq(tu_http_body(resp),
                     "{\"ready\":false,\"reason\":\"pipeline p: FAILED\"}\n");
    free(resp);
    st = tu_http(port, "GET", "/metrics", NULL, NULL, 0, &resp);
    cr_assert_eq(st, 200);
    cr_assert(strstr(resp, "\nkhost_pipeline_failed{pipeline=\"p\"} 1\n"), "%s",
              resp);
    free(resp);
    /* Still alive for probes. */
    st = tu_http(port, "GET", "/health", NULL, NULL, 0, &resp);
    cr_assert_eq(st, 200, "%s", resp);
    free(resp);
    th_host_stop(&h, SIGTERM, 30000);
    th_cluster_stop(&c);
}

/* The value of the sample `line` (name{labels}) in the exposition, -1 when
 * absent. */
#define sample tu_metric

#define PER 40
Test(http, metrics_count_a_crash_and_a_dead_letter) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "mt", 2);
    th_create_topic(&c, "mt.dlq", 1);
    th_produce(&c, "mt", 2, PER / 2, 0, 5, "CRASHMSG");
    th_produce(&c, "mt", 2, PER / 2, 1, 7, "BADMSG");
    int port;
    char *dir = start_host(&c, "mt", 2, FAULT, "on_failure = dlq\n",
                           "fail_on = BADMSG\ncrash_on = CRASHMSG\n"
                           "misbehave_attempts = 1\n",
                           &port);
    cr_assert(th_wait_committed(&c, "g-mt", "mt", 2, PER, 60000), "%s",
              th_log(&h));
    /* The host's view of the commit comes with the commit callback. */
    char *resp = NULL;
    const char *text = NULL;
    for (int t = 0; t < 100; t++) {
        free(resp);
        cr_assert_eq(tu_http(port, "GET", "/metrics", NULL, NULL, 0, &resp),
                     200);
        text = tu_http_body(resp);
        if (sample(text,
                   "khost_partition_committed_offset{pipeline=\"p\","
                   "group=\"g-mt\",topic=\"mt\",partition=\"1\"}") == PER &&
            sample(text,
                   "khost_partition_committed_offset{pipeline=\"p\","
                   "group=\"g-mt\",topic=\"mt\",partition=\"0\"}") == PER &&
            sample(text, "khost_dead_lettered_total{pipeline=\"p\"}") == 1)
            break;
        usleep(100 * 1000);
    }
    cr_assert(strstr(resp, "Content-Type: text/plain; version=0.0.4"), "%s",
              resp);
    cr_assert_eq(sample(text, "khost_worker_crashes_total{pipeline=\"p\","
                              "cause=\"signal\"}"),
                 1, "%s", text);
    cr_assert_eq(sample(text, "khost_worker_crashes_total{pipeline=\"p\","
                              "cause=\"exit\"}"),
                 0, "%s", text);
    cr_assert_eq(sample(text, "khost_dead_lettered_total{pipeline=\"p\"}"), 1,
                 "%s", text);
    cr_assert_eq(sample(text, "khost_messages_failed_total{pipeline=\"p\"}"), 1,
                 "%s", text);
    /* Every message gave a result but the one that crashed its worker
     * the first time (its redelivery acked); one of them failed. Results
     * past the crash that came back before it are handled again after the
     * rewind, so these are at least, not exactly. */
    cr_assert_geq(sample(text, "khost_messages_handled_total{pipeline=\"p\"}"),
                  2 * PER, "%s", text);
    cr_assert_geq(sample(text, "khost_messages_acked_total{pipeline=\"p\"}"),
                  2 * PER - 1, "%s", text);
    cr_assert_geq(sample(text, "khost_worker_restarts_total{pipeline=\"p\"}"),
                  1, "%s", text);
    for (int p = 0; p < 2; p++) {
        char *l;
        cr_assert_neq(asprintf(&l,
                               "khost_partition_committed_offset{pipeline="
                               "\"p\",group=\"g-mt\",topic=\"mt\","
                               "partition=\"%d\"}",
                               p),
                      -1);
        cr_assert_eq(sample(text, l), PER, "%s: %s", l, text);
        free(l);
        cr_assert_neq(asprintf(&l,
                               "khost_partition_lag{pipeline=\"p\",group=\"g-"
                               "mt\",topic=\"mt\",partition=\"%d\"}",
                               p),
                      -1);
        cr_assert_eq(sample(text, l), 0, "%s: %s", l, text);
        free(l);
    }
    cr_assert_eq(sample(text, "khost_worker_up{pipeline=\"p\",worker=\"0\"}"),
                 1, "%s", text);
    cr_assert_gt(sample(text, "khost_worker_resident_memory_bytes{pipeline="
                              "\"p\",worker=\"1\"}"),
                 0, "%s", text);
    cr_assert(strstr(text, "# TYPE khost_worker_cpu_seconds_total counter\n"));
    cr_assert(strstr(text, "\nkhost_build_info{version=\"" KHOST_VERSION
                           "\",abi=\""));

    /* The two reference parsers accept it. A missing tool fails. */
    cr_assert_gt(tu_metrics_parse(dir, text), 20);
    free(resp);
    cr_assert_eq(th_host_stop(&h, SIGTERM, 30000), 0, "%s", th_log(&h));
    th_cluster_stop(&c);
}

Test(http, bad_requests_get_4xx_and_consumption_goes_on) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "br", 2);
    int port;
    start_host(&c, "br", 2, NOOP, "", "", &port);
    char *resp;
    cr_assert_eq(tu_http(port, "POST", "/metrics", NULL, NULL, 0, &resp), 405,
                 "%s", resp);
    cr_assert(strstr(resp, "Allow: GET, HEAD\r\n"), "%s", resp);
    cr_assert(strstr(tu_http_body(resp), "\"error\""), "%s", resp);
    free(resp);
    cr_assert_eq(tu_http(port, "GET", "/nope", NULL, NULL, 0, &resp), 404, "%s",
                 resp);
    cr_assert(strstr(tu_http_body(resp), "\"error\""), "%s", resp);
    free(resp);
    cr_assert_eq(
        tu_http(port, "POST", "/health", NULL, NULL, 100 * 1024, &resp), 413,
        "%s", resp);
    free(resp);

    /* 200 connections, each left in the middle of its request line. */
    int fds[200];
    for (int i = 0; i < 200; i++) {
        fds[i] = tu_connect_port(port);
        if (fds[i] >= 0 && write(fds[i], "GET /heal", 9) < 0) {
            close(fds[i]);
            fds[i] = -1;
        }
    }
    th_produce(&c, "br", 2, 100, -1, -1, NULL);
    cr_assert(th_wait_committed(&c, "g-br", "br", 2, 100, 60000),
              "consumption stalled:\n%s", th_log(&h));
    for (int i = 0; i < 200; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    int st = 0;
    for (int t = 0; t < 50 && st != 200; t++) {
        st = tu_http(port, "GET", "/health", NULL, NULL, 0, &resp);
        free(resp);
        if (st != 200)
            usleep(100 * 1000);
    }
    cr_assert_eq(st, 200, "%s", th_log(&h));
    cr_assert_eq(th_host_stop(&h, SIGTERM, 30000), 0, "%s", th_log(&h));
    th_cluster_stop(&c);
}

Test(http, check_config_refuses_open_listen_without_token) {
    char *dir = tu_tmpdir();
    snprintf(current_dir, sizeof current_dir, "%s", dir);
    char *ini = tu_write_file(dir, "k.ini",
                              "[host]\nbrokers = mock\n"
                              "[http]\nlisten = 0.0.0.0:9464\n"
                              "[pipeline.p]\ntopics = t\ngroup = g\n"
                              "plugin = " NOOP "\n");
    tu_result r =
        tu_run((char *[]){KHOST, "check-config", "-c", ini, NULL}, 30000);
    cr_assert_eq(r.exit_code, 2, "%s%s", r.out, r.err);
    char *want;
    cr_assert_neq(asprintf(&want,
                           "%s:4: [http] listen = 0.0.0.0:9464 is not "
                           "loopback: set [http] token = ${VAR}\n",
                           ini),
                  -1);
    cr_assert(strstr(r.err, want), "%s", r.err);
    tu_result_free(&r);
    free(want);
    free(ini);
    ini = tu_write_file(dir, "k2.ini",
                        "[host]\nbrokers = mock\n"
                        "[http]\nlisten = 10.0.0.1:70000\n"
                        "[pipeline.p]\ntopics = t\ngroup = g\n"
                        "plugin = " NOOP "\n");
    r = tu_run((char *[]){KHOST, "check-config", "-c", ini, NULL}, 30000);
    cr_assert_eq(r.exit_code, 2, "%s%s", r.out, r.err);
    cr_assert(strstr(r.err, ":4: bad value '10.0.0.1:70000' for 'listen' in "
                            "[http]: port must be in 1..65535"),
              "%s", r.err);
    tu_result_free(&r);
    free(ini);
    setenv("KH_TEST_HTTP_TOKEN", "s3cret", 1);
    ini = tu_write_file(dir, "k3.ini",
                        "[host]\nbrokers = mock\n"
                        "[http]\nlisten = 0.0.0.0:9464\n"
                        "token = ${KH_TEST_HTTP_TOKEN}\n"
                        "[pipeline.p]\ntopics = t\ngroup = g\n"
                        "plugin = " NOOP "\n");
    r = tu_run((char *[]){KHOST, "check-config", "-c", ini, NULL}, 30000);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    tu_result_free(&r);
    free(ini);
}

Test(http, label_values_are_escaped) {
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    metrics_label_value(f, "a\\b\"c\nd");
    fclose(f);
    cr_assert_str_eq(buf, "a\\\\b\\\"c\\nd");
    free(buf);
}
