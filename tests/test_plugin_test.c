/*
 * plugin_test: `khost plugin-test` as a plugin author runs it, on real
 * plugins (noop, fault, fixtures) in real worker processes, no Kafka:
 * an all-ack file, a crash mid-file (named offset, the rest handled
 * after the restart), a poison message, a hang, retries until success
 * and until exhausted, deferred acks out of order, a deferred message
 * never acked, malformed lines (each named by its line number, the rest
 * still run), on_failure from an ini, an init failure, and --expect.
 * Each checks the JSON lines (parsed with jansson) and the exit status.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KHOST KHOST_BUILD_DIR "/khost"
#define NOOP KHOST_BUILD_DIR "/plugins/noop.so"
#define FAULT KHOST_BUILD_DIR "/plugins/fault.so"
#define REVERSE KHOST_FIXTURE_DIR "/fxp_reverse.so"
#define INIT_FAILS KHOST_FIXTURE_DIR "/fx_init_fails.so"

static char *dir;

static void setup(void) {
    dir = tu_tmpdir();
}

static void teardown(void) {
    if (dir)
        tu_rmdir(dir);
    free(dir);
    dir = NULL;
}

TestSuite(plugin_test, .init = setup, .fini = teardown, .timeout = 60);

static char *write_file(const char *name, const char *text) {
    char *path;
    cr_assert_neq(asprintf(&path, "%s/%s", dir, name), -1);
    FILE *f = fopen(path, "w");
    cr_assert(f, "%s", path);
    fputs(text, f);
    fclose(f);
    return path;
}

typedef struct run {
    tu_result r;
    json_t *lines;   /* every stdout line, parsed */
    json_t *summary; /* borrowed from lines */
} run;

/* khost plugin-test PLUGIN --input (input written to a file) ARGS... */
static run plugin_test(const char *plugin, const char *input,
                       const char *const *args) {
    char *in = write_file("in.jsonl", input);
    char *argv[40] = {KHOST, "plugin-test"};
    int n = 2;
    if (plugin)
        argv[n++] = (char *)plugin;
    argv[n++] = "--input";
    argv[n++] = in;
    for (int i = 0; args && args[i]; i++)
        argv[n++] = (char *)args[i];
    argv[n] = NULL;
    run x = {.r = tu_run(argv, 50000), .lines = json_array()};
    free(in);
    char *save, *text = strdup(x.r.out);
    for (char *l = strtok_r(text, "\n", &save); l;
         l = strtok_r(NULL, "\n", &save)) {
        json_error_t je;
        json_t *o = json_loads(l, 0, &je);
        cr_assert(json_is_object(o), "not a JSON object: %s (%s)\nstderr: %s",
                  l, je.text, x.r.err);
        json_array_append_new(x.lines, o);
        if (json_object_get(o, "summary"))
            x.summary = json_object_get(o, "summary");
    }
    free(text);
    cr_assert(x.summary, "no summary line\nstdout: %s\nstderr: %s", x.r.out,
              x.r.err);
    return x;
}

static void run_free(run *x) {
    json_decref(x->lines);
    tu_result_free(&x->r);
}

static json_int_t summary_int(const run *x, const char *key) {
    json_t *v = json_object_get(x->summary, key);
    cr_assert(json_is_integer(v), "summary has no %s: %s", key, x->r.out);
    return json_integer_value(v);
}

/* The result line of (partition, offset), or NULL. */
static json_t *result_of(const run *x, int partition, int offset) {
    size_t i;
    json_t *o;
    json_array_foreach(x->lines, i, o) {
        json_t *r = json_object_get(o, "result");
        json_t *p = json_object_get(o, "partition");
        json_t *off = json_object_get(o, "offset");
        if (json_is_string(r) && strcmp(json_string_value(r), "invalid") &&
            json_integer_value(p) == partition &&
            json_integer_value(off) == offset)
            return o;
    }
    return NULL;
}

