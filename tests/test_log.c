/*
 * log: the line formats (journald prefix, ISO timestamps, JSON checked by
 * a real JSON parser, jansson), and end to end: a JSON host log that
 * parses line by line, -v after the command, log_level and its reload,
 * and a broker that cannot be reached reported once per handle.
 */
#define _GNU_SOURCE
#include "harness.h"
#include "kafka_log.h"
#include "log.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <fcntl.h>
#include <jansson.h>
#include <librdkafka/rdkafka_mock.h>
#include <regex.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define FAULT KHOST_BUILD_DIR "/plugins/fault.so"

/* ---- unit: the formatter ---- */

static const struct timeval tv_fixed = {.tv_sec = 1796237462,
                                        .tv_usec = 123456};

static char *fmt(int format, bool journald, int level, const char *tag,
                 const char *msg) {
    static char buf[64 * 1024];
    size_t n = klog_format_line(buf, sizeof buf, format, journald, &tv_fixed,
                                level, tag, msg);
    cr_assert_lt(n, sizeof buf);
    buf[n] = '\0';
    return buf;
}

/* The line must be exactly one line, and one JSON object. */
static json_t *parse_line(const char *line) {
    size_t len = strlen(line);
    cr_assert_gt(len, 0);
    cr_assert_eq(line[len - 1], '\n', "no newline: %s", line);
    cr_assert_eq(strchr(line, '\n'), line + len - 1, "two lines: %s", line);
    json_error_t e;
    json_t *j = json_loadb(line, len - 1, 0, &e);
    cr_assert_not_null(j, "not JSON (%s at %d): %s", e.text, e.position, line);
    cr_assert(json_is_object(j));
    return j;
}

Test(log, journal_stream_matches_only_our_file) {
    char *dir = tu_tmpdir();
    char *path = tu_write_file(dir, "err", "");
    int fd = open(path, O_WRONLY);
    cr_assert_geq(fd, 0);
    struct stat st;
    cr_assert_eq(fstat(fd, &st), 0);
    char js[64];
    snprintf(js, sizeof js, "%llu:%llu", (unsigned long long)st.st_dev,
             (unsigned long long)st.st_ino);
    cr_assert(klog_journal_stream_matches(js, fd));
    snprintf(js, sizeof js, "%llu:%llu", (unsigned long long)st.st_dev,
             (unsigned long long)st.st_ino + 1);
    cr_assert_not(klog_journal_stream_matches(js, fd), "other inode");
    snprintf(js, sizeof js, "%llu:%llu", (unsigned long long)st.st_dev + 1,
             (unsigned long long)st.st_ino);
    cr_assert_not(klog_journal_stream_matches(js, fd), "other device");
    cr_assert_not(klog_journal_stream_matches(NULL, fd));
    cr_assert_not(klog_journal_stream_matches("", fd));
    cr_assert_not(klog_journal_stream_matches("12", fd));
    cr_assert_not(klog_journal_stream_matches("a:b", fd));
    snprintf(js, sizeof js, "%llu:%llux", (unsigned long long)st.st_dev,
             (unsigned long long)st.st_ino);
    cr_assert_not(klog_journal_stream_matches(js, fd), "trailing junk");
    close(fd);
    free(path);
    tu_rmdir(dir);
    free(dir);
}

Test(log, journald_text_has_priority_prefix_and_no_timestamp) {
    cr_assert_str_eq(fmt(KLOG_TEXT, true, KLOG_ERROR, "khost", "boom"),
                     "<3>khost: boom\n");
    cr_assert_str_eq(fmt(KLOG_TEXT, true, KLOG_WARN, "khost", "w"),
                     "<4>khost: w\n");
    cr_assert_str_eq(fmt(KLOG_TEXT, true, KLOG_INFO, "worker p/1", "i"),
                     "<6>worker p/1: i\n");
    cr_assert_str_eq(fmt(KLOG_TEXT, true, KLOG_DEBUG, "khost", "d"),
                     "<7>khost: d\n");
}

