/*
 * probe: check-config, run and reload load plugins in a spawned
 * `khost probe-plugin` child, never in the host itself. The fx_ctor_*
 * fixtures' ELF constructors record their pid, crash or hang.
 */
#define _GNU_SOURCE
#include "harness.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define KHOST KHOST_BUILD_DIR "/khost"
#define FX(name) KHOST_FIXTURE_DIR "/" name ".so"

/* The host a test started, SIGKILLed by pid after a failed assertion so
 * that no host (perhaps hung in a constructor) outlives its test. */
static th_host host;

static void stop_left_host(void) {
    if (host.pid)
        th_host_stop(&host, SIGKILL, 5000);
}

/* A config with one pipeline whose plugin key is on line 6. */
static char *one_pipeline_ini(const char *dir, const char *brokers,
                              const char *plugin) {
    char *ini;
    cr_assert_neq(asprintf(&ini,
                           "[host]\nbrokers = %s\n"
                           "[pipeline.p]\ntopics = t\ngroup = g\n"
                           "plugin = %s\nworkers = 1\n",
                           brokers, plugin),
                  -1);
    char *path = tu_write_file(dir, "probe.ini", ini);
    cr_assert_not_null(path);
    free(ini);
    return path;
}

/* Like tu_run, but also gives the pid of the khost process it ran, which
 * is the pid a plugin constructor would see if it ran in that process. */
static tu_result run_with_pid(const char *dir, char *const argv[],
                              pid_t *pid_out, int timeout_ms) {
    char *out, *err;
    cr_assert_neq(asprintf(&out, "%s/run.out", dir), -1);
    cr_assert_neq(asprintf(&err, "%s/run.err", dir), -1);
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        int o = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int e = open(err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(o, 1);
        dup2(e, 2);
        tu_execv(argv[0], argv);
        _exit(127);
    }
    *pid_out = pid;
    int status = 0;
    int64_t deadline = th_now_ms() + timeout_ms;
    while (waitpid(pid, &status, WNOHANG) == 0) {
        if (th_now_ms() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            break;
        }
        th_sleep_ms(20);
    }
    tu_result r = {.exit_code = WIFEXITED(status) ? WEXITSTATUS(status)
                                                  : 128 + WTERMSIG(status),
                   .out = tu_read_file(out, NULL),
                   .err = tu_read_file(err, NULL)};
    if (!r.out)
        r.out = strdup("");
    if (!r.err)
        r.err = strdup("");
    free(out);
    free(err);
    return r;
}

/* The marker file: one "PID PPID CMDLINE" line per constructor run. */
typedef struct marks {
    int n;
    int in_pid;         /* lines whose PID is the given process */
    int probe_children; /* probe-plugin runs whose parent is it */
} marks;

static marks read_marks(const char *path, pid_t who) {
    marks m = {0};
    char *text = tu_read_file(path, NULL);
    if (!text)
        return m;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        int pid, ppid;
        if (sscanf(line, "%d %d", &pid, &ppid) != 2)
            continue;
        m.n++;
        if (pid == (int)who)
            m.in_pid++;
        if (ppid == (int)who && strstr(line, "probe-plugin"))
            m.probe_children++;
    }
    free(text);
    return m;
}

/* stderr split into lines, in place. */
static size_t lines_of(char *text, char **lines, size_t max) {
    size_t n = 0;
    for (char *l = strtok(text, "\n"); l && n < max; l = strtok(NULL, "\n"))
        lines[n++] = l;
    return n;
}

Test(probe, check_config_runs_constructor_in_a_child, .timeout = 60) {
    char *dir = tu_tmpdir();
    char *marker;
    cr_assert_neq(asprintf(&marker, "%s/marker", dir), -1);
    setenv("KHOST_FX_CTOR_MARKER", marker, 1);
    char *cfg = one_pipeline_ini(dir, "127.0.0.1:9", FX("fx_ctor_marker"));
    pid_t pid;
    tu_result r = run_with_pid(
        dir, (char *[]){KHOST, "check-config", "-c", cfg, NULL}, &pid, 30000);
    cr_assert_eq(r.exit_code, 0, "exit %d\n%s%s", r.exit_code, r.out, r.err);
    cr_assert(strstr(r.out, "plugin fx_ctor_marker 0.0.1 (ABI 1."), "%s",
              r.out);
    cr_assert(strstr(r.out, "OK, 1 pipeline"), "%s", r.out);
    marks m = read_marks(marker, pid);
    cr_assert_geq(m.n, 1, "the constructor never ran");
    cr_assert_eq(m.in_pid, 0,
                 "the plugin's constructor ran inside check-config (pid %d)",
                 (int)pid);
    cr_assert_eq(m.probe_children, 1, "%s", tu_read_file(marker, NULL));
    tu_result_free(&r);
    unsetenv("KHOST_FX_CTOR_MARKER");
    tu_rmdir(dir);
    free(cfg);
    free(marker);
    free(dir);
}

