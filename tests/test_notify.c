/*
 * notify: khost as a systemd Type=notify service (issue 11, "sd_notify").
 * Each test binds a real AF_UNIX datagram socket, names it in
 * NOTIFY_SOCKET for the host it starts (the harness's exec inherits the
 * environment) and reads what arrives, with the sender's pid from
 * SCM_CREDENTIALS, as systemd does:
 *
 *  - READY=1 only once every worker of every pipeline logged ready, with
 *    a STATUS; nothing but the host ever sends;
 *  - RELOADING=1 with MONOTONIC_USEC, then READY=1, around a SIGHUP
 *    reload; STOPPING=1 at the start of the drain, while the host runs;
 *  - WATCHDOG=1 several times a second with WATCHDOG_USEC=400000, none
 *    without it, none when WATCHDOG_PID names another process, none while
 *    the host is stopped (SIGSTOP);
 *  - a FAILED pipeline still lets the host become READY, and STATUS names
 *    it;
 *  - workers' environments hold no NOTIFY_SOCKET nor WATCHDOG_*.
 */
#define _GNU_SOURCE
#include "harness.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define FX(name) KHOST_FIXTURE_DIR "/" name ".so"
#define WAIT_MS 60000

/* What arrived on the socket, in order. */
typedef struct {
    char text[1024];
    pid_t pid; /* the sender, from SCM_CREDENTIALS */
    /* When it reached the socket (the kernel's SO_TIMESTAMPNS stamp, on
     * th_now_ms's clock): when the host sent it, however late the test
     * read it on a loaded machine. */
    int64_t at_ms;
    bool stamped; /* at_ms is the kernel's stamp */
} dgram;

static struct {
    int fd;
    char path[100]; /* fits sun_path */
    dgram *d;
    size_t n, cap;
} ns = {.fd = -1};

static th_host h;
static pid_t host_pid; /* h.pid, kept after th_host_stop clears it */
static char current_dir[256];

static void end_all(void) {
    if (h.pid)
        th_host_stop(&h, SIGKILL, 5000);
    if (ns.fd >= 0)
        close(ns.fd);
    ns.fd = -1;
    free(ns.d);
    ns.d = NULL;
    ns.n = ns.cap = 0;
    if (current_dir[0])
        tu_rmdir(current_dir);
    current_dir[0] = '\0';
}

TestSuite(notify, .fini = end_all);

/* A fresh folder with the notification socket in it, named in
 * NOTIFY_SOCKET (the caller unsets it once the host started). */
