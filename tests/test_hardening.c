/*
 * hardening: per-pipeline worker limits (rlimit_*), user/user_group, and
 * the warning for secrets in a config file others can read.
 */
#define _GNU_SOURCE
#include "config.h"
#include "hardening.h"
#include "harness.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define FAULT KHOST_BUILD_DIR "/plugins/fault.so"
#define FXH_MEM KHOST_FIXTURE_DIR "/fxh_mem.so"

/* RLIMIT_AS and AddressSanitizer do not mix: ASan reserves terabytes of
 * shadow address space at start, so any address-space limit a worker sets
 * makes its every later mapping fail. */
#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif
#ifndef UNDER_ASAN
#define UNDER_ASAN 0
#endif

/* pid of worker 0 of `pipeline` from "pipeline=P worker=0 pid=N ready". */
static pid_t worker_pid_of(th_host *h, const char *pipeline) {
    char *s = th_log(h);
    char needle[128];
    snprintf(needle, sizeof needle, "pipeline=%s worker=0 pid=", pipeline);
    pid_t pid = 0;
    for (char *p = s; (p = strstr(p, needle)); p++) {
        char *end = strchr(p, '\n');
        char *ready = strstr(p, " ready: ");
        if (ready && (!end || ready < end))
            pid = (pid_t)atoi(p + strlen(needle));
    }
    free(s);
    return pid;
}

/* The line of /proc/PID/FILE starting with `prefix`, whitespace squeezed
 * to single spaces, or "" when absent. */
static void proc_line(pid_t pid, const char *file, const char *prefix,
                      char *out, size_t len) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/%s", (int)pid, file);
    char *text = tu_read_file(path, NULL);
    out[0] = '\0';
    cr_assert_not_null(text, "cannot read %s", path);
    for (char *line = text; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        if (!strncmp(line, prefix, strlen(prefix))) {
            size_t n = 0;
            bool space = false;
            for (char *c = line; *c && n + 1 < len; c++) {
                if (*c == ' ' || *c == '\t') {
                    space = true;
                    continue;
                }
                if (space && n)
                    out[n++] = ' ';
                space = false;
                out[n++] = *c;
            }
            out[n] = '\0';
            break;
        }
        line = nl ? nl + 1 : NULL;
    }
    free(text);
}

/* ---------------------------------------------------------------------- */
/* Resource limits */

Test(hardening, rlimit_as_crash_restarts_and_redelivers, .timeout = 120) {
    if (UNDER_ASAN)
        cr_skip_test("RLIMIT_AS cannot work under AddressSanitizer");
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "h1", 2);
    th_produce(&c, "h1", 2, 200, 1, 50, "BIG");
    char *dir = tu_tmpdir();
    char *ini;
    cr_assert_neq(asprintf(&ini,
                           "[host]\nbrokers = %s\n"
                           "[kafka]\nsession.timeout.ms = 6000\n"
                           "heartbeat.interval.ms = 500\n"
                           "[pipeline.p]\ntopics = h1\ngroup = g\n"
                           "plugin = " FXH_MEM "\nrlimit_as_mb = 200\n"
                           "[pipeline.p.config]\nrecord = %s/p.jsonl\n"
                           "big_mb = 512\n",
                           c.bootstraps, dir),
                  -1);
    th_host h;
    th_host_start(&h, dir, "host", ini);
    cr_assert(th_wait_committed(&c, "g", "h1", 2, 200, 60000), "%s",
              th_log(&h));
    cr_assert(th_host_alive(&h));
    /* The allocation failed under the limit, the plugin aborted, the
     * worker was restarted and got the message again. */
    cr_assert_eq(th_log_count(&h, "allocation of 512 MiB failed"), 1, "%s",
                 th_log(&h));
    cr_assert_eq(th_log_count(&h, "allocated and touched"), 0);
    cr_assert_eq(th_log_count(&h, "crashed: killed by SIGABRT"), 1, "%s",
                 th_log(&h));
    cr_assert_eq(th_log_count(&h, " restarting in "), 1);
    cr_assert_eq(th_log_count(&h, "FAILED"), 0);
    cr_assert_eq(th_host_stop(&h, SIGTERM, 20000), 0);

    th_ledger l;
    th_ledger_init(&l, 2, 200);
    char *rec;
    cr_assert_neq(asprintf(&rec, "%s/p.jsonl", dir), -1);
    th_ledger_add_file(&l, rec);
    cr_assert_eq(l.bad_lines, 0);
    for (int p = 0; p < 2; p++)
        for (int o = 0; o < 200; o++)
            cr_assert_gt(l.seen[p][o], 0, "partition %d offset %d lost", p, o);
    cr_assert_eq(l.attempt[1][50], 2,
                 "the BIG message was recorded on "
                 "attempt %d",
                 l.attempt[1][50]);
    th_ledger_free(&l);
    free(rec);
    free(ini);
    th_host_free(&h);
    th_cluster_stop(&c);
    tu_rmdir(dir);
}

