/*
 * spare: spare workers (spare_workers) against the mock cluster. A spare
 * is a process past init that owns nothing; a killed worker's restart
 * takes it instead of spawning, and its slot starts a new spare. Checked
 * with a delivery ledger (nothing lost), the group (no rebalance) and the
 * host log (who served what).
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
#define FX(name) KHOST_FIXTURE_DIR "/" name ".so"

static char *host_ini(th_cluster *c, const char *plugin, int spares,
                      const char *extra_pipeline, const char *config) {
    char *s;
    cr_assert_neq(asprintf(&s,
                           "[host]\nbrokers = %s\n"
                           "[kafka]\nsession.timeout.ms = 6000\n"
                           "heartbeat.interval.ms = 500\n"
                           "[pipeline.p]\ntopics = t\ngroup = g-p\n"
                           "plugin = %s\nworkers = 2\nspare_workers = %d\n"
                           "%s\n[pipeline.p.config]\n%s\n",
                           c->bootstraps, plugin, spares,
                           extra_pipeline ? extra_pipeline : "", config),
                  -1);
    return s;
}

/* The pid of the latest "spare=N pid=P up" line, 0 when none. */
static pid_t spare_pid(th_host *h, int index) {
    char needle[64];
    snprintf(needle, sizeof needle, "pipeline=p spare=%d pid=", index);
    char *log = th_log(h);
    pid_t pid = 0;
    for (char *s = log; (s = strstr(s, needle)); s++) {
        char *end;
        long v = strtol(s + strlen(needle), &end, 10);
        if (!strncmp(end, " up: plugin", 11))
            pid = (pid_t)v;
    }
    free(log);
    return pid;
}

static void assert_all_handled(th_ledger *l, int parts, int per) {
    for (int p = 0; p < parts; p++)
        for (int o = 0; o < per; o++)
            cr_assert_gt(l->seen[p][o], 0, "partition %d offset %d lost", p, o);
}

/* Run the ledger check after the host stopped. */
static void assert_ledger(const char *rec, int parts, int per) {
    th_ledger l;
    th_ledger_init(&l, parts, per);
    th_ledger_add_file(&l, rec);
    assert_all_handled(&l, parts, per);
    th_ledger_free(&l);
}

/* One host of one pipeline (2 workers) against a topic "t" of 4
 * partitions holding `per` messages each. */
typedef struct env {
    th_cluster c;
    th_host h;
    char *dir, *rec, *ini, *so;
    int per; /* messages produced per partition so far */
} env;

/* plugin: FAULT, or a fixture copied to dir/plugin.so. The plugin
 * records to e->rec; config adds lines to its config section. */
static void env_start(env *e, int per, const char *plugin, int spares,
                      const char *extra_pipeline, const char *config) {
    th_cluster_start(&e->c, 1);
    th_create_topic(&e->c, "t", 4);
    th_produce(&e->c, "t", 4, per, -1, -1, NULL);
    e->per = per;
    e->dir = tu_tmpdir();
    cr_assert_neq(asprintf(&e->rec, "%s/p.rec", e->dir), -1);
    e->so = NULL;
    if (strcmp(plugin, FAULT)) {
        cr_assert_neq(asprintf(&e->so, "%s/plugin.so", e->dir), -1);
        tu_install(plugin, e->so);
    }
    char *cfg;
    cr_assert_neq(
        asprintf(&cfg, "record = %s\n%s", e->rec, config ? config : ""), -1);
    e->ini =
        host_ini(&e->c, e->so ? e->so : FAULT, spares, extra_pipeline, cfg);
    free(cfg);
    th_host_start(&e->h, e->dir, "host", e->ini);
}

/* Produce `more` per partition, then wait until every message so far
 * was handled. */
static void env_handled(env *e, int more) {
    if (more)
        th_produce(&e->c, "t", 4, more, -1, -1, NULL);
    e->per += more;
    const char *paths[] = {e->rec};
    cr_assert(th_wait_distinct(paths, 1, 4, e->per, 4 * e->per, 60000), "%s",
              th_log(&e->h));
}

/* Stop the host in order; with a ledger (fault's records), nothing
 * produced was lost. */
