/*
 * control: where the control socket is and how `khost status` and
 * `khost reload` find it: --socket, [host] control_socket,
 * $RUNTIME_DIRECTORY, the per-user default; the one error line listing
 * the paths tried; a deleted socket bound again on SIGHUP; hosts that do
 * not take each other's socket. Hosts run `brokers = mock` (embedded
 * cluster), the CLI is build/khost run as a real process.
 */
#define _GNU_SOURCE
#include "harness.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define KHOST KHOST_BUILD_DIR "/khost"
#define NOOP KHOST_BUILD_DIR "/plugins/noop.so"

/* Every host a test starts lives here, so that the suite's fini kills it
 * even when an assertion ends the test early. */
static th_host hosts[4];
static size_t n_hosts;

static void kill_hosts(void) {
    for (size_t i = 0; i < n_hosts; i++)
        if (hosts[i].pid)
            th_host_stop(&hosts[i], SIGKILL, 5000);
}

static void setup(void) {
    /* The CLI and the hosts inherit this: a test sets it on purpose. */
    unsetenv("RUNTIME_DIRECTORY");
}

TestSuite(control, .init = setup, .fini = kill_hosts, .timeout = 60);

/* An ini with one pipeline named `pipeline` and `host_extra` in [host]. */
static char *ini(const char *pipeline, const char *host_extra) {
    char *s;
    cr_assert_neq(asprintf(&s,
                           "[host]\nbrokers = mock\n%s\n"
                           "[pipeline.%s]\ntopics = t\ngroup = g-%s\n"
                           "plugin = " NOOP "\n",
                           host_extra ? host_extra : "", pipeline, pipeline),
                  -1);
    return s;
}

static th_host *start(const char *dir, const char *name, const char *pipeline,
                      const char *host_extra, const char *const *args) {
    cr_assert_lt(n_hosts, sizeof hosts / sizeof hosts[0]);
    th_host *h = &hosts[n_hosts++];
    char *text = ini(pipeline, host_extra);
    th_host_start_args(h, dir, name, text, args);
    free(text);
    cr_assert(th_wait_log(h, "control socket ", 1, 20000), "%s", th_log(h));
    return h;
}

static tu_result khost(const char *a1, const char *a2, const char *a3,
                       const char *a4, const char *a5) {
    return tu_run((char *[]){KHOST, (char *)a1, (char *)a2, (char *)a3,
                             (char *)a4, (char *)a5, NULL},
                  30000);
}

/* `status` through these arguments answers with pipeline `name`. The
 * control socket opens before the first worker is ready, and the plugin
 * is named only from then on: ask again for up to 10 s. */
static void assert_status(const char *name, const char *a1, const char *a2,
                          const char *a3, const char *a4) {
    char want[128];
    snprintf(want, sizeof want, "pipeline=%s plugin=noop", name);
    tu_result r = khost("status", a1, a2, a3, a4);
    for (int i = 0; i < 100 && r.exit_code == 0 && !strstr(r.out, want); i++) {
        tu_result_free(&r);
        usleep(100 * 1000);
        r = khost("status", a1, a2, a3, a4);
    }
    cr_assert_eq(r.exit_code, 0, "status %s %s: %s%s", a1 ? a1 : "",
                 a2 ? a2 : "", r.out, r.err);
    cr_assert(strstr(r.out, want), "status %s %s: want %s, got %s", a1, a2,
              want, r.out);
    cr_assert(strstr(r.out, "\nok\n"), "%s", r.out);
    tu_result_free(&r);
}

static void assert_no_answer(const char *a1, const char *a2, const char *a3,
                             const char *a4) {
    tu_result r = khost("status", a1, a2, a3, a4);
    cr_assert_eq(r.exit_code, 1, "%s%s", r.out, r.err);
    cr_assert(strstr(r.err, "khost status: no khost answers (tried "), "%s",
              r.err);
    tu_result_free(&r);
}

static char *path_in(const char *dir, const char *name) {
    char *s;
    cr_assert_neq(asprintf(&s, "%s/%s", dir, name), -1);
    return s;
}

