/*
 * cxx: a plugin written in C++ (tests/cxx/cxx_handler.cpp, built by g++
 * with -std=c++17 -Wall -Wextra -pedantic -Werror: the build is the
 * compile test) loads, shows its descriptor, and runs end to end on the
 * mock cluster: it defers every message and acks them from tick, and
 * every message is handled and committed.
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

#define CXX KHOST_FIXTURE_DIR "/cxx_handler.so"
#define KHOST KHOST_BUILD_DIR "/khost"

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

TestSuite(cxx, .fini = kill_leftovers);

Test(cxx, plugin_info_of_a_cxx_plugin) {
    tu_result r =
        tu_run((char *[]){KHOST, "plugin-info", CXX, "--json", NULL}, 20000);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    json_error_t e;
    json_t *j = json_loads(r.out, 0, &e);
    cr_assert(j, "%s: %s", e.text, r.out);
    cr_assert_str_eq(json_string_value(json_object_get(j, "name")),
                     "cxx_handler");
    json_t *cb = json_object_get(j, "callbacks");
    cr_assert(json_is_true(json_object_get(cb, "tick")));
    cr_assert(json_is_true(json_object_get(cb, "on_revoke")));
    cr_assert(json_is_false(json_object_get(cb, "handle_batch")));
    json_decref(j);
    tu_result_free(&r);
}

Test(cxx, runs_end_to_end, .timeout = 90) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "cx", 2);
    th_produce(&c, "cx", 2, 25, -1, -1, NULL);
    char *dir = tu_tmpdir();
    snprintf(current_dir, sizeof current_dir, "%s", dir);
    char *ini;
    cr_assert_neq(asprintf(&ini,
                           "[host]\nbrokers = %s\n"
                           "[kafka]\nsession.timeout.ms = 6000\n"
                           "heartbeat.interval.ms = 500\n"
                           "[pipeline.p]\ntopics = cx\ngroup = g-cx\n"
                           "plugin = " CXX "\nworkers = 2\n"
                           "tick_interval_ms = 100\n"
                           "[pipeline.p.config]\ncount_file = %s/count\n",
                           c.bootstraps, dir),
                  -1);
    th_host_start(&h, dir, "host", ini);
    free(ini);
    cr_assert(th_wait_committed(&c, "g-cx", "cx", 2, 25, 60000), "%s",
              th_log(&h));
    cr_assert_eq(th_host_stop(&h, SIGTERM, 20000), 0, "%s", th_log(&h));
    char *path;
    cr_assert_neq(asprintf(&path, "%s/count", dir), -1);
    char *text = tu_read_file(path, NULL);
    cr_assert(text);
    cr_assert_geq(tu_count(text, "\n"), 50, "%s", text);
    for (int p = 0; p < 2; p++)
        for (int o = 0; o < 25; o++) {
            char line[32];
            snprintf(line, sizeof line, "%d %d\n", p, o);
            cr_assert(strstr(text, line), "offset %d/%d not handled", p, o);
        }
    free(text);
    free(path);
    th_host_free(&h);
    memset(&h, 0, sizeof h);
    th_cluster_stop(&c);
}
