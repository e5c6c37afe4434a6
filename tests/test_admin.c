/*
 * admin: the HTTP admin API and its CLI mirror (issue 12), end to end on
 * the in-process mock cluster with real hosts and the fault plugin.
 *  - with [http] token set, every POST endpoint answers 401 without the
 *    token or with a wrong one, and does its step with it; GETs stay open;
 *  - unknown pipeline, partition or worker: 404 over HTTP, exit 2 from
 *    the CLI;
 *  - pause stops one partition (its committed offset stays while the
 *    others go on) and resume lets it go on, with nothing lost;
 *  - resume releases an on_failure = pause hold: the failed message goes
 *    to the handler once more and the partition runs to its end;
 *  - a worker restart asked for by an operator: a new pid, no rebalance,
 *    no crash counted, the deferred message it never acked delivered again;
 *  - /ready: 503 before the join, 200, 503 once the pipeline is FAILED,
 *    200 after POST .../restart revives it;
 *  - `khost status --json` prints the same document as GET /api/v1/status.
 */
#define _GNU_SOURCE
#include "harness.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FAULT KHOST_BUILD_DIR "/plugins/fault.so"
#define KHOST KHOST_BUILD_DIR "/khost"
#define WAIT_MS 60000
#define TOKEN "t0ken-for-tests"
#define AUTH "Authorization: Bearer " TOKEN "\r\n"

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

TestSuite(admin, .fini = kill_leftovers);

typedef struct env {
    th_cluster c;
    char *dir;
    char sock[300];
    char rec[300];
    int port;
} env;

/* A host on topic `topic` (parts partitions, per messages each produced
 * first, the marker at (0, marker_index)) with the fault plugin recording
 * to dir/rec.jsonl, its control socket in dir and [http] on a free port. */
static void start(env *e, const char *topic, int parts, int per,
                  int marker_index, const char *marker, const char *http_extra,
                  const char *pipeline_extra, const char *config_extra) {
    th_cluster_start(&e->c, 1);
    th_create_topic(&e->c, topic, parts);
    if (per)
        th_produce(&e->c, topic, parts, per, 0, marker_index, marker);
    e->dir = tu_tmpdir();
    snprintf(current_dir, sizeof current_dir, "%s", e->dir);
    snprintf(e->sock, sizeof e->sock, "%s/k.sock", e->dir);
    snprintf(e->rec, sizeof e->rec, "%s/rec.jsonl", e->dir);
    e->port = tu_free_port();
    char *ini;
    cr_assert_neq(asprintf(&ini,
                           "[host]\nbrokers = %s\ncontrol_socket = %s\n"
                           "[kafka]\nsession.timeout.ms = 6000\n"
                           "heartbeat.interval.ms = 500\n"
                           "auto.commit.interval.ms = 200\n"
                           "[http]\nlisten = 127.0.0.1:%d\n%s"
                           "[pipeline.p]\ntopics = %s\ngroup = g-%s\n"
                           "plugin = " FAULT "\nworkers = 2\n%s"
                           "[pipeline.p.config]\nrecord = %s\n%s",
                           e->c.bootstraps, e->sock, e->port, http_extra, topic,
                           topic, pipeline_extra, e->rec, config_extra),
                  -1);
    th_host_start(&h, e->dir, "host", ini);
    free(ini);
    cr_assert(th_wait_log(&h, "http: listening on", 1, WAIT_MS), "%s",
              th_log(&h));
}

static void finish(env *e) {
    cr_assert_eq(th_host_stop(&h, SIGTERM, 30000), 0, "%s", th_log(&h));
    th_host_free(&h);
    memset(&h, 0, sizeof h);
    th_cluster_stop(&e->c);
    tu_rmdir(e->dir);
    free(e->dir);
    current_dir[0] = '\0';
}

static int post(env *e, const char *path, const char *headers, char **resp) {
    return tu_http(e->port, "POST", path, headers, NULL, 0, resp);
}

static json_t *status(env *e) {
    char *resp;
    int st = tu_http(e->port, "GET", "/api/v1/status", NULL, NULL, 0, &resp);
    cr_assert_eq(st, 200, "%s", resp);
    json_error_t err;
    json_t *j = json_loads(tu_http_body(resp), 0, &err);
    cr_assert(j, "status is not JSON (%s): %s", err.text, resp);
    free(resp);
    return j;
}

