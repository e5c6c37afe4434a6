/*
 * reload: plugin swaps and config reloads while consumption runs, against
 * the mock cluster. The fxr fixtures record "partition offset version".
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

#define FX(name) KHOST_FIXTURE_DIR "/" name ".so"

/* Copy src over dst: by rename (atomic, the recommended deploy) or in
 * place (open O_TRUNC and write, what a careless `cp` does). */
static void install(const char *src, const char *dst, bool in_place) {
    size_t len;
    char *bytes = tu_read_file(src, &len);
    cr_assert_not_null(bytes, "%s", src);
    char *tmp;
    cr_assert_neq(asprintf(&tmp, "%s.new", dst), -1);
    FILE *f = fopen(in_place ? dst : tmp, "w");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(bytes, 1, len, f), len);
    fclose(f);
    if (!in_place)
        cr_assert_eq(rename(tmp, dst), 0);
    free(tmp);
    free(bytes);
}

static char *pipeline(const char *dir, const char *name, const char *topic,
                      const char *extra) {
    char *s;
    cr_assert_neq(asprintf(&s,
                           "[pipeline.%s]\ntopics = %s\ngroup = g-%s\n"
                           "plugin = %s/plugin.so\nworkers = 2\n"
                           "poison_after = 50\nmax_restarts = 200\n%s\n"
                           "[pipeline.%s.config]\nrecord = %s/%s.rec\n",
                           name, topic, name, dir, extra ? extra : "", name,
                           dir, name),
                  -1);
    return s;
}

static void write_ini(th_host *h, th_cluster *c, const char *dir,
                      const char *pipelines) {
    char *s;
    cr_assert_neq(asprintf(&s,
                           "[host]\nbrokers = %s\n[kafka]\n"
                           "session.timeout.ms = 6000\n"
                           "heartbeat.interval.ms = 500\n%s",
                           c->bootstraps, pipelines),
                  -1);
    char *path = tu_write_file(dir, "host.ini", s);
    if (h)
        cr_assert_str_eq(path, h->cfg_path);
    free(path);
    free(s);
}

static tu_result reload_cmd(th_host *h) {
    return tu_run(
        (char *[]){KHOST_BUILD_DIR "/khost", "reload", "-c", h->cfg_path, NULL},
        60000);
}

/* Parse "p o version" lines: per (partition, offset) the count and the
 * version seen last; per partition, whether offsets only ever grew and no
 * older version followed a newer one. */
typedef struct rec {
    int seen[4][2000];
    char ver[4][2000][16];
    bool ordered[4];
    int lines;
} rec;

static rec *read_rec(const char *path) {
    rec *r = calloc(1, sizeof *r);
    for (int p = 0; p < 4; p++)
        r->ordered[p] = true;
    int last[4] = {-1, -1, -1, -1};
    char *text = tu_read_file(path, NULL);
    if (!text)
        return r;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        int p, o;
        char v[16];
        if (sscanf(line, "%d %d %15s", &p, &o, v) != 3 || p < 0 || p > 3 ||
            o < 0 || o >= 2000)
            continue;
        r->lines++;
        r->seen[p][o]++;
        strcpy(r->ver[p][o], v);
        if (o <= last[p])
            r->ordered[p] = false;
        last[p] = o;
    }
    free(text);
    return r;
}

static int rec_distinct(const char *path, int parts, int per) {
    rec *r = read_rec(path);
    int n = 0;
    for (int p = 0; p < parts; p++)
        for (int o = 0; o < per; o++)
            n += r->seen[p][o] > 0;
    free(r);
    return n;
}

static bool wait_rec(const char *path, int parts, int per, int timeout_ms) {
    for (int waited = 0; waited < timeout_ms; waited += 100) {
        if (rec_distinct(path, parts, per) >= parts * per)
            return true;
        th_sleep_ms(100);
    }
    return false;
}

static char *rec_path(const char *dir, const char *name) {
    char *s;
    cr_assert_neq(asprintf(&s, "%s/%s.rec", dir, name), -1);
    return s;
}

/* Common start: topic of 4 partitions, v1 installed, host running and
 * through its first 200 messages per partition. */