static char *open_socket(void) {
    char *dir = tu_tmpdir();
    snprintf(current_dir, sizeof current_dir, "%s", dir);
    cr_assert_lt(snprintf(ns.path, sizeof ns.path, "%s/notify.sock", dir),
                 (int)sizeof ns.path);
    ns.fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    cr_assert_geq(ns.fd, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", ns.path);
    cr_assert_eq(bind(ns.fd, (struct sockaddr *)&a, sizeof a), 0, "bind: %s",
                 strerror(errno));
    int on = 1;
    cr_assert_eq(setsockopt(ns.fd, SOL_SOCKET, SO_PASSCRED, &on, sizeof on), 0);
    cr_assert_eq(setsockopt(ns.fd, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof on),
                 0);
    setenv("NOTIFY_SOCKET", ns.path, 1);
    return dir;
}

/* Read every datagram that arrives within ms. */
static void ns_read(int ms) {
    int64_t deadline = th_now_ms() + ms;
    do {
        for (;;) {
            char buf[1024];
            union {
                struct cmsghdr h;
                char b[CMSG_SPACE(sizeof(struct ucred)) +
                       CMSG_SPACE(sizeof(struct timespec))];
            } c;
            struct iovec iov = {buf, sizeof buf - 1};
            struct msghdr m = {.msg_iov = &iov,
                               .msg_iovlen = 1,
                               .msg_control = &c,
                               .msg_controllen = sizeof c};
            ssize_t n = recvmsg(ns.fd, &m, MSG_DONTWAIT);
            if (n < 0)
                break;
            buf[n] = '\0';
            if (ns.n == ns.cap) {
                ns.cap = ns.cap ? 2 * ns.cap : 64;
                ns.d = realloc(ns.d, ns.cap * sizeof *ns.d);
                cr_assert_not_null(ns.d);
            }
            dgram *d = &ns.d[ns.n++];
            snprintf(d->text, sizeof d->text, "%s", buf);
            d->at_ms = th_now_ms();
            d->pid = 0;
            d->stamped = false;
            for (struct cmsghdr *ch = CMSG_FIRSTHDR(&m); ch;
                 ch = CMSG_NXTHDR(&m, ch)) {
                if (ch->cmsg_level == SOL_SOCKET &&
                    ch->cmsg_type == SCM_CREDENTIALS) {
                    struct ucred u;
                    memcpy(&u, CMSG_DATA(ch), sizeof u);
                    d->pid = u.pid;
                }
                if (ch->cmsg_level == SOL_SOCKET &&
                    ch->cmsg_type == SCM_TIMESTAMPNS) {
                    struct timespec sent, real;
                    memcpy(&sent, CMSG_DATA(ch), sizeof sent);
                    clock_gettime(CLOCK_REALTIME, &real);
                    int64_t ago = (real.tv_sec - sent.tv_sec) * 1000 +
                                  (real.tv_nsec - sent.tv_nsec) / 1000000;
                    if (ago > 0)
                        d->at_ms -= ago;
                    d->stamped = true;
                }
            }
        }
        if (ms > 0)
            th_sleep_ms(5);
    } while (th_now_ms() < deadline);
}

/* The value of the line KEY=... in a datagram, or NULL. */
static const char *field(const dgram *d, const char *key) {
    size_t k = strlen(key);
    for (const char *p = d->text; p && *p;) {
        if (!strncmp(p, key, k) && p[k] == '=')
            return p + k + 1;
        p = strchr(p, '\n');
        if (p)
            p++;
    }
    return NULL;
}

/* Does datagram i hold the line KEY=VALUE (any value when NULL)? */
static bool has(size_t i, const char *key, const char *value) {
    const char *v = field(&ns.d[i], key);
    if (!v)
        return false;
    if (!value)
        return true;
    size_t n = strlen(value);
    return !strncmp(v, value, n) && (v[n] == '\n' || v[n] == '\0');
}

/* The first datagram from index `from` on with KEY=VALUE, waiting up to
 * timeout_ms for it; -1 when none came. */
static long ns_wait(size_t from, const char *key, const char *value,
                    int timeout_ms) {
    int64_t deadline = th_now_ms() + timeout_ms;
    for (;;) {
        for (size_t i = from; i < ns.n; i++)
            if (has(i, key, value))
                return (long)i;
        if (th_now_ms() >= deadline)
            return -1;
        ns_read(20);
    }
}

static int ns_count(size_t from, const char *key, const char *value) {
    int n = 0;
    for (size_t i = from; i < ns.n; i++)
        n += has(i, key, value);
    return n;
}

/* Everything in one string, for failure messages (static, truncated). */
static const char *ns_dump(void) {
    static char out[16384];
    size_t len = 0;
    out[0] = '\0';
    for (size_t i = 0; i < ns.n && len + 1 < sizeof out; i++) {
        int k = snprintf(out + len, sizeof out - len, "[%zu pid %d] %s\n", i,
                         (int)ns.d[i].pid, ns.d[i].text);
        if (k < 0)
            break;
        len += (size_t)k;
        if (len >= sizeof out)
            len = sizeof out - 1;
    }
    return out;
}

/* Nothing but the host itself ever notified (not a worker, not a probe
 * child). */
static void assert_only_host_sent(void) {
    for (size_t i = 0; i < ns.n; i++)
        cr_assert_eq(ns.d[i].pid, host_pid,
                     "datagram %zu came from pid %d, not the host %d:\n%s", i,
                     (int)ns.d[i].pid, (int)host_pid, ns_dump());
}

static void start_host(const char *dir, const char *pipelines) {
    char *ini;
    cr_assert_neq(asprintf(&ini, "[host]\nbrokers = mock\n%s", pipelines), -1);
    th_host_start(&h, dir, "n", ini);
    host_pid = h.pid;
    free(ini);
    /* The host has its copy (fork): nothing else started here sees it. */
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
}

static void end_test(char *dir) {
    assert_only_host_sent();
    th_host_free(&h);
    memset(&h, 0, sizeof h);
    close(ns.fd);
    ns.fd = -1;
    tu_rmdir(dir);
    free(dir);
    current_dir[0] = '\0';
}

#define PIPELINE(name, plugin, workers, extra)                                 \
    "[pipeline." name "]\ntopics = t-" name "\ngroup = g-" name                \
    "\nplugin = " plugin "\nworkers = " #workers "\n" extra

/* Two pipelines of two workers, one of them slow to start (1.5 s init):
 * READY=1 comes after all four logged ready, never before; then a SIGHUP
 * reload is wrapped in RELOADING=1 and READY=1; no watchdog is asked for,
 * so none comes. */
Test(notify, ready_after_every_worker_and_reload, .timeout = 120) {
    char *dir = open_socket();
    unsetenv("WATCHDOG_USEC");
    start_host(dir, PIPELINE("fast", FX("fx_good"), 2, "")
                        PIPELINE("slow", FX("fxs_slow_init"), 2, ""));
    long ready = ns_wait(0, "READY", "1", WAIT_MS);
    cr_assert_geq(ready, 0, "no READY=1:\n%s\n%s", ns_dump(), th_log(&h));
    /* The host logs each ready before it notifies: all four are in the
     * log by the time READY=1 arrived. */
    int logged = th_log_count(&h, " ready: plugin");
    cr_assert_eq(logged, 4, "READY=1 after %d of 4 workers were ready:\n%s",
                 logged, th_log(&h));
    cr_assert(has((size_t)ready, "STATUS",
                  "running: 2 pipelines, 4 of 4 workers ready, 0 failed"),
              "%s", ns_dump());
    /* While the slow workers started, STATUS said so. */
    bool starting = false;
    for (long i = 0; i < ready; i++)
        starting |= field(&ns.d[i], "STATUS") &&
                    !strncmp(field(&ns.d[i], "STATUS"), "starting: ", 10);
    cr_assert(starting, "no starting STATUS before READY=1:\n%s", ns_dump());
    cr_assert_eq(ns_count(0, "READY", "1"), 1, "%s", ns_dump());

    /* A SIGHUP reload: RELOADING=1 with MONOTONIC_USEC (our clock: the
     * same CLOCK_MONOTONIC), then READY=1 with the outcome. */
    size_t before = ns.n;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    kill(h.pid, SIGHUP);
    long rl = ns_wait(before, "RELOADING", "1", WAIT_MS);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    cr_assert_geq(rl, 0, "no RELOADING=1:\n%s", ns_dump());
    const char *mono = field(&ns.d[rl], "MONOTONIC_USEC");
    cr_assert_not_null(mono, "RELOADING=1 without MONOTONIC_USEC:\n%s",
                       ns_dump());
    unsigned long long us = strtoull(mono, NULL, 10);
    unsigned long long lo = (unsigned long long)t0.tv_sec * 1000000ULL +
                            (unsigned long long)t0.tv_nsec / 1000;
    unsigned long long hi = (unsigned long long)t1.tv_sec * 1000000ULL +
                            (unsigned long long)t1.tv_nsec / 1000;
    cr_assert(us >= lo && us <= hi, "MONOTONIC_USEC=%llu not in [%llu, %llu]",
              us, lo, hi);
    long done = ns_wait((size_t)rl + 1, "READY", "1", WAIT_MS);
    cr_assert_gt(done, rl, "no READY=1 after RELOADING=1:\n%s", ns_dump());
    cr_assert(field(&ns.d[done], "STATUS") &&
                  !strncmp(field(&ns.d[done], "STATUS"), "reload applied", 14),
              "%s", ns_dump());

    ns_read(300);
    cr_assert_eq(ns_count(0, "WATCHDOG", NULL), 0,
                 "WATCHDOG=1 without WATCHDOG_USEC:\n%s", ns_dump());
    cr_assert_eq(th_host_stop(&h, SIGTERM, WAIT_MS), 0, "%s", th_log(&h));
    ns_read(100);
    cr_assert_geq(ns_wait(0, "STOPPING", "1", 0), 0, "no STOPPING=1:\n%s",
                  ns_dump());
    end_test(dir);
}

/* SIGTERM while a worker is still in its 1.5 s init: STOPPING=1 (with
 * STATUS=draining) arrives while the host still waits for it, READY=1
 * never came, and the watchdog pings go on from the drain's wait while
 * the event loop does not turn. */
Test(notify, stopping_at_the_start_of_the_drain, .timeout = 120) {
    char *dir = open_socket();
    setenv("WATCHDOG_USEC", "400000", 1);
    start_host(dir, PIPELINE("slow", FX("fxs_slow_init"), 1, ""));
    cr_assert(th_wait_log(&h, "running 1 pipeline(s)", 1, WAIT_MS), "%s",
              th_log(&h));
    kill(h.pid, SIGTERM);
    long st = ns_wait(0, "STOPPING", "1", 10000);
    cr_assert_geq(st, 0, "no STOPPING=1:\n%s\n%s", ns_dump(), th_log(&h));
    cr_assert(th_host_alive(&h), "STOPPING=1 came only as the host ended:\n%s",
              th_log(&h));
    cr_assert(has((size_t)st, "STATUS", "draining"), "%s", ns_dump());
    /* Signal 0: only wait (a second SIGTERM would exit at once). */
    int64_t stopping_at = ns.d[st].at_ms;
    cr_assert_eq(th_host_stop(&h, 0, WAIT_MS), 0, "%s", th_log(&h));
    int64_t exited_at = th_now_ms();
    ns_read(100);
    int pings = ns_count((size_t)st + 1, "WATCHDOG", "1");
    cr_log_info("drain: %lld ms, %d watchdog pings in it",
                (long long)(exited_at - stopping_at), pings);
    /* The drain lasts about 1 s (what is left of the 1.5 s init), a ping
     * is due every 100 ms. */
    cr_assert_geq(pings, 4, "%d WATCHDOG=1 during a %lld ms drain:\n%s", pings,
                  (long long)(exited_at - stopping_at), ns_dump());
    cr_assert(th_log_count(&h, "slow_init terminated") == 1, "%s", th_log(&h));
    ns_read(100);
    cr_assert_eq(ns_count(0, "READY", "1"), 0,
                 "READY=1 though no worker was ready:\n%s\n%s", ns_dump(),
                 th_log(&h));
    end_test(dir);
}

static bool environ_has(pid_t pid, const char *name) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/environ", (int)pid);
    size_t n = 0;
    char *env = tu_read_file(path, &n);
    cr_assert_not_null(env, "cannot read %s", path);
    size_t k = strlen(name);
    bool found = false, any = false;
    for (size_t i = 0; i < n; i += strlen(env + i) + 1) {
        any = true;
        if (!strncmp(env + i, name, k) && env[i + k] == '=')
            found = true;
    }
    free(env);
    cr_assert(any, "%s is empty", path);
    return found;
}

