/*
 * kstats: librdkafka's statistics in /metrics and the re-commits for lag
 * tools (issue 12; kafka_stats.c, kafka.c).
 *  - with [http] listen set and statistics.interval.ms unset, the stats
 *    arrive by themselves (5000 ms) through the consumer queue: broker
 *    RTT per real broker (no internal or GroupCoordinator one), the fetch
 *    queue and librdkafka's consumer lag per assigned partition, and
 *    their age; the output still passes promtool;
 *  - auto.commit.interval.ms = 100: an idle pipeline re-commits its
 *    unchanged offsets every second (counted as kind="recommit", while
 *    kind="auto" stands still), and another client reads the same,
 *    right, committed offsets;
 *  - the parser skips what it does not trust and refuses what is not a
 *    JSON object.
 */
#define _GNU_SOURCE
#include "harness.h"
#include "kafka_stats.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NOOP KHOST_BUILD_DIR "/plugins/noop.so"
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

TestSuite(kstats, .fini = kill_leftovers);

static char *start_host(th_cluster *c, const char *topic, const char *kafka,
                        int *port) {
    char *dir = tu_tmpdir();
    snprintf(current_dir, sizeof current_dir, "%s", dir);
    *port = tu_free_port();
    char *ini;
    cr_assert_neq(asprintf(&ini,
                           "[host]\nbrokers = %s\n"
                           "[kafka]\nsession.timeout.ms = 6000\n"
                           "heartbeat.interval.ms = 500\n%s"
                           "[http]\nlisten = 127.0.0.1:%d\n"
                           "[pipeline.p]\ntopics = %s\ngroup = g-%s\n"
                           "plugin = %s\nworkers = 1\n",
                           c->bootstraps, kafka, *port, topic, topic, NOOP),
                  -1);
    th_host_start(&h, dir, "host", ini);
    free(ini);
    cr_assert(th_wait_log(&h, "http: listening on", 1, WAIT_MS), "%s",
              th_log(&h));
    return dir;
}

/* The value of the sample `line` (name{labels}), -1 when absent. */
static double sample(const char *text, const char *line) {
    char *needle;
    cr_assert_neq(asprintf(&needle, "\n%s ", line), -1);
    const char *p = strstr(text, needle);
    double v = p ? strtod(p + strlen(needle), NULL) : -1;
    free(needle);
    return v;
}

static char *scrape(int port) {
    char *resp;
    cr_assert_eq(tu_http(port, "GET", "/metrics", NULL, NULL, 0, &resp), 200,
                 "%s", resp);
    return resp;
}