Test(probe, run_and_reload_run_constructor_in_a_child, .timeout = 120,
     .fini = stop_left_host) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "t", 2);
    th_produce(&c, "t", 2, 50, -1, -1, NULL);
    char *dir = tu_tmpdir();
    char *marker;
    cr_assert_neq(asprintf(&marker, "%s/marker", dir), -1);
    setenv("KHOST_FX_CTOR_MARKER", marker, 1);
    char *ini;
    cr_assert_neq(asprintf(&ini,
                           "[host]\nbrokers = %s\n[kafka]\n"
                           "session.timeout.ms = 6000\n"
                           "[pipeline.m]\ntopics = t\ngroup = g-m\n"
                           "plugin = %s\nworkers = 1\n",
                           c.bootstraps, FX("fx_ctor_marker")),
                  -1);
    th_host_start(&host, dir, "host", ini);
    /* The worker loads the plugin too: once it is ready, the startup
     * check is long over. */
    cr_assert(th_wait_log(&host, "ready", 1, 30000), "%s", th_log(&host));
    marks m = read_marks(marker, host.pid);
    cr_assert_eq(m.in_pid, 0,
                 "khost run ran the plugin's constructor in the host (pid "
                 "%d):\n%s",
                 (int)host.pid, tu_read_file(marker, NULL));
    cr_assert_eq(m.probe_children, 1, "%s", tu_read_file(marker, NULL));

    tu_result r =
        tu_run((char *[]){KHOST, "reload", "-c", host.cfg_path, NULL}, 60000);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    cr_assert(strstr(r.out, "ok: applied"), "%s", r.out);
    tu_result_free(&r);
    m = read_marks(marker, host.pid);
    cr_assert_eq(
        m.in_pid, 0,
        "reload ran the plugin's constructor in the host (pid %d):\n%s",
        (int)host.pid, tu_read_file(marker, NULL));
    cr_assert_eq(m.probe_children, 2, "%s", tu_read_file(marker, NULL));
    cr_assert(th_host_alive(&host), "%s", th_log(&host));
    cr_assert_eq(th_host_stop(&host, SIGTERM, 20000), 0, "%s", th_log(&host));
    unsetenv("KHOST_FX_CTOR_MARKER");
    th_host_free(&host);
    th_cluster_stop(&c);
    tu_rmdir(dir);
    free(ini);
    free(marker);
    free(dir);
}

Test(probe, check_config_and_run_report_a_crashing_constructor, .timeout = 60) {
    char *dir = tu_tmpdir();
    char *cfg = one_pipeline_ini(dir, "127.0.0.1:9", FX("fx_ctor_crash"));
    const char *cmds[] = {"check-config", "run"};
    for (size_t k = 0; k < 2; k++) {
        int64_t t0 = th_now_ms();
        tu_result r =
            tu_run((char *[]){KHOST, (char *)cmds[k], "-c", cfg, NULL}, 30000);
        int64_t took = th_now_ms() - t0;
        cr_assert_eq(r.exit_code, 2, "%s: exit %d\n%s", cmds[k], r.exit_code,
                     r.err);
        cr_assert_str_eq(r.out, "", "%s printed: %s", cmds[k], r.out);
        char *lines[8];
        size_t n = lines_of(r.err, lines, 8);
        cr_assert_eq(n, 2, "%s: expected the error and a summary:\n%s", cmds[k],
                     r.err);
        char want[1024];
        snprintf(want, sizeof want,
                 "%s:6: plugin of [pipeline.p]: %s: plugin crashed while "
                 "loading (SIGSEGV)",
                 cfg, FX("fx_ctor_crash"));
        cr_assert_str_eq(lines[0], want, "%s", cmds[k]);
        snprintf(want, sizeof want, "%s: invalid, 1 error%s", cfg,
                 k == 1 ? "; not starting" : "");
        cr_assert_str_eq(lines[1], want);
        /* Well under the 10 s bound: a crash is reported when it happens. */
        cr_assert_lt(took, 9000, "%s took %lld ms", cmds[k], (long long)took);
        tu_result_free(&r);
    }
    tu_rmdir(dir);
    free(cfg);
    free(dir);
}