/* WATCHDOG_USEC=400000: pings every ~100 ms from the loop, none while the
 * host is stopped, again after SIGCONT; the worker's environment has none
 * of the variables. */
Test(notify, watchdog_pings_while_the_loop_turns, .timeout = 120) {
    char *dir = open_socket();
    setenv("WATCHDOG_USEC", "400000", 1);
    start_host(dir, PIPELINE("wd", FX("fx_good"), 1, ""));
    cr_assert_geq(ns_wait(0, "READY", "1", WAIT_MS), 0, "%s\n%s", ns_dump(),
                  th_log(&h));

    size_t from = ns.n;
    int64_t t0 = th_now_ms();
    ns_read(2000);
    int pings = ns_count(from, "WATCHDOG", "1");
    int64_t last = t0, gap = 0;
    for (size_t i = from; i < ns.n; i++)
        if (has(i, "WATCHDOG", "1")) {
            cr_assert(ns.d[i].stamped, "a ping without the kernel's stamp");
            if (ns.d[i].at_ms - last > gap)
                gap = ns.d[i].at_ms - last;
            last = ns.d[i].at_ms;
        }
    cr_log_info("watchdog: %d pings in 2 s, longest gap %lld ms", pings,
                (long long)gap);
    cr_assert_geq(pings, 4, "%d WATCHDOG=1 in 2 s:\n%s", pings, ns_dump());
    /* Under the interval (400 ms), with room for a slow machine; valgrind
     * slows the host's loop too much to bound it. */
    const char *vg = getenv("KHOST_VALGRIND");
    if (!vg || !*vg)
        cr_assert_lt(gap, 400, "a gap of %lld ms between pings",
                     (long long)gap);

    /* Workers get the host's environment without the notify variables
     * (KHOST_LOG_FORMAT, which the host adds, is there: the read works).
     * The host's own /proc environ cannot tell: it shows the block the
     * host was started with, whatever unsetenv did since. */
    pid_t wpid = th_worker_pid(&h, 0);
    cr_assert_gt(wpid, 0, "%s", th_log(&h));
    cr_assert(environ_has(wpid, "KHOST_LOG_FORMAT"));
    cr_assert(!environ_has(wpid, "NOTIFY_SOCKET"), "worker has NOTIFY_SOCKET");
    cr_assert(!environ_has(wpid, "WATCHDOG_USEC"), "worker has WATCHDOG_USEC");
    cr_assert(!environ_has(wpid, "WATCHDOG_PID"), "worker has WATCHDOG_PID");

    /* Stopped, the host sends nothing: wait until the kernel says it is
     * stopped, take what was on its way, then listen for 1 s. */
    kill(h.pid, SIGSTOP);
    char stat_path[64];
    snprintf(stat_path, sizeof stat_path, "/proc/%d/stat", (int)h.pid);
    bool stopped = false;
    for (int i = 0; i < 200 && !stopped; i++) {
        char *st = tu_read_file(stat_path, NULL);
        const char *p = st ? strrchr(st, ')') : NULL;
        stopped = p && p[1] == ' ' && p[2] == 'T';
        free(st);
        if (!stopped)
            th_sleep_ms(10);
    }
    cr_assert(stopped, "the host did not stop");
    ns_read(50);
    from = ns.n;
    ns_read(1000);
    int while_stopped = ns_count(from, "WATCHDOG", NULL);
    kill(h.pid, SIGCONT);
    cr_assert_eq(while_stopped, 0, "%d WATCHDOG=1 while stopped",
                 while_stopped);
    from = ns.n;
    cr_assert_geq(ns_wait(from, "WATCHDOG", "1", 5000), 0,
                  "no WATCHDOG=1 after SIGCONT:\n%s", ns_dump());

    cr_assert_eq(th_host_stop(&h, SIGTERM, WAIT_MS), 0, "%s", th_log(&h));
    end_test(dir);
}