Test(log, text_has_iso_utc_timestamp) {
    cr_assert_str_eq(fmt(KLOG_TEXT, false, KLOG_INFO, "khost", "hello"),
                     "2026-12-02T18:51:02.123Z INFO  khost: hello\n");
    struct timeval now;
    gettimeofday(&now, NULL);
    char buf[512];
    size_t n = klog_format_line(buf, sizeof buf, KLOG_TEXT, false, &now,
                                KLOG_WARN, "khost", "x");
    buf[n] = '\0';
    regex_t re;
    cr_assert_eq(regcomp(&re,
                         "^[0-9]{4}-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:"
                         "[0-6][0-9]\\.[0-9]{3}Z WARN  khost: x\n$",
                         REG_EXTENDED),
                 0);
    cr_assert_eq(regexec(&re, buf, 0, NULL, 0), 0, "%s", buf);
    regfree(&re);
}

Test(log, text_keeps_one_line_per_event) {
    cr_assert_str_eq(fmt(KLOG_TEXT, true, KLOG_INFO, "khost",
                         "a\nb\r\x01"
                         "c"),
                     "<6>khost: a\\nb\\r\\x01c\n");
}

Test(log, json_fields_from_message_and_tag) {
    json_t *j = parse_line(
        fmt(KLOG_JSON, false, KLOG_ERROR, "khost",
            "pipeline=orders worker=1 pid=99 crashed: killed by SIGSEGV while "
            "handling topic=t partition=3 offset=42 (acked=40)"));
    cr_assert_str_eq(json_string_value(json_object_get(j, "ts")),
                     "2026-12-02T18:51:02.123Z");
    cr_assert_str_eq(json_string_value(json_object_get(j, "level")), "error");
    cr_assert_str_eq(json_string_value(json_object_get(j, "tag")), "khost");
    cr_assert_str_eq(json_string_value(json_object_get(j, "pipeline")),
                     "orders");
    cr_assert_str_eq(json_string_value(json_object_get(j, "topic")), "t");
    cr_assert(json_is_integer(json_object_get(j, "worker")));
    cr_assert_eq(json_integer_value(json_object_get(j, "worker")), 1);
    cr_assert_eq(json_integer_value(json_object_get(j, "pid")), 99);
    cr_assert_eq(json_integer_value(json_object_get(j, "partition")), 3);
    cr_assert(json_is_integer(json_object_get(j, "offset")));
    cr_assert_eq(json_integer_value(json_object_get(j, "offset")), 42);
    cr_assert(strstr(json_string_value(json_object_get(j, "msg")),
                     "offset=42 (acked=40)"),
              "the whole message stays in msg");
    json_decref(j);

    /* A worker's tag gives pipeline, worker and pid. */
    j = parse_line(fmt(KLOG_JSON, false, KLOG_INFO, "worker orders/2 pid=77",
                       "plugin fault 0.1.0 ready"));
    cr_assert_str_eq(json_string_value(json_object_get(j, "pipeline")),
                     "orders");
    cr_assert_eq(json_integer_value(json_object_get(j, "worker")), 2);
    cr_assert_eq(json_integer_value(json_object_get(j, "pid")), 77);
    cr_assert_null(json_object_get(j, "offset"));
    json_decref(j);

    /* Not a number: no numeric field. Not at a word start: no field. */
    j = parse_line(fmt(KLOG_JSON, false, KLOG_INFO, "khost",
                       "offset=abc partition=1x xtopic=q demo[0]=750"));
    cr_assert_null(json_object_get(j, "offset"));
    cr_assert_null(json_object_get(j, "partition"));
    cr_assert_null(json_object_get(j, "topic"));
    json_decref(j);
}