/* pipelines[0].partitions[] entry of topic/partition, borrowed from j. */
static json_t *partition_of(json_t *j, int partition) {
    json_t *parts = json_object_get(
        json_array_get(json_object_get(j, "pipelines"), 0), "partitions");
    size_t i;
    json_t *p;
    json_array_foreach(parts, i, p) {
        if (json_integer_value(json_object_get(p, "partition")) == partition)
            return p;
    }
    return NULL;
}

static json_int_t counter(json_t *j, const char *name) {
    return json_integer_value(json_object_get(
        json_object_get(json_array_get(json_object_get(j, "pipelines"), 0),
                        "counters"),
        name));
}

static int wait_ready(env *e, int want, int timeout_ms) {
    int st = 0;
    for (int t = 0; t < timeout_ms; t += 100) {
        char *resp;
        st = tu_http(e->port, "GET", "/ready", NULL, NULL, 0, &resp);
        free(resp);
        if (st == want)
            break;
        th_sleep_ms(100);
    }
    return st;
}

static tu_result khost(const char *a1, const char *a2, const char *a3,
                       const char *a4, const char *a5, const char *a6) {
    return tu_run((char *[]){KHOST, (char *)a1, (char *)a2, (char *)a3,
                             (char *)a4, (char *)a5, (char *)a6, NULL},
                  WAIT_MS);
}

Test(admin, token_guards_every_mutating_endpoint, .timeout = 120) {
    env e;
    start(&e, "tok", 2, 10, -1, NULL, "token = " TOKEN "\n", "", "");
    cr_assert(th_wait_committed(&e.c, "g-tok", "tok", 2, 10, WAIT_MS), "%s",
              th_log(&h));
    static const char *const paths[] = {
        "/api/v1/pipelines/p/partitions/tok/0/pause",
        "/api/v1/pipelines/p/partitions/tok/0/resume",
        "/api/v1/pipelines/p/workers/1/restart",
        "/api/v1/reload",
        "/api/v1/pipelines/p/restart",
    };
    for (size_t i = 0; i < sizeof paths / sizeof *paths; i++) {
        char *resp;
        int st = post(&e, paths[i], NULL, &resp);
        cr_assert_eq(st, 401, "%s without a token: %s", paths[i], resp);
        cr_assert(strstr(resp, "WWW-Authenticate: Bearer"), "%s", resp);
        free(resp);
        st = post(&e, paths[i], "Authorization: Bearer wrong\r\n", &resp);
        cr_assert_eq(st, 401, "%s with a wrong token: %s", paths[i], resp);
        free(resp);
        st = post(&e, paths[i], "Authorization: Bearer " TOKEN "x\r\n", &resp);
        cr_assert_eq(st, 401, "%s with a longer token: %s", paths[i], resp);
        free(resp);
        st = post(&e, paths[i], AUTH, &resp);
        cr_assert_eq(st, 200, "%s with the token: %s\n%s", paths[i], resp,
                     th_log(&h));
        cr_assert(strstr(tu_http_body(resp), "\"ok\":true"), "%s", resp);
        free(resp);
    }
    /* Reads stay open, as scrapers and probes expect. */
    char *resp;
    cr_assert_eq(tu_http(e.port, "GET", "/api/v1/status", NULL, NULL, 0, &resp),
                 200);
    free(resp);
    cr_assert_eq(tu_http(e.port, "GET", "/metrics", NULL, NULL, 0, &resp), 200);
    free(resp);
    /* Wrong method on an admin path: 405 naming POST. */
    cr_assert_eq(tu_http(e.port, "GET", "/api/v1/reload", NULL, NULL, 0, &resp),
                 405);
    cr_assert(strstr(resp, "Allow: POST"), "%s", resp);
    free(resp);
    /* Unknown things, with the token: 404 with a reason. */
    static const char *const unknown[] = {
        "/api/v1/pipelines/nope/restart",
        "/api/v1/pipelines/p/partitions/tok/7/pause",
        "/api/v1/pipelines/p/partitions/other/0/resume",
        "/api/v1/pipelines/p/workers/9/restart",
        "/api/v1/pipelines/p/explode",
        "/api/v1/nothing",
    };
    for (size_t i = 0; i < sizeof unknown / sizeof *unknown; i++) {
        int st = post(&e, unknown[i], AUTH, &resp);
        cr_assert_eq(st, 404, "%s: %s", unknown[i], resp);
        cr_assert(strstr(tu_http_body(resp), "\"error\":"), "%s", resp);
        free(resp);
    }
    /* Consumption went on through all of it. */
    th_produce(&e.c, "tok", 2, 10, -1, -1, NULL);
    cr_assert(th_wait_committed(&e.c, "g-tok", "tok", 2, 20, WAIT_MS), "%s",
              th_log(&h));
    finish(&e);
}