static void env_stop(env *e, bool ledger) {
    cr_assert_eq(th_host_stop(&e->h, SIGTERM, 20000), 0, "%s", th_log(&e->h));
    if (ledger)
        assert_ledger(e->rec, 4, e->per);
}

static void env_free(env *e) {
    th_host_free(&e->h);
    th_cluster_stop(&e->c);
    free(e->rec);
    free(e->ini);
    free(e->so);
}

/* khost CMD [FLAG] -c FILE: the running host's control socket. */
static tu_result khost_cmd(env *e, const char *cmd, const char *flag) {
    char *argv[6] = {KHOST_BUILD_DIR "/khost", (char *)cmd};
    int n = 2;
    if (flag)
        argv[n++] = (char *)flag;
    argv[n++] = "-c";
    argv[n++] = e->h.cfg_path;
    argv[n] = NULL;
    return tu_run(argv, 60000);
}

Test(spare, a_killed_worker_is_replaced_by_the_spare_process, .timeout = 90) {
    env e;
    env_start(&e, 1000, FAULT, 1, NULL, "slow_ms = 1");
    th_host *h = &e.h;
    const char *paths[] = {e.rec};
    cr_assert(th_wait_distinct(paths, 1, 4, 1000, 400, 40000), "%s", th_log(h));
    /* The spare starts once both workers are READY. */
    cr_assert(th_wait_log(h, " up: plugin", 1, 10000), "%s", th_log(h));
    pid_t spare = spare_pid(h, 2);
    cr_assert_gt(spare, 0, "%s", th_log(h));
    cr_assert(th_pid_running(spare));
    pid_t victim = th_worker_pid(h, 0);
    cr_assert_gt(victim, 0);
    cr_assert_neq(victim, spare);

    cr_assert_eq(kill(victim, SIGKILL), 0);
    cr_assert(th_wait_log(h, "crashed: killed by SIGKILL", 1, 10000), "%s",
              th_log(h));
    cr_assert(th_wait_log(h, "takes over", 1, 10000), "%s", th_log(h));
    /* Worker 0 is now the spare's process, which was given index 2 at
     * INIT; the slot's new spare is given the index the dead one had. */
    cr_assert_eq(th_worker_pid(h, 0), spare, "%s", th_log(h));
    cr_assert(th_wait_log(h, "its plugin was given worker_index=2", 1, 1000),
              "%s", th_log(h));
    cr_assert(th_wait_log(h, " up: plugin", 2, 10000), "%s", th_log(h));
    pid_t next = spare_pid(h, 2);
    cr_assert(next > 0 && next != spare && next != victim, "%s", th_log(h));
    char tag[64];
    snprintf(tag, sizeof tag, "worker p/0 pid=%d", (int)next);
    cr_assert(th_wait_log(h, tag, 1, 5000), "%s", th_log(h));
    /* The status document shows the spare and the takeover. */
    tu_result r = khost_cmd(&e, "status", "--json");
    cr_assert_eq(r.exit_code, 0, "%s %s", r.out, r.err);
    json_error_t jerr;
    json_t *doc = json_loads(r.out, 0, &jerr);
    cr_assert_not_null(doc, "%s: %s", jerr.text, r.out);
    json_t *pl = json_array_get(json_object_get(doc, "pipelines"), 0);
    json_t *spares = json_object_get(pl, "spares");
    cr_assert_eq(json_array_size(spares), 1, "%s", r.out);
    json_t *sp = json_array_get(spares, 0);
    cr_assert_str_eq(json_string_value(json_object_get(sp, "generation")),
                     "spare");
    cr_assert_str_eq(json_string_value(json_object_get(sp, "state")), "ready",
                     "%s", r.out);
    cr_assert_eq(json_integer_value(json_object_get(sp, "pid")), next);
    cr_assert_eq(json_integer_value(json_object_get(sp, "partitions")), 0);
    cr_assert_eq(json_array_size(json_object_get(pl, "workers")), 2);
    cr_assert_eq(json_integer_value(json_object_get(
                     json_object_get(pl, "counters"), "spare_takeovers")),
                 1, "%s", r.out);
    json_decref(doc);
    tu_result_free(&r);

    env_handled(&e, 0);
    /* A second kill, of the worker that was the spare, is served by the
     * new spare. */
    cr_assert_eq(kill(spare, SIGKILL), 0);
    cr_assert(th_wait_log(h, "takes over", 2, 10000), "%s", th_log(h));
    cr_assert_eq(th_worker_pid(h, 0), next, "%s", th_log(h));
    env_handled(&e, 200);
    cr_assert_eq(th_log_count(h, "rebalance #"), 1, "%s", th_log(h));
    cr_assert_eq(th_log_count(h, "revoked"), 0);
    cr_assert(th_wait_log(h, " up: plugin", 3, 10000), "%s", th_log(h));
    pid_t last = spare_pid(h, 2);
    env_stop(&e, true);
    /* The spare ran terminate and exited in order with the workers. */
    snprintf(tag, sizeof tag, "pipeline=p spare=2 pid=%d exited with status 0",
             (int)last);
    cr_assert_eq(th_log_count(h, tag), 1, "%s", th_log(h));
    cr_assert(th_wait_committed(&e.c, "g-p", "t", 4, 1200, 10000));
    env_free(&e);
}