/* WATCHDOG_PID names another process: the watchdog is not ours. */
Test(notify, no_watchdog_for_another_pid, .timeout = 120) {
    char *dir = open_socket();
    setenv("WATCHDOG_USEC", "400000", 1);
    char pid[32];
    snprintf(pid, sizeof pid, "%d", (int)getpid()); /* the test's, not the
                                                       host's */
    setenv("WATCHDOG_PID", pid, 1);
    start_host(dir, PIPELINE("wp", FX("fx_good"), 1, ""));
    cr_assert_geq(ns_wait(0, "READY", "1", WAIT_MS), 0, "%s\n%s", ns_dump(),
                  th_log(&h));
    ns_read(1500);
    cr_assert_eq(ns_count(0, "WATCHDOG", NULL), 0,
                 "WATCHDOG=1 though WATCHDOG_PID is not the host:\n%s",
                 ns_dump());
    cr_assert_eq(th_host_stop(&h, SIGTERM, WAIT_MS), 0, "%s", th_log(&h));
    end_test(dir);
}

#define FAILING                                                                \
    PIPELINE("bad", FX("fx_init_fails"), 1,                                    \
             "max_restarts = 2\nmax_seconds = 60\non_exhausted = pause\n")

/* A pipeline that FAILED does not hold READY=1 back; STATUS names it. */
Test(notify, failed_pipeline_is_ready_and_named, .timeout = 120) {
    char *dir = open_socket();
    start_host(dir, PIPELINE("good", FX("fx_good"), 1, "") FAILING);
    long ready = ns_wait(0, "READY", "1", WAIT_MS);
    cr_assert_geq(ready, 0, "no READY=1:\n%s\n%s", ns_dump(), th_log(&h));
    cr_assert_eq(th_log_count(&h, "pipeline=bad FAILED"), 1, "%s", th_log(&h));
    cr_assert(has((size_t)ready, "STATUS",
                  "pipeline bad FAILED (on_exhausted=pause), 1 of 2 pipelines "
                  "running, 1 of 2 workers ready"),
              "%s", ns_dump());
    cr_assert_eq(th_host_stop(&h, SIGTERM, WAIT_MS), 0, "%s", th_log(&h));
    end_test(dir);
}