Test(log, json_escapes_nasty_input) {
    const char *nasty = "quote\" backslash\\ nl\n cr\r tab\t bell\x07 del\x7f "
                        "ff\xff overlong\xc0\xaf surrogate\xed\xa0\x80 "
                        "cut\xe2\x82 ok:\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80";
    json_t *j =
        parse_line(fmt(KLOG_JSON, false, KLOG_WARN, "worker p\"x/1", nasty));
    const char *msg = json_string_value(json_object_get(j, "msg"));
    cr_assert_not_null(msg);
    cr_assert_str_eq(msg, "quote\" backslash\\ nl\n cr\r tab\t bell\x07 "
                          "del\x7f ff\xef\xbf\xbd overlong\xef\xbf\xbd\xef"
                          "\xbf\xbd surrogate\xef\xbf\xbd\xef\xbf\xbd\xef\xbf"
                          "\xbd cut\xef\xbf\xbd\xef\xbf\xbd ok:\xc3\xa9\xe2"
                          "\x82\xac\xf0\x9f\x98\x80");
    cr_assert_str_eq(json_string_value(json_object_get(j, "tag")),
                     "worker p\"x/1");
    json_decref(j);
    /* Under journald: the prefix, then the object. */
    const char *line = fmt(KLOG_JSON, true, KLOG_DEBUG, "khost", nasty);
    cr_assert_eq(strncmp(line, "<7>{", 4), 0, "%s", line);
    json_decref(parse_line(line + 3));
}

Test(log, json_stays_valid_when_truncated) {
    /* Every byte escapes to 2 or 6: the body fills before the message
     * ends, and the cut never splits an escape. */
    char msg[2048];
    for (size_t i = 0; i < sizeof msg - 1; i++)
        msg[i] = i % 3 ? '"' : '\x01';
    msg[sizeof msg - 1] = '\0';
    for (size_t cap = 256; cap <= 16384; cap *= 2) {
        char *buf = malloc(cap);
        size_t n = klog_format_line(buf, cap, KLOG_JSON, false, &tv_fixed,
                                    KLOG_INFO, "khost", msg);
        cr_assert_leq(n, cap);
        char *line = strndup(buf, n);
        json_decref(parse_line(line));
        free(line);
        free(buf);
    }
}

Test(log, level_names) {
    cr_assert_eq(klog_level_parse("error"), KLOG_ERROR);
    cr_assert_eq(klog_level_parse("warn"), KLOG_WARN);
    cr_assert_eq(klog_level_parse("info"), KLOG_INFO);
    cr_assert_eq(klog_level_parse("debug"), KLOG_DEBUG);
    cr_assert_eq(klog_level_parse("INFO"), -1);
    cr_assert_eq(klog_level_parse("warning"), -1);
    cr_assert_eq(klog_level_parse(NULL), -1);
}

/* ---- unit: connectivity problems, with a clock of our own ---- */

/* Run fn with stderr going to a file; returns what it wrote. */
static char *capture(void (*fn)(void)) {
    char *dir = tu_tmpdir();
    char *path = tu_write_file(dir, "err", "");
    int fd = open(path, O_WRONLY | O_TRUNC);
    int saved = dup(2);
    dup2(fd, 2);
    fn();
    dup2(saved, 2);
    close(saved);
    close(fd);
    char *text = tu_read_file(path, NULL);
    free(path);
    tu_rmdir(dir);
    free(dir);
    return text;
}

static int key_a, key_b;

static void conn_script(void) {
    const char *who = "pipeline=p kafka";
    cr_assert_not(kafka_conn_error(&key_a, who, "b:1",
                                   RD_KAFKA_RESP_ERR__TIMED_OUT, "x", 0),
                  "not about connectivity: the caller logs it");
    cr_assert(kafka_conn_error(&key_a, who, "b:1", RD_KAFKA_RESP_ERR__TRANSPORT,
                               "refused", 1000));
    cr_assert(kafka_conn_error(&key_a, who, "b:1",
                               RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN,
                               "1/1 brokers are down", 1000));
    cr_assert(kafka_conn_error(&key_a, who, "b:1", RD_KAFKA_RESP_ERR__TRANSPORT,
                               "refused (after 0ms in state CONNECT, 7 "
                               "identical error(s) suppressed)",
                               2000));
    kafka_conn_tick(&key_a, 20000);  /* nothing yet */
    kafka_conn_tick(&key_a, 31000);  /* summary: 1 + 8 */
    kafka_conn_tick(&key_a, 40000);  /* nothing */
    kafka_conn_ok(&key_a, 45000);    /* all were down: over */
    kafka_conn_tick(&key_a, 200000); /* nothing left */
    /* Another handle, one broker of several: ends by quiet only. */
    const char *who_b = "pipeline=q dead-letter producer";
    cr_assert(kafka_conn_error(&key_b, who_b, "b:1,b:2",
                               RD_KAFKA_RESP_ERR__RESOLVE, "no such host", 0));
    kafka_conn_ok(&key_b, 1000); /* not an end: others answered all along */
    kafka_conn_tick(&key_b, 30000);
    kafka_conn_tick(&key_b, 74000);
    kafka_conn_tick(&key_b, 75000); /* 75 s without a failure: over */
    kafka_conn_forget(&key_a);
    kafka_conn_forget(&key_b);
}