Test(spare, a_dead_spare_is_restarted_and_counts_no_crash, .timeout = 90) {
    env e;
    env_start(&e, 500, FAULT, 1, NULL, NULL);
    th_host *h = &e.h;
    env_handled(&e, 0);
    cr_assert(th_wait_log(h, " up: plugin", 1, 10000), "%s", th_log(h));
    pid_t spare = spare_pid(h, 2);
    cr_assert_gt(spare, 0);
    cr_assert_eq(kill(spare, SIGKILL), 0);
    cr_assert(th_wait_log(h, "died idle: killed by SIGKILL", 1, 10000), "%s",
              th_log(h));
    cr_assert(th_wait_log(h, "spare=2 starting again in", 1, 5000), "%s",
              th_log(h));
    cr_assert(th_wait_log(h, " up: plugin", 2, 10000), "%s", th_log(h));
    /* Not a crash: nothing rewound, nothing counted, no restart. */
    cr_assert_eq(th_log_count(h, "crashed"), 0, "%s", th_log(h));
    cr_assert_eq(th_log_count(h, "rewound"), 0, "%s", th_log(h));
    cr_assert_eq(th_log_count(h, "restarting in"), 0, "%s", th_log(h));
    env_stop(&e, true);
    env_free(&e);
}

Test(spare, a_spare_that_cannot_start_does_not_stop_the_pipeline,
     .timeout = 90) {
    env e;
    /* The spare is the process given worker_index 2. */
    env_start(&e, 500, FAULT, 1, "max_restarts = 2\nmax_seconds = 60",
              "fail_init_index = 2");
    th_host *h = &e.h;
    cr_assert(th_wait_log(h, "spare=2 starting again in", 2, 20000), "%s",
              th_log(h));
    cr_assert(th_wait_log(h, "failing init on purpose", 2, 1000), "%s",
              th_log(h));
    env_handled(&e, 0);
    /* A killed worker is restarted as a new process: there is no spare to
     * take, and its own index (0) starts. */
    pid_t victim = th_worker_pid(h, 0);
    cr_assert_eq(kill(victim, SIGKILL), 0);
    cr_assert(th_wait_log(h, "crashed: killed by SIGKILL", 1, 10000), "%s",
              th_log(h));
    cr_assert(th_wait_log(h, " ready: plugin", 3, 10000), "%s", th_log(h));
    env_handled(&e, 100);
    cr_assert_eq(th_log_count(h, "takes over"), 0, "%s", th_log(h));
    /* The spare's failures count towards neither limit. */
    cr_assert_eq(th_log_count(h, "FAILED"), 0, "%s", th_log(h));
    env_stop(&e, true);
    env_free(&e);
}

Test(spare, no_spare_with_spare_workers_0, .timeout = 90) {
    env e;
    env_start(&e, 500, FAULT, 0, NULL, NULL);
    th_host *h = &e.h;
    env_handled(&e, 0);
    pid_t victim = th_worker_pid(h, 1);
    cr_assert_eq(kill(victim, SIGKILL), 0);
    cr_assert(th_wait_log(h, "crashed: killed by SIGKILL", 1, 10000), "%s",
              th_log(h));
    cr_assert(th_wait_log(h, " ready: plugin", 3, 10000), "%s", th_log(h));
    pid_t repl = th_worker_pid(h, 1);
    cr_assert(repl > 0 && repl != victim);
    env_handled(&e, 100);
    cr_assert_eq(th_log_count(h, "spare="), 0, "%s", th_log(h));
    env_stop(&e, true);
    env_free(&e);
}