Test(hardening, limits_and_no_new_privs_show_in_proc, .timeout = 60) {
    char *dir = tu_tmpdir();
    /* q sets nothing: its worker keeps the limits khost runs with. */
    const char *as = UNDER_ASAN ? "" : "rlimit_as_mb = 300\n";
    char *ini;
    cr_assert_neq(asprintf(&ini,
                           "[host]\nbrokers = mock\n"
                           "[pipeline.p]\ntopics = t1\ngroup = g1\n"
                           "plugin = " FAULT "\n%s"
                           "rlimit_nofile = 64\nrlimit_cpu_s = 100\n"
                           "[pipeline.q]\ntopics = t2\ngroup = g2\n"
                           "plugin = " FAULT "\n",
                           as),
                  -1);
    th_host h;
    th_host_start(&h, dir, "host", ini);
    cr_assert(th_wait_log(&h, "ready: plugin", 2, 30000), "%s", th_log(&h));
    pid_t p = worker_pid_of(&h, "p"), q = worker_pid_of(&h, "q");
    cr_assert(p > 0 && q > 0, "%s", th_log(&h));

    char line[256];
    proc_line(p, "limits", "Max open files", line, sizeof line);
    cr_assert_str_eq(line, "Max open files 64 64 files");
    /* SIGXCPU at the soft limit, SIGKILL a second later. */
    proc_line(p, "limits", "Max cpu time", line, sizeof line);
    cr_assert_str_eq(line, "Max cpu time 100 101 seconds");
    proc_line(p, "limits", "Max address space", line, sizeof line);
    if (!UNDER_ASAN)
        cr_assert_str_eq(line, "Max address space 314572800 314572800 bytes");

    /* Every worker runs with PR_SET_NO_NEW_PRIVS, with or without limits:
     * a setuid binary the plugin execs gains nothing. */
    proc_line(p, "status", "NoNewPrivs", line, sizeof line);
    cr_assert_str_eq(line, "NoNewPrivs: 1");
    proc_line(q, "status", "NoNewPrivs", line, sizeof line);
    cr_assert_str_eq(line, "NoNewPrivs: 1");

    /* Nothing set: the same as ours (the host's, inherited). */
    char mine[256];
    const char *const same[] = {"Max open files", "Max cpu time",
                                "Max address space"};
    for (size_t i = 0; i < 3; i++) {
        proc_line(q, "limits", same[i], line, sizeof line);
        proc_line(getpid(), "limits", same[i], mine, sizeof mine);
        cr_assert_str_eq(line, mine);
    }
    cr_assert_eq(th_host_stop(&h, SIGTERM, 20000), 0);
    free(ini);
    th_host_free(&h);
    tu_rmdir(dir);
}

Test(hardening, rlimit_keys_are_validated) {
    char *dir = tu_tmpdir();
    char *path = tu_write_file(dir, "k.ini",
                               "[host]\nbrokers = mock\n"
                               "[pipeline.p]\ntopics = t\ngroup = g\n"
                               "plugin = x.so\n"
                               "rlimit_as_mb = -1\n"
                               "rlimit_nofile = 2000000\n"
                               "rlimit_cpu_s = 5s\n");
    kh_config cfg;
    kh_errors errs = {0};
    cr_assert_eq(config_load(path, &cfg, &errs), -1);
    cr_assert_eq(errs.count, 3);
    char *want;
    cr_assert_neq(asprintf(&want,
                           "%s:7: bad value '-1' for 'rlimit_as_mb' in "
                           "[pipeline.p]: expected an integer in 0..1048576",
                           path),
                  -1);
    cr_assert_str_eq(errs.items[0], want);
    cr_assert(strstr(errs.items[1], ":8: bad value '2000000' for "
                                    "'rlimit_nofile'"),
              "%s", errs.items[1]);
    cr_assert(strstr(errs.items[2], ":9: bad value '5s' for 'rlimit_cpu_s'"),
              "%s", errs.items[2]);
    errors_free(&errs);
    config_free(&cfg);
    free(want);
    free(path);
    tu_rmdir(dir);
}

