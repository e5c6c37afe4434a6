/* cli: the khost command line, run as a real process. */
#define _GNU_SOURCE
#include "testutil.h"

#include <criterion/criterion.h>
#include <fcntl.h>
#include <jansson.h>
#include <khost/plugin.h>
#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define KHOST KHOST_BUILD_DIR "/khost"
#define PLUGINS KHOST_BUILD_DIR "/plugins"

static tu_result run(char *const argv[]) {
    return tu_run(argv, 20000);
}

Test(cli, help_lists_commands_and_exit_codes) {
    tu_result r = run((char *[]){KHOST, "--help", NULL});
    cr_assert_eq(r.exit_code, 0);
    const char *want[] = {"run -c FILE", "check-config -c FILE",
                          "plugin-info FILE.so", "mock-cluster",
                          "Exit status:"};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        cr_assert(strstr(r.out, want[i]), "--help lacks '%s':\n%s", want[i],
                  r.out);
    tu_result_free(&r);
}

Test(cli, version_names_abi) {
    tu_result r = run((char *[]){KHOST, "--version", NULL});
    cr_assert_eq(r.exit_code, 0);
    cr_assert(strstr(r.out, "khost " KHOST_VERSION " (plugin ABI 1.2)"), "%s",
              r.out);
    tu_result_free(&r);
}

Test(cli, unknown_command_is_usage_error) {
    tu_result r = run((char *[]){KHOST, "frobnicate", NULL});
    cr_assert_eq(r.exit_code, 2);
    cr_assert(strstr(r.err, "unknown command 'frobnicate'"), "%s", r.err);
    tu_result_free(&r);
    r = run((char *[]){KHOST, NULL});
    cr_assert_eq(r.exit_code, 2);
    tu_result_free(&r);
    r = run((char *[]){KHOST, "run", NULL});
    cr_assert_eq(r.exit_code, 2);
    cr_assert(strstr(r.err, "-c FILE is required"), "%s", r.err);
    tu_result_free(&r);
}

Test(cli, plugin_info_shows_descriptor) {
    tu_result r =
        run((char *[]){KHOST, "plugin-info", PLUGINS "/file_sink.so", NULL});
    cr_assert_eq(r.exit_code, 0, "%s", r.err);
    cr_assert(strstr(r.out, "name:        file_sink\n"), "%s", r.out);
    cr_assert(strstr(r.out, "abi:         1.2 (host speaks 1.2)"), "%s", r.out);
    cr_assert(strstr(r.out, "optional:    handle_batch tick"), "%s", r.out);
    cr_assert(strstr(r.out, "flags:       none\n"), "%s", r.out);
    tu_result_free(&r);
    r = run((char *[]){KHOST, "plugin-info", KHOST_FIXTURE_DIR "/fx_full.so",
                       NULL});
    cr_assert(strstr(r.out, "version:     2.3.4"), "%s", r.out);
    cr_assert(strstr(r.out, "optional:    handle_batch on_assign on_revoke "
                            "tick get_extension"),
              "%s", r.out);
    tu_result_free(&r);
}

Test(cli, plugin_info_bad_plugin_is_one_line_exit_2) {
    tu_result r = run((char *[]){KHOST, "plugin-info",
                                 KHOST_FIXTURE_DIR "/fx_abi_major.so", NULL});
    cr_assert_eq(r.exit_code, 2);
    cr_assert_eq(tu_count(r.err, "\n"), 1, "not one line: %s", r.err);
    cr_assert(strstr(r.err, "fx_abi_major.so: plugin ABI major 2"), "%s",
              r.err);
    cr_assert_str_empty(r.out);
    tu_result_free(&r);
}

/* plugin-info --json, for tooling: parsed with jansson, every field
 * checked against what the fixture declares. */
static json_t *plugin_info_json(const char *so, int want_exit) {
    tu_result r =
        run((char *[]){KHOST, "plugin-info", (char *)so, "--json", NULL});
    cr_assert_eq(r.exit_code, want_exit, "%s%s", r.out, r.err);
    json_error_t e;
    json_t *j = json_loads(r.out, 0, &e);
    cr_assert(j, "not JSON (%s): %s", e.text, r.out);
    tu_result_free(&r);
    return j;
}