Test(log, broker_problem_once_summary_and_end) {
    char *out = capture(conn_script);
    cr_assert_eq(tu_count(out, "\n"), 6, "%s", out);
    cr_assert_eq(tu_count(out, "pipeline=p kafka: cannot connect to a broker "
                               "(brokers=b:1): refused; repeats are counted"),
                 1, "%s", out);
    cr_assert_eq(tu_count(out, "pipeline=p kafka: still no broker reachable "
                               "after 30 s (9 connection failures)"),
                 1, "%s", out);
    cr_assert_eq(tu_count(out, "pipeline=p kafka: brokers reachable again "
                               "after 44 s (9 connection failures)"),
                 1, "%s", out);
    cr_assert_eq(tu_count(out, "pipeline=q dead-letter producer: cannot "
                               "connect to a broker (brokers=b:1,b:2): no "
                               "such host"),
                 1, "%s", out);
    cr_assert_eq(tu_count(out, "pipeline=q dead-letter producer: broker "
                               "connections still failing after 30 s (1 "
                               "connection failure)"),
                 1, "%s", out);
    cr_assert_eq(tu_count(out, "pipeline=q dead-letter producer: brokers "
                               "reachable again after 0 s (1 connection "
                               "failure, then none for 75 s)"),
                 1, "%s", out);
    free(out);
}

/* ---- end to end ---- */

static char *ini(const char *brokers, const char *host_extra,
                 const char *kafka_extra, const char *dir,
                 const char *pipeline_extra, const char *config_extra) {
    char *s;
    cr_assert_neq(asprintf(&s,
                           "[host]\nbrokers = %s\n%s\n"
                           "[kafka]\nsession.timeout.ms = 6000\n"
                           "heartbeat.interval.ms = 500\n%s\n"
                           "[pipeline.orders]\ntopics = lt\ngroup = g-lt\n"
                           "plugin = " FAULT "\nworkers = 2\n%s\n"
                           "[pipeline.orders.config]\nrecord = %s/rec.jsonl\n"
                           "%s\n",
                           brokers, host_extra, kafka_extra, pipeline_extra,
                           dir, config_extra),
                  -1);
    return s;
}

/* Like th_host_start, with the command line given. */
static void start_argv(th_host *h, const char *dir, const char *text,
                       char *const argv_tail[]) {
    memset(h, 0, sizeof *h);
    h->dir = strdup(dir);
    h->cfg_path = tu_write_file(dir, "host.ini", text);
    cr_assert_neq(asprintf(&h->log_path, "%s/host.log", dir), -1);
    char *argv[16] = {"khost", "run", "-c", h->cfg_path};
    int n = 4;
    for (int i = 0; argv_tail[i] && n < 15; i++)
        argv[n++] = argv_tail[i];
    argv[n] = NULL;
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        int fd = open(h->log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
        dup2(fd, 1);
        dup2(fd, 2);
        close_range(3, ~0U, 0);
        tu_execv(KHOST_BUILD_DIR "/khost", argv);
        _exit(127);
    }
    h->pid = pid;
}