/* Does a khost answer at /run/khost/khost.sock (a service on this
 * machine)? Then the CLI's default list reaches it and the tests that
 * expect no answer there cannot hold. */
static bool run_khost_answers(void) {
    struct sockaddr_un a = {.sun_family = AF_UNIX,
                            .sun_path = "/run/khost/khost.sock"};
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    bool ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    return ok;
}

Test(control, socket_option_for_run_status_and_reload) {
    char *dir = tu_tmpdir();
    char *sock = path_in(dir, "ctl.sock");
    th_host *h = start(dir, "a", "alpha", NULL,
                       (const char *const[]){"--socket", sock, NULL});
    char want[512];
    snprintf(want, sizeof want, "control socket %s (--socket)", sock);
    cr_assert(th_wait_log(h, want, 1, 1000), "%s", th_log(h));
    struct stat st;
    cr_assert_eq(stat(sock, &st), 0);
    cr_assert(S_ISSOCK(st.st_mode));
    cr_assert_eq(st.st_mode & 0777, 0600, "mode %o", st.st_mode & 0777);

    assert_status("alpha", "--socket", sock, NULL, NULL);
    /* -c too: --socket alone is used. */
    assert_status("alpha", "--socket", sock, "-c", h->cfg_path);
    tu_result r = khost("reload", "--socket", sock, NULL, NULL);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    cr_assert(strstr(r.out, "ok: applied:"), "%s", r.out);
    tu_result_free(&r);
    cr_assert(
        th_wait_log(h, "reload requested on the control socket", 1, 1000));
    /* -c alone does not know about the --socket of `run`. */
    if (!run_khost_answers())
        assert_no_answer("-c", h->cfg_path, NULL, NULL);

    cr_assert_eq(th_host_stop(h, SIGTERM, 20000), 0);
    cr_assert_neq(access(sock, F_OK), 0, "the host left its socket behind");
    th_host_free(h);
    tu_rmdir(dir);
}

Test(control, control_socket_key_relative_to_the_config_folder) {
    char *dir = tu_tmpdir();
    char *sock = path_in(dir, "run/k.sock");
    char *sub = path_in(dir, "run");
    cr_assert_eq(mkdir(sub, 0700), 0);
    th_host *h = start(dir, "a", "alpha", "control_socket = run/k.sock", NULL);
    char want[512];
    snprintf(want, sizeof want, "control socket %s (control_socket in %s)",
             sock, h->cfg_path);
    cr_assert(th_wait_log(h, want, 1, 1000), "%s", th_log(h));
    assert_status("alpha", "-c", h->cfg_path, NULL, NULL);
    assert_status("alpha", "--socket", sock, NULL, NULL);
    tu_result r = khost("reload", "-c", h->cfg_path, NULL, NULL);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    cr_assert(strstr(r.out, "ok: applied:"), "%s", r.out);
    tu_result_free(&r);
    /* --socket on run wins over the key. */
    char *other = path_in(dir, "other.sock");
    th_host *h2 = start(dir, "b", "beta", "control_socket = run/k.sock",
                        (const char *const[]){"--socket", other, NULL});
    snprintf(want, sizeof want, "control socket %s (--socket)", other);
    cr_assert(th_wait_log(h2, want, 1, 1000), "%s", th_log(h2));
    assert_status("beta", "--socket", other, NULL, NULL);
    assert_status("alpha", "-c", h->cfg_path, NULL, NULL);
    cr_assert_eq(th_host_stop(h2, SIGTERM, 20000), 0);
    cr_assert_eq(th_host_stop(h, SIGTERM, 20000), 0);
    th_host_free(h2);
    th_host_free(h);
    tu_rmdir(dir);
}