static const char *str_of(json_t *o, const char *key) {
    json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static void assert_result(const run *x, int partition, int offset,
                          const char *result, int attempts) {
    json_t *o = result_of(x, partition, offset);
    cr_assert(o, "no result for partition %d offset %d:\n%s\n%s", partition,
              offset, x->r.out, x->r.err);
    cr_assert_str_eq(str_of(o, "result"), result, "partition %d offset %d: %s",
                     partition, offset, x->r.out);
    if (attempts > 0)
        cr_assert_eq(json_integer_value(json_object_get(o, "attempts")),
                     attempts, "partition %d offset %d: %s", partition, offset,
                     x->r.out);
}

/* The events of one kind, in order. */
static size_t events(const run *x, const char *kind, json_t **out, size_t max) {
    size_t i, n = 0;
    json_t *o;
    json_array_foreach(x->lines, i, o) {
        const char *e = str_of(o, "event");
        if (e && !strcmp(e, kind) && n < max)
            out[n++] = o;
    }
    return n;
}

/* n messages "m0".."m{n-1}" on partition p, with `special` at offset k. */
static char *messages(int n, int parts, int k, const char *special) {
    size_t cap = (size_t)n * 64 + 64;
    char *s = calloc(1, cap);
    size_t len = 0;
    for (int i = 0; i < n; i++)
        len += (size_t)snprintf(
            s + len, cap - len, "{\"partition\":%d,\"value\":\"%s\"}\n",
            i % parts, i == k && special ? special : (i % 2 ? "odd" : "even"));
    return s;
}

Test(plugin_test, all_ack) {
    char *in = messages(20, 2, -1, NULL);
    run x =
        plugin_test(NOOP, in, (const char *const[]){"--workers", "2", NULL});
    free(in);
    cr_assert_eq(x.r.exit_code, 0, "%s%s", x.r.out, x.r.err);
    cr_assert_eq(summary_int(&x, "messages"), 20);
    cr_assert_eq(summary_int(&x, "ack"), 20);
    cr_assert_eq(summary_int(&x, "crashes"), 0);
    cr_assert_eq(summary_int(&x, "exit"), 0);
    for (int i = 0; i < 20; i++) {
        assert_result(&x, i % 2, i / 2, "ack", 1);
        json_t *o = result_of(&x, i % 2, i / 2);
        cr_assert(json_is_number(json_object_get(o, "handle_ms")), "%s",
                  x.r.out);
        cr_assert(json_is_null(json_object_get(o, "deferred_ack_ms")));
    }
    run_free(&x);
}

/* fault crashes on the message once: the crash names its offset, it is
 * handled after the restart, and so is everything after it. */
Test(plugin_test, crash_names_the_offset_and_the_rest_runs_after_restart) {
    char *in = messages(10, 1, 4, "boom");
    run x = plugin_test(FAULT, in,
                        (const char *const[]){"--config", "crash_on=boom",
                                              "--config",
                                              "misbehave_attempts=1", NULL});
    free(in);
    cr_assert_eq(x.r.exit_code, 0, "%s%s", x.r.out, x.r.err);
    json_t *crash[4];
    cr_assert_eq(events(&x, "crash", crash, 4), 1, "%s", x.r.out);
    cr_assert_eq(json_integer_value(json_object_get(crash[0], "offset")), 4);
    cr_assert_eq(json_integer_value(json_object_get(crash[0], "line")), 5);
    cr_assert_str_eq(str_of(crash[0], "signal"), "SIGSEGV");
    json_t *restart[4];
    cr_assert_eq(events(&x, "restart", restart, 4), 1, "%s", x.r.out);
    for (int i = 0; i < 10; i++)
        assert_result(&x, 0, i, "ack", i == 4 ? 2 : 1);
    cr_assert_eq(summary_int(&x, "crashes"), 1);
    cr_assert_eq(summary_int(&x, "restarts"), 1);
    run_free(&x);
}

/* Crashing on every attempt: poison after poison_after (3) crashes, dead-
 * lettered by the default policy; the rest is acked; exit 1. */
Test(plugin_test, poison_message_is_dead_lettered_after_three_crashes) {
    char *in = messages(6, 1, 2, "boom");
    run x = plugin_test(
        FAULT, in, (const char *const[]){"--config", "crash_on=boom", NULL});
    free(in);
    cr_assert_eq(x.r.exit_code, 1, "%s%s", x.r.out, x.r.err);
    assert_result(&x, 0, 2, "dead-lettered", 3);
    cr_assert(strstr(str_of(result_of(&x, 0, 2), "reason"), "poison_after=3"),
              "%s", x.r.out);
    for (int i = 0; i < 6; i++)
        if (i != 2)
            assert_result(&x, 0, i, "ack", 1);
    cr_assert_eq(summary_int(&x, "crashes"), 3);
    cr_assert_eq(summary_int(&x, "dead_lettered"), 1);
    run_free(&x);
}

Test(plugin_test, hang_is_killed_after_timeout_and_redelivered) {
    char *in = messages(4, 1, 1, "zzz");
    run x =
        plugin_test(FAULT, in,
                    (const char *const[]){"--config", "hang_on=zzz", "--config",
                                          "misbehave_attempts=1",
                                          "--timeout-ms", "300", NULL});
    free(in);
    cr_assert_eq(x.r.exit_code, 0, "%s%s", x.r.out, x.r.err);
    json_t *hang[4];
    cr_assert_eq(events(&x, "hang", hang, 4), 1, "%s", x.r.out);
    cr_assert_eq(json_integer_value(json_object_get(hang[0], "offset")), 1);
    cr_assert(strstr(str_of(hang[0], "how"), "--timeout-ms=300"), "%s",
              x.r.out);
    assert_result(&x, 0, 1, "ack", 2);
    cr_assert_eq(summary_int(&x, "hangs"), 1);
    cr_assert_eq(summary_int(&x, "crashes"), 0);
    run_free(&x);
}

/* fault answers RETRY on the first two attempts: the third succeeds, and
 * the set_error text of the retries is reported. */
Test(plugin_test, retries_until_success) {
    char *in = messages(3, 1, 1, "again");
    run x =
        plugin_test(FAULT, in,
                    (const char *const[]){"--config", "retry_on=again",
                                          "--config", "misbehave_attempts=2",
                                          "--retry-backoff-ms", "5", NULL});
    free(in);
    cr_assert_eq(x.r.exit_code, 0, "%s%s", x.r.out, x.r.err);
    assert_result(&x, 0, 1, "ack", 3);
    cr_assert(strstr(str_of(result_of(&x, 0, 1), "error"), "retry_on"), "%s",
              x.r.out);
    cr_assert_eq(summary_int(&x, "retries"), 2);
    run_free(&x);
}

Test(plugin_test, retries_exhausted_fail_the_message) {
    char *in = messages(3, 1, 1, "again");
    run x = plugin_test(FAULT, in,
                        (const char *const[]){"--config", "retry_on=again",
                                              "--retries", "1",
                                              "--retry-backoff-ms", "0", NULL});
    free(in);
    cr_assert_eq(x.r.exit_code, 1, "%s%s", x.r.out, x.r.err);
    assert_result(&x, 0, 1, "dead-lettered", 2);
    cr_assert(strstr(str_of(result_of(&x, 0, 1), "reason"), "max_attempts=2"),
              "%s", x.r.out);
    assert_result(&x, 0, 0, "ack", 1);
    assert_result(&x, 0, 2, "ack", 1);
    run_free(&x);
}

/* fxp_reverse acks every 3 deferred messages newest first: results come
 * in the order of the acks, each acked, with a deferred-ack time. */
Test(plugin_test, deferred_acks_out_of_order) {
    char *in = messages(6, 1, -1, NULL);
    run x = plugin_test(REVERSE, in, NULL);
    free(in);
    cr_assert_eq(x.r.exit_code, 0, "%s%s", x.r.out, x.r.err);
    int order[6], n = 0;
    size_t i;
    json_t *o;
    json_array_foreach(x.lines, i, o) {
        if (str_of(o, "result") && n < 6) {
            cr_assert_str_eq(str_of(o, "result"), "ack", "%s", x.r.out);
            int off = (int)json_integer_value(json_object_get(o, "offset"));
            /* The third of each batch is acked inside its own call: that
             * ack counts at once (ABI.md), the others wait for it. */
            json_t *d = json_object_get(o, "deferred_ack_ms");
            cr_assert(off % 3 == 2 ? json_is_null(d) : json_is_number(d),
                      "offset %d: %s", off, x.r.out);
            order[n++] = off;
        }
    }
    cr_assert_eq(n, 6, "%s", x.r.out);
    int want[6] = {2, 1, 0, 5, 4, 3};
    for (int k = 0; k < 6; k++)
        cr_assert_eq(order[k], want[k], "ack order: %s", x.r.out);
    run_free(&x);
}

/* Deferred and never acked, not even at on_revoke or terminate: unacked,
 * exit 1. */
Test(plugin_test, deferred_never_acked_is_reported) {
    char *in = messages(3, 1, 1, "later");
    run x = plugin_test(FAULT, in,
                        (const char *const[]){"--config", "defer_on=later",
                                              "--linger-ms", "50", NULL});
    free(in);
    cr_assert_eq(x.r.exit_code, 1, "%s%s", x.r.out, x.r.err);
    assert_result(&x, 0, 1, "unacked", 1);
    assert_result(&x, 0, 2, "ack", 1);
    cr_assert_eq(summary_int(&x, "unacked"), 1);
    run_free(&x);
}

/* A deferred message not acked within --deferred-timeout-ms is retried
 * like a RETRY answer (here: until max_attempts, then failed). */
Test(plugin_test, deferred_timeout_retries) {
    char *in = messages(2, 1, 0, "later");
    run x = plugin_test(FAULT, in,
                        (const char *const[]){"--config", "defer_on=later",
                                              "--deferred-timeout-ms", "100",
                                              "--retries", "1",
                                              "--retry-backoff-ms", "0", NULL});
    free(in);
    cr_assert_eq(x.r.exit_code, 1, "%s%s", x.r.out, x.r.err);
    assert_result(&x, 0, 0, "dead-lettered", 2);
    cr_assert(strstr(str_of(result_of(&x, 0, 0), "reason"),
                     "deferred_timeout_ms=100"),
              "%s", x.r.out);
    cr_assert(strstr(x.r.err, "offset=0: deferred and not acked"), "%s",
              x.r.err);
    run_free(&x);
}

/* As in `khost run`: a plugin that set KHOST_PLUGIN_NO_HEADERS gets no
 * headers, and one that did not gets them. */
Test(plugin_test, headers_follow_the_plugin_flags) {
    const char *in = "{\"value\":\"a\",\"headers\":{\"h\":\"v\"}}\n";
    for (int no_headers = 0; no_headers < 2; no_headers++) {
        char rec[512], rec_kv[600];
        snprintf(rec, sizeof rec, "%s/rec%d.jsonl", dir, no_headers);
        snprintf(rec_kv, sizeof rec_kv, "record=%s", rec);
        run x = plugin_test(
            FAULT, in,
            (const char *const[]){
                "--config", rec_kv, "--config",
                no_headers ? "no_headers=true" : "no_headers=false", NULL});
        cr_assert_eq(x.r.exit_code, 0, "%s%s", x.r.out, x.r.err);
        assert_result(&x, 0, 0, "ack", 1);
        char *text = tu_read_file(rec, NULL);
        cr_assert_not_null(text);
        const char *want =
            no_headers ? "\"headers\":[]"
                       : "\"headers\":[{\"name\":\"h\",\"value\":\"v\"}]";
        cr_assert(strstr(text, want), "no_headers=%d: %s", no_headers, text);
        free(text);
        run_free(&x);
    }
}

Test(plugin_test, malformed_lines_name_their_line_and_the_rest_runs) {
    run x = plugin_test(NOOP,
                        "{\"value\":\"a\"}\n"
                        "not json\n"
                        "\n"
                        "{\"value\":\"b\"}\n"
                        "{\"vaule\":\"typo\"}\n"
                        "{\"offset\":0,\"value\":\"backwards\"}\n"
                        "{\"value_b64\":\"!!!\"}\n"
                        "{\"value_b64\":\"aGVsbG8=\",\"headers\":{\"h\":\"v\"}}"
                        "\n",
                        NULL);
    cr_assert_eq(x.r.exit_code, 3, "%s%s", x.r.out, x.r.err);
    cr_assert(strstr(x.r.err, ":2: not JSON"), "%s", x.r.err);
    cr_assert(strstr(x.r.err, ":5: unknown field \"vaule\""), "%s", x.r.err);
    cr_assert(strstr(x.r.err, ":6: offset 0 of test partition 0 does not "
                              "come after 1"),
              "%s", x.r.err);
    cr_assert(strstr(x.r.err, ":7: value_b64 is not valid base64"), "%s",
              x.r.err);
    int invalid[8], n = 0;
    size_t i;
    json_t *o;
    json_array_foreach(x.lines, i, o) {
        const char *r = str_of(o, "result");
        if (r && !strcmp(r, "invalid"))
            invalid[n++] = (int)json_integer_value(json_object_get(o, "line"));
    }
    cr_assert_eq(n, 4, "%s", x.r.out);
    cr_assert(invalid[0] == 2 && invalid[1] == 5 && invalid[2] == 6 &&
                  invalid[3] == 7,
              "%s", x.r.out);
    assert_result(&x, 0, 0, "ack", 1);
    assert_result(&x, 0, 1, "ack", 1);
    assert_result(&x, 0, 2, "ack", 1);
    cr_assert_eq(summary_int(&x, "invalid_lines"), 4);
    cr_assert_eq(summary_int(&x, "messages"), 3);
    run_free(&x);
}

/* The pipeline's settings and plugin config come from an ini; --config
 * overrides a key of it. */
Test(plugin_test, ini_pipeline_settings_apply) {
    char *ini;
    cr_assert_neq(asprintf(&ini, "[host]\nbrokers = mock\n"
                                 "[pipeline.other]\ntopics = t\ngroup = g\n"
                                 "plugin = " NOOP "\n"
                                 "[pipeline.p]\ntopics = t\ngroup = g2\n"
                                 "plugin = " FAULT "\n"
                                 "on_failure = skip\n"
                                 "[pipeline.p.config]\nfail_on = bad\n"
                                 "retry_on = nope\n"),
                  -1);
    char *path = write_file("p.ini", ini);
    free(ini);
    run x =
        plugin_test(NULL,
                    "{\"value\":\"bad\"}\n{\"value\":\"nope\"}\n"
                    "{\"value\":\"ok\"}\n",
                    (const char *const[]){"--ini", path, "--pipeline", "p",
                                          "--config", "retry_on=never", NULL});
    cr_assert_eq(x.r.exit_code, 1, "%s%s", x.r.out, x.r.err);
    assert_result(&x, 0, 0, "skipped", 1);
    assert_result(&x, 0, 1, "ack", 1); /* retry_on overridden */
    assert_result(&x, 0, 2, "ack", 1);
    run_free(&x);

    char *argv[] = {KHOST,        "plugin-test", "--ini", path,
                    "--pipeline", "none",        NULL};
    tu_result r = tu_run(argv, 20000);
    cr_assert_eq(r.exit_code, 2, "%s", r.err);
    cr_assert(strstr(r.err, "has no [pipeline.none]"), "%s", r.err);
    tu_result_free(&r);
    free(path);
}

Test(plugin_test, init_failure_exits_2_with_the_reason) {
    run x = plugin_test(INIT_FAILS, "{\"value\":\"a\"}\n", NULL);
    cr_assert_eq(x.r.exit_code, 2, "%s%s", x.r.out, x.r.err);
    json_t *e[2];
    cr_assert_eq(events(&x, "init_failed", e, 2), 1, "%s", x.r.out);
    cr_assert(strstr(str_of(e[0], "error"), "database unreachable"), "%s",
              x.r.out);
    assert_result(&x, 0, 0, "not-run", 0);
    run_free(&x);
}

Test(plugin_test, expect_file_matches_or_names_the_difference) {
    const char *in = "{\"value\":\"a\"}\n{\"value\":\"bad\"}\n";
    char *good = write_file("good.jsonl",
                            "{\"offset\":0,\"result\":\"ack\"}\n"
                            "{\"offset\":1,\"result\":\"dead-lettered\","
                            "\"attempts\":1}\n"
                            "{\"summary\":{\"ack\":1,\"dead_lettered\":1}}\n");
    run x = plugin_test(FAULT, in,
                        (const char *const[]){"--config", "fail_on=bad",
                                              "--expect", good, NULL});
    cr_assert_eq(x.r.exit_code, 0, "%s%s", x.r.out, x.r.err);
    run_free(&x);

    char *bad = write_file("bad.jsonl", "{\"offset\":0,\"result\":\"ack\"}\n"
                                        "{\"offset\":1,\"result\":\"ack\"}\n");
    x = plugin_test(FAULT, in,
                    (const char *const[]){"--config", "fail_on=bad", "--expect",
                                          bad, NULL});
    cr_assert_eq(x.r.exit_code, 4, "%s%s", x.r.out, x.r.err);
    cr_assert(strstr(x.r.err, "bad.jsonl:2: test partition 0 offset 1: result "
                              "is \"dead-lettered\", expected \"ack\""),
              "%s", x.r.err);
    run_free(&x);
    free(good);
    free(bad);
}

Test(plugin_test, help_and_usage_errors) {
    tu_result r =
        tu_run((char *[]){KHOST, "plugin-test", "--help", NULL}, 10000);
    cr_assert_eq(r.exit_code, 0);
    cr_assert(strstr(r.out, "Exit status: 0 every message was acked"), "%s",
              r.out);
    tu_result_free(&r);
    r = tu_run(
        (char *[]){KHOST, "plugin-test", NOOP, "--workers", "zero", NULL},
        10000);
    cr_assert_eq(r.exit_code, 2);
    cr_assert(strstr(r.err, "--workers wants a number"), "%s", r.err);
    tu_result_free(&r);
    r = tu_run((char *[]){KHOST, "plugin-test", "/nonexistent.so", NULL},
               10000);
    cr_assert_eq(r.exit_code, 2);
    cr_assert(strstr(r.err, "/nonexistent.so: No such file"), "%s", r.err);
    tu_result_free(&r);
}

/* plugin-test logs the plugin's stdout and stderr as the host does:
 * tagged, rate-limited, and a dying worker's last line before its crash. */
Test(plugin_test, plugin_output_is_tagged_and_rate_limited) {
    run x = plugin_test(KHOST_FIXTURE_DIR "/fxp_print.so",
                        "{\"value\":\"OUT:to stdout\"}\n"
                        "{\"value\":\"ERR:to stderr\"}\n"
                        "{\"value\":\"FLOOD:300\"}\n",
                        NULL);
    cr_assert_eq(x.r.exit_code, 0, "%s%s", x.r.out, x.r.err);
    cr_assert(strstr(x.r.err, "pipeline=plugin-test worker=0 pid="), "%s",
              x.r.err);
    cr_assert(strstr(x.r.err, " plugin output: to stdout\n"), "%s", x.r.err);
    cr_assert(strstr(x.r.err, " plugin output: to stderr\n"), "%s", x.r.err);
    cr_assert_eq(tu_count(x.r.err, "plugin output: flood line "), 98, "%s",
                 x.r.err);
    cr_assert(strstr(x.r.err, "plugin output: 202 lines dropped (over 100 "
                              "lines/s"),
              "%s", x.r.err);
    cr_assert(!strstr(x.r.out, "flood line"), "plugin output on stdout");
    run_free(&x);

    x = plugin_test(KHOST_FIXTURE_DIR "/fxp_print.so",
                    "{\"value\":\"DIE:last words\"}\n", NULL);
    char *words = strstr(x.r.err, "plugin output: last words");
    char *crash = strstr(x.r.err, "crashed: killed by SIGSEGV");
    cr_assert(words && crash && words < crash, "%s", x.r.err);
    run_free(&x);
}
