/*
 * worker: a real `khost worker` process driven through its channel, with
 * the test playing the host: socketpair on fd 3, a memfd status page on
 * fd 4, and the worker's stderr captured to a file so log lines can be
 * checked. Plugins are the shipped fault plugin and the fxw_* fixtures,
 * which record every callback to a file.
 */
#define _GNU_SOURCE
#include "testutil.h"
#include "transport.h"
#include "worker.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define KHOST KHOST_BUILD_DIR "/khost"
#define FAULT KHOST_BUILD_DIR "/plugins/fault.so"
#define FX(name) KHOST_FIXTURE_DIR "/" name ".so"

extern char **environ;

typedef struct wk {
    pid_t pid;
    kh_conn conn;
    kh_worker_status *status;
    size_t map_size; /* the status page, and the ring after it */
    uint8_t *ring;   /* NULL: no message ring */
    size_t ring_size;
    char *dir;
    char *log_path;
    char *record; /* dir/record, for plugins that record */
} wk;

/* Spawn a worker with a message ring of ring_size bytes after its status
 * page (0: none); host_pid 0 means this process (its real parent). */
static void wk_spawn_ring(wk *w, long host_pid, size_t ring_size) {
    memset(w, 0, sizeof *w);
    w->dir = tu_tmpdir();
    cr_assert_not_null(w->dir);
    cr_assert_gt(asprintf(&w->log_path, "%s/worker.log", w->dir), 0);
    cr_assert_gt(asprintf(&w->record, "%s/record", w->dir), 0);

    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    int memfd = memfd_create("khost-status", MFD_CLOEXEC);
    cr_assert_geq(memfd, 0);
    w->map_size = KH_RING_OFFSET + ring_size;
    cr_assert_eq(ftruncate(memfd, (off_t)w->map_size), 0);
    int logfd =
        open(w->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    cr_assert_geq(logfd, 0);
    /* dup2 onto the same number would keep FD_CLOEXEC: move the child's
     * ends well above 4 first. */
    int child_sock = fcntl(sv[1], F_DUPFD_CLOEXEC, 100);
    int child_mem = fcntl(memfd, F_DUPFD_CLOEXEC, 100);
    close(sv[1]);

    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, child_sock, KH_WORKER_CHANNEL_FD);
    posix_spawn_file_actions_adddup2(&fa, child_mem, KH_WORKER_STATUS_FD);
    posix_spawn_file_actions_adddup2(&fa, logfd, 2);
    char pid_arg[32];
    snprintf(pid_arg, sizeof pid_arg, "%ld",
             host_pid ? host_pid : (long)getpid());
    char *argv[] = {KHOST,   "worker", "--host-pid", pid_arg,
                    "--tag", "wtest",  NULL};
    int rc = posix_spawn(&w->pid, KHOST, &fa, NULL, argv, environ);
    cr_assert_eq(rc, 0, "posix_spawn: %s", strerror(rc));
    posix_spawn_file_actions_destroy(&fa);
    close(child_sock);
    close(child_mem);
    close(logfd);

    w->status =
        mmap(NULL, w->map_size, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
    cr_assert_neq(w->status, MAP_FAILED);
    if (ring_size) {
        w->ring = (uint8_t *)w->status + KH_RING_OFFSET;
        w->ring_size = ring_size;
    }
    close(memfd);
    conn_init(&w->conn, sv[0], KH_FRAME_MAX_FROM_WORKER);
}

static void wk_spawn(wk *w, long host_pid) {
    wk_spawn_ring(w, host_pid, 0);
}

static char *wk_log(const wk *w) {
    char *s = tu_read_file(w->log_path, NULL);
    return s ? s : strdup("");
}

static char *wk_record(const wk *w) {
    char *s = tu_read_file(w->record, NULL);
    return s ? s : strdup("");
}

static void wk_free(wk *w) {
    if (w->pid > 0) {
        kill(w->pid, SIGKILL);
        waitpid(w->pid, NULL, 0);
    }
    conn_close(&w->conn);
    munmap(w->status, w->map_size);
    tu_rmdir(w->dir);
    free(w->dir);
    free(w->log_path);
    free(w->record);
}

static void wk_send(wk *w) {
    for (;;) {
        int rc = conn_flush(&w->conn);
        cr_assert_geq(rc, 0, "send: %s", strerror(-rc));
        if (rc == 0)
            return;
        struct pollfd p = {.fd = w->conn.fd, .events = POLLOUT};
        poll(&p, 1, 1000);
    }
}

/* Wait for the worker's exit; returns the exit code or 128+signal. */
static int wk_wait(wk *w, int timeout_ms) {
    int64_t deadline = kh_now_ms() + timeout_ms;
    for (;;) {
        int st;
        pid_t p = waitpid(w->pid, &st, WNOHANG);
        if (p == w->pid) {
            w->pid = 0;
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        }
        if (kh_now_ms() > deadline) {
            char *log = wk_log(w);
            cr_assert_fail("worker did not exit within %d ms; log:\n%s",
                           timeout_ms, log);
        }
        usleep(5000);
    }
}

/* Next frame from the worker, or type 0 after timeout_ms. The reader is
 * valid until the next call. */
static uint16_t wk_recv(wk *w, kh_reader *r, int timeout_ms) {
    int64_t deadline = kh_now_ms() + timeout_ms;
    for (;;) {
        uint16_t type;
        int rc = conn_next_frame(&w->conn, &type, r);
        cr_assert_geq(rc, 0, "bad frame from the worker");
        if (rc == 1)
            return type;
        int64_t left = deadline - kh_now_ms();
        if (left <= 0)
            return 0;
        struct pollfd p = {.fd = w->conn.fd, .events = POLLIN};
        if (poll(&p, 1, (int)left) <= 0)
            continue;
        long n = conn_fill(&w->conn);
        if (n == 0)
            return 0; /* EOF */
    }
}

/* The last reason a plugin gave with set_error (ERROR frames come before
 * the RESULTS that carry the answer, so readers collect them on the way). */
static char wk_last_error[1024];

static uint16_t wk_expect(wk *w, uint16_t want, kh_reader *r) {
    uint16_t t = wk_recv(w, r, 10000);
    while (t == KH_F_ERROR && want != KH_F_ERROR) {
        tr_get_u64(r);
        size_t len;
        const uint8_t *text = tr_get_str(r, &len);
        snprintf(wk_last_error, sizeof wk_last_error, "%.*s", (int)len,
                 (const char *)text);
        t = wk_recv(w, r, 10000);
    }
    if (t != want) {
        char *log = wk_log(w);
        cr_assert_fail("expected frame %u, got %u; worker log:\n%s", want, t,
                       log);
    }
    return t;
}

/* INIT with key, value, ..., NULL. */
static void wk_init(wk *w, const char *plugin, uint32_t tick_ms, ...) {
    kh_buf *b = &w->conn.out;
    size_t s = tr_frame_begin(b, KH_F_INIT);
    tr_put_str(b, "pipe");
    tr_put_u32(b, 2);
    tr_put_str(b, plugin);
    tr_put_u32(b, tick_ms);
    size_t count_pos = b->len;
    tr_put_u32(b, 0);
    va_list ap;
    va_start(ap, tick_ms);
    uint32_t n = 0;
    const char *k;
    while ((k = va_arg(ap, const char *))) {
        tr_put_str(b, k);
        tr_put_str(b, va_arg(ap, const char *));
        n++;
    }
    va_end(ap);
    tr_patch_u32(b, count_pos, n);
    tr_frame_end(b, s);
    wk_send(w);
}

/* Returns the plugin flags READY carries. */
static uint64_t wk_ready(wk *w, const char *name) {
    kh_reader r;
    wk_expect(w, KH_F_READY, &r);
    size_t len;
    const uint8_t *p = tr_get_str(&r, &len);
    cr_assert_eq(len, strlen(name));
    cr_assert(!memcmp(p, name, len));
    tr_get_str(&r, &len);
    uint64_t flags = tr_get_u64(&r);
    cr_assert_eq(r.error, 0);
    cr_assert_eq(r.left, 0);
    return flags;
}

typedef struct tmsg {
    uint64_t token;
    int32_t partition;
    const char *value;
} tmsg;

static void put_messages(kh_buf *b, const tmsg *m, size_t n) {
    size_t s = tr_frame_begin(b, KH_F_MESSAGES);
    tr_put_u32(b, (uint32_t)n);
    for (size_t i = 0; i < n; i++) {
        tr_put_u64(b, m[i].token);
        tr_put_u32(b, 1);
        tr_put_str(b, "t");
        tr_put_i32(b, m[i].partition);
        tr_put_i64(b, (int64_t)m[i].token * 10);
        tr_put_i64(b, 1000);
        tr_put_i32(b, KHOST_TIMESTAMP_CREATE_TIME);
        tr_put_blob(b, NULL, 0);
        tr_put_blob(b, m[i].value, strlen(m[i].value));
        tr_put_u32(b, 0);
    }
    tr_frame_end(b, s);
}

static void wk_messages(wk *w, const tmsg *m, size_t n) {
    put_messages(&w->conn.out, m, n);
    wk_send(w);
}

/* Put a MESSAGES frame into the ring at absolute position pos and send
 * the RING frame naming it with length len (0: the frame's own). */
static void wk_ring_messages(wk *w, uint64_t pos, uint32_t len, const tmsg *m,
                             size_t n) {
    kh_buf f = {0};
    put_messages(&f, m, n);
    size_t at = (size_t)(pos % w->ring_size);
    cr_assert_leq(at + f.len, w->ring_size);
    memcpy(w->ring + at, f.data, f.len);
    size_t s = tr_frame_begin(&w->conn.out, KH_F_RING);
    tr_put_u64(&w->conn.out, pos);
    tr_put_u32(&w->conn.out, len ? len : (uint32_t)f.len);
    tr_frame_end(&w->conn.out, s);
    buf_free(&f);
    wk_send(w);
}

/* Encoded size of a wk_messages frame. */
static uint32_t frame_size(const tmsg *m, size_t n) {
    kh_buf f = {0};
    put_messages(&f, m, n);
    uint32_t len = (uint32_t)f.len;
    buf_free(&f);
    return len;
}

static void wk_simple(wk *w, kh_frame_type type) {
    size_t s = tr_frame_begin(&w->conn.out, type);
    tr_frame_end(&w->conn.out, s);
    wk_send(w);
}

static void wk_partition(wk *w, kh_frame_type type, const char *topic,
                         int32_t p) {
    size_t s = tr_frame_begin(&w->conn.out, type);
    tr_put_str(&w->conn.out, topic);
    tr_put_i32(&w->conn.out, p);
    tr_frame_end(&w->conn.out, s);
    wk_send(w);
}

/* Read RESULTS frames (a worker may split one batch's results over
 * several, in order) and compare them with (token, result) pairs. */
static void wk_results(wk *w, const uint64_t *tokens, const uint8_t *want,
                       size_t n) {
    size_t i = 0;
    while (i < n) {
        kh_reader r;
        wk_expect(w, KH_F_RESULTS, &r);
        uint32_t k = tr_get_u32(&r);
        cr_assert(k > 0 && i + k <= n, "RESULTS frame of %u with %zu left", k,
                  n - i);
        for (uint32_t j = 0; j < k; j++, i++) {
            uint64_t t = tr_get_u64(&r);
            uint8_t res = tr_get_u8(&r);
            cr_assert_eq(t, tokens[i], "result %zu: token %" PRIu64, i, t);
            cr_assert_eq(res, want[i], "token %" PRIu64 ": result %u, want %u",
                         t, res, want[i]);
        }
        cr_assert_eq(r.left, 0);
        cr_assert_eq(r.error, 0);
    }
}

static void wk_shutdown_ok(wk *w) {
    wk_simple(w, KH_F_SHUTDOWN);
    int code = wk_wait(w, 10000);
    char *log = wk_log(w);
    cr_assert_eq(code, 0, "exit %d; log:\n%s", code, log);
    cr_assert(strstr(log, "terminated"), "%s", log);
    free(log);
}

/* ------------------------------------------------------------------ */

Test(worker, results_and_partition_ordering) {
    wk w;
    wk_spawn(&w, 0);
    wk_init(&w, FAULT, 0, "record", w.record, "crash_on", "BOOM", "defer_on",
            "LATER", "retry_on", "AGAIN", NULL);
    wk_ready(&w, "fault");
    char *log = wk_log(&w);
    cr_assert(strstr(log, "worker pipe/2 pid="), "%s", log);
    cr_assert(strstr(log, "plugin fault "), "%s", log);
    cr_assert(strstr(log, " ready"), "%s", log);
    free(log);

    const tmsg m[] = {
        {11, 0, "a"}, {12, 1, "b"}, {13, 0, "xAGAINx"}, {14, 1, "LATER"},
        {15, 0, "c"}, {16, 1, "d"}, {17, 0, "BOOM"},
    };
    wk_messages(&w, m, 7);
    const uint64_t tok[] = {11, 12, 13, 14, 15, 16, 17};
    const uint8_t want[] = {KHOST_ACK,        KHOST_ACK,         KHOST_RETRY,
                            KHOST_DEFERRED,   KH_RESULT_SKIPPED, KHOST_ACK,
                            KH_RESULT_SKIPPED};
    wk_last_error[0] = '\0';
    wk_results(&w, tok, want, 7);
    cr_assert_str_eq(wk_last_error, "fault: retry_on marker found",
                     "the set_error reason travels ahead of the results");
    cr_assert_eq(w.status->call_started_ms, 0, "left the call");
    cr_assert_eq(w.status->calls, 5);

    wk_shutdown_ok(&w);
    char *rec = wk_record(&w);
    cr_assert_eq(tu_count(rec, "\n"), 5, "%s", rec);
    cr_assert(strstr(rec, "\"value\":\"xAGAINx\""), "%s", rec);
    cr_assert_null(strstr(rec, "\"value\":\"c\""), "%s", rec);
    cr_assert_null(strstr(rec, "BOOM"), "%s", rec);
    free(rec);
    wk_free(&w);
}

Test(worker, crash_leaves_token_on_status_page) {
    wk w;
    wk_spawn(&w, 0);
    wk_init(&w, FAULT, 0, "record", w.record, "crash_on", "BOOM", NULL);
    wk_ready(&w, "fault");
    const tmsg m[] = {{100, 0, "fine"}, {101, 1, "xBOOM"}, {102, 0, "never"}};
    wk_messages(&w, m, 3);
    int code = wk_wait(&w, 10000);
    cr_assert_eq(code, 128 + SIGSEGV, "exit %d", code);
    uint64_t token;
    uint32_t count;
    int64_t started;
    status_read(w.status, &token, &count, &started);
    cr_assert_eq(token, 101);
    cr_assert_eq(count, 1);
    cr_assert_gt(started, 0);
    kh_reader r;
    cr_assert_eq(wk_recv(&w, &r, 200), 0, "no RESULTS after a crash");
    char *rec = wk_record(&w);
    cr_assert_eq(tu_count(rec, "\n"), 2, "%s", rec);
    free(rec);
    wk_free(&w);
}

static void expect_init_failed(wk *w, const char *needle) {
    kh_reader r;
    wk_expect(w, KH_F_INIT_FAILED, &r);
    size_t len;
    const uint8_t *p = tr_get_str(&r, &len);
    cr_assert_eq(r.error, 0);
    char *msg = strndup((const char *)p, len);
    cr_assert(strstr(msg, needle), "INIT_FAILED says: %s", msg);
    int code = wk_wait(w, 10000);
    cr_assert_eq(code, KH_EXIT_INIT_FAILED);
    char *log = wk_log(w);
    cr_assert(strstr(log, needle), "%s", log);
    free(log);
    free(msg);
}

Test(worker, init_failure_reports_plugin_message) {
    wk w;
    wk_spawn(&w, 0);
    wk_init(&w, FX("fx_init_fails"), 0, NULL);
    expect_init_failed(&w, "database unreachable: connection refused");
    wk_free(&w);
}

Test(worker, init_failure_on_bad_config) {
    wk w;
    wk_spawn(&w, 0);
    wk_init(&w, FAULT, 0, "slow_ms", "abc", NULL);
    expect_init_failed(&w, "slow_ms must be a whole number");
    wk_free(&w);
}

Test(worker, missing_plugin_file) {
    wk w;
    wk_spawn(&w, 0);
    wk_init(&w, KHOST_FIXTURE_DIR "/no_such_plugin.so", 0, NULL);
    expect_init_failed(&w, "No such file or directory");
    wk_free(&w);
}

Test(worker, deferred_acks_flushed_by_tick) {
    wk w;
    wk_spawn(&w, 0);
    wk_init(&w, FAULT, 50, "defer_all", "true", NULL);
    wk_ready(&w, "fault");
    enum { N = 200 };
    tmsg m[N];
    uint64_t tok[N];
    uint8_t want[N];
    for (int i = 0; i < N; i++) {
        m[i] = (tmsg){1000 + (uint64_t)i, i % 3, "v"};
        tok[i] = m[i].token;
        want[i] = KHOST_DEFERRED;
    }
    wk_messages(&w, m, N / 2);
    wk_results(&w, tok, want, N / 2);
    wk_messages(&w, m + N / 2, N / 2);

    int seen[N] = {0};
    int total = 0, results = 0;
    int64_t deadline = kh_now_ms() + 5000;
    while ((total < N || !results) && kh_now_ms() < deadline) {
        kh_reader r;
        uint16_t t = wk_recv(&w, &r, 500);
        if (t == KH_F_RESULTS) {
            cr_assert_eq(tr_get_u32(&r), N / 2);
            results = 1;
            continue;
        }
        if (t != KH_F_ACKS)
            continue;
        uint32_t n = tr_get_u32(&r);
        for (uint32_t i = 0; i < n; i++) {
            uint64_t a = tr_get_u64(&r);
            cr_assert(a >= 1000 && a < 1000 + N, "bogus ack %" PRIu64, a);
            /* The host must have the RESULTS that said DEFERRED first. */
            cr_assert(a < 1000 + N / 2 || results, "ack before result");
            seen[a - 1000]++;
            total++;
        }
        cr_assert_eq(r.error, 0);
    }
    for (int i = 0; i < N; i++)
        cr_assert_eq(seen[i], 1, "token %d acked %d times", 1000 + i, seen[i]);
    kh_reader r;
    cr_assert_eq(wk_recv(&w, &r, 200), 0, "nothing more to say");
    wk_shutdown_ok(&w);
    wk_free(&w);
}

Test(worker, garbage_is_a_protocol_error) {
    wk w;
    wk_spawn(&w, 0);
    tr_put_str(&w.conn.out, "this is not a frame at all");
    wk_send(&w);
    cr_assert_eq(wk_wait(&w, 10000), KH_EXIT_PROTOCOL);
    wk_free(&w);
}

Test(worker, unknown_frame_after_init_is_a_protocol_error) {
    wk w;
    wk_spawn(&w, 0);
    wk_init(&w, FX("fxw_events"), 0, NULL);
    wk_ready(&w, "fxw_events");
    wk_simple(&w, KH_F_READY); /* a worker->host type */
    cr_assert_eq(wk_wait(&w, 10000), KH_EXIT_PROTOCOL);
    char *log = wk_log(&w);
    cr_assert(strstr(log, "protocol error"), "%s", log);
    free(log);
    wk_free(&w);
}

Test(worker, truncated_messages_frame_is_a_protocol_error) {
    wk w;
    wk_spawn(&w, 0);
    wk_init(&w, FX("fxw_events"), 0, NULL);
    wk_ready(&w, "fxw_events");
    size_t s = tr_frame_begin(&w.conn.out, KH_F_MESSAGES);
    tr_put_u32(&w.conn.out, 1);
    tr_put_u64(&w.conn.out, 5);
    tr_frame_end(&w.conn.out, s);
    wk_send(&w);
    cr_assert_eq(wk_wait(&w, 10000), KH_EXIT_PROTOCOL);
    wk_free(&w);
}

/* READY carries the descriptor's flags as init left them (ABI 1.2). */
Test(worker, ready_carries_the_plugin_flags) {
    const char *no_headers[] = {NULL, "false", "true"};
    for (int i = 0; i < 3; i++) {
        wk w;
        wk_spawn(&w, 0);
        if (no_headers[i])
            wk_init(&w, FAULT, 0, "no_headers", no_headers[i], NULL);
        else
            wk_init(&w, FAULT, 0, NULL);
        uint64_t flags = wk_ready(&w, "fault");
        cr_assert_eq(flags, i == 2 ? KHOST_PLUGIN_NO_HEADERS : 0,
                     "no_headers=%s: flags %" PRIu64,
                     no_headers[i] ? no_headers[i] : "(unset)", flags);
        wk_shutdown_ok(&w);
        wk_free(&w);
    }
}

Test(worker, exits_when_host_closes_channel) {
    wk w;
    wk_spawn(&w, 0);
    wk_init(&w, FX("fxw_events"), 0, "record", w.record, NULL);
    wk_ready(&w, "fxw_events");
    close(w.conn.fd);
    w.conn.fd = -1;
    cr_assert_eq(wk_wait(&w, 5000), 0);
    char *rec = wk_record(&w);
    cr_assert_null(strstr(rec, "terminate"), "%s", rec);
    free(rec);
    wk_free(&w);
}

Test(worker, exits_when_host_closes_before_init) {
    wk w;
    wk_spawn(&w, 0);
    close(w.conn.fd);
    w.conn.fd = -1;
    cr_assert_eq(wk_wait(&w, 5000), 0);
    wk_free(&w);
}

Test(worker, refuses_a_host_that_is_not_its_parent) {
    wk w;
    wk_spawn(&w, (long)getppid() > 1 ? (long)getppid() : 1);
    int64_t t0 = kh_now_ms();
    cr_assert_eq(wk_wait(&w, 5000), 1);
    cr_assert_lt(kh_now_ms() - t0, 2000);
    wk_free(&w);
}

Test(worker, message_fields_config_and_callbacks) {
    wk w;
    wk_spawn(&w, 0);
    wk_init(&w, FX("fxw_events"), 0, "record", w.record, "colour", "blue",
            NULL);
    wk_ready(&w, "fxw_events");

    kh_buf *b = &w.conn.out;
    size_t s = tr_frame_begin(b, KH_F_MESSAGES);
    tr_put_u32(b, 1);
    tr_put_u64(b, 77);
    tr_put_u32(b, 4);
    tr_put_str(b, "orders");
    tr_put_i32(b, 9);
    tr_put_i64(b, 123456789);
    tr_put_i64(b, 1700000000000LL);
    tr_put_i32(b, KHOST_TIMESTAMP_LOG_APPEND_TIME);
    tr_put_blob(b, "kk", 2);
    tr_put_blob(b, "ACK", 3);
    tr_put_u32(b, 2);
    tr_put_str(b, "h1");
    tr_put_blob(b, "v1", 2);
    tr_put_str(b, "h2");
    tr_put_blob(b, NULL, 0);
    tr_frame_end(b, s);
    wk_send(&w);
    const uint64_t tok[] = {77};
    const uint8_t want[] = {KHOST_ACK};
    wk_results(&w, tok, want, 1);

    wk_partition(&w, KH_F_ASSIGN, "orders", 9);
    wk_partition(&w, KH_F_REVOKE, "orders", 9);
    wk_shutdown_ok(&w);

    char *rec = wk_record(&w);
    char expect[1024];
    snprintf(expect, sizeof expect,
             "init pipe/2 api=%zu abi=1.2\n"
             "config record=%s\n"
             "config colour=blue\n"
             "missing=null\n"
             "msg token=77 size=%zu topic=orders p=9 off=123456789 "
             "ts=1700000000000/2 attempt=4 key=kk value_len=3 hdrs=2 h1=v1 "
             "h2=NULL\n"
             "assign orders 9\n"
             "revoke orders 9\n"
             "tick\n"
             "terminate\n",
             sizeof(khost_host_api), w.record, sizeof(khost_message));
    cr_assert_str_eq(rec, expect);
    char *log = wk_log(&w);
    cr_assert(strstr(log, "fxw says hello"), "%s", log);
    free(log);
    free(rec);
    wk_free(&w);
}

Test(worker, ack_validation_and_order) {
    wk w;
    wk_spawn(&w, 0);
    wk_init(&w, FX("fxw_events"), 0, "record", w.record, NULL);
    wk_ready(&w, "fxw_events");
    /* 1 is deferred, then acked by message 3 (twice: the second is
     * refused); 2 is a plain ack, never deferred, so acking it fails. */
    const tmsg m[] = {{1, 0, "DEFER"}, {2, 1, "ACK"}, {3, 1, "ACK:1"},
                      {4, 1, "ACK:2"}, {5, 0, "BAD"}, {6, 0, "ACK"}};
    wk_messages(&w, m, 6);
    const uint64_t tok[] = {1, 2, 3, 4, 5, 6};
    const uint8_t want[] = {KHOST_DEFERRED, KHOST_ACK,  KHOST_ACK,
                            KHOST_ACK,      KHOST_FAIL, KH_RESULT_SKIPPED};
    wk_results(&w, tok, want, 6);
    kh_reader r;
    wk_expect(&w, KH_F_ACKS, &r);
    cr_assert_eq(tr_get_u32(&r), 1);
    cr_assert_eq(tr_get_u64(&r), 1);
    cr_assert_eq(wk_recv(&w, &r, 200), 0);

    /* Deferred tokens acked in on_revoke go out right after it. */
    const tmsg m2[] = {{7, 2, "DEFER"}, {8, 2, "DEFER"}};
    wk_messages(&w, m2, 2);
    const uint8_t want2[] = {KHOST_DEFERRED, KHOST_DEFERRED};
    const uint64_t tok2[] = {7, 8};
    wk_results(&w, tok2, want2, 2);
    wk_partition(&w, KH_F_REVOKE, "t", 2);
    wk_expect(&w, KH_F_ACKS, &r);
    cr_assert_eq(tr_get_u32(&r), 2);
    cr_assert_eq(tr_get_u64(&r), 7);
    cr_assert_eq(tr_get_u64(&r), 8);
    wk_shutdown_ok(&w);

    char *rec = wk_record(&w);
    cr_assert(strstr(rec, "ack 1 0 -22\n"), "%s", rec);
    cr_assert(strstr(rec, "ack 2 -22 -22\n"), "%s", rec);
    cr_assert(strstr(rec, "revoke-ack 7 0\nrevoke-ack 8 0\n"), "%s", rec);
    free(rec);
    char *log = wk_log(&w);
    cr_assert(strstr(log, "invalid result 7"), "%s", log);
    free(log);
    wk_free(&w);
}

/* ABI contract: acking the token of the message being handled, then
 * returning KHOST_DEFERRED, counts as an ack (before, the ack was refused
 * in silence and the token stayed deferred for ever, holding the
 * partition's commit). The worker answers ACK and sends no ACKS frame. */
static void self_ack(const char *fixture) {
    wk w;
    char path[512];
    snprintf(path, sizeof path, "%s/%s.so", KHOST_FIXTURE_DIR, fixture);
    wk_spawn(&w, 0);
    wk_init(&w, path, 0, "record", w.record, NULL);
    wk_ready(&w, fixture);
    const tmsg m[] = {{1, 0, "SELFACK"}, {2, 0, "DEFER"}, {3, 0, "SELFACK"}};
    wk_messages(&w, m, 3);
    const uint64_t tok[] = {1, 2, 3};
    const uint8_t want[] = {KHOST_ACK, KHOST_DEFERRED, KHOST_ACK};
    wk_results(&w, tok, want, 3);
    kh_reader r;
    cr_assert_eq(wk_recv(&w, &r, 200), 0, "no ACKS for self-acked tokens");
    /* Acked already: a later ack of the same token is refused. */
    const tmsg m2[] = {{4, 0, "ACK:1"}};
    wk_messages(&w, m2, 1);
    const uint64_t tok2[] = {4};
    const uint8_t want2[] = {KHOST_ACK};
    wk_results(&w, tok2, want2, 1);
    wk_shutdown_ok(&w);
    char *rec = wk_record(&w);
    cr_assert(strstr(rec, "selfack 1 0 -22\n"), "%s", rec);
    cr_assert(strstr(rec, "selfack 3 0 -22\n"), "%s", rec);
    cr_assert(strstr(rec, "ack 1 -22 -22\n"), "%s", rec);
    free(rec);
    wk_free(&w);
}

Test(worker, self_ack_before_deferred_counts) {
    self_ack("fxw_events");
}
Test(worker, self_ack_in_a_batch_call_counts) {
    self_ack("fxw_batch");
}

Test(worker, tick_runs_and_precedes_terminate) {
    wk w;
    wk_spawn(&w, 0);
    wk_init(&w, FX("fxw_events"), 30, "record", w.record, NULL);
    wk_ready(&w, "fxw_events");
    usleep(300000);
    wk_shutdown_ok(&w);
    char *rec = wk_record(&w);
    /* ~10 are due; a loaded machine may deliver fewer, but never one. */
    cr_assert_geq(tu_count(rec, "tick\n"), 3, "%s", rec);
    size_t len = strlen(rec);
    cr_assert(len > 15 && !strcmp(rec + len - 15, "tick\nterminate\n"), "%s",
              rec);
    free(rec);
    wk_free(&w);
}

Test(worker, no_tick_when_interval_is_zero) {
    wk w;
    wk_spawn(&w, 0);
    wk_init(&w, FX("fxw_events"), 0, "record", w.record, NULL);
    wk_ready(&w, "fxw_events");
    usleep(100000);
    wk_shutdown_ok(&w);
    char *rec = wk_record(&w);
    /* Only the last-chance tick of SHUTDOWN. */
    cr_assert_eq(tu_count(rec, "tick\n"), 1, "%s", rec);
    free(rec);
    wk_free(&w);
}

Test(worker, batch_plugin_results_after_retry_are_skipped) {
    wk w;
    wk_spawn(&w, 0);
    wk_init(&w, FX("fxw_batch"), 0, "record", w.record, NULL);
    wk_ready(&w, "fxw_batch");
    const tmsg m[] = {{1, 0, "ACK"},   {2, 0, "RETRY"}, {3, 1, "ACK"},
                      {4, 0, "ACK"},   {5, 0, "DEFER"}, {6, 1, "FAIL"},
                      {7, 1, "DEFER"}, {8, 2, "DEFER"}};
    wk_messages(&w, m, 8);
    const uint64_t tok[] = {1, 2, 3, 4, 5, 6, 7, 8};
    const uint8_t want[] = {KHOST_ACK,         KHOST_RETRY,       KHOST_ACK,
                            KH_RESULT_SKIPPED, KH_RESULT_SKIPPED, KHOST_FAIL,
                            KH_RESULT_SKIPPED, KHOST_DEFERRED};
    wk_results(&w, tok, want, 8);
    cr_assert_eq(w.status->calls, 1, "one call for the whole batch");
    /* Only 8 really counts as deferred: 5 and 7 will be redelivered. */
    wk_partition(&w, KH_F_REVOKE, "t", 0);
    kh_reader r;
    wk_expect(&w, KH_F_ACKS, &r);
    cr_assert_eq(tr_get_u32(&r), 1);
    cr_assert_eq(tr_get_u64(&r), 8);
    wk_shutdown_ok(&w);
    char *rec = wk_record(&w);
    cr_assert_eq(tu_count(rec, "batch 8\n"), 1, "%s", rec);
    cr_assert(strstr(rec, "revoke-ack 5 -22\nrevoke-ack 7 -22\nrevoke-ack 8 0"),
              "%s", rec);
    free(rec);
    wk_free(&w);
}

Test(worker, batch_crash_points_at_first_message) {
    wk w;
    wk_spawn(&w, 0);
    wk_init(&w, FX("fxw_batch"), 0, NULL);
    wk_ready(&w, "fxw_batch");
    const tmsg m[] = {{40, 0, "ACK"}, {41, 0, "CRASH"}, {42, 1, "ACK"}};
    wk_messages(&w, m, 3);
    cr_assert_eq(wk_wait(&w, 10000), 128 + SIGSEGV);
    uint64_t token;
    uint32_t count;
    int64_t started;
    status_read(w.status, &token, &count, &started);
    cr_assert_eq(token, 40);
    cr_assert_eq(count, 3);
    cr_assert_gt(started, 0);
    wk_free(&w);
}

Test(worker, big_frames) {
    wk w;
    wk_spawn(&w, 0);
    wk_init(&w, FX("fxw_events"), 0, NULL);
    wk_ready(&w, "fxw_events");

    /* One 6 MiB message. */
    size_t big = 6u << 20;
    char *value = malloc(big + 1);
    memset(value, 'x', big);
    value[big] = '\0';
    const tmsg one[] = {{1, 0, value}};
    wk_messages(&w, one, 1);
    const uint64_t tok1[] = {1};
    const uint8_t ack1[] = {KHOST_ACK};
    wk_results(&w, tok1, ack1, 1);
    free(value);

    /* Many small ones in one frame. */
    enum { N = 20000 };
    tmsg *m = calloc(N, sizeof *m);
    uint64_t *tok = calloc(N, sizeof *tok);
    uint8_t *want = calloc(N, 1);
    for (int i = 0; i < N; i++) {
        m[i] = (tmsg){(uint64_t)i + 10, i % 7, "ACK"};
        tok[i] = m[i].token;
        want[i] = KHOST_ACK;
    }
    wk_messages(&w, m, N);
    wk_results(&w, tok, want, N);
    free(m);
    free(tok);
    free(want);
    wk_shutdown_ok(&w);
    wk_free(&w);
}

/* Ring frames are handled in stream order with socket frames, and the
 * worker frees each one (ring_tail) before its last results: a host that
 * has every answer finds the ring empty. */
Test(worker, ring_frames_in_order_and_freed_before_results) {
    wk w;
    wk_spawn_ring(&w, 0, 4096);
    wk_init(&w, FX("fxw_events"), 0, "record", w.record, NULL);
    wk_ready(&w, "fxw_events");
    const tmsg a[] = {{1, 0, "ACK"}, {2, 1, "ACK"}};
    const tmsg b[] = {{3, 0, "ACK"}};
    const tmsg c[] = {{4, 1, "ACK"}, {5, 0, "ACK"}};
    const tmsg d[] = {{6, 1, "ACK"}};
    uint32_t la = frame_size(a, 2), lc = frame_size(c, 2),
             ld = frame_size(d, 1);
    wk_ring_messages(&w, 0, 0, a, 2);
    wk_messages(&w, b, 1); /* on the socket, between two ring frames */
    wk_ring_messages(&w, 2048, 0, c, 2);
    const uint64_t tok[] = {1, 2, 3, 4, 5, 6};
    const uint8_t ack[] = {KHOST_ACK, KHOST_ACK, KHOST_ACK,
                           KHOST_ACK, KHOST_ACK, KHOST_ACK};
    wk_results(&w, tok, ack, 2);
    cr_assert_geq(status_ring_tail(w.status), la);
    wk_results(&w, tok + 2, ack + 2, 3);
    cr_assert_eq(status_ring_tail(w.status), 2048 + lc);
    /* The host skips what is left before the end and starts over at the
     * front of the next lap; the skipped bytes are freed with it. */
    wk_ring_messages(&w, 4096, 0, d, 1);
    wk_results(&w, tok + 5, ack + 5, 1);
    cr_assert_eq(status_ring_tail(w.status), 4096 + ld);
    char *rec = wk_record(&w);
    /* Handled in the order sent, whichever way each frame came. */
    const char *p1 = strstr(rec, "token=1 "), *p3 = strstr(rec, "token=3 "),
               *p5 = strstr(rec, "token=5 "), *p6 = strstr(rec, "token=6 ");
    cr_assert(p1 && p3 && p5 && p6 && p1 < p3 && p3 < p5 && p5 < p6, "%s", rec);
    free(rec);
    wk_shutdown_ok(&w);
    wk_free(&w);
}

/* What a RING frame names is checked: outside the ring, backwards, not a
 * MESSAGES frame, or no ring at all are protocol errors. */
static void bad_ring(size_t ring_size, uint64_t first_pos, uint64_t pos,
                     uint32_t len, bool corrupt, const char *needle) {
    wk w;
    wk_spawn_ring(&w, 0, ring_size);
    wk_init(&w, FX("fxw_events"), 0, NULL);
    wk_ready(&w, "fxw_events");
    const tmsg a[] = {{1, 0, "ACK"}};
    if (first_pos != UINT64_MAX) {
        wk_ring_messages(&w, first_pos, 0, a, 1);
        const uint64_t tok[] = {1};
        const uint8_t ack[] = {KHOST_ACK};
        wk_results(&w, tok, ack, 1);
    }
    const tmsg b[] = {{2, 0, "ACK"}};
    if (ring_size) {
        kh_buf f = {0};
        put_messages(&f, b, 1);
        size_t at = (size_t)(pos % ring_size);
        if (at + f.len <= ring_size)
            memcpy(w.ring + at, f.data, f.len);
        if (corrupt)
            w.ring[at + 4] = KH_F_ASSIGN;
        buf_free(&f);
    }
    size_t s = tr_frame_begin(&w.conn.out, KH_F_RING);
    tr_put_u64(&w.conn.out, pos);
    tr_put_u32(&w.conn.out, len ? len : frame_size(b, 1));
    tr_frame_end(&w.conn.out, s);
    wk_send(&w);
    cr_assert_eq(wk_wait(&w, 10000), KH_EXIT_PROTOCOL);
    char *log = wk_log(&w);
    cr_assert(strstr(log, needle), "%s", log);
    free(log);
    wk_free(&w);
}

Test(worker, ring_frame_without_a_ring) {
    bad_ring(0, UINT64_MAX, 0, 0, false, "without a message ring");
}

Test(worker, ring_frame_past_the_end) {
    bad_ring(4096, UINT64_MAX, 4096 - 10, 0, false, "outside the message ring");
}

Test(worker, ring_frame_going_backwards) {
    bad_ring(4096, 100, 0, 0, false, "outside the message ring");
}

Test(worker, ring_frame_beyond_the_free_space) {
    /* At 0 of the next lap while the first frame (at 100) is not behind
     * a whole ring yet: that would overwrite bytes not yet freed. */
    bad_ring(4096, 100, 4096 + 4096, 0, false, "outside the message ring");
}

Test(worker, ring_frame_with_a_bad_length) {
    bad_ring(4096, UINT64_MAX, 0, 20, false, "does not hold one MESSAGES");
}

Test(worker, ring_frame_not_holding_messages) {
    bad_ring(4096, UINT64_MAX, 0, 0, true, "does not hold one MESSAGES");
}

/* A slow handler's results go early, but the last one of a ring frame
 * only after the frame is freed: a host holding every answer must find
 * the ring empty (it kills a worker that keeps ring space). Each message
 * here takes longer than the early-results interval, so without that rule
 * the last result would go before the tail is stored. That window is a
 * few instructions wide, so this test only sometimes catches a break of
 * the rule; test_metrics' crash-cause counts (a false "lie") caught it
 * first. */
Test(worker, slow_ring_frame_freed_before_its_last_result) {
    wk w;
    wk_spawn_ring(&w, 0, 4096);
    wk_init(&w, FAULT, 0, "slow_ms", "8", NULL);
    wk_ready(&w, "fault");
    const tmsg a[] = {{1, 0, "a"}, {2, 0, "b"}, {3, 0, "c"}};
    uint32_t la = frame_size(a, 3);
    for (int round = 0; round < 5; round++) {
        uint64_t pos = (uint64_t)round * 1024;
        wk_ring_messages(&w, pos, 0, a, 3);
        const uint64_t tok[] = {1, 2, 3};
        const uint8_t ack[] = {KHOST_ACK, KHOST_ACK, KHOST_ACK};
        wk_results(&w, tok, ack, 3);
        cr_assert_eq(status_ring_tail(w.status), pos + la, "round %d", round);
    }
    wk_shutdown_ok(&w);
    wk_free(&w);
}