Test(control, runtime_directory_found_by_a_cli_that_has_it) {
    char *dir = tu_tmpdir();
    char *rt = path_in(dir, "rt");
    cr_assert_eq(mkdir(rt, 0700), 0);
    char *rt_list;
    /* Several folders, as RuntimeDirectory=a b gives: the first counts. */
    cr_assert_neq(asprintf(&rt_list, "%s:%s/second", rt, dir), -1);
    setenv("RUNTIME_DIRECTORY", rt_list, 1);
    th_host *h = start(dir, "a", "alpha", NULL, NULL);
    /* And a host whose file names control_socket, same environment. */
    th_host *h2 = start(dir, "b", "beta", "control_socket = b.sock", NULL);
    char want[512];
    snprintf(want, sizeof want,
             "control socket %s/khost.sock "
             "($RUNTIME_DIRECTORY)",
             rt);
    cr_assert(th_wait_log(h, want, 1, 1000), "%s", th_log(h));

    assert_status("alpha", "-c", h->cfg_path, NULL, NULL);
    assert_status("alpha", NULL, NULL, NULL, NULL); /* no -c at all */
    assert_status("beta", "-c", h2->cfg_path, NULL, NULL);

    /* A shell without RUNTIME_DIRECTORY: the control_socket host is found,
     * the other one is not, and the error names what was tried. */
    unsetenv("RUNTIME_DIRECTORY");
    assert_status("beta", "-c", h2->cfg_path, NULL, NULL);
    if (!run_khost_answers()) {
        tu_result r = khost("status", "-c", h->cfg_path, NULL, NULL);
        cr_assert_eq(r.exit_code, 1, "%s%s", r.out, r.err);
        cr_assert(strstr(r.err, "no khost answers (tried "), "%s", r.err);
        cr_assert(!strstr(r.err, rt), "%s", r.err);
        tu_result_free(&r);
    }
    cr_assert_eq(th_host_stop(h, SIGTERM, 20000), 0);
    cr_assert_eq(th_host_stop(h2, SIGTERM, 20000), 0);
    th_host_free(h);
    th_host_free(h2);
    tu_rmdir(dir);
}

/* A socket file nobody listens on: connect says "Connection refused". */
static void stale_socket(const char *path) {
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0, "%s",
                 strerror(errno));
    close(fd);
}

Test(control, no_host_is_one_line_naming_the_paths_tried) {
    if (run_khost_answers())
        cr_skip_test("a khost answers at /run/khost/khost.sock");
    char *dir = tu_tmpdir();
    char *sock = path_in(dir, "stale.sock");
    stale_socket(sock);
    char *text = ini("alpha", "control_socket = stale.sock");
    char *cfg = tu_write_file(dir, "k.ini", text);
    tu_result r = khost("status", "-c", cfg, NULL, NULL);
    cr_assert_eq(r.exit_code, 1, "%s%s", r.out, r.err);
    cr_assert_eq(tu_count(r.err, "\n"), 1, "not one line: %s", r.err);
    char want[512];
    snprintf(want, sizeof want,
             "khost status: no khost answers (tried %s: Connection refused, "
             "/run/khost/khost.sock: ",
             sock);
    cr_assert(!strncmp(r.err, want, strlen(want)), "want %s\ngot %s", want,
              r.err);
    snprintf(want, sizeof want, ", /tmp/khost-%u-", (unsigned)getuid());
    cr_assert(strstr(r.err, want), "%s", r.err);
    cr_assert(strstr(r.err, ".sock: No such file or directory)\n"), "%s",
              r.err);
    cr_assert_str_empty(r.out);
    tu_result_free(&r);

    /* reload checks the file first, then says the same. */
    r = khost("reload", "-c", cfg, NULL, NULL);
    cr_assert_eq(r.exit_code, 1, "%s%s", r.out, r.err);
    cr_assert(strstr(r.err, "khost reload: no khost answers (tried "), "%s",
              r.err);
    tu_result_free(&r);
    char *missing = path_in(dir, "missing.sock");
    r = khost("reload", "--socket", missing, NULL, NULL);
    cr_assert_eq(r.exit_code, 1, "%s%s", r.out, r.err);
    snprintf(want, sizeof want,
             "khost reload: no khost answers (tried %s: No such file or "
             "directory)\n",
             missing);
    cr_assert_str_eq(r.err, want);
    tu_result_free(&r);
    free(text);
    tu_rmdir(dir);
}