Test(notify, all_pipelines_failed, .timeout = 120) {
    char *dir = open_socket();
    start_host(dir, FAILING);
    long ready = ns_wait(0, "READY", "1", WAIT_MS);
    cr_assert_geq(ready, 0, "no READY=1:\n%s\n%s", ns_dump(), th_log(&h));
    cr_assert(has((size_t)ready, "STATUS", "all pipelines FAILED (bad)"), "%s",
              ns_dump());
    cr_assert_eq(th_host_stop(&h, SIGTERM, WAIT_MS), 0, "%s", th_log(&h));
    end_test(dir);
}

/* A NOTIFY_SOCKET that is not an address: one warning, the host runs. */
Test(notify, unusable_socket_is_one_warning, .timeout = 120) {
    char *dir = tu_tmpdir();
    snprintf(current_dir, sizeof current_dir, "%s", dir);
    setenv("NOTIFY_SOCKET", "relative/path", 1);
    start_host(dir, PIPELINE("u", FX("fx_good"), 1, ""));
    cr_assert(th_wait_log(&h, " ready: plugin", 1, WAIT_MS), "%s", th_log(&h));
    cr_assert_eq(th_log_count(&h, "NOTIFY_SOCKET=relative/path cannot be used "
                                  "(not an absolute path nor an abstract "
                                  "name (@...)): no systemd notifications"),
                 1, "%s", th_log(&h));
    cr_assert_eq(th_host_stop(&h, SIGTERM, WAIT_MS), 0, "%s", th_log(&h));
    th_host_free(&h);
    memset(&h, 0, sizeof h);
    tu_rmdir(dir);
    free(dir);
    current_dir[0] = '\0';
}

