/*
 * page: the status page at GET / (issue 12), rendered by headless Chromium.
 *  - the embedded HTML has no external reference (no http(s) or //
 *    URL, no @import, no url(), no innerHTML);
 *  - a real host on the mock cluster (4 partitions, uneven counts
 *    consumed) serves it as text/html, also to HEAD; Chromium's rendered
 *    DOM shows the pipeline and one row per partition with the committed
 *    offset and lag the host's /api/v1/status gives; a 1280x800
 *    screenshot goes to build/artifacts/status-page.png;
 *  - against a fixture status (tests/page: 2 pipelines x 16 partitions,
 *    names with markup, long paths) nothing scrolls sideways at 1280
 *    wide, the markup shows as text, failed and paused rows are marked,
 *    and a failing fetch shows the error banner and keeps the last data.
 * Chromium missing fails the test: .ci/install-deps installs it.
 */
#define _GNU_SOURCE
#include "harness.h"
#include "page.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define NOOP KHOST_BUILD_DIR "/plugins/noop.so"
#define CHROMIUM "/usr/bin/chromium"
#define ARTIFACTS KHOST_BUILD_DIR "/artifacts"
#define WAIT_MS 60000

static th_host h;
static pid_t server_pid;
static char current_dir[256];

static void kill_leftovers(void) {
    if (h.pid)
        th_host_stop(&h, SIGKILL, 5000);
    h.pid = 0;
    if (server_pid > 0) {
        kill(server_pid, SIGKILL);
        waitpid(server_pid, NULL, 0);
    }
    server_pid = 0;
    if (current_dir[0])
        tu_rmdir(current_dir);
    current_dir[0] = '\0';
}

