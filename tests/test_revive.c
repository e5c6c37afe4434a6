/*
 * revive: a FAILED pipeline comes back, end to end (issue 11, "Reload
 * tells the truth").
 *
 * A pipeline whose plugin fails init more than max_restarts times within
 * max_seconds is FAILED (on_exhausted = pause): its partitions pause and
 * nothing past the acked offsets is committed. Before, nothing but a
 * restart of the whole host cleared that. Now:
 *  - a reload with the plugin fixed restarts it, `khost reload` exits 0
 *    once its workers are ready, and its backlog is handled (ledger);
 *  - `khost restart NAME` does the same without a config change;
 *  - status says every pipeline FAILED, and the exit line names it;
 *  - a reload or restart whose pipeline still fails to start exits 1 with
 *    the plugin's own error; an unknown pipeline exits 2;
 *  - a client naming one config file does not steer the host of another
 *    that answers on the same socket path.
 */
#define _GNU_SOURCE
#include "harness.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define FX(name) KHOST_FIXTURE_DIR "/" name ".so"
#define FAULT KHOST_BUILD_DIR "/plugins/fault.so"
#define KHOST KHOST_BUILD_DIR "/khost"
#define LOG_WAIT_MS 60000
#define PARTS 4
#define PER 50

static th_host h;
static char current_dir[256];

static void kill_leftovers(void) {
    if (h.pid)
        th_host_stop(&h, SIGKILL, 5000);
    if (current_dir[0])
        tu_rmdir(current_dir);
    current_dir[0] = '\0';
}

TestSuite(revive, .fini = kill_leftovers);

static tu_result khost(const char *a1, const char *a2, const char *a3,
                       const char *a4) {
    return tu_run(
        (char *[]){KHOST, (char *)a1, (char *)a2, (char *)a3, (char *)a4, NULL},
        LOG_WAIT_MS);
}

/* A host whose one pipeline loads dir/plugin.so, a copy of an init-failing
 * fixture, so it FAILs after three failed starts (0.3 s of backoff). The
 * fault plugin, when installed there, records what it handles. */
static char *start_failing(th_cluster *c, const char *topic) {
    char *dir = tu_tmpdir();
    snprintf(current_dir, sizeof current_dir, "%s", dir);
    th_cluster_start(c, 1);
    th_create_topic(c, topic, PARTS);
    th_produce(c, topic, PARTS, PER, -1, -1, NULL);
    char *so, *rec, *ini;
    cr_assert_neq(asprintf(&so, "%s/plugin.so", dir), -1);
    cr_assert_neq(asprintf(&rec, "%s/rec.jsonl", dir), -1);
    tu_cp_over(FX("fx_init_fails"), so);
    cr_assert_neq(asprintf(&ini,
                           "[host]\nbrokers = %s\n"
                           "[kafka]\nsession.timeout.ms = 6000\n"
                           "heartbeat.interval.ms = 500\n"
                           "[pipeline.p]\ntopics = %s\ngroup = g-%s\n"
                           "plugin = %s\nworkers = 2\n"
                           "max_restarts = 2\nmax_seconds = 60\n"
                           "on_exhausted = pause\n"
                           "[pipeline.p.config]\nrecord = %s\n",
                           c->bootstraps, topic, topic, so, rec),
                  -1);
    th_host_start(&h, dir, "host", ini);
    free(ini);
    free(rec);
    free(so);
    cr_assert(th_wait_log(&h, "pipeline=p FAILED", 1, LOG_WAIT_MS), "%s",
              th_log(&h));
    return dir;
}

/* Wait until `khost status` shows the pipeline FAILED. */
static bool wait_failed_status(int timeout_ms) {
    int64_t deadline = th_now_ms() + timeout_ms;
    while (th_now_ms() < deadline) {
        tu_result r = khost("status", "-c", h.cfg_path, NULL);
        bool failed = r.out && strstr(r.out, " FAILED\n");
        tu_result_free(&r);
        if (failed)
            return true;
        th_sleep_ms(100);
    }
    return false;
}

static void install_fault(const char *dir) {
    char *so;
    cr_assert_neq(asprintf(&so, "%s/plugin.so", dir), -1);
    tu_cp_over(FAULT, so);
    free(so);
}