static void start(th_cluster *c, char **dir, th_host *h, const char *topic,
                  const char *extra) {
    th_cluster_start(c, 1);
    th_create_topic(c, topic, 4);
    th_produce(c, topic, 4, 200, -1, -1, NULL);
    *dir = tu_tmpdir();
    char *so;
    cr_assert_neq(asprintf(&so, "%s/plugin.so", *dir), -1);
    install(FX("fxr_v1"), so, false);
    free(so);
    write_ini(NULL, c, *dir, pipeline(*dir, "p", topic, extra));
    char *text;
    cr_assert_neq(asprintf(&text, "%s/host.ini", *dir), -1);
    char *content = tu_read_file(text, NULL);
    th_host_start(h, *dir, "host", content);
    free(content);
    free(text);
    cr_assert(wait_rec(rec_path(*dir, "p"), 4, 200, 40000), "%s", th_log(h));
}

Test(reload, v1_to_v2_under_production_no_loss_no_rebalance, .timeout = 120) {
    th_cluster c;
    char *dir;
    th_host h;
    start(&c, &dir, &h, "r1", NULL);
    char *so;
    cr_assert_neq(asprintf(&so, "%s/plugin.so", dir), -1);
    install(FX("fxr_v2"), so, false);
    /* Production goes on during the reload. */
    th_produce(&c, "r1", 4, 200, -1, -1, NULL);
    tu_result r = reload_cmd(&h);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    cr_assert(strstr(r.out, "ok: applied"), "%s", r.out);
    cr_assert(strstr(r.out, "1 plugin swap(s)"), "%s", r.out);
    /* It answers once the new workers are ready. */
    cr_assert(strstr(r.out, "pipeline=p: plugin fxr v2 ready on"), "%s", r.out);
    tu_result_free(&r);
    cr_assert(th_wait_log(&h, "reloaded: plugin v1 -> v2", 1, 30000), "%s",
              th_log(&h));
    th_produce(&c, "r1", 4, 400, -1, -1, NULL); /* offsets 400..799 */
    cr_assert(wait_rec(rec_path(dir, "p"), 4, 800, 60000), "%s", th_log(&h));
    cr_assert_eq(th_log_count(&h, "rebalance #"), 1, "%s", th_log(&h));
    cr_assert_eq(th_log_count(&h, "crashed"), 0);
    cr_assert_eq(th_host_stop(&h, SIGTERM, 20000), 0);
    rec *rc = read_rec(rec_path(dir, "p"));
    for (int p = 0; p < 4; p++) {
        cr_assert(rc->ordered[p], "partition %d out of order", p);
        bool saw_v2 = false;
        for (int o = 0; o < 800; o++) {
            cr_assert_eq(rc->seen[p][o], 1, "partition %d offset %d x%d", p, o,
                         rc->seen[p][o]);
            if (!strcmp(rc->ver[p][o], "v2"))
                saw_v2 = true;
            else
                cr_assert_not(saw_v2, "v1 after v2 at %d/%d", p, o);
            if (o >= 400)
                cr_assert_str_eq(rc->ver[p][o], "v2", "%d/%d after cutover", p,
                                 o);
        }
    }
    free(rc);
    th_host_free(&h);
    th_cluster_stop(&c);
    tu_rmdir(dir);
}

Test(reload, v2_init_failure_keeps_v1, .timeout = 120) {
    th_cluster c;
    char *dir;
    th_host h;
    start(&c, &dir, &h, "r2", NULL);
    char *so;
    cr_assert_neq(asprintf(&so, "%s/plugin.so", dir), -1);
    install(FX("fxr_v2_badinit"), so, false);
    tu_result r = reload_cmd(&h);
    /* The reload says it failed, and why: after the abandoned swap. */
    cr_assert_eq(r.exit_code, 1, "%s%s", r.out, r.err);
    cr_assert(strstr(r.out, "error: failed: pipeline=p: plugin swap "
                            "abandoned: new worker"),
              "%s", r.out);
    cr_assert(strstr(r.out, "refuses to start"), "%s", r.out);
    tu_result_free(&r);
    cr_assert(th_wait_log(&h, "reload ABANDONED before cutover", 1, 30000),
              "%s", th_log(&h));
    cr_assert_geq(th_log_count(&h, "refuses to start"), 1);
    th_produce(&c, "r2", 4, 200, -1, -1, NULL);
    cr_assert(wait_rec(rec_path(dir, "p"), 4, 400, 40000), "%s", th_log(&h));
    cr_assert_eq(th_host_stop(&h, SIGTERM, 20000), 0);
    rec *rc = read_rec(rec_path(dir, "p"));
    for (int p = 0; p < 4; p++)
        for (int o = 0; o < 400; o++) {
            cr_assert_eq(rc->seen[p][o], 1);
            cr_assert_str_eq(rc->ver[p][o], "v1");
        }
    free(rc);
    th_host_free(&h);
    th_cluster_stop(&c);
    tu_rmdir(dir);
}