Test(log, json_log_parses_line_by_line, .timeout = 90) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "lt", 2);
    th_produce(&c, "lt", 2, 20, 1, 5, "CRASH");
    char *dir = tu_tmpdir();
    /* Debug level and librdkafka's cgrp debug: every kind of line,
     * librdkafka's included, from the host and from workers. */
    char *text = ini(c.bootstraps, "log_format = json\nlog_level = debug",
                     "debug = cgrp", dir, "poison_after = 1\non_failure = skip",
                     "crash_on = CRASH");
    th_host h;
    th_host_start(&h, dir, "host", text);
    cr_assert(th_wait_log(&h, "crashed: killed by SIGSEGV", 1, 30000), "%s",
              th_log(&h));
    cr_assert(th_wait_log(&h, "message skipped after", 1, 30000), "%s",
              th_log(&h));
    cr_assert_eq(th_host_stop(&h, SIGTERM, 20000), 0, "%s", th_log(&h));
    char *log = th_log(&h);
    int lines = 0, rdkafka = 0, worker_lines = 0, crash_lines = 0;
    char *save = NULL;
    for (char *line = strtok_r(log, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save)) {
        json_error_t e;
        json_t *j = json_loads(line, 0, &e);
        cr_assert_not_null(j, "line %d is not JSON (%s): %s", lines + 1, e.text,
                           line);
        lines++;
        const char *msg = json_string_value(json_object_get(j, "msg"));
        const char *tag = json_string_value(json_object_get(j, "tag"));
        cr_assert_not_null(msg, "%s", line);
        cr_assert_not_null(tag, "%s", line);
        cr_assert_not_null(json_string_value(json_object_get(j, "ts")));
        if (strstr(msg, "librdkafka "))
            rdkafka++;
        if (!strncmp(tag, "worker ", 7)) {
            worker_lines++;
            cr_assert_str_eq(json_string_value(json_object_get(j, "pipeline")),
                             "orders", "%s", line);
            cr_assert(json_is_integer(json_object_get(j, "worker")), "%s",
                      line);
        }
        if (strstr(msg, "crashed: killed by SIGSEGV")) {
            crash_lines++;
            cr_assert_str_eq(json_string_value(json_object_get(j, "pipeline")),
                             "orders", "%s", line);
            cr_assert_eq(json_integer_value(json_object_get(j, "partition")), 1,
                         "%s", line);
            cr_assert_eq(json_integer_value(json_object_get(j, "offset")), 5,
                         "%s", line);
            cr_assert(json_is_integer(json_object_get(j, "worker")), "%s",
                      line);
        }
        json_decref(j);
    }
    cr_assert_gt(lines, 20);
    cr_assert_gt(rdkafka, 0, "librdkafka's lines come through klog");
    cr_assert_gt(worker_lines, 0);
    cr_assert_eq(crash_lines, 1);
    free(log);
    th_host_free(&h);
    free(text);
    th_cluster_stop(&c);
    tu_rmdir(dir);
    free(dir);
}

Test(log, verbose_after_the_command_gives_debug_lines, .timeout = 60) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "lt", 2);
    char *dir = tu_tmpdir();
    char *text = ini(c.bootstraps, "", "", dir, "", "");
    th_host h;
    start_argv(&h, dir, text, (char *[]){"-v", NULL});
    th_register_pid(h.pid);
    cr_assert(th_wait_log(&h, "rebalance #1: assigned", 1, 30000), "%s",
              th_log(&h));
    /* The worker's own (it gets -v) and the host's. */
    cr_assert(th_wait_log(&h, " DEBUG worker orders/", 1, 10000), "%s",
              th_log(&h));
    cr_assert(th_wait_log(&h, " DEBUG khost:", 1, 10000), "%s", th_log(&h));
    cr_assert_eq(th_host_stop(&h, SIGTERM, 20000), 0, "%s", th_log(&h));
    th_host_free(&h);

    /* Without -v: none. */
    char *dir2 = tu_tmpdir();
    th_host_start(&h, dir2, "host", text);
    cr_assert(th_wait_log(&h, "rebalance #1: assigned", 1, 30000), "%s",
              th_log(&h));
    th_sleep_ms(500);
    cr_assert_eq(th_host_stop(&h, SIGTERM, 20000), 0, "%s", th_log(&h));
    cr_assert_eq(th_log_count(&h, " DEBUG "), 0, "%s", th_log(&h));
    th_host_free(&h);
    free(text);
    th_cluster_stop(&c);
    tu_rmdir(dir);
    tu_rmdir(dir2);
    free(dir);
    free(dir2);
}