/* Every message of the backlog handled (each at least once). */
static void assert_backlog_handled(const char *dir) {
    char *rec;
    cr_assert_neq(asprintf(&rec, "%s/rec.jsonl", dir), -1);
    const char *paths[] = {rec};
    cr_assert(th_wait_distinct(paths, 1, PARTS, PER, PARTS * PER, LOG_WAIT_MS),
              "the revived pipeline did not handle its backlog:\n%s",
              th_log(&h));
    th_ledger l;
    th_ledger_init(&l, PARTS, PER);
    th_ledger_add_file(&l, rec);
    cr_log_info("revived: %d distinct of %d, %d duplicates",
                th_ledger_distinct(&l), PARTS * PER, th_ledger_duplicates(&l));
    cr_assert_eq(th_ledger_distinct(&l), PARTS * PER);
    cr_assert_eq(l.bad_lines, 0);
    th_ledger_free(&l);
    free(rec);
}

static void end_test(th_cluster *c, char *dir) {
    th_host_free(&h);
    memset(&h, 0, sizeof h);
    th_cluster_stop(c);
    tu_rmdir(dir);
    free(dir);
    current_dir[0] = '\0';
}

Test(revive, status_and_exit_line_say_failed, .timeout = 120) {
    th_cluster c;
    char *dir = start_failing(&c, "rv-status");
    tu_result r = khost("status", "-c", h.cfg_path, NULL);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    cr_assert(strstr(r.out, "pipeline=p plugin="), "%s", r.out);
    cr_assert(strstr(r.out, " FAILED\n"), "%s", r.out);
    cr_assert(strstr(r.out, "host: all 1 pipeline(s) FAILED"), "%s", r.out);
    tu_result_free(&r);
    cr_assert_eq(th_host_stop(&h, SIGTERM, LOG_WAIT_MS), 0, "%s", th_log(&h));
    cr_assert(th_log_count(&h, "khost stopped (exit status 0); pipeline p "
                               "FAILED") == 1,
              "%s", th_log(&h));
    end_test(&c, dir);
}

Test(revive, reload_with_fixed_plugin_revives, .timeout = 180) {
    th_cluster c;
    char *dir = start_failing(&c, "rv-reload");
    /* Still broken: the reload restarts it, and says it failed, why, and
     * exits 1. */
    tu_result r = khost("reload", "-c", h.cfg_path, NULL);
    cr_assert_eq(r.exit_code, 1, "%s%s", r.out, r.err);
    cr_assert(strstr(r.out, "error: failed: pipeline=p: worker="), "%s", r.out);
    cr_assert(strstr(r.out, "database unreachable: connection refused"), "%s",
              r.out);
    tu_result_free(&r);
    cr_assert(wait_failed_status(LOG_WAIT_MS), "%s", th_log(&h));
    /* Fixed: exit 0 once its workers are ready, then the backlog. */
    install_fault(dir);
    r = khost("reload", "-c", h.cfg_path, NULL);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    cr_assert(strstr(r.out, "ok: applied: "), "%s", r.out);
    cr_assert(strstr(r.out, "1 restarted"), "%s", r.out);
    cr_assert(strstr(r.out, "pipeline=p: 2 worker(s) ready: plugin fault"),
              "%s", r.out);
    tu_result_free(&r);
    assert_backlog_handled(dir);
    r = khost("status", "-c", h.cfg_path, NULL);
    cr_assert_not(strstr(r.out, "FAILED"), "%s", r.out);
    cr_assert(strstr(r.out, "last-reload: applied: "), "%s", r.out);
    tu_result_free(&r);
    cr_assert_eq(th_host_stop(&h, SIGTERM, LOG_WAIT_MS), 0, "%s", th_log(&h));
    cr_assert(th_log_count(&h, "khost stopped (exit status 0)\n") == 1, "%s",
              th_log(&h));
    end_test(&c, dir);
}

Test(revive, restart_command_revives, .timeout = 180) {
    th_cluster c;
    char *dir = start_failing(&c, "rv-restart");
    tu_result r = khost("restart", "nope", "-c", h.cfg_path);
    cr_assert_eq(r.exit_code, 2, "%s%s", r.out, r.err);
    cr_assert(strstr(r.out, "error: rejected: no pipeline named 'nope'"), "%s",
              r.out);
    tu_result_free(&r);
    install_fault(dir);
    r = khost("restart", "p", "-c", h.cfg_path);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    cr_assert(strstr(r.out, "ok: applied: pipeline p restarted; pipeline=p: "
                            "2 worker(s) ready"),
              "%s", r.out);
    tu_result_free(&r);
    assert_backlog_handled(dir);
    cr_assert_eq(th_host_stop(&h, SIGTERM, LOG_WAIT_MS), 0, "%s", th_log(&h));
    end_test(&c, dir);
}