Test(control, deleted_socket_is_bound_again_on_sighup) {
    char *dir = tu_tmpdir();
    char *sock = path_in(dir, "k.sock");
    th_host *h = start(dir, "a", "alpha", "control_socket = k.sock", NULL);
    assert_status("alpha", "-c", h->cfg_path, NULL, NULL);
    cr_assert_eq(unlink(sock), 0);
    assert_no_answer("--socket", sock, NULL, NULL);
    kill(h->pid, SIGHUP);
    cr_assert(th_wait_log(h, "was deleted: binding it again", 1, 10000), "%s",
              th_log(h));
    char want[512];
    snprintf(want, sizeof want, "control socket %s bound again", sock);
    cr_assert(th_wait_log(h, want, 1, 10000), "%s", th_log(h));
    assert_status("alpha", "-c", h->cfg_path, NULL, NULL);
    struct stat st;
    cr_assert_eq(stat(sock, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0600, "mode %o", st.st_mode & 0777);
    /* A SIGHUP with the socket in place binds nothing. */
    kill(h->pid, SIGHUP);
    cr_assert(th_wait_log(h, "SIGHUP received", 2, 10000), "%s", th_log(h));
    assert_status("alpha", "-c", h->cfg_path, NULL, NULL);
    cr_assert_eq(th_log_count(h, "bound again"), 1, "%s", th_log(h));
    cr_assert_eq(th_host_stop(h, SIGTERM, 20000), 0);
    th_host_free(h);
    tu_rmdir(dir);
}

Test(control, two_hosts_keep_their_own_sockets) {
    char *dir = tu_tmpdir();
    /* Two configs on the default path: one socket each. With /run/khost
     * writable the default is that one socket, which the next test's
     * refusal covers. */
    th_host *a = start(dir, "a", "alpha", NULL, NULL);
    th_host *b = start(dir, "b", "beta", NULL, NULL);
    if (access("/run/khost", W_OK | X_OK) != 0) {
        assert_status("alpha", "-c", a->cfg_path, NULL, NULL);
        assert_status("beta", "-c", b->cfg_path, NULL, NULL);
    }
    cr_assert_eq(th_host_stop(b, SIGTERM, 20000), 0);
    if (access("/run/khost", W_OK | X_OK) != 0)
        assert_status("alpha", "-c", a->cfg_path, NULL, NULL);
    cr_assert_eq(th_host_stop(a, SIGTERM, 20000), 0);
    th_host_free(a);
    th_host_free(b);
    tu_rmdir(dir);
}

Test(control, a_live_socket_is_never_taken) {
    char *dir = tu_tmpdir();
    char *sock = path_in(dir, "shared.sock");
    th_host *a = start(dir, "a", "alpha", "control_socket = shared.sock", NULL);
    th_host *b = start(dir, "b", "beta", "control_socket = shared.sock", NULL);
    cr_assert(th_wait_log(b, "another khost already answers at", 1, 1000), "%s",
              th_log(b));
    assert_status("alpha", "--socket", sock, NULL, NULL);
    /* b's SIGHUP tries again, and still does not take it. */
    kill(b->pid, SIGHUP);
    cr_assert(th_wait_log(b, "another khost already answers at", 2, 10000),
              "%s", th_log(b));
    assert_status("alpha", "--socket", sock, NULL, NULL);

    /* a's socket deleted: b's SIGHUP binds the free path; then a's SIGHUP
     * finds another socket there, which answers, and leaves it alone. */
    cr_assert_eq(unlink(sock), 0);
    kill(b->pid, SIGHUP);
    cr_assert(th_wait_log(b, "bound again", 1, 10000), "%s", th_log(b));
    assert_status("beta", "--socket", sock, NULL, NULL);
    kill(a->pid, SIGHUP);
    cr_assert(
        th_wait_log(a, "now names another file: binding it again", 1, 10000),
        "%s", th_log(a));
    cr_assert(th_wait_log(a, "another khost already answers at", 1, 10000),
              "%s", th_log(a));
    /* a stops: it must not unlink b's socket. */
    cr_assert_eq(th_host_stop(a, SIGTERM, 20000), 0);
    assert_status("beta", "--socket", sock, NULL, NULL);
    cr_assert_eq(th_host_stop(b, SIGTERM, 20000), 0);
    cr_assert_neq(access(sock, F_OK), 0, "b left its socket behind");
    th_host_free(a);
    th_host_free(b);
    tu_rmdir(dir);
}

Test(control, control_socket_is_checked_by_check_config) {
    char *dir = tu_tmpdir();
    char long_name[200];
    memset(long_name, 'x', 120);
    long_name[120] = '\0';
    char extra[400];
    snprintf(extra, sizeof extra, "control_socket = %s.sock", long_name);
    char *text = ini("alpha", extra);
    char *cfg = tu_write_file(dir, "k.ini", text);
    free(text);
    tu_result r = khost("check-config", "-c", cfg, NULL, NULL);
    cr_assert_eq(r.exit_code, 2, "%s%s", r.out, r.err);
    char want[600];
    snprintf(want, sizeof want,
             "%s:3: bad value '%s.sock' for 'control_socket' in [host]: "
             "%s/%s.sock is %zu bytes, a unix socket path holds at most 107\n",
             cfg, long_name, dir, long_name,
             strlen(dir) + 1 + strlen(long_name) + 5);
    cr_assert(strstr(r.err, want), "want %s\ngot %s", want, r.err);
    tu_result_free(&r);

    text = ini("alpha", "control_socket = a.sock\ncontrol_socket = b.sock\n"
                        "control_sockte = c.sock");
    cfg = tu_write_file(dir, "k.ini", text);
    free(text);
    r = khost("check-config", "-c", cfg, NULL, NULL);
    cr_assert_eq(r.exit_code, 2, "%s%s", r.out, r.err);
    cr_assert(strstr(r.err, ":4: duplicate key 'control_socket' in [host] "
                            "(first at line 3)"),
              "%s", r.err);
    cr_assert(strstr(r.err, ":5: unknown key 'control_sockte' in [host] (did "
                            "you mean 'control_socket'?)"),
              "%s", r.err);
    tu_result_free(&r);
    text = ini("alpha", "control_socket = dir/");
    cfg = tu_write_file(dir, "k.ini", text);
    free(text);
    r = khost("check-config", "-c", cfg, NULL, NULL);
    cr_assert_eq(r.exit_code, 2, "%s%s", r.out, r.err);
    cr_assert(strstr(r.err, ":3: bad value 'dir/' for 'control_socket' in "
                            "[host]: expected the path of a socket file"),
              "%s", r.err);
    tu_result_free(&r);
    tu_rmdir(dir);
}

Test(control, usage_errors_exit_2) {
    tu_result r = khost("reload", NULL, NULL, NULL, NULL);
    cr_assert_eq(r.exit_code, 2);
    cr_assert(strstr(r.err, "khost reload: -c FILE or --socket PATH is "
                            "required\n"),
              "%s", r.err);
    tu_result_free(&r);
    r = khost("check-config", "--socket", "x.sock", "-c", "k.ini");
    cr_assert_eq(r.exit_code, 2);
    cr_assert(strstr(r.err, "khost check-config: unknown option '--socket'"),
              "%s", r.err);
    tu_result_free(&r);
    r = khost("status", "--socket", NULL, NULL, NULL);
    cr_assert_eq(r.exit_code, 2);
    cr_assert(strstr(r.err, "option '--socket' needs an argument"), "%s",
              r.err);
    tu_result_free(&r);
    r = khost("run", "--socket", "x.sock", NULL, NULL);
    cr_assert_eq(r.exit_code, 2);
    cr_assert(strstr(r.err, "khost run: -c FILE is required"), "%s", r.err);
    tu_result_free(&r);
    r = khost("status", "--help", NULL, NULL, NULL);
    cr_assert_eq(r.exit_code, 0);
    cr_assert(strstr(r.out, "usage: khost status [-c FILE] [--socket PATH]"),
              "%s", r.out);
    tu_result_free(&r);
}