static bool host_answers(th_host *h) {
    tu_result r = tu_run(
        (char *[]){KHOST_BUILD_DIR "/khost", "status", "-c", h->cfg_path, NULL},
        10000);
    bool ok = r.exit_code == 0;
    tu_result_free(&r);
    return ok;
}

Test(log, log_level_warn_hides_info_until_reloaded, .timeout = 90) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "lt", 2);
    th_produce(&c, "lt", 2, 10, -1, -1, NULL);
    char *dir = tu_tmpdir();
    char *warn = ini(c.bootstraps, "log_level = warn", "", dir, "", "");
    th_host h;
    th_host_start(&h, dir, "host", warn);
    bool up = false;
    for (int i = 0; i < 100 && !up; i++) {
        th_sleep_ms(200);
        up = host_answers(&h);
    }
    cr_assert(up, "%s", th_log(&h));
    /* Consumption runs (the record fills) while the log stays quiet. */
    char *rec;
    cr_assert_neq(asprintf(&rec, "%s/rec.jsonl", dir), -1);
    const char *recs[] = {rec};
    cr_assert(th_wait_distinct(recs, 1, 2, 10, 20, 30000), "%s", th_log(&h));
    cr_assert_eq(th_log_count(&h, " INFO "), 0, "%s", th_log(&h));

    char *info = ini(c.bootstraps, "log_level = info", "", dir, "", "");
    free(tu_write_file(dir, "host.ini", info));
    kill(h.pid, SIGHUP);
    cr_assert(th_wait_log(&h, "reload: log_level warn -> info", 1, 20000), "%s",
              th_log(&h));
    cr_assert(th_wait_log(&h, " INFO  khost: reload applied", 1, 20000), "%s",
              th_log(&h));
    cr_assert_eq(th_host_stop(&h, SIGTERM, 20000), 0, "%s", th_log(&h));
    /* Back at info: the shutdown's lines show. */
    cr_assert_geq(th_log_count(&h, " INFO  khost: khost stopped"), 1, "%s",
                  th_log(&h));
    th_host_free(&h);
    free(rec);
    free(warn);
    free(info);
    th_cluster_stop(&c);
    tu_rmdir(dir);
    free(dir);
}

Test(log, unreachable_broker_is_reported_once_per_handle, .timeout = 60) {
    char *dir = tu_tmpdir();
    /* on_failure = dlq (the default): a dead-letter producer too. */
    char *text = ini("127.0.0.1:1", "", "", dir, "dlq_topic = lt.dead", "");
    th_host h;
    th_host_start(&h, dir, "host", text);
    cr_assert(th_wait_log(&h, "khost 0", 1, 10000), "%s", th_log(&h));
    th_sleep_ms(5000);
    cr_assert_eq(th_host_stop(&h, SIGTERM, 20000), 0, "%s", th_log(&h));
    char *log = th_log(&h);
    cr_assert_eq(tu_count(log,
                          "pipeline=orders kafka: cannot connect to a broker "
                          "(brokers=127.0.0.1:1): "),
                 1, "%s", log);
    cr_assert_eq(tu_count(log, "pipeline=orders dead-letter producer: cannot "
                               "connect to a broker (brokers=127.0.0.1:1): "),
                 1, "%s", log);
    /* librdkafka retried several times in 5 s; nothing else said so. */
    cr_assert_eq(tu_count(log, "Connection refused"), 2, "%s", log);
    cr_assert_eq(tu_count(log, "brokers are down"), 0, "%s", log);
    cr_assert_eq(tu_count(log, "%3|"), 0, "%s", log);
    cr_assert_eq(tu_count(log, "|FAIL|"), 0, "%s", log);
    cr_assert_eq(tu_count(log, "RDKAFKA-"), 0, "%s", log);
    cr_assert_eq(tu_count(log, "librdkafka"), 0, "%s", log);
    free(log);
    th_host_free(&h);
    free(text);
    tu_rmdir(dir);
    free(dir);
}