Test(revive, client_of_another_file_is_not_answered, .timeout = 120) {
    th_cluster c;
    char *dir = start_failing(&c, "rv-other");
    /* Another config file that names the same socket path: the host there
     * runs host.ini, so it answers "elsewhere" and the client tells. */
    char *other, *ini;
    cr_assert_neq(asprintf(&ini,
                           "[host]\nbrokers = mock\n[pipeline.q]\n"
                           "topics = q\ngroup = q\nplugin = %s\n",
                           FAULT),
                  -1);
    other = tu_write_file(dir, "other.ini", ini);
    free(ini);
    /* Our host's own socket, found through its file: */
    tu_result r = khost("status", "-c", h.cfg_path, NULL);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    tu_result_free(&r);
    /* The same socket (--socket), but -c names the other file. */
    char *ours = NULL;
    char *log = th_log(&h);
    char *at = strstr(log, "control socket ");
    cr_assert(at, "%s", log);
    at += strlen("control socket ");
    ours = strndup(at, strcspn(at, " \n"));
    free(log);
    r = tu_run((char *[]){KHOST, "reload", "-c", other, "--socket", ours, NULL},
               LOG_WAIT_MS);
    cr_assert_eq(r.exit_code, 1, "%s%s", r.out, r.err);
    cr_assert(strstr(r.err, "no khost answers (tried "), "%s", r.err);
    cr_assert(strstr(r.err, ": this khost runs "), "%s", r.err);
    cr_assert_eq(th_log_count(&h, "reload requested"), 0, "%s", th_log(&h));
    tu_result_free(&r);
    free(ours);
    free(other);
    th_host_stop(&h, SIGTERM, LOG_WAIT_MS);
    end_test(&c, dir);
}

/* A client waiting for a reload's outcome when the host is stopped gets a
 * clear answer (and the host frees nothing twice: the sanitizer and
 * valgrind runs check that). */
Test(revive, waiting_client_is_answered_at_shutdown, .timeout = 120) {
    th_cluster c;
    char *dir = tu_tmpdir();
    snprintf(current_dir, sizeof current_dir, "%s", dir);
    th_cluster_start(&c, 1);
    char *so, *ini;
    cr_assert_neq(asprintf(&so, "%s/plugin.so", dir), -1);
    tu_cp_over(FX("fx_good"), so);
    cr_assert_neq(asprintf(&ini,
                           "[host]\nbrokers = %s\n[pipeline.p]\ntopics = "
                           "rv-stop\ngroup = g-rv-stop\nplugin = %s\n",
                           c.bootstraps, so),
                  -1);
    th_host_start(&h, dir, "host", ini);
    cr_assert(th_wait_log(&h, " ready: plugin", 1, LOG_WAIT_MS), "%s",
              th_log(&h));
    /* The new plugin's init takes 1.5 s: the reload waits that long. */
    tu_cp_over(FX("fxs_slow_init"), so);
    char *out;
    cr_assert_neq(asprintf(&out, "%s/reload.out", dir), -1);
    pid_t cli = fork();
    cr_assert_geq(cli, 0);
    if (cli == 0) {
        int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fd, 1);
        execl(KHOST, "khost", "reload", "-c", h.cfg_path, (char *)NULL);
        _exit(127);
    }
    cr_assert(th_wait_log(&h, "reload accepted", 1, LOG_WAIT_MS), "%s",
              th_log(&h));
    cr_assert_eq(th_host_stop(&h, SIGTERM, LOG_WAIT_MS), 0, "%s", th_log(&h));
    int st;
    cr_assert_eq(waitpid(cli, &st, 0), cli);
    char *text = tu_read_file(out, NULL);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 1, "reload exited %d: %s",
              WIFEXITED(st) ? WEXITSTATUS(st) : -1, text);
    cr_assert(strstr(text, "error: khost is shutting down before the reload "
                           "settled"),
              "%s", text);
    free(text);
    free(out);
    free(so);
    free(ini);
    end_test(&c, dir);
}