TestSuite(page, .fini = kill_leftovers);

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* One headless Chromium run on url: `--dump-dom` when shot is NULL (the
 * DOM after the page's scripts ran for 5 s of virtual time, returned),
 * else `--screenshot=shot` (returns ""). A fresh profile each time; the
 * flags keep it off the network but for url. Fails the test when
 * Chromium is missing, hangs past 60 s or fails. */
static char *chromium(const char *dir, const char *url, const char *shot,
                      const char *window) {
    cr_assert(access(CHROMIUM, X_OK) == 0,
              CHROMIUM " is missing: the status page test needs Chromium "
                       "(Debian package chromium, .ci/install-deps)");
    char *profile, *udd, *win, *out = NULL;
    cr_assert_neq(asprintf(&profile, "%s/chromium-XXXXXX", dir), -1);
    cr_assert_not_null(mkdtemp(profile));
    cr_assert_neq(asprintf(&udd, "--user-data-dir=%s", profile), -1);
    cr_assert_neq(asprintf(&win, "--window-size=%s", window), -1);
    if (shot)
        cr_assert_neq(asprintf(&out, "--screenshot=%s", shot), -1);
    char *argv[] = {CHROMIUM,
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--hide-scrollbars",
                    udd,
                    win,
                    "--virtual-time-budget=5000",
                    shot ? out : "--dump-dom",
                    (char *)url,
                    NULL};
    double t0 = now_s();
    tu_result r = tu_run(argv, 60000);
    fprintf(stderr, "page: chromium %s %s took %.1f s\n",
            shot ? "screenshot" : "dump-dom", url, now_s() - t0);
    cr_assert_eq(r.exit_code, 0, "chromium exited %d on %s:\n%s", r.exit_code,
                 url, r.err);
    char *dom = shot ? strdup("") : r.out;
    if (shot)
        free(r.out);
    free(r.err);
    tu_rmdir(profile);
    free(profile);
    free(udd);
    free(win);
    free(out);
    return dom;
}

/* The first "<tr ... data-topic="T" data-partition="P">...</tr>" of the
 * DOM, malloc'd, or NULL. */
static char *partition_row(const char *dom, const char *topic, int p) {
    char *needle;
    cr_assert_neq(asprintf(&needle, " data-topic=\"%s\" data-partition=\"%d\">",
                           topic, p),
                  -1);
    const char *at = strstr(dom, needle);
    free(needle);
    if (!at)
        return NULL;
    const char *end = strstr(at, "</tr>");
    cr_assert_not_null(end);
    return strndup(at, (size_t)(end - at));
}

Test(page, has_no_external_reference) {
    cr_assert_eq(strlen(kh_page_html), kh_page_html_len);
    cr_assert(strncmp(kh_page_html, "<!DOCTYPE html>", 15) == 0);
    cr_assert(strstr(kh_page_html, "<style>") &&
              strstr(kh_page_html, "<script>"));
    const char *banned[] = {"://",           "src=",
                            "href=",         "@import",
                            "url(",          "\"//",
                            "'//",           "<link",
                            "<base",         "<img",
                            "<iframe",       "innerHTML",
                            "outerHTML",     "insertAdjacentHTML",
                            "document.write"};
    for (size_t i = 0; i < sizeof banned / sizeof *banned; i++)
        cr_assert_null(strstr(kh_page_html, banned[i]),
                       "the page holds \"%s\": %.80s", banned[i],
                       strstr(kh_page_html, banned[i]));
    /* What it reads is relative: the host that served it. */
    cr_assert(strstr(kh_page_html, "\"api/v1/status\""));
}

/* The host's own view of the partitions, once every one of the 4 has
 * committed want[p] and knows its lag (0: all consumed). */
static json_t *wait_status(int port, const int want[4]) {
    for (int t = 0; t < 200; t++) {
        char *resp;
        int st = tu_http(port, "GET", "/api/v1/status", NULL, NULL, 0, &resp);
        json_t *j = st == 200 ? json_loads(tu_http_body(resp), 0, NULL) : NULL;
        free(resp);
        json_t *parts = json_object_get(
            json_array_get(json_object_get(j, "pipelines"), 0), "partitions");
        int good = 0;
        for (size_t i = 0; i < json_array_size(parts); i++) {
            json_t *q = json_array_get(parts, i);
            int p = (int)json_integer_value(json_object_get(q, "partition"));
            if (p >= 0 && p < 4 &&
                json_integer_value(json_object_get(q, "committed")) ==
                    want[p] &&
                json_is_integer(json_object_get(q, "lag")) &&
                json_integer_value(json_object_get(q, "lag")) == 0)
                good++;
        }
        if (good == 4)
            return j;
        json_decref(j);
        usleep(100 * 1000);
    }
    cr_assert_fail("/api/v1/status never showed the 4 committed offsets:\n%s",
                   th_log(&h));
    return NULL;
}

Test(page, renders_a_real_host) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "pg", 4);
    /* 18, 15, 10 and 10 messages: each row has its own number. */
    th_produce(&c, "pg", 4, 10, -1, -1, NULL);
    th_produce(&c, "pg", 2, 5, -1, -1, NULL);
    th_produce(&c, "pg", 1, 3, -1, -1, NULL);
    const int want[4] = {18, 15, 10, 10};
    char *dir = tu_tmpdir();
    snprintf(current_dir, sizeof current_dir, "%s", dir);
    int port = tu_free_port();
    char *ini;
    cr_assert_neq(asprintf(&ini,
                           "[host]\nbrokers = %s\n"
                           "[kafka]\nsession.timeout.ms = 6000\n"
                           "heartbeat.interval.ms = 500\n"
                           "[http]\nlisten = 127.0.0.1:%d\n"
                           "[pipeline.pagepipe]\ntopics = pg\ngroup = g-pg\n"
                           "plugin = " NOOP "\nworkers = 2\n",
                           c.bootstraps, port),
                  -1);
    th_host_start(&h, dir, "host", ini);
    free(ini);
    cr_assert(th_wait_log(&h, "http: listening on", 1, WAIT_MS), "%s",
              th_log(&h));
    char *resp;
    cr_assert_eq(tu_http(port, "GET", "/", NULL, NULL, 0, &resp), 200, "%s",
                 resp);
    cr_assert(strstr(resp, "Content-Type: text/html; charset=utf-8\r\n"), "%s",
              resp);
    cr_assert_eq(strlen(tu_http_body(resp)), kh_page_html_len);
    cr_assert_str_eq(tu_http_body(resp), kh_page_html);
    free(resp);
    cr_assert_eq(tu_http(port, "HEAD", "/", NULL, NULL, 0, &resp), 200, "%s",
                 resp);
    cr_assert_str_eq(tu_http_body(resp), "");
    free(resp);
    cr_assert_eq(tu_http(port, "POST", "/", NULL, NULL, 0, &resp), 405, "%s",
                 resp);
    free(resp);

    for (int p = 0; p < 4; p++)
        for (int t = 0; th_committed(&c, "g-pg", "pg", p) != want[p]; t++) {
            cr_assert_lt(t, 600, "partition %d committed %lld, not %d:\n%s", p,
                         (long long)th_committed(&c, "g-pg", "pg", p), want[p],
                         th_log(&h));
            usleep(100 * 1000);
        }
    json_t *status = wait_status(port, want);
    /* The spare (spare_workers = 1) is up before the page is drawn. */
    cr_assert(th_wait_log(&h, " up: plugin", 1, WAIT_MS), "%s", th_log(&h));
    json_decref(status);
    status = wait_status(port, want);

    char *url;
    cr_assert_neq(asprintf(&url, "http://127.0.0.1:%d/", port), -1);
    char *dom = chromium(dir, url, NULL, "1280,800");
    cr_assert(strstr(dom, "<span class=\"pl-name\">pagepipe</span>"), "%s",
              dom);
    cr_assert(strstr(dom, "last updated "), "%s", dom);
    cr_assert_null(strstr(dom, "id=\"banner\" role=\"alert\" class=\"show\""),
                   "the error banner shows: %s", dom);
    cr_assert_eq(tu_count(dom, "<tr class=\"part"), 4, "%s", dom);
    json_t *parts = json_object_get(
        json_array_get(json_object_get(status, "pipelines"), 0), "partitions");
    for (size_t i = 0; i < json_array_size(parts); i++) {
        json_t *q = json_array_get(parts, i);
        int p = (int)json_integer_value(json_object_get(q, "partition"));
        char *row = partition_row(dom, "pg", p);
        cr_assert_not_null(row, "no row for pg[%d]: %s", p, dom);
        char *cell;
        cr_assert_neq(asprintf(&cell, "<td class=\"num committed\">%lld</td>",
                               (long long)json_integer_value(
                                   json_object_get(q, "committed"))),
                      -1);
        cr_assert(strstr(row, cell), "pg[%d]: no %s in %s", p, cell, row);
        cr_assert(strstr(row, "<td class=\"num lag\">0</td>"), "pg[%d]: %s", p,
                  row);
        cr_assert(strstr(row, "<td class=\"status wrap\">ok</td>"),
                  "pg[%d]: %s", p, row);
        free(cell);
        free(row);
    }
    /* The workers, with the pids the host reports. */
    cr_assert_eq(tu_count(dom, "<tr class=\"worker\">"), 2, "%s", dom);
    json_t *workers = json_object_get(
        json_array_get(json_object_get(status, "pipelines"), 0), "workers");
    cr_assert_eq(json_array_size(workers), 2);
    for (size_t i = 0; i < 2; i++) {
        json_t *pid = json_object_get(json_array_get(workers, i), "pid");
        cr_assert(json_is_integer(pid));
        char *cell;
        cr_assert_neq(asprintf(&cell, "<td class=\"num\">%lld</td>",
                               (long long)json_integer_value(pid)),
                      -1);
        cr_assert(strstr(dom, cell), "no worker pid %s in %s", cell, dom);
        free(cell);
    }
    /* The spare, after them, with its pid. */
    cr_assert_eq(tu_count(dom, "<tr class=\"worker spare\">"), 1, "%s", dom);
    json_t *spares = json_object_get(
        json_array_get(json_object_get(status, "pipelines"), 0), "spares");
    cr_assert_eq(json_array_size(spares), 1);
    char *cell;
    cr_assert_neq(asprintf(&cell, "<td class=\"num\">%lld</td>",
                           (long long)json_integer_value(json_object_get(
                               json_array_get(spares, 0), "pid"))),
                  -1);
    cr_assert(strstr(dom, cell), "no spare pid %s in %s", cell, dom);
    free(cell);
    cr_assert(strstr(dom, "spares <b>1</b>"), "%s", dom);
    json_decref(status);
    free(dom);

    mkdir(ARTIFACTS, 0755);
    const char *png = ARTIFACTS "/status-page.png";
    unlink(png);
    free(chromium(dir, url, png, "1280,800"));
    size_t len = 0;
    char *img = tu_read_file(png, &len);
    cr_assert_not_null(img, "no screenshot at %s", png);
    cr_assert_gt(len, 10000, "%s: %zu bytes", png, len);
    cr_assert(memcmp(img, "\x89PNG\r\n\x1a\n", 8) == 0, "%s is no PNG", png);
    free(img);
    free(url);
    cr_assert_eq(th_host_stop(&h, SIGTERM, 30000), 0, "%s", th_log(&h));
    th_cluster_stop(&c);
}