static bool cb(json_t *j, const char *name) {
    json_t *v = json_object_get(json_object_get(j, "callbacks"), name);
    cr_assert(json_is_boolean(v), "callbacks.%s missing", name);
    return json_is_true(v);
}

Test(cli, plugin_info_json) {
    json_t *j = plugin_info_json(KHOST_FIXTURE_DIR "/fx_full.so", 0);
    cr_assert_str_eq(json_string_value(json_object_get(j, "name")), "fx_full");
    cr_assert_str_eq(json_string_value(json_object_get(j, "version")), "2.3.4");
    cr_assert_str_eq(json_string_value(json_object_get(j, "description")),
                     "fixture with all optional callbacks");
    cr_assert_eq(
        json_integer_value(json_object_get(json_object_get(j, "abi"), "major")),
        1);
    cr_assert_eq(json_integer_value(
                     json_object_get(json_object_get(j, "host_abi"), "minor")),
                 KHOST_ABI_MINOR);
    cr_assert(json_is_true(json_object_get(j, "compatible")));
    cr_assert_gt(json_integer_value(json_object_get(j, "descriptor_size")), 0);
    const char *all[] = {"init",         "handle",       "terminate",
                         "handle_batch", "on_assign",    "on_revoke",
                         "tick",         "get_extension"};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        cr_assert(cb(j, all[i]), "fx_full has %s", all[i]);
    json_decref(j);
    /* noop: the required three and handle_batch. */
    j = plugin_info_json(PLUGINS "/noop.so", 0);
    cr_assert_str_eq(json_string_value(json_object_get(j, "name")), "noop");
    cr_assert(cb(j, "handle") && cb(j, "handle_batch") && !cb(j, "tick") &&
              !cb(j, "on_revoke") && !cb(j, "get_extension"));
    json_t *fl = json_object_get(j, "flags");
    cr_assert(
        json_array_size(fl) == 1 &&
            !strcmp(json_string_value(json_array_get(fl, 0)), "no_headers"),
        "noop says it never reads headers");
    json_decref(j);
    /* file_sink: handle_batch and tick. */
    j = plugin_info_json(PLUGINS "/file_sink.so", 0);
    cr_assert(cb(j, "handle_batch") && cb(j, "tick") && !cb(j, "on_assign"));
    json_decref(j);
    /* Incompatible: exit 2, the loader's reason as the JSON's error. */
    j = plugin_info_json(KHOST_FIXTURE_DIR "/fx_abi_major.so", 2);
    cr_assert(strstr(json_string_value(json_object_get(j, "error")),
                     "plugin ABI major 2"),
              "%s", json_dumps(j, 0));
    cr_assert(!json_object_get(j, "name"));
    json_decref(j);
    tu_result r = run((char *[]){KHOST, "plugin-info", "--json", NULL});
    cr_assert_eq(r.exit_code, 2);
    cr_assert(strstr(r.err, "usage: khost plugin-info FILE.so [--json]"), "%s",
              r.err);
    tu_result_free(&r);
}

static char *config_with(const char *dir, const char *plugin,
                         const char *extra) {
    char *text;
    cr_assert_neq(asprintf(&text,
                           "[host]\nbrokers = mock\n"
                           "[pipeline.orders]\ntopics = orders\n"
                           "group = g\nplugin = %s\n%s",
                           plugin, extra),
                  -1);
    char *path = tu_write_file(dir, "k.ini", text);
    free(text);
    return path;
}

Test(cli, check_config_valid_exit_0) {
    char *dir = tu_tmpdir();
    char *path = config_with(dir, PLUGINS "/noop.so", "workers = 3\n");
    tu_result r = run((char *[]){KHOST, "check-config", "-c", path, NULL});
    cr_assert_eq(r.exit_code, 0, "%s", r.err);
    cr_assert(strstr(r.out, "pipeline orders: topics orders group g plugin "
                            "noop"),
              "%s", r.out);
    cr_assert(strstr(r.out, "workers 3"), "%s", r.out);
    cr_assert(strstr(r.out, "OK, 1 pipeline"), "%s", r.out);
    tu_result_free(&r);
    free(path);
    tu_rmdir(dir);
    free(dir);
}