Test(reload, crashing_v2_rolls_back_to_v1, .timeout = 120) {
    th_cluster c;
    char *dir;
    th_host h;
    start(&c, &dir, &h, "r3", "reload_probation_ms = 20000");
    char *so;
    cr_assert_neq(asprintf(&so, "%s/plugin.so", dir), -1);
    install(FX("fxr_v2_crash"), so, false);
    tu_result r = reload_cmd(&h);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    tu_result_free(&r);
    cr_assert(th_wait_log(&h, "reloaded: plugin v1 -> v2-crash", 1, 30000),
              "%s", th_log(&h));
    th_produce(&c, "r3", 4, 200, -1, -1, NULL);
    cr_assert(th_wait_log(&h, "ROLLED BACK: plugin v2-crash -> v1", 1, 30000),
              "%s", th_log(&h));
    cr_assert(wait_rec(rec_path(dir, "p"), 4, 400, 40000), "%s", th_log(&h));
    cr_assert(th_host_alive(&h));
    cr_assert_eq(th_log_count(&h, "rebalance #"), 1);
    cr_assert_eq(th_host_stop(&h, SIGTERM, 20000), 0);
    rec *rc = read_rec(rec_path(dir, "p"));
    for (int p = 0; p < 4; p++)
        for (int o = 0; o < 400; o++)
            cr_assert_str_eq(rc->ver[p][o], "v1", "%d/%d", p, o);
    free(rc);
    th_host_free(&h);
    th_cluster_stop(&c);
    tu_rmdir(dir);
}

Test(reload, cp_over_running_plugin_is_safe, .timeout = 120) {
    th_cluster c;
    char *dir;
    th_host h;
    start(&c, &dir, &h, "r5", NULL);
    char *so;
    cr_assert_neq(asprintf(&so, "%s/plugin.so", dir), -1);
    /* Overwrite the mapped file in place while workers run from it... */
    install(FX("fxr_v2"), so, true);
    th_produce(&c, "r5", 4, 200, -1, -1, NULL);
    cr_assert(wait_rec(rec_path(dir, "p"), 4, 400, 40000), "%s", th_log(&h));
    /* ...and kill a worker so that a restart loads the plugin again. */
    kill(th_worker_pid(&h, 0), SIGKILL);
    th_produce(&c, "r5", 4, 100, -1, -1, NULL);
    cr_assert(wait_rec(rec_path(dir, "p"), 4, 500, 40000), "%s", th_log(&h));
    tu_result r = reload_cmd(&h);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    tu_result_free(&r);
    cr_assert(th_wait_log(&h, "reloaded: plugin v1 -> v2", 1, 30000), "%s",
              th_log(&h));
    /* Only the deliberate kill: no worker crashed on the changed file. */
    cr_assert_eq(th_log_count(&h, "crashed"), 1, "%s", th_log(&h));
    cr_assert_eq(th_log_count(&h, "killed by SIGSEGV"), 0);
    cr_assert_eq(th_log_count(&h, "killed by SIGBUS"), 0);
    rec *rc = read_rec(rec_path(dir, "p"));
    for (int p = 0; p < 4; p++)
        for (int o = 0; o < 500; o++)
            cr_assert_str_eq(rc->ver[p][o], "v1",
                             "%d/%d ran the file's new bytes before reload", p,
                             o);
    free(rc);
    cr_assert_eq(th_host_stop(&h, SIGTERM, 20000), 0);
    th_host_free(&h);
    th_cluster_stop(&c);
    tu_rmdir(dir);
}