Test(admin, pause_and_resume_a_partition, .timeout = 120) {
    env e;
    start(&e, "pr", 2, 20, -1, NULL, "", "", "");
    cr_assert(th_wait_committed(&e.c, "g-pr", "pr", 2, 20, WAIT_MS), "%s",
              th_log(&h));
    tu_result r = khost("pause", "p", "pr", "0", "--socket", e.sock);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    cr_assert(strstr(r.out, "ok: pipeline=p topic=pr partition=0: paused"),
              "%s", r.out);
    tu_result_free(&r);
    /* A second pause is harmless; an unknown partition is exit 2. */
    r = khost("pause", "p", "pr", "0", "--socket", e.sock);
    cr_assert(strstr(r.out, "already paused"), "%s", r.out);
    tu_result_free(&r);
    r = khost("status", "--socket", e.sock, NULL, NULL, NULL);
    cr_assert(strstr(r.out, "  partition=pr/0 paused by an operator: khost "
                            "resume p pr 0\n"),
              "%s", r.out);
    tu_result_free(&r);
    r = khost("pause", "p", "pr", "5", "--socket", e.sock);
    cr_assert_eq(r.exit_code, 2, "%s%s", r.out, r.err);
    tu_result_free(&r);
    r = khost("pause", "p", "pr", "x", "--socket", e.sock);
    cr_assert_eq(r.exit_code, 2, "%s%s", r.out, r.err);
    cr_assert(strstr(r.err, "bad partition 'x'"), "%s", r.err);
    tu_result_free(&r);

    th_produce(&e.c, "pr", 2, 20, -1, -1, NULL);
    /* Partition 1 goes on to 40; partition 0 stays at 20. */
    int64_t deadline = th_now_ms() + WAIT_MS;
    while (th_committed(&e.c, "g-pr", "pr", 1) < 40 && th_now_ms() < deadline)
        th_sleep_ms(100);
    cr_assert_eq(th_committed(&e.c, "g-pr", "pr", 1), 40, "%s", th_log(&h));
    th_sleep_ms(1000);
    cr_assert_eq(th_committed(&e.c, "g-pr", "pr", 0), 20, "%s", th_log(&h));
    json_t *j = status(&e);
    json_t *p0 = partition_of(j, 0);
    cr_assert(p0);
    cr_assert(json_is_true(json_object_get(p0, "paused")));
    cr_assert_str_eq(json_string_value(json_array_get(
                         json_object_get(p0, "paused_reasons"), 0)),
                     "operator");
    /* The high watermark is librdkafka's cached one: a paused partition
     * is not fetched, so it may be older than the last produce. */
    cr_assert(json_is_integer(json_object_get(p0, "lag")));
    cr_assert_eq(json_integer_value(json_object_get(p0, "committed")), 20);
    json_decref(j);

    char *resp;
    int st =
        post(&e, "/api/v1/pipelines/p/partitions/pr/0/resume", NULL, &resp);
    cr_assert_eq(st, 200, "%s", resp);
    cr_assert(strstr(tu_http_body(resp), "partition=0: resumed"), "%s", resp);
    free(resp);
    cr_assert(th_wait_committed(&e.c, "g-pr", "pr", 2, 40, WAIT_MS), "%s",
              th_log(&h));
    th_ledger l;
    th_ledger_init(&l, 2, 40);
    th_ledger_add_file(&l, e.rec);
    cr_assert_eq(th_ledger_distinct(&l), 80);
    th_ledger_free(&l);
    finish(&e);
}