/* ---------------------------------------------------------------------- */
/* user / user_group */

Test(hardening, worker_runs_as_user, .timeout = 90) {
    if (geteuid() != 0)
        cr_skip_test("needs root to switch users");
    struct passwd *pw = getpwnam("nobody");
    struct group *gr = getgrnam("daemon");
    cr_assert_not_null(pw);
    cr_assert_not_null(gr);
    uid_t nobody = pw->pw_uid;
    gid_t nobody_gid = pw->pw_gid, daemon_gid = gr->gr_gid;
    cr_assert_neq(nobody_gid, daemon_gid);

    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "u1", 2);
    th_create_topic(&c, "u2", 1);
    th_produce(&c, "u1", 2, 100, -1, -1, NULL);
    th_produce(&c, "u2", 1, 20, 0, 10, "STUCK");
    char *dir = tu_tmpdir();
    char *ini;
    /* p: nobody with its own group; q: nobody in group daemon, and its
     * handler hangs on a message so only the death signal can end it. */
    cr_assert_neq(asprintf(&ini,
                           "[host]\nbrokers = %s\n"
                           "[kafka]\nsession.timeout.ms = 6000\n"
                           "heartbeat.interval.ms = 500\n"
                           "[pipeline.p]\ntopics = u1\ngroup = g1\n"
                           "plugin = " FAULT "\nuser = nobody\n"
                           "[pipeline.q]\ntopics = u2\ngroup = g2\n"
                           "plugin = " FAULT "\nuser = nobody\n"
                           "user_group = daemon\n"
                           "handler_timeout_ms = 0\n"
                           "[pipeline.q.config]\nhang_on = STUCK\n",
                           c.bootstraps),
                  -1);
    th_host h;
    th_host_start(&h, dir, "host", ini);
    /* The plugin loaded and handled everything as nobody: its snapshot
     * was readable to it. */
    cr_assert(th_wait_committed(&c, "g1", "u1", 2, 100, 60000), "%s",
              th_log(&h));
    cr_assert(th_wait_log(&h, "hanging forever", 1, 30000), "%s", th_log(&h));
    pid_t p = worker_pid_of(&h, "p"), q = worker_pid_of(&h, "q");
    cr_assert(p > 0 && q > 0, "%s", th_log(&h));

    char line[256], want[256];
    proc_line(p, "status", "Uid:", line, sizeof line);
    snprintf(want, sizeof want, "Uid: %u %u %u %u", nobody, nobody, nobody,
             nobody);
    cr_assert_str_eq(line, want);
    proc_line(p, "status", "Gid:", line, sizeof line);
    snprintf(want, sizeof want, "Gid: %u %u %u %u", nobody_gid, nobody_gid,
             nobody_gid, nobody_gid);
    cr_assert_str_eq(line, want);
    proc_line(p, "status", "Groups:", line, sizeof line);
    cr_assert_str_eq(line, "Groups:", "supplementary groups left: %s", line);

    proc_line(q, "status", "Uid:", line, sizeof line);
    snprintf(want, sizeof want, "Uid: %u %u %u %u", nobody, nobody, nobody,
             nobody);
    cr_assert_str_eq(line, want);
    proc_line(q, "status", "Gid:", line, sizeof line);
    snprintf(want, sizeof want, "Gid: %u %u %u %u", daemon_gid, daemon_gid,
             daemon_gid, daemon_gid);
    cr_assert_str_eq(line, want);

    /* The host itself stays root; and the credential switch must not
     * have cost the workers their parent-death signal: q hangs in its
     * handler and can only die by it. */
    proc_line(h.pid, "status", "Uid:", line, sizeof line);
    cr_assert_str_eq(line, "Uid: 0 0 0 0");
    th_host_stop(&h, SIGKILL, 5000);
    bool gone = false;
    for (int i = 0; i < 50 && !gone; i++) {
        gone = !th_pid_running(q) && !th_pid_running(p);
        if (!gone)
            th_sleep_ms(100);
    }
    cr_assert(gone, "workers outlived the host (no PR_SET_PDEATHSIG)");
    free(ini);
    th_host_free(&h);
    th_cluster_stop(&c);
    tu_rmdir(dir);
}