Test(reload, config_add_remove_and_invalid_rejected, .timeout = 150) {
    th_cluster c;
    char *dir;
    th_host h;
    start(&c, &dir, &h, "r6", NULL);
    th_create_topic(&c, "r6b", 4);
    th_produce(&c, "r6b", 4, 100, -1, -1, NULL);
    /* Add pipeline q. */
    char *both;
    cr_assert_neq(asprintf(&both, "%s%s", pipeline(dir, "p", "r6", NULL),
                           pipeline(dir, "q", "r6b", NULL)),
                  -1);
    write_ini(&h, &c, dir, both);
    tu_result r = reload_cmd(&h);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    cr_assert(strstr(r.out, "1 added"), "%s", r.out);
    tu_result_free(&r);
    cr_assert(wait_rec(rec_path(dir, "q"), 4, 100, 40000), "%s", th_log(&h));

    /* An invalid file is rejected whole, with FILE:LINE errors. */
    char *bad;
    cr_assert_neq(asprintf(&bad, "%s%s", pipeline(dir, "p", "r6", NULL),
                           pipeline(dir, "q", "r6b", "workerz = 3")),
                  -1);
    write_ini(&h, &c, dir, bad);
    r = reload_cmd(&h);
    cr_assert_eq(r.exit_code, 2, "%s%s", r.out, r.err);
    cr_assert(strstr(r.err, "unknown key 'workerz'"), "%s", r.err);
    cr_assert(strstr(r.err, "host.ini:"), "%s", r.err);
    tu_result_free(&r);
    /* The host still runs both pipelines. */
    th_produce(&c, "r6", 4, 100, -1, -1, NULL);
    th_produce(&c, "r6b", 4, 100, -1, -1, NULL);
    cr_assert(wait_rec(rec_path(dir, "p"), 4, 300, 40000), "%s", th_log(&h));
    cr_assert(wait_rec(rec_path(dir, "q"), 4, 200, 40000), "%s", th_log(&h));

    /* Remove p: it drains and stops; q goes on. */
    write_ini(&h, &c, dir, pipeline(dir, "q", "r6b", NULL));
    r = reload_cmd(&h);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    cr_assert(strstr(r.out, "1 removed"), "%s", r.out);
    tu_result_free(&r);
    cr_assert(th_wait_log(&h, "pipeline=p stopped", 1, 20000));
    th_produce(&c, "r6b", 4, 100, -1, -1, NULL);
    cr_assert(wait_rec(rec_path(dir, "q"), 4, 300, 40000), "%s", th_log(&h));
    cr_assert(th_wait_committed(&c, "g-p", "r6", 4, 300, 20000),
              "p did not commit on removal");
    r = tu_run(
        (char *[]){KHOST_BUILD_DIR "/khost", "status", "-c", h.cfg_path, NULL},
        10000);
    cr_assert(strstr(r.out, "pipeline=q ") && !strstr(r.out, "pipeline=p "),
              "%s", r.out);
    tu_result_free(&r);
    cr_assert_eq(th_host_stop(&h, SIGTERM, 20000), 0);
    th_host_free(&h);
    th_cluster_stop(&c);
    tu_rmdir(dir);
}

Test(reload, ten_sighups_in_a_second_end_on_latest_config, .timeout = 120) {
    th_cluster c;
    char *dir;
    th_host h;
    start(&c, &dir, &h, "r7", NULL);
    for (int i = 0; i < 10; i++) {
        char extra[64];
        snprintf(extra, sizeof extra, "max_restarts = %d", 100 + i);
        write_ini(&h, &c, dir, pipeline(dir, "p", "r7", extra));
        kill(h.pid, SIGHUP);
        th_sleep_ms(90);
    }
    /* The last one adds a second pipeline. */
    th_create_topic(&c, "r7b", 2);
    char *both;
    cr_assert_neq(asprintf(&both, "%s%s", pipeline(dir, "p", "r7", NULL),
                           pipeline(dir, "z", "r7b", NULL)),
                  -1);
    write_ini(&h, &c, dir, both);
    kill(h.pid, SIGHUP);
    th_sleep_ms(3000);
    cr_assert(th_host_alive(&h), "%s", th_log(&h));
    tu_result r = tu_run(
        (char *[]){KHOST_BUILD_DIR "/khost", "status", "-c", h.cfg_path, NULL},
        10000);
    cr_assert(strstr(r.out, "pipeline=z "), "%s\n%s", r.out, th_log(&h));
    tu_result_free(&r);
    th_produce(&c, "r7", 4, 100, -1, -1, NULL);
    cr_assert(wait_rec(rec_path(dir, "p"), 4, 300, 40000), "%s", th_log(&h));
    cr_assert_eq(th_host_stop(&h, SIGTERM, 20000), 0);
    th_host_free(&h);
    th_cluster_stop(&c);
    tu_rmdir(dir);
}