Test(cli, check_config_reports_config_and_plugin_errors_exit_2) {
    char *dir = tu_tmpdir();
    char *path =
        config_with(dir, KHOST_FIXTURE_DIR "/fx_no_handle.so", "wrokers = 2\n");
    tu_result r = run((char *[]){KHOST, "check-config", "-c", path, NULL});
    cr_assert_eq(r.exit_code, 2);
    char want[512];
    snprintf(want, sizeof want,
             "%s:7: unknown key 'wrokers' in [pipeline.orders] (did you "
             "mean 'workers'?)",
             path);
    cr_assert(strstr(r.err, want), "%s", r.err);
    snprintf(want, sizeof want, "%s:6: plugin of [pipeline.orders]: ", path);
    cr_assert(strstr(r.err, want), "%s", r.err);
    cr_assert(strstr(r.err, "required callback 'handle' is NULL"), "%s", r.err);
    cr_assert(strstr(r.err, "invalid, 2 errors"), "%s", r.err);
    tu_result_free(&r);
    free(path);
    tu_rmdir(dir);
    free(dir);
}

Test(cli, run_refuses_unloadable_plugin_exit_2) {
    char *dir = tu_tmpdir();
    char *path = config_with(dir, "missing.so", "");
    tu_result r = run((char *[]){KHOST, "run", "-c", path, NULL});
    cr_assert_eq(r.exit_code, 2);
    cr_assert(strstr(r.err, "missing.so: No such file or directory"), "%s",
              r.err);
    cr_assert(strstr(r.err, "not starting"), "%s", r.err);
    tu_result_free(&r);
    free(path);
    tu_rmdir(dir);
    free(dir);
}

/* Start `khost mock-cluster`, read its bootstrap, query it with a real
 * client, then stop it with SIGTERM. */
Test(cli, mock_cluster_serves_kafka_until_sigterm, .timeout = 60) {
    char *dir = tu_tmpdir();
    char *boot_file;
    cr_assert_neq(asprintf(&boot_file, "%s/boot", dir), -1);
    pid_t pid = fork();
    if (pid == 0) {
        int devnull = open("/dev/null", 1);
        dup2(devnull, 1);
        dup2(devnull, 2);
        tu_execv(KHOST, (char *[]){"khost", "mock-cluster", "--brokers", "2",
                                   "--topic", "orders:6", "--topic", "audit:1",
                                   "--bootstrap-file", boot_file, NULL});
        _exit(127);
    }
    char *boot = NULL;
    for (int i = 0; i < 200 && !boot; i++) {
        boot = tu_read_file(boot_file, NULL);
        if (!boot)
            usleep(50 * 1000);
    }
    cr_assert_not_null(boot, "no bootstrap file written");
    boot[strcspn(boot, "\n")] = '\0';
    cr_assert(strstr(boot, "127.0.0.1:"), "%s", boot);

    char errstr[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", boot, errstr, sizeof errstr);
    rd_kafka_t *rk =
        rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    cr_assert_not_null(rk);
    const struct rd_kafka_metadata *md;
    cr_assert_eq(rd_kafka_metadata(rk, 1, NULL, &md, 10000), 0);
    cr_assert_eq(md->broker_cnt, 2);
    int orders = -1, audit = -1;
    for (int t = 0; t < md->topic_cnt; t++) {
        if (!strcmp(md->topics[t].topic, "orders"))
            orders = md->topics[t].partition_cnt;
        if (!strcmp(md->topics[t].topic, "audit"))
            audit = md->topics[t].partition_cnt;
    }
    cr_assert_eq(orders, 6);
    cr_assert_eq(audit, 1);
    rd_kafka_metadata_destroy(md);
    rd_kafka_destroy(rk);

    kill(pid, SIGTERM);
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "status %d",
              status);
    cr_assert_eq(access(boot_file, F_OK), -1, "bootstrap file left behind");
    free(boot);
    free(boot_file);
    tu_rmdir(dir);
    free(dir);
}

Test(cli, mock_cluster_rejects_bad_arguments) {
    tu_result r =
        run((char *[]){KHOST, "mock-cluster", "--topic", "orders", NULL});
    cr_assert_eq(r.exit_code, 2);
    cr_assert(strstr(r.err, "NAME:PARTITIONS"), "%s", r.err);
    tu_result_free(&r);
    r = run((char *[]){KHOST, "mock-cluster", "--brokers", "0", NULL});
    cr_assert_eq(r.exit_code, 2);
    tu_result_free(&r);
}