static char *recorder(const char *dir, const char *name, const char *topic,
                      const char *plugin) {
    char *s;
    cr_assert_neq(asprintf(&s,
                           "[pipeline.%s]\ntopics = %s\ngroup = g-%s\n"
                           "plugin = %s\nworkers = 1\n"
                           "[pipeline.%s.config]\nrecord = %s/%s.rec\n",
                           name, topic, name, plugin, name, dir, name),
                  -1);
    return s;
}

static int rec_lines(const char *dir, const char *name) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s.rec", dir, name);
    char *text = tu_read_file(path, NULL);
    int n = text ? tu_count(text, "\n") : 0;
    free(text);
    return n;
}

static bool wait_rec_lines(const char *dir, const char *name, int want,
                           int timeout_ms) {
    for (int waited = 0; waited < timeout_ms; waited += 100) {
        if (rec_lines(dir, name) >= want)
            return true;
        th_sleep_ms(100);
    }
    return false;
}

/* A host consuming with fxr_v1 is asked to reload into a config that adds
 * a pipeline whose plugin crashes (or hangs) in its constructor. The
 * reload is rejected and the host goes on consuming. */
static void reload_rejects_bad_constructor(const char *fixture,
                                           const char *problem, int64_t min_ms,
                                           int64_t max_ms) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "t", 2);
    th_create_topic(&c, "u", 1);
    th_produce(&c, "t", 2, 100, -1, -1, NULL);
    char *dir = tu_tmpdir();
    char *p = recorder(dir, "p", "t", FX("fxr_v1"));
    char *ini;
    cr_assert_neq(asprintf(&ini,
                           "[host]\nbrokers = %s\n[kafka]\n"
                           "session.timeout.ms = 6000\n%s",
                           c.bootstraps, p),
                  -1);
    th_host_start(&host, dir, "host", ini);
    cr_assert(wait_rec_lines(dir, "p", 200, 40000), "%s", th_log(&host));

    char so[512];
    snprintf(so, sizeof so, "%s/%s.so", KHOST_FIXTURE_DIR, fixture);
    char *bad;
    cr_assert_neq(asprintf(&bad,
                           "%s[pipeline.q]\ntopics = u\ngroup = g-q\n"
                           "plugin = %s\nworkers = 1\n",
                           ini, so),
                  -1);
    free(tu_write_file(dir, "host.ini", bad));
    int64_t t0 = th_now_ms();
    tu_result r =
        tu_run((char *[]){KHOST, "reload", "-c", host.cfg_path, NULL}, 60000);
    int64_t took = th_now_ms() - t0;
    cr_assert_eq(r.exit_code, 2, "exit %d: %s%s\n%s", r.exit_code, r.out, r.err,
                 th_log(&host));
    cr_assert(strstr(r.out, "error: rejected: a plugin cannot be loaded"), "%s",
              r.out);
    tu_result_free(&r);
    cr_assert_geq(took, min_ms, "the reload took %lld ms", (long long)took);
    cr_assert_lt(took, max_ms, "the reload took %lld ms", (long long)took);
    char want[1024];
    snprintf(want, sizeof want,
             "reload rejected: %s:15: plugin of [pipeline.q]: %s: %s",
             host.cfg_path, so, problem);
    cr_assert(th_wait_log(&host, want, 1, 5000), "no '%s' in:\n%s", want,
              th_log(&host));
    cr_assert(th_host_alive(&host), "the host died:\n%s", th_log(&host));

    /* Still consuming with the old configuration. */
    th_produce(&c, "t", 2, 100, -1, -1, NULL);
    cr_assert(wait_rec_lines(dir, "p", 400, 40000), "%s", th_log(&host));
    r = tu_run((char *[]){KHOST, "status", "-c", host.cfg_path, NULL}, 10000);
    cr_assert(strstr(r.out, "pipeline=p ") && !strstr(r.out, "pipeline=q "),
              "%s", r.out);
    tu_result_free(&r);
    cr_assert_eq(th_host_stop(&host, SIGTERM, 20000), 0, "%s", th_log(&host));
    th_host_free(&host);
    th_cluster_stop(&c);
    tu_rmdir(dir);
    free(bad);
    free(ini);
    free(p);
    free(dir);
}