/* A plugin swap replaces the spares with the new version's: a worker
 * killed after the reload is served by the new plugin. */
Test(spare, a_reload_replaces_the_spare, .timeout = 120) {
    env e;
    env_start(&e, 200, FX("fxr_v1"), 1, "reload_probation_ms = 0", NULL);
    th_host *h = &e.h;
    cr_assert(th_wait_log(h, " up: plugin fxr v1", 1, 30000), "%s", th_log(h));
    cr_assert(th_wait_log(h, "assigned 4 partition(s)", 1, 30000), "%s",
              th_log(h));
    pid_t old_spare = spare_pid(h, 2);

    tu_install(FX("fxr_v2"), e.so);
    tu_result r = khost_cmd(&e, "reload", NULL);
    cr_assert_eq(r.exit_code, 0, "%s %s", r.out, r.err);
    tu_result_free(&r);
    cr_assert(th_wait_log(h, "reloaded: plugin v1 -> v2", 1, 30000), "%s",
              th_log(h));
    cr_assert(th_wait_log(h, " up: plugin fxr v2", 1, 10000), "%s", th_log(h));
    cr_assert(!th_pid_running(old_spare), "the v1 spare still runs");
    pid_t victim = th_worker_pid(h, 1);
    cr_assert_eq(kill(victim, SIGKILL), 0);
    cr_assert(th_wait_log(h, "takes over", 1, 10000), "%s", th_log(h));
    /* The replacement's READY names v2. */
    char *log = th_log(h);
    char *last = NULL;
    for (char *s = log; (s = strstr(s, "pipeline=p worker=1 pid=")); s++)
        last = s;
    cr_assert_not_null(last);
    char *eol = strchr(last, '\n');
    if (eol)
        *eol = '\0';
    cr_assert(strstr(last, "ready: plugin fxr v2"), "%s", last);
    free(log);
    cr_assert_eq(th_log_count(h, "rebalance #"), 1, "%s", th_log(h));
    env_stop(&e, false);
    env_free(&e);
}

/* A reload that changes the log level in place: the spare was started
 * with the old one, so the reload itself replaces it (stopped in order,
 * started again), before any crash asks for it; the first restart after
 * the reload is then served by the new spare, not by a spawn. Without
 * the reload's refresh, that restart spawned and only then replaced the
 * spare. */
Test(spare, a_spare_started_before_an_in_place_change_is_replaced,
     .timeout = 90) {
    env e;
    env_start(&e, 300, FAULT, 1, NULL, NULL);
    th_host *h = &e.h;
    env_handled(&e, 0);
    cr_assert(th_wait_log(h, " up: plugin", 1, 10000), "%s", th_log(h));
    pid_t stale = spare_pid(h, 2);
    /* [host] log_level = debug, applied in place. */
    char *brk = strstr(e.ini, "[kafka]");
    cr_assert_not_null(brk);
    char *edited;
    cr_assert_neq(asprintf(&edited, "%.*slog_level = debug\n%s",
                           (int)(brk - e.ini), e.ini, brk),
                  -1);
    free(tu_write_file(e.dir, "host.ini", edited));
    free(edited);
    tu_result r = khost_cmd(&e, "reload", NULL);
    cr_assert_eq(r.exit_code, 0, "%s %s", r.out, r.err);
    tu_result_free(&r);
    cr_assert(th_wait_log(h, "reload: log_level info -> debug", 1, 10000), "%s",
              th_log(h));
    /* No crash yet: the reload replaces the stale spare by itself. */
    cr_assert(th_wait_log(h, "replacing it", 1, 10000), "%s", th_log(h));
    cr_assert(th_wait_log(h, " up: plugin", 2, 10000), "%s", th_log(h));
    cr_assert(!th_pid_running(stale), "%s", th_log(h));
    cr_assert_eq(th_log_count(h, "crashed"), 0, "%s", th_log(h));
    pid_t fresh = spare_pid(h, 2);
    cr_assert(fresh > 0 && fresh != stale);
    /* The first restart after the reload is the new spare's: no spawn
     * for the worker (debug shows "worker=0 started pid=" for one). */
    pid_t victim = th_worker_pid(h, 0);
    cr_assert_eq(kill(victim, SIGKILL), 0);
    cr_assert(th_wait_log(h, "takes over", 1, 10000), "%s", th_log(h));
    cr_assert_eq(th_worker_pid(h, 0), fresh, "%s", th_log(h));
    cr_assert_eq(th_log_count(h, "pipeline=p worker=0 started pid="), 0, "%s",
                 th_log(h));
    cr_assert_eq(th_log_count(h, "replacing it"), 1, "%s", th_log(h));
    env_handled(&e, 100);
    cr_assert_eq(th_log_count(h, "rebalance #"), 1, "%s", th_log(h));
    env_stop(&e, true);
    env_free(&e);
}