Test(log, broker_outage_is_reported_once_then_its_end, .timeout = 90) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "lt", 2);
    th_produce(&c, "lt", 2, 5, -1, -1, NULL);
    char *dir = tu_tmpdir();
    char *text = ini(c.bootstraps, "", "", dir, "on_failure = skip", "");
    th_host h;
    th_host_start(&h, dir, "host", text);
    cr_assert(th_wait_log(&h, "rebalance #1: assigned", 1, 30000), "%s",
              th_log(&h));
    cr_assert_eq(rd_kafka_mock_broker_set_down(c.mock.cluster, 1), 0);
    cr_assert(th_wait_log(&h,
                          "pipeline=orders kafka: cannot connect to a "
                          "broker",
                          1, 20000),
              "%s", th_log(&h));
    th_sleep_ms(4000);
    cr_assert_eq(rd_kafka_mock_broker_set_up(c.mock.cluster, 1), 0);
    th_produce(&c, "lt", 2, 5, -1, -1, NULL);
    cr_assert(th_wait_log(&h, "pipeline=orders kafka: brokers reachable again",
                          1, 40000),
              "%s", th_log(&h));
    cr_assert_eq(th_host_stop(&h, SIGTERM, 20000), 0, "%s", th_log(&h));
    char *log = th_log(&h);
    cr_assert_eq(tu_count(log, "pipeline=orders kafka: cannot connect"), 1,
                 "%s", log);
    cr_assert_eq(tu_count(log, "pipeline=orders kafka: brokers reachable "
                               "again"),
                 1, "%s", log);
    cr_assert_eq(tu_count(log, "librdkafka FAIL"), 0, "%s", log);
    free(log);
    th_host_free(&h);
    free(text);
    th_cluster_stop(&c);
    tu_rmdir(dir);
    free(dir);
}

Test(log, bad_log_keys_are_one_line_errors) {
    char *dir = tu_tmpdir();
    char *text = ini("mock", "log_level = loud\nlog_format = xml\nlog_levl = x",
                     "", dir, "", "");
    char *path = tu_write_file(dir, "bad.ini", text);
    tu_result r = tu_run(
        (char *[]){KHOST_BUILD_DIR "/khost", "check-config", "-c", path, NULL},
        30000);
    cr_assert_eq(r.exit_code, 2, "%s", r.err);
    cr_assert(strstr(r.err, "bad.ini:3: bad value 'loud' for 'log_level' in "
                            "[host]: expected error, warn, info or debug\n"),
              "%s", r.err);
    cr_assert(strstr(r.err, "bad.ini:4: bad value 'xml' for 'log_format' in "
                            "[host]: expected text or json\n"),
              "%s", r.err);
    cr_assert(strstr(r.err, "unknown key 'log_levl' in [host] (did you mean "
                            "'log_level'?)"),
              "%s", r.err);
    tu_result_free(&r);
    free(path);
    free(text);
    tu_rmdir(dir);
    free(dir);
}

/* A host whose stderr is what JOURNAL_STREAM names, as under systemd:
 * every line it and its workers write carries a <N> priority prefix and
 * no timestamp of its own. */