Test(probe, reload_with_crashing_constructor_rejected_host_lives,
     .timeout = 120, .fini = stop_left_host) {
    reload_rejects_bad_constructor(
        "fx_ctor_crash", "plugin crashed while loading (SIGSEGV)", 0, 9000);
}

/* Processes whose command line mentions `needle`. */
static int processes_with(const char *needle) {
    int n = 0;
    DIR *d = opendir("/proc");
    cr_assert_not_null(d);
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        char path[300], cmd[4096];
        snprintf(path, sizeof path, "/proc/%s/cmdline", e->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        ssize_t len = read(fd, cmd, sizeof cmd - 1);
        close(fd);
        if (len <= 0)
            continue;
        for (ssize_t i = 0; i < len; i++)
            if (!cmd[i])
                cmd[i] = ' ';
        cmd[len] = '\0';
        if (strstr(cmd, needle))
            n++;
    }
    closedir(d);
    return n;
}

Test(probe, check_config_times_out_on_hanging_constructor, .timeout = 60) {
    char *dir = tu_tmpdir();
    /* A private copy, so that the probe child is found by its path. */
    size_t len;
    char *bytes = tu_read_file(FX("fx_ctor_hang"), &len);
    cr_assert_not_null(bytes);
    char *so;
    cr_assert_neq(asprintf(&so, "%s/hang.so", dir), -1);
    FILE *f = fopen(so, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(bytes, 1, len, f), len);
    fclose(f);
    free(bytes);
    char *cfg = one_pipeline_ini(dir, "127.0.0.1:9", so);
    int64_t t0 = th_now_ms();
    tu_result r =
        tu_run((char *[]){KHOST, "check-config", "-c", cfg, NULL}, 30000);
    int64_t took = th_now_ms() - t0;
    cr_assert_eq(r.exit_code, 2, "exit %d after %lld ms\n%s", r.exit_code,
                 (long long)took, r.err);
    char *lines[8];
    size_t n = lines_of(r.err, lines, 8);
    cr_assert_eq(n, 2, "%s", r.err);
    char want[1024];
    snprintf(want, sizeof want,
             "%s:6: plugin of [pipeline.p]: %s: did not finish loading within "
             "10 s",
             cfg, so);
    cr_assert_eq(strncmp(lines[0], want, strlen(want)), 0,
                 "got\n  %s\nwanted it to start with\n  %s", lines[0], want);
    cr_assert_geq(took, 9500, "gave up after %lld ms", (long long)took);
    cr_assert_lt(took, 15000, "took %lld ms", (long long)took);
    /* The probe child was killed, not left behind. */
    cr_assert_eq(processes_with(so), 0, "a probe of %s is still running", so);
    tu_result_free(&r);
    tu_rmdir(dir);
    free(cfg);
    free(so);
    free(dir);
}

Test(probe, reload_with_hanging_constructor_rejected_host_lives, .timeout = 120,
     .fini = stop_left_host) {
    reload_rejects_bad_constructor(
        "fx_ctor_hang", "did not finish loading within 10 s", 9500, 20000);
}

Test(probe, probe_plugin_command_reports_one_line) {
    tu_result r =
        tu_run((char *[]){KHOST, "probe-plugin", FX("fx_good"), NULL}, 20000);
    cr_assert_eq(r.exit_code, 0, "%s", r.err);
    cr_assert_str_eq(r.out, "fx_good 0.0.1 (ABI 1.2)\n");
    tu_result_free(&r);
    r = tu_run((char *[]){KHOST, "probe-plugin", FX("fx_no_handle"), NULL},
               20000);
    cr_assert_eq(r.exit_code, 2);
    char want[512];
    snprintf(want, sizeof want,
             "%s: required callback 'handle' is NULL (expected init, handle "
             "and terminate to be set)\n",
             FX("fx_no_handle"));
    cr_assert_str_eq(r.err, want);
    cr_assert_str_eq(r.out, "");
    tu_result_free(&r);
}