Test(admin, resume_releases_an_on_failure_pause_hold, .timeout = 120) {
    env e;
    start(&e, "hold", 2, 30, 10, "BAD", "", "on_failure = pause\n",
          "fail_on = BAD\nmisbehave_attempts = 1\n");
    cr_assert(th_wait_log(&h, "partition is held at this offset", 1, WAIT_MS),
              "%s", th_log(&h));
    cr_assert(th_wait_committed(&e.c, "g-hold", "hold", 1, 10, WAIT_MS));
    json_t *j = status(&e);
    json_t *p0 = partition_of(j, 0);
    cr_assert_eq(json_integer_value(json_object_get(p0, "held_offset")), 10,
                 "%s", json_dumps(p0, 0));
    json_decref(j);
    th_sleep_ms(500);
    cr_assert_eq(th_committed(&e.c, "g-hold", "hold", 0), 10);
    tu_result r = khost("status", "--socket", e.sock, NULL, NULL, NULL);
    cr_assert(strstr(r.out, "  partition=hold/0 held at offset=10 "
                            "(on_failure = pause): khost resume p hold 0"),
              "%s", r.out);
    tu_result_free(&r);
    r = khost("resume", "p", "hold", "0", "--socket", e.sock);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    cr_assert(strstr(r.out, "resumed, released the hold at offset=10"), "%s",
              r.out);
    tu_result_free(&r);
    cr_assert(th_wait_committed(&e.c, "g-hold", "hold", 2, 30, WAIT_MS), "%s",
              th_log(&h));
    th_ledger l;
    th_ledger_init(&l, 2, 30);
    th_ledger_add_file(&l, e.rec);
    cr_assert_eq(th_ledger_distinct(&l), 60);
    cr_assert_eq(l.seen[0][10], 2, "the held message: failed once, then again");
    cr_assert_eq(l.attempt[0][10], 2);
    th_ledger_free(&l);
    finish(&e);
}

Test(admin, worker_restart_without_a_rebalance, .timeout = 120) {
    env e;
    start(&e, "wr", 2, 20, 5, "DEF", "", "", "defer_on = DEF\n");
    cr_assert(th_wait_committed(&e.c, "g-wr", "wr", 1, 5, WAIT_MS));
    const char *paths[] = {e.rec};
    cr_assert(th_wait_distinct(paths, 1, 2, 20, 40, WAIT_MS), "%s", th_log(&h));
    json_t *j = status(&e);
    json_int_t rebalances = counter(j, "rebalances");
    json_t *p0 = partition_of(j, 0);
    int owner = (int)json_integer_value(json_object_get(p0, "owner"));
    json_decref(j);
    pid_t old = th_worker_pid(&h, owner);
    char path[128], *resp;
    snprintf(path, sizeof path, "/api/v1/pipelines/p/workers/%d/restart",
             owner);
    int st = post(&e, path, NULL, &resp);
    cr_assert_eq(st, 200, "%s\n%s", resp, th_log(&h));
    cr_assert(strstr(tu_http_body(resp), "restarted: pipeline=p worker="), "%s",
              resp);
    free(resp);
    cr_assert_neq(th_worker_pid(&h, owner), old);
    cr_assert(!th_pid_running(old));
    /* The deferred message, never acked, comes again to the new worker. */
    int64_t deadline = th_now_ms() + WAIT_MS;
    int seen = 0;
    while (th_now_ms() < deadline) {
        th_ledger l;
        th_ledger_init(&l, 2, 20);
        th_ledger_add_file(&l, e.rec);
        seen = l.seen[0][5];
        th_ledger_free(&l);
        if (seen >= 2)
            break;
        th_sleep_ms(100);
    }
    cr_assert_eq(seen, 2, "%s", th_log(&h));
    j = status(&e);
    cr_assert_eq(counter(j, "rebalances"), rebalances, "no rebalance");
    cr_assert_eq(counter(j, "crashes"), 0);
    cr_assert_eq(counter(j, "restarts"), 1);
    json_decref(j);
    /* The other partition goes on with new messages. */
    th_produce(&e.c, "wr", 2, 10, -1, -1, NULL);
    deadline = th_now_ms() + WAIT_MS;
    while (th_committed(&e.c, "g-wr", "wr", 1) < 30 && th_now_ms() < deadline)
        th_sleep_ms(100);
    cr_assert_eq(th_committed(&e.c, "g-wr", "wr", 1), 30, "%s", th_log(&h));
    /* The CLI mirror: an unknown worker is exit 2. */
    tu_result r = khost("restart", "p", "--worker", "7", "--socket", e.sock);
    cr_assert_eq(r.exit_code, 2, "%s%s", r.out, r.err);
    cr_assert(strstr(r.out, "has no worker 7"), "%s", r.out);
    tu_result_free(&r);
    finish(&e);
}