Test(log, host_under_journald_prefixes_every_line, .timeout = 60) {
    char *dir = tu_tmpdir();
    char *log;
    cr_assert_neq(asprintf(&log, "%s/jd.log", dir), -1);
    int fd = open(log, O_WRONLY | O_CREAT, 0644);
    cr_assert_geq(fd, 0);
    struct stat st;
    cr_assert_eq(fstat(fd, &st), 0);
    close(fd);
    char stream[64];
    snprintf(stream, sizeof stream, "%lu:%lu", (unsigned long)st.st_dev,
             (unsigned long)st.st_ino);
    char *text;
    cr_assert_neq(asprintf(&text,
                           "[host]\nbrokers = mock\n[pipeline.j]\ntopics = "
                           "jt\ngroup = jg\nplugin = %s\nworkers = 2\n"
                           "[pipeline.j.config]\nrecord = %s/r.jsonl\n",
                           FAULT, dir),
                  -1);
    setenv("JOURNAL_STREAM", stream, 1);
    th_host h;
    th_host_start(&h, dir, "jd", text); /* appends to jd.log */
    unsetenv("JOURNAL_STREAM");
    cr_assert(th_wait_log(&h, " ready: plugin", 2, 30000), "%s", th_log(&h));
    cr_assert_eq(th_host_stop(&h, SIGTERM, 20000), 0, "%s", th_log(&h));
    char *all = th_log(&h);
    int lines = 0, worker_lines = 0;
    regex_t iso;
    cr_assert_eq(regcomp(&iso, "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z",
                         REG_EXTENDED | REG_NOSUB),
                 0);
    for (char *line = strtok(all, "\n"); line; line = strtok(NULL, "\n")) {
        lines++;
        cr_assert(line[0] == '<' && strchr("3467", line[1]) && line[2] == '>',
                  "line %d has no priority prefix: %s", lines, line);
        cr_assert_neq(regexec(&iso, line, 0, NULL, 0), 0,
                      "line %d carries a timestamp under journald: %s", lines,
                      line);
        worker_lines += !strncmp(line + 3, "worker j/", 9);
    }
    regfree(&iso);
    cr_assert_gt(lines, 5);
    cr_assert_gt(worker_lines, 0, "no worker line seen");
    free(all);
    free(text);
    th_host_free(&h);
    tu_rmdir(dir);
    free(dir);
    free(log);
}

/* A plugin's stdout and stderr reach the host's log as INFO lines tagged
 * with pipeline, worker and pid, at most 100 a second per worker, the rest
 * counted in a WARN; the worker's own lines are untouched. On the mock
 * cluster, with fxp_print (tests/fixtures/fxp_print.c). */
Test(log, plugin_output_is_tagged_and_rate_limited, .timeout = 90) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "po", 1);
    th_produce(&c, "po", 1, 3, 0, 1, " OUT:hello from stdout");
    th_produce(&c, "po", 1, 3, 0, 1, " ERR:hello from stderr");
    th_produce(&c, "po", 1, 3, 0, 1, " FLOOD:500");
    char *dir = tu_tmpdir();
    char *text;
    cr_assert_neq(asprintf(&text,
                           "[host]\nbrokers = %s\n"
                           "[kafka]\nsession.timeout.ms = 6000\n"
                           "heartbeat.interval.ms = 500\n"
                           "[pipeline.po]\ntopics = po\ngroup = g-po\n"
                           "plugin = %s/fxp_print.so\n",
                           c.bootstraps, KHOST_FIXTURE_DIR),
                  -1);
    th_host h;
    th_host_start(&h, dir, "po", text);
    cr_assert(th_wait_committed(&c, "g-po", "po", 1, 9, 60000), "%s",
              th_log(&h));
    cr_assert(th_wait_log(&h, "lines dropped (over 100 lines/s", 1, 10000),
              "%s", th_log(&h));
    pid_t pid = th_worker_pid(&h, 0);
    char want[128];
    snprintf(want, sizeof want,
             "pipeline=po worker=0 pid=%d plugin output: hello from stdout",
             (int)pid);
    cr_assert_eq(th_log_count(&h, want), 1, "%s\n%s", want, th_log(&h));
    snprintf(want, sizeof want,
             "pipeline=po worker=0 pid=%d plugin output: hello from stderr",
             (int)pid);
    cr_assert_eq(th_log_count(&h, want), 1, "%s\n%s", want, th_log(&h));
    int flood = th_log_count(&h, "plugin output: flood line ");
    cr_assert(flood >= 1 && flood <= 100, "%d flood lines logged", flood);
    /* The worker's own lines still come as they are. */
    cr_assert(th_log_count(&h, "worker po/0 pid=") > 0, "%s", th_log(&h));
    cr_assert_eq(th_host_stop(&h, SIGTERM, 20000), 0, "%s", th_log(&h));
    th_host_free(&h);
    th_cluster_stop(&c);
    free(text);
    tu_rmdir(dir);
    free(dir);
}