Test(hardening, unknown_user_and_group_are_config_errors) {
    char *dir = tu_tmpdir();
    char *path = tu_write_file(dir, "k.ini",
                               "[host]\nbrokers = mock\n"
                               "[pipeline.p]\ntopics = t\ngroup = g\n"
                               "plugin = x.so\n"
                               "user = no-such-user-khost\n"
                               "user_group = no-such-group-khost\n"
                               "[pipeline.q]\ntopics = t2\ngroup = g2\n"
                               "plugin = x.so\nuser =\n");
    kh_config cfg;
    kh_errors errs = {0};
    cr_assert_eq(config_load(path, &cfg, &errs), -1);
    cr_assert_eq(errs.count, 3);
    char want[512];
    snprintf(want, sizeof want,
             "%s:7: unknown user 'no-such-user-khost' in [pipeline.p]", path);
    cr_assert_str_eq(errs.items[0], want);
    snprintf(want, sizeof want,
             "%s:8: unknown group 'no-such-group-khost' in [pipeline.p]", path);
    cr_assert_str_eq(errs.items[1], want);
    snprintf(want, sizeof want, "%s:13: empty value for 'user' in [pipeline.q]",
             path);
    cr_assert_str_eq(errs.items[2], want);
    errors_free(&errs);
    config_free(&cfg);

    /* And through the CLI. */
    char *const argv[] = {KHOST_BUILD_DIR "/khost", "check-config", "-c", path,
                          NULL};
    tu_result r = tu_run(argv, 30000);
    cr_assert_eq(r.exit_code, 2);
    snprintf(want, sizeof want,
             "%s:7: unknown user 'no-such-user-khost' in [pipeline.p]", path);
    cr_assert(strstr(r.err, want), "%s", r.err);
    tu_result_free(&r);
    free(path);
    tu_rmdir(dir);
}

Test(hardening, known_user_resolves_ids) {
    struct passwd *pw = getpwnam("nobody");
    struct group *gr = getgrnam("daemon");
    cr_assert(pw && gr);
    uid_t uid = pw->pw_uid;
    gid_t gid = pw->pw_gid, dgid = gr->gr_gid;
    char *dir = tu_tmpdir();
    char *path = tu_write_file(dir, "k.ini",
                               "[host]\nbrokers = mock\n"
                               "[pipeline.p]\ntopics = t\ngroup = g\n"
                               "plugin = x.so\nuser = nobody\n"
                               "[pipeline.q]\ntopics = t2\ngroup = g2\n"
                               "plugin = x.so\nuser = nobody\n"
                               "user_group = daemon\n"
                               "[pipeline.r]\ntopics = t3\ngroup = g3\n"
                               "plugin = x.so\n");
    kh_config cfg;
    kh_errors errs = {0};
    cr_assert_eq(config_load(path, &cfg, &errs), 0, "%s",
                 errs.count ? errs.items[0] : "");
    cr_assert_eq(cfg.pipelines[0].run_as_uid, (long)uid);
    cr_assert_eq(cfg.pipelines[0].run_as_gid, (long)gid);
    cr_assert_eq(cfg.pipelines[1].run_as_uid, (long)uid);
    cr_assert_eq(cfg.pipelines[1].run_as_gid, (long)dgid);
    cr_assert_eq(cfg.pipelines[2].run_as_uid, -1);
    cr_assert_eq(cfg.pipelines[2].run_as_gid, -1);

    /* Worker options: only what is set. */
    kh_hardening hd;
    kh_hardening_args args;
    hardening_from_config(&cfg.pipelines[2], &hd);
    hardening_worker_args(&hd, &args);
    cr_assert_eq(args.argc, 0);
    hardening_from_config(&cfg.pipelines[1], &hd);
    hardening_worker_args(&hd, &args);
    cr_assert_eq(args.argc, 4);
    cr_assert_str_eq(args.argv[0], "--uid");
    cr_assert_eq(atol(args.argv[1]), (long)uid);
    cr_assert_str_eq(args.argv[2], "--gid");
    cr_assert_eq(atol(args.argv[3]), (long)dgid);
    cr_assert_null(args.argv[4]);

    /* Switching ids needs root; keeping one's own is fine. */
    char err[256];
    cr_assert_eq(
        hardening_check_identity(&cfg.pipelines[0], 0, 0, err, sizeof err), 0);
    cr_assert_eq(hardening_check_identity(&cfg.pipelines[0], 1000, 1000, err,
                                          sizeof err),
                 -1);
    cr_assert(strstr(err, "user = nobody") &&
                  strstr(err, "needs khost to run as root"),
              "%s", err);
    cr_assert_eq(
        hardening_check_identity(&cfg.pipelines[0], uid, gid, err, sizeof err),
        0);
    cr_assert_eq(
        hardening_check_identity(&cfg.pipelines[1], uid, gid, err, sizeof err),
        -1);
    cr_assert(strstr(err, "user_group = daemon"), "%s", err);
    cr_assert_eq(hardening_check_identity(&cfg.pipelines[2], 1000, 1000, err,
                                          sizeof err),
                 0);
    errors_free(&errs);
    config_free(&cfg);
    free(path);
    tu_rmdir(dir);
}