Test(kstats, statistics_arrive_and_map_to_gauges, .timeout = 120) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "ks", 2);
    th_produce(&c, "ks", 2, 10, -1, -1, NULL);
    int port;
    char *dir = start_host(&c, "ks", "", &port);
    cr_assert(th_wait_committed(&c, "g-ks", "ks", 2, 10, WAIT_MS), "%s",
              th_log(&h));
    /* statistics.interval.ms defaults to 5000 with [http]; statistics
     * after the commit show a lag of 0 and, once idle, an empty queue.
     * fetchq_cnt is the pipeline's consumer queue (kafka_stats.c), so a
     * commit result or other event still queued when the statistics are
     * taken counts: under valgrind that is seen, so wait for a window
     * where it is empty too (several statistics intervals). */
    char *resp = NULL;
    const char *text = NULL;
    const char *lag0 = "khost_rdkafka_consumer_lag{pipeline=\"p\",group=\"g-"
                       "ks\",topic=\"ks\",partition=\"0\"}";
    const char *lag1 = "khost_rdkafka_consumer_lag{pipeline=\"p\",group=\"g-"
                       "ks\",topic=\"ks\",partition=\"1\"}";
    const char *fq1 = "khost_rdkafka_fetch_queue_messages{pipeline=\"p\","
                      "group=\"g-ks\",topic=\"ks\",partition=\"1\"}";
    for (int64_t end = th_now_ms() + 40000; th_now_ms() < end;) {
        free(resp);
        resp = scrape(port);
        text = tu_http_body(resp);
        if (sample(text, lag0) == 0 && sample(text, lag1) == 0 &&
            sample(text, fq1) == 0)
            break;
        usleep(100 * 1000);
    }
    cr_assert_eq(sample(text, lag0), 0, "%s", text);
    cr_assert_eq(sample(text, lag1), 0, "%s", text);
    double age =
        sample(text, "khost_rdkafka_stats_age_seconds{pipeline=\"p\"}");
    cr_assert(age >= 0 && age < 6, "age %g: %s", age, text);
    cr_assert_eq(sample(text, fq1), 0, "%s", text);
    cr_assert_geq(sample(text, "khost_rdkafka_fetch_queue_bytes{pipeline="
                               "\"p\",group=\"g-ks\",topic=\"ks\","
                               "partition=\"0\"}"),
                  0, "%s", text);
    /* One real broker (the mock's node 1), its RTT in seconds; neither
     * the internal broker nor the GroupCoordinator alias. */
    cr_assert_eq(tu_count(text, "\nkhost_rdkafka_broker_rtt_avg_seconds{"), 1,
                 "%s", text);
    cr_assert_eq(tu_count(text, "\nkhost_rdkafka_broker_rtt_p99_seconds{"), 1,
                 "%s", text);
    const char *rtt = strstr(text, "\nkhost_rdkafka_broker_rtt_p99_seconds{");
    cr_assert(strstr(rtt, "/1\"} "), "%s", rtt);
    double p99 = strtod(strstr(rtt, "} ") + 2, NULL);
    cr_assert(p99 > 0 && p99 < 5, "p99 %g", p99);
    cr_assert(!strstr(text, "GroupCoordinator"), "%s", text);
    cr_assert(!strstr(text, "internal\"}"), "%s", text);
    /* No partition -1, nothing per partition outside the assignment. */
    cr_assert_eq(tu_count(text, "\nkhost_rdkafka_consumer_lag{"), 2, "%s",
                 text);
    /* Still a valid exposition. */
    char *file = tu_write_file(dir, "metrics.txt", text);
    char *cmd;
    cr_assert_neq(asprintf(&cmd, "promtool check metrics < %s", file), -1);
    tu_result r = tu_run((char *[]){"/bin/sh", "-c", cmd, NULL}, 30000);
    cr_assert_eq(r.exit_code, 0, "promtool: %s%s", r.out, r.err);
    tu_result_free(&r);
    free(cmd);
    free(file);
    free(resp);
    cr_assert_eq(th_host_stop(&h, SIGTERM, 30000), 0, "%s", th_log(&h));
    th_cluster_stop(&c);
}

#define KIND(k) "khost_offset_commits_total{pipeline=\"p\",kind=\"" k "\"}"

Test(kstats, idle_offsets_are_committed_again, .timeout = 120) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "rc", 2);
    th_produce(&c, "rc", 2, 5, -1, -1, NULL);
    int port;
    start_host(&c, "rc", "auto.commit.interval.ms = 100\n", &port);
    cr_assert(th_wait_committed(&c, "g-rc", "rc", 2, 5, WAIT_MS), "%s",
              th_log(&h));
    /* Let the auto-commit that confirmed it be counted. */
    th_sleep_ms(500);
    char *resp = scrape(port);
    double auto0 = sample(tu_http_body(resp), KIND("auto"));
    double re0 = sample(tu_http_body(resp), KIND("recommit"));
    cr_assert_geq(auto0, 1, "%s", tu_http_body(resp));
    cr_assert_geq(re0, 0, "%s", tu_http_body(resp));
    free(resp);
    /* Idle for 3.5 s: re-commits every 100 ms x 10. */
    th_sleep_ms(3500);
    resp = scrape(port);
    double auto1 = sample(tu_http_body(resp), KIND("auto"));
    double re1 = sample(tu_http_body(resp), KIND("recommit"));
    cr_assert_geq(re1 - re0, 2, "re-commits %g -> %g: %s", re0, re1,
                  tu_http_body(resp));
    cr_assert_leq(re1 - re0, 5, "re-commits %g -> %g", re0, re1);
    /* librdkafka's auto-commit skips unchanged offsets: that is the gap
     * the re-commit fills. */
    cr_assert_leq(auto1 - auto0, 1, "auto %g -> %g", auto0, auto1);
    free(resp);
    /* What another client reads: the same offsets, not moved. */
    for (int p = 0; p < 2; p++)
        cr_assert_eq(th_committed(&c, "g-rc", "rc", p), 5, "partition %d", p);
    cr_assert_eq(th_log_count(&h, "re-commit failed"), 0, "%s", th_log(&h));
    /* New messages still commit as before, and re-commits follow. */
    th_produce(&c, "rc", 2, 3, -1, -1, NULL);
    cr_assert(th_wait_committed(&c, "g-rc", "rc", 2, 8, WAIT_MS), "%s",
              th_log(&h));
    th_sleep_ms(2500);
    for (int p = 0; p < 2; p++)
        cr_assert_eq(th_committed(&c, "g-rc", "rc", p), 8, "partition %d", p);
    resp = scrape(port);
    cr_assert_geq(sample(tu_http_body(resp), KIND("recommit")), re1 + 1, "%s",
                  tu_http_body(resp));
    free(resp);
    cr_assert_eq(th_host_stop(&h, SIGTERM, 30000), 0, "%s", th_log(&h));
    th_cluster_stop(&c);
}