Test(admin, ready_across_join_failure_and_revival, .timeout = 150) {
    env e;
    start(&e, "rdy", 2, 5, -1, NULL, "",
          "max_restarts = 2\nmax_seconds = 60\non_exhausted = pause\n", "");
    char *resp;
    int st = tu_http(e.port, "GET", "/ready", NULL, NULL, 0, &resp);
    bool joined = th_log_count(&h, "rebalance #1: assigned") > 0;
    cr_assert(joined || st == 503, "ready before the join: %d %s", st, resp);
    free(resp);
    cr_assert_eq(wait_ready(&e, 200, WAIT_MS), 200, "%s", th_log(&h));
    /* Three crashes within max_seconds: FAILED. */
    for (int k = 0; k < 3; k++) {
        pid_t pid = th_worker_pid(&h, 0);
        cr_assert_gt(pid, 0);
        kill(pid, SIGKILL);
        int64_t deadline = th_now_ms() + WAIT_MS;
        while (th_worker_pid(&h, 0) == pid && th_now_ms() < deadline &&
               !th_log_count(&h, "pipeline=p FAILED"))
            th_sleep_ms(20);
    }
    cr_assert(th_wait_log(&h, "pipeline=p FAILED", 1, WAIT_MS), "%s",
              th_log(&h));
    cr_assert_eq(wait_ready(&e, 503, 5000), 503);
    st = tu_http(e.port, "GET", "/ready", NULL, NULL, 0, &resp);
    cr_assert_str_eq(tu_http_body(resp),
                     "{\"ready\":false,\"reason\":\"pipeline p: FAILED\"}\n");
    free(resp);
    json_t *j = status(&e);
    cr_assert_str_eq(
        json_string_value(json_object_get(
            json_array_get(json_object_get(j, "pipelines"), 0), "state")),
        "failed");
    cr_assert_geq(json_array_size(json_object_get(
                      json_array_get(json_object_get(j, "pipelines"), 0),
                      "recent_crashes")),
                  3);
    json_decref(j);
    /* Revival: the restart answers once its workers are ready. */
    st = post(&e, "/api/v1/pipelines/p/restart", NULL, &resp);
    cr_assert_eq(st, 200, "%s\n%s", resp, th_log(&h));
    cr_assert(strstr(tu_http_body(resp), "pipeline p restarted"), "%s", resp);
    free(resp);
    cr_assert_eq(wait_ready(&e, 200, WAIT_MS), 200, "%s", th_log(&h));
    j = status(&e);
    json_t *last = json_object_get(j, "last_reload");
    cr_assert(json_is_true(json_object_get(last, "ok")), "%s",
              json_dumps(last, 0));
    cr_assert_geq(json_array_size(json_object_get(j, "recent_reloads")), 1);
    json_decref(j);
    finish(&e);
}

Test(admin, status_json_matches_the_api, .timeout = 120) {
    env e;
    start(&e, "sj", 3, 10, -1, NULL, "", "", "");
    cr_assert(th_wait_committed(&e.c, "g-sj", "sj", 3, 10, WAIT_MS), "%s",
              th_log(&h));
    tu_result r = khost("status", "--json", "--socket", e.sock, NULL, NULL);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    json_error_t err;
    json_t *cli = json_loads(r.out, 0, &err);
    cr_assert(cli, "khost status --json is not JSON (%s): %s", err.text, r.out);
    tu_result_free(&r);
    json_t *api = status(&e);
    /* The same document, but for the moving parts of the host. */
    json_t *hc = json_object_get(cli, "host"),
           *ha = json_object_get(api, "host");
    cr_assert_eq(json_integer_value(json_object_get(hc, "pid")),
                 json_integer_value(json_object_get(ha, "pid")));
    json_object_del(hc, "uptime_seconds");
    json_object_del(ha, "uptime_seconds");
    cr_assert(json_equal(cli, api), "CLI: %s\nAPI: %s", json_dumps(cli, 0),
              json_dumps(api, 0));
    json_t *pl = json_array_get(json_object_get(api, "pipelines"), 0);
    cr_assert_str_eq(json_string_value(json_object_get(pl, "name")), "p");
    cr_assert_eq(json_array_size(json_object_get(pl, "partitions")), 3);
    cr_assert_eq(json_array_size(json_object_get(pl, "workers")), 2);
    cr_assert_eq(counter(api, "handled"), 30);
    for (int p = 0; p < 3; p++) {
        json_t *part = partition_of(api, p);
        cr_assert_eq(json_integer_value(json_object_get(part, "acked")), 9);
        cr_assert_eq(json_integer_value(json_object_get(part, "lag")), 0);
    }
    json_decref(cli);
    json_decref(api);
    finish(&e);
}