/* khost not running as root, with user = someone else: the pipeline does
 * not start, and says why. */
Test(hardening, user_without_root_fails_the_start, .timeout = 60) {
    if (geteuid() != 0)
        cr_skip_test("needs root to become another user for the test");
    struct passwd *pw = getpwnam("nobody");
    cr_assert_not_null(pw);
    uid_t uid = pw->pw_uid;
    gid_t gid = pw->pw_gid;
    char *dir = tu_tmpdir();
    cr_assert_eq(chmod(dir, 0755), 0);
    char *path = tu_write_file(dir, "k.ini",
                               "[host]\nbrokers = mock\n"
                               "[pipeline.p]\ntopics = t\ngroup = g\n"
                               "plugin = " FAULT "\nuser = daemon\n");
    char *log;
    cr_assert_neq(asprintf(&log, "%s/k.log", dir), -1);
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        dup2(fd, 1);
        dup2(fd, 2);
        if (setgroups(0, NULL) != 0 || setgid(gid) != 0 || setuid(uid) != 0)
            _exit(126);
        tu_execv(KHOST_BUILD_DIR "/khost",
                 (char *[]){"khost", "run", "-c", path, NULL});
        _exit(127);
    }
    int status = 0;
    for (int i = 0; i < 300; i++) {
        if (waitpid(pid, &status, WNOHANG) == pid)
            break;
        th_sleep_ms(100);
        if (i == 299) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            cr_assert(false, "khost kept running: %s", tu_read_file(log, NULL));
        }
    }
    char *text = tu_read_file(log, NULL);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 1, "status %d: %s",
              status, text);
    char want[256];
    snprintf(want, sizeof want,
             "pipeline=p worker=0: cannot start a worker process: user = "
             "daemon (uid %u) needs khost to run as root, but it runs as uid "
             "%u",
             (unsigned)getpwnam("daemon")->pw_uid, (unsigned)uid);
    cr_assert(strstr(text, want), "%s", text);
    cr_assert(!strstr(text, "ready: plugin"), "%s", text);
    free(text);
    free(log);
    free(path);
    tu_rmdir(dir);
}

/* ---------------------------------------------------------------------- */
/* Secrets in a readable file */

static char *secrets_file(const char *dir, mode_t mode, const char *kafka,
                          const char *config) {
    char *text;
    cr_assert_neq(asprintf(&text,
                           "[host]\nbrokers = mock\n"              /* 1-2 */
                           "[kafka]\n%s\n"                         /* 3-4 */
                           "[pipeline.p]\ntopics = t\ngroup = g\n" /* 5-7 */
                           "plugin = x.so\n"                       /* 8 */
                           "[pipeline.p.config]\n%s\n",            /* 9-10 */
                           kafka, config),
                  -1);
    char *path = tu_write_file(dir, "s.ini", text);
    free(text);
    cr_assert_not_null(path);
    cr_assert_eq(chmod(path, mode), 0);
    return path;
}