Test(kstats, parser_skips_what_it_does_not_trust) {
    const char *json =
        "{\"name\":\"khost-p#consumer-1\",\"brokers\":{"
        "\"GroupCoordinator\":{\"name\":\"GroupCoordinator\",\"nodeid\":1,"
        "\"source\":\"logical\",\"rtt\":{\"cnt\":3,\"avg\":10,\"p99\":20}},"
        "\":0/internal\":{\"name\":\":0/internal\",\"nodeid\":-1,"
        "\"source\":\"internal\",\"rtt\":{\"cnt\":0}},"
        "\"b:9092/1\":{\"name\":\"b:9092/1\",\"nodeid\":1,"
        "\"source\":\"learned\",\"rtt\":{\"cnt\":4,\"avg\":1500,"
        "\"p99\":250000}},"
        "\"b:9092/2\":{\"name\":\"b:9092/2\",\"nodeid\":2,\"rtt\":{\"cnt\":0,"
        "\"avg\":0,\"p99\":0}},"
        "\"b:9092/3\":{\"nodeid\":3,\"rtt\":\"oops\"},"
        "\"b:9092/4\":7},"
        "\"topics\":{\"t\":{\"topic\":\"t\",\"partitions\":{"
        "\"0\":{\"partition\":0,\"fetchq_cnt\":7,\"fetchq_size\":700,"
        "\"consumer_lag\":12},"
        "\"1\":{\"partition\":1,\"fetchq_cnt\":\"x\"},"
        "\"-1\":{\"partition\":-1,\"fetchq_cnt\":0}}},"
        "\"u\":[1,2]}}";
    char err[256];
    kh_kstats *st = kafka_stats_parse(json, strlen(json), 42, err, sizeof err);
    cr_assert(st, "%s", err);
    cr_assert_eq(st->at_ms, 42);
    cr_assert_eq(st->n_brokers, 1);
    cr_assert_str_eq(st->brokers[0].name, "b:9092/1");
    cr_assert_float_eq(st->brokers[0].rtt_avg_s, 0.0015, 1e-9);
    cr_assert_float_eq(st->brokers[0].rtt_p99_s, 0.25, 1e-9);
    cr_assert_eq(st->n_parts, 2);
    for (size_t i = 0; i < st->n_parts; i++) {
        const kh_kstats_part *kp = &st->parts[i];
        cr_assert_str_eq(kp->topic, "t");
        if (kp->partition == 0) {
            cr_assert_eq(kp->fetchq_cnt, 7);
            cr_assert_eq(kp->fetchq_size, 700);
            cr_assert_eq(kp->consumer_lag, 12);
        } else {
            cr_assert_eq(kp->partition, 1);
            cr_assert_eq(kp->fetchq_cnt, -1);
            cr_assert_eq(kp->consumer_lag, -1);
        }
    }
    kafka_stats_free(st);
    cr_assert_null(kafka_stats_parse("[1]", 3, 0, err, sizeof err));
    cr_assert_str_eq(err, "not a JSON object");
    cr_assert_null(kafka_stats_parse("{\"brokers\":", 11, 0, err, sizeof err));
    st = kafka_stats_parse("{}", 2, 0, err, sizeof err);
    cr_assert(st && st->n_brokers == 0 && st->n_parts == 0);
    kafka_stats_free(st);
}