/* tests/page/server.py on a free port, serving the embedded page. */
static int start_fixture_server(const char *dir) {
    char *page = tu_write_file(dir, "page.html", kh_page_html);
    cr_assert_not_null(page);
    free(page);
    int port = tu_free_port();
    char port_s[16];
    snprintf(port_s, sizeof port_s, "%d", port);
    server_pid = fork();
    cr_assert_geq(server_pid, 0);
    if (server_pid == 0) {
        execl("/usr/bin/python3", "python3",
              KHOST_SOURCE_DIR "/tests/page/server.py", port_s, dir,
              (char *)NULL);
        _exit(127);
    }
    char *resp = NULL;
    int st = 0;
    for (int t = 0; t < 100 && st != 200; t++) {
        free(resp);
        st = tu_http(port, "GET", "/", NULL, NULL, 0, &resp);
        if (st != 200)
            usleep(100 * 1000);
    }
    free(resp);
    cr_assert_eq(st, 200, "the fixture server did not start");
    return port;
}

Test(page, fixture_layout_escaping_and_banner) {
    char *dir = tu_tmpdir();
    snprintf(current_dir, sizeof current_dir, "%s", dir);
    int port = start_fixture_server(dir);
    char *url;

    /* 2 pipelines x 16 partitions in a 1280x800 frame: nothing wider. */
    cr_assert_neq(asprintf(&url, "http://127.0.0.1:%d/measure.html", port), -1);
    char *dom = chromium(dir, url, NULL, "1280,1200");
    const char *out = strstr(dom, "<pre id=\"out\">client=");
    cr_assert_not_null(out, "the probe did not finish: %s", dom);
    int client = 0, scroll = 0, right = 0;
    cr_assert_eq(sscanf(out, "<pre id=\"out\">client=%d scroll=%d right=%d",
                        &client, &scroll, &right),
                 3, "%s", out);
    cr_assert_gt(client, 1200, "%.200s", out);
    cr_assert_leq(scroll, client, "scrolls sideways: %.200s", out);
    cr_assert_leq(right, client, "wider than the frame: %.200s", out);
    free(dom);
    free(url);

    /* /fail/: the first status read works, the next ones get 503. */
    cr_assert_neq(asprintf(&url, "http://127.0.0.1:%d/fail/", port), -1);
    dom = chromium(dir, url, NULL, "1280,800");
    cr_assert(strstr(dom, "<div id=\"banner\" role=\"alert\" class=\"show\">"
                          "Cannot read api/v1/status: HTTP 503"),
              "no error banner: %s", dom);
    cr_assert(strstr(dom, "showing the data of "), "%s", dom);
    cr_assert_eq(tu_count(dom, "<tr class=\"part"), 32, "%s", dom);
    /* Markup in names is text. */
    cr_assert_eq(tu_count(dom, "<img"), 0, "%s", dom);
    cr_assert_null(strstr(dom, "<script>alert"), "%s", dom);
    cr_assert_null(strstr(dom, "<b>bad</b>"), "%s", dom);
    cr_assert(strstr(dom, "<span class=\"pl-name\">orders&lt;img src=x "
                          "onerror=alert(1)&gt;</span>"),
              "%s", dom);
    cr_assert(strstr(dom, "<span class=\"pl-name\">payments&lt;script&gt;"
                          "alert(2)&lt;/script&gt;</span>"),
              "%s", dom);
    cr_assert(strstr(dom, "handler returned FAIL: &lt;b&gt;bad&lt;/b&gt;"),
              "%s", dom);
    /* Failed, paused and unassigned rows are marked. */
    char *row = partition_row(dom, "orders.v1", 2);
    cr_assert_not_null(row, "%s", dom);
    free(row);
    cr_assert_eq(tu_count(dom, "<tr class=\"part failed\""), 1, "%s", dom);
    cr_assert_eq(tu_count(dom, "<tr class=\"part paused\""), 2, "%s", dom);
    cr_assert_eq(tu_count(dom, "<tr class=\"part unassigned\""), 2, "%s", dom);
    cr_assert(strstr(dom, "<section class=\"card pipeline failed\""), "%s",
              dom);
    cr_assert(strstr(dom, "<tr class=\"worker failed\">"), "%s", dom);
    cr_assert_eq(tu_count(dom, "<tr class=\"crash\">"), 4, "%s", dom);
    cr_assert_eq(tu_count(dom, "<tr class=\"reload"), 2, "%s", dom);
    free(dom);

    free(url);

    /* A look at the fixture, for the CI artifacts. */
    mkdir(ARTIFACTS, 0755);
    cr_assert_neq(asprintf(&url, "http://127.0.0.1:%d/", port), -1);
    free(chromium(dir, url, ARTIFACTS "/status-page-fixture.png", "1280,800"));
    free(url);
    kill(server_pid, SIGTERM);
    waitpid(server_pid, NULL, 0);
    server_pid = 0;
}