/* `khost reload` over the control socket, swapping to a plugin whose init
 * takes 1.5 s: RELOADING=1 when it begins, READY=1 only once the new
 * workers passed init (the reload's outcome), and the CLI exits 0 then. */
Test(notify, socket_reload_is_ready_when_its_outcome_is, .timeout = 120) {
    char *dir = open_socket();
    unsetenv("WATCHDOG_USEC");
    char *so, *pipes;
    cr_assert_neq(asprintf(&so, "%s/plugin.so", dir), -1);
    tu_cp_over(FX("fx_good"), so);
    cr_assert_neq(asprintf(&pipes,
                           "[pipeline.sw]\ntopics = t-sw\ngroup = g-sw\n"
                           "plugin = %s\nworkers = 2\n",
                           so),
                  -1);
    start_host(dir, pipes);
    cr_assert_geq(ns_wait(0, "READY", "1", WAIT_MS), 0, "%s", ns_dump());
    tu_cp_over(FX("fxs_slow_init"), so);
    size_t before = ns.n;
    pid_t cli = fork();
    cr_assert_geq(cli, 0);
    if (cli == 0) {
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 1);
        execl(KHOST_BUILD_DIR "/khost", "khost", "reload", "-c", h.cfg_path,
              (char *)NULL);
        _exit(127);
    }
    long rl = ns_wait(before, "RELOADING", "1", WAIT_MS);
    cr_assert_geq(rl, 0, "no RELOADING=1:\n%s", ns_dump());
    long done = ns_wait((size_t)rl + 1, "READY", "1", WAIT_MS);
    cr_assert_gt(done, rl, "no READY=1 after RELOADING=1:\n%s", ns_dump());
    int64_t took = ns.d[done].at_ms - ns.d[rl].at_ms;
    cr_log_info("RELOADING=1 to READY=1: %lld ms (init takes 1500 ms)",
                (long long)took);
    cr_assert_geq(took, 1200,
                  "READY=1 came %lld ms after RELOADING=1, before "
                  "the new workers' 1.5 s init:\n%s",
                  (long long)took, ns_dump());
    cr_assert(th_log_count(&h, "new worker=1 pid=") >= 1, "%s", th_log(&h));
    cr_assert(field(&ns.d[done], "STATUS") &&
                  !strncmp(field(&ns.d[done], "STATUS"), "reload applied", 14),
              "%s", ns_dump());
    int st;
    cr_assert_eq(waitpid(cli, &st, 0), cli);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "reload exited %d",
              WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    cr_assert_eq(th_host_stop(&h, SIGTERM, WAIT_MS), 0, "%s", th_log(&h));
    free(so);
    free(pipes);
    end_test(dir);
}