Test(reload, watch_reloads_when_the_plugin_file_changes, .timeout = 120) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "r8", 2);
    th_produce(&c, "r8", 2, 100, -1, -1, NULL);
    char *dir = tu_tmpdir();
    char *so;
    cr_assert_neq(asprintf(&so, "%s/plugin.so", dir), -1);
    install(FX("fxr_v1"), so, false);
    char *ini;
    cr_assert_neq(asprintf(&ini,
                           "[host]\nbrokers = %s\nwatch = true\n[kafka]\n"
                           "session.timeout.ms = 6000\n%s",
                           c.bootstraps, pipeline(dir, "p", "r8", NULL)),
                  -1);
    th_host h;
    th_host_start(&h, dir, "host", ini);
    cr_assert(wait_rec(rec_path(dir, "p"), 2, 100, 40000), "%s", th_log(&h));
    /* A deploy by rename, and no reload command: the watch notices. */
    install(FX("fxr_v2"), so, false);
    cr_assert(th_wait_log(&h, "reloaded: plugin v1 -> v2", 1, 20000), "%s",
              th_log(&h));
    cr_assert_eq(th_log_count(&h, "watched file changed"), 1,
                 "one reload for one deploy: %s", th_log(&h));
    th_produce(&c, "r8", 2, 100, -1, -1, NULL);
    cr_assert(wait_rec(rec_path(dir, "p"), 2, 200, 40000), "%s", th_log(&h));
    rec *rc = read_rec(rec_path(dir, "p"));
    for (int p = 0; p < 2; p++)
        for (int o = 100; o < 200; o++)
            cr_assert_str_eq(rc->ver[p][o], "v2");
    free(rc);
    cr_assert_eq(th_host_stop(&h, SIGTERM, 20000), 0);
    th_host_free(&h);
    th_cluster_stop(&c);
    tu_rmdir(dir);
}

Test(reload, canary_moves_one_partition_then_all, .timeout = 120) {
    th_cluster c;
    char *dir;
    th_host h;
    start(&c, &dir, &h, "r4",
          "reload_strategy = canary\nreload_probation_ms = 4000");
    char *so;
    cr_assert_neq(asprintf(&so, "%s/plugin.so", dir), -1);
    install(FX("fxr_v2"), so, false);
    tu_result r = reload_cmd(&h);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    tu_result_free(&r);
    cr_assert(th_wait_log(&h, "canary: r4 partition=", 1, 30000), "%s",
              th_log(&h));
    /* During the probation: one partition on v2, three on v1. */
    th_produce(&c, "r4", 4, 100, -1, -1, NULL); /* offsets 200..299 */
    cr_assert(wait_rec(rec_path(dir, "p"), 4, 300, 20000), "%s", th_log(&h));
    cr_assert_eq(th_log_count(&h, "canary passed"), 0,
                 "probation ended too early: %s", th_log(&h));
    rec *rc = read_rec(rec_path(dir, "p"));
    int on_v2 = 0;
    for (int p = 0; p < 4; p++) {
        bool v2 = !strcmp(rc->ver[p][299], "v2");
        on_v2 += v2;
        for (int o = 200; o < 300; o++)
            cr_assert_str_eq(rc->ver[p][o], v2 ? "v2" : "v1",
                             "partition %d mixed versions", p);
    }
    cr_assert_eq(on_v2, 1, "%d partitions on the canary", on_v2);
    free(rc);
    /* Then the rest follow. */
    cr_assert(th_wait_log(&h, "canary passed", 1, 20000), "%s", th_log(&h));
    cr_assert(th_wait_log(&h, "reloaded: plugin v1 -> v2", 1, 20000), "%s",
              th_log(&h));
    th_produce(&c, "r4", 4, 100, -1, -1, NULL);
    cr_assert(wait_rec(rec_path(dir, "p"), 4, 400, 20000), "%s", th_log(&h));
    rc = read_rec(rec_path(dir, "p"));
    for (int p = 0; p < 4; p++) {
        cr_assert(rc->ordered[p], "partition %d out of order", p);
        for (int o = 0; o < 400; o++)
            cr_assert_eq(rc->seen[p][o], 1, "%d/%d x%d", p, o, rc->seen[p][o]);
        for (int o = 300; o < 400; o++)
            cr_assert_str_eq(rc->ver[p][o], "v2");
    }
    free(rc);
    cr_assert_eq(th_log_count(&h, "rebalance #"), 1);
    cr_assert_eq(th_host_stop(&h, SIGTERM, 20000), 0);
    th_host_free(&h);
    th_cluster_stop(&c);
    tu_rmdir(dir);
}