/* In-place reloads (rlimit_nofile flips each time, so every reload
 * replaces the spare) interleaved with SIGKILLs of the workers 0-7 ms
 * after the SIGHUP: a restart finds the spare stale, stopping, starting
 * again or ready, and in every case nothing is lost, the group does not
 * rebalance, the host stays up and no BUG is logged. */
Test(spare, in_place_reloads_interleaved_with_kills_lose_nothing,
     .timeout = 120) {
    env e;
    env_start(&e, 100, FAULT, 1, "rlimit_nofile = 1024", NULL);
    th_host *h = &e.h;
    env_handled(&e, 0);
    cr_assert(th_wait_log(h, " up: plugin", 1, 10000), "%s", th_log(h));
    char *at = strstr(e.ini, "rlimit_nofile = 1024");
    cr_assert_not_null(at);
    char *edited = strdup(e.ini);
    cr_assert_not_null(edited);
    char *digit = edited + (at - e.ini) + strlen("rlimit_nofile = 102");
    /* First 1025, settled; worker 1 still runs under 1024, and its crash
     * line names the limit it ran under, not the config's new one. */
    *digit = '5';
    free(tu_write_file(e.dir, "host.ini", edited));
    cr_assert_eq(kill(h->pid, SIGHUP), 0);
    cr_assert(th_wait_log(h, "reload applied", 1, 10000), "%s", th_log(h));
    cr_assert(th_wait_log(h, " up: plugin", 2, 10000), "%s", th_log(h));
    pid_t first = th_worker_pid(h, 1);
    cr_assert_eq(kill(first, SIGKILL), 0);
    char line[128];
    snprintf(line, sizeof line,
             "worker=1 pid=%d crashed: killed by SIGKILL (rlimit_nofile=1024)",
             (int)first);
    cr_assert(th_wait_log(h, line, 1, 10000), "%s", th_log(h));
    const int rounds = 13;
    for (int i = 1; i < rounds; i++) {
        *digit = (char)('4' + (i + 1) % 2);
        free(tu_write_file(e.dir, "host.ini", edited));
        pid_t victim = th_worker_pid(h, i % 2);
        cr_assert_eq(kill(h->pid, SIGHUP), 0);
        /* 0-7 ms after the SIGHUP: before, during or after the reload,
         * while the spare is replaced or once it is back. */
        usleep((useconds_t)(i * 3 % 8) * 1000);
        if (victim > 0)
            kill(victim, SIGKILL); /* it may be restarting still */
        cr_assert(th_wait_log(h, "reload applied", i + 1, 10000), "%s",
                  th_log(h));
        th_produce(&e.c, "t", 4, 20, -1, -1, NULL);
        e.per += 20;
        usleep(150 * 1000);
    }
    free(edited);
    env_handled(&e, 50);
    cr_assert(th_host_alive(h), "%s", th_log(h));
    cr_assert_eq(th_log_count(h, "rebalance #"), 1, "%s", th_log(h));
    cr_assert_eq(th_log_count(h, "BUG"), 0, "%s", th_log(h));
    cr_assert_eq(th_log_count(h, "INVARIANT"), 0, "%s", th_log(h));
    cr_assert_gt(th_log_count(h, "replacing it"), 0, "%s", th_log(h));
    cr_assert_gt(th_log_count(h, "crashed: killed by SIGKILL"), 0, "%s",
                 th_log(h));
    env_stop(&e, true);
    env_free(&e);
}