Test(hardening, secret_in_readable_file_warns) {
    char *dir = tu_tmpdir();
    char *path = secrets_file(dir, 0644, "sasl.password = x", "path = /tmp/y");
    kh_config cfg;
    kh_errors errs = {0};
    cr_assert_eq(config_load(path, &cfg, &errs), 0, "%s",
                 errs.count ? errs.items[0] : "");
    cr_assert_eq(errs.count, 0);
    cr_assert_eq(cfg.warnings.count, 1);
    char want[512];
    snprintf(want, sizeof want,
             "%s:4: 'sasl.password' is written in a file readable by others "
             "(mode 0644); use ${VAR} or chmod 600",
             path);
    cr_assert_str_eq(cfg.warnings.items[0], want);

    /* What check-config prints (run logs them as WARN lines). */
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    config_print_warnings(&cfg, f);
    fclose(f);
    char line[600];
    snprintf(line, sizeof line, "warning: %s\n", want);
    cr_assert_str_eq(out, line);
    free(out);
    config_free(&cfg);
    cr_assert_eq(cfg.warnings.count, 0);
    free(path);
    tu_rmdir(dir);
}

Test(hardening, secret_from_env_or_private_file_is_quiet) {
    char *dir = tu_tmpdir();
    setenv("KH_TEST_SASL_PASSWORD", "hunter2", 1);
    char *path =
        secrets_file(dir, 0644, "sasl.password = ${KH_TEST_SASL_PASSWORD}",
                     "db_password = ${KH_TEST_SASL_PASSWORD}");
    kh_config cfg;
    kh_errors errs = {0};
    cr_assert_eq(config_load(path, &cfg, &errs), 0);
    cr_assert_eq(cfg.warnings.count, 0, "%s", cfg.warnings.items[0]);
    cr_assert_str_eq(config_kv_get(cfg.kafka, cfg.n_kafka, "sasl.password"),
                     "hunter2");
    config_free(&cfg);
    free(path);

    path = secrets_file(dir, 0600, "sasl.password = x", "db_password = y");
    cr_assert_eq(config_load(path, &cfg, &errs), 0);
    cr_assert_eq(cfg.warnings.count, 0, "%s", cfg.warnings.items[0]);
    config_free(&cfg);
    free(path);
    errors_free(&errs);
    tu_rmdir(dir);
}

Test(hardening, secrets_in_every_section_kind) {
    char *dir = tu_tmpdir();
    /* Group-readable; secrets in [kafka], [pipeline.p.config] and
     * [pipeline.p.kafka]; path, token_url (an address) and an empty
     * value stay quiet. */
    const char *text = "[host]\nbrokers = mock\n"        /* 1-2 */
                       "[kafka]\nssl.key.password = k\n" /* 3-4 */
                       "[pipeline.p]\ntopics = t\ngroup = g\n"
                       "plugin = x.so\n" /* 5-8 */
                       "[pipeline.p.config]\npath = /tmp/x\n"
                       "token_url = https://x/y\n" /* 9-11 */
                       "API_Token = t\nempty_secret =\n"
                       "my.client.secret = c\n" /* 12-14 */
                       "[pipeline.p.kafka]\n"
                       "ssl.keystore.password = s\n"; /* 15-16 */
    char *path = tu_write_file(dir, "s.ini", text);
    cr_assert_eq(chmod(path, 0640), 0);
    kh_config cfg;
    kh_errors errs = {0};
    cr_assert_eq(config_load(path, &cfg, &errs), 0, "%s",
                 errs.count ? errs.items[0] : "");
    cr_assert_eq(cfg.warnings.count, 4);
    const char *const want[] = {
        ":4: 'ssl.key.password' is written in a file readable by its group "
        "(mode 0640); use ${VAR} or chmod 600",
        ":12: 'API_Token' is written",
        ":14: 'my.client.secret' is written",
        ":16: 'ssl.keystore.password' is written",
    };
    for (size_t i = 0; i < 4; i++)
        cr_assert(strstr(cfg.warnings.items[i], want[i]), "%s",
                  cfg.warnings.items[i]);
    config_free(&cfg);

    /* A warning never hides an error, nor turns into one. */
    cr_assert_eq(chmod(path, 0644), 0);
    FILE *f = fopen(path, "a");
    fputs("workers = x\n", f);
    fclose(f);
    cr_assert_eq(config_load(path, &cfg, &errs), -1);
    cr_assert_eq(errs.count, 1, "%s", errs.items[0]);
    cr_assert_eq(cfg.warnings.count, 4);
    config_free(&cfg);
    errors_free(&errs);
    free(path);
    tu_rmdir(dir);
}
