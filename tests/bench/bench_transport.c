/*
 * bench_transport: the transport ceiling (issue 14). Host -> worker ->
 * results with no Kafka at all: this process plays the host's side of the
 * channel and drives ONE real worker (host/worker.c, the production loop)
 * started exactly as production starts it (worker_proc_spawn, INIT,
 * READY, ASSIGN), then streams MESSAGES frames of small values with a
 * bounded window in flight, as dispatch.c does, and counts the RESULTS.
 * It shows how much headroom the transport leaves above Kafka.
 *
 *   bench_transport [-n MESSAGES] [-b BATCH,BATCH,...] [-w WINDOW]
 *                   [-s VALUE_BYTES] [-r ROUNDS] [-p PLUGIN] [-R] [-x]
 *
 * -R puts each MESSAGES frame into the worker's message ring and sends a
 * RING frame for it, as dispatch.c does (transport.h, "message ring"):
 * a frame then also stops at the ring's room (tr_ring_place), and the
 * host waits for the worker's ring tail when the ring is full.
 *
 * Defaults: 5,000,000 messages of 100 B, batches 64,256,1024 per frame,
 * window 4096 (KH_MAX_INFLIGHT), 3 rounds, build/plugins/noop.so next to
 * this binary. A fresh worker serves each run. For each batch size it
 * prints the median over the rounds (and the min-max) of msg/s and the
 * CPU seconds of this process (getrusage RUSAGE_SELF) and of the worker
 * (/proc/PID/stat utime+stime, read just before SHUTDOWN), both over the
 * streaming phase only, and one BENCH_TRANSPORT line per run. -x keeps
 * the fd kh_self_exe() execs inheritable, which valgrind
 * --trace-children=yes needs to follow the worker.
 *
 * kh_self_exe() execs /proc/self/exe, i.e. this binary: main() therefore
 * dispatches `worker` the way host/main.c does, so the worker that runs
 * is worker_main.
 */
#define _GNU_SOURCE
#include "log.h"
#include "partition.h"
#include "plugin_loader.h"
#include "transport.h"
#include "worker.h"
#include "worker_proc.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_BATCHES 16
#define MAX_ROUNDS 50
#define TOPIC "bench"
#define PARTITION 0

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double rusage_s(int who) {
    struct rusage ru;
    getrusage(who, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* utime + stime of pid in seconds, -1 when unreadable. */
static double proc_cpu_s(pid_t pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* the comm may hold spaces */
    if (!p)
        return -1;
    unsigned long long ut = 0, st = 0;
    /* after ") ": state(3) ... utime is field 14, stime 15 */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
               &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static void die(const char *what) {
    fprintf(stderr, "bench_transport: %s\n", what);
    exit(1);
}

typedef struct run_result {
    double seconds, msgs_per_s, host_cpu_s, worker_cpu_s, worker_total_s;
    long frames_out, frames_in, polls, reads;
} run_result;

/* Wait for the next frame from the worker (blocking), flushing c->out on
 * the way. Returns the frame type. */
static uint16_t next_frame(kh_conn *c, kh_reader *r) {
    for (;;) {
        uint16_t type;
        int rc = conn_next_frame(c, &type, r);
        if (rc == 1)
            return type;
        if (rc < 0)
            die("the worker sent a bad frame");
        short ev = POLLIN;
        if (buf_pending(&c->out)) {
            int f = conn_flush(c);
            if (f < 0)
                die("write to the worker failed");
            if (f == 1)
                ev |= POLLOUT;
        }
        struct pollfd pfd = {.fd = c->fd, .events = ev};
        int n = poll(&pfd, 1, 30000);
        if (n == 0)
            die("the worker did not answer within 30 s");
        if (n < 0 && errno != EINTR)
            die("poll failed");
        long got = conn_fill(c);
        if (got == 0)
            die("the worker closed the channel");
        if (got < 0 && got != -EAGAIN)
            die("read from the worker failed");
    }
}

/* One MESSAGES frame of n messages, tokens from *token on, laid out as
 * tr_put_kafka_message lays out a Kafka message (no headers, no key). */
static void put_frame(kh_buf *b, uint32_t n, uint64_t *token, int64_t *offset,
                      const uint8_t *value, size_t value_len, int64_t ts_ms) {
    size_t start = tr_frame_begin(b, KH_F_MESSAGES);
    tr_put_u32(b, n);
    for (uint32_t i = 0; i < n; i++) {
        tr_put_u64(b, (*token)++);
        tr_put_u32(b, 1); /* attempt */
        tr_put_str(b, TOPIC);
        tr_put_i32(b, PARTITION);
        tr_put_i64(b, (*offset)++);
        tr_put_i64(b, ts_ms);
        tr_put_i32(b, KHOST_TIMESTAMP_CREATE_TIME);
        tr_put_blob(b, NULL, 0); /* key: null */
        tr_put_blob(b, value, value_len);
        tr_put_u32(b, 0); /* headers */
    }
    tr_frame_end(b, start);
}

/* Bytes one put_frame message takes. */
static size_t message_size(size_t value_len) {
    return 8 + 4 + 4 + strlen(TOPIC) + 4 + 8 + 8 + 4 + 4 + 4 + value_len + 4;
}

static void one_run(const char *plugin, long total, uint32_t batch,
                    uint32_t window, size_t value_len, bool ring,
                    run_result *out) {
    kh_pipeline cfg = {
        .name = "bench",
        .workers = 1,
        .tick_interval_ms = 1000,
        .run_as_uid = -1,
        .run_as_gid = -1,
    };
    kh_worker_proc wp;
    bool permanent;
    char err[512];
    if (worker_proc_spawn(&cfg, 0, plugin, &wp, &permanent, err, sizeof err))
        die(err);
    kh_conn c;
    conn_init(&c, wp.fd, KH_FRAME_MAX_FROM_WORKER);
    worker_proc_put_init(&c.out, &cfg, 0, plugin);
    kh_reader r;
    uint16_t type = next_frame(&c, &r);
    if (type == KH_F_INIT_FAILED) {
        size_t len;
        const uint8_t *s = tr_get_str(&r, &len);
        fprintf(stderr, "bench_transport: init failed: %.*s\n", (int)len,
                (const char *)s);
        exit(1);
    }
    if (type != KH_F_READY)
        die("expected READY from the worker");
    size_t start = tr_frame_begin(&c.out, KH_F_ASSIGN);
    tr_put_str(&c.out, TOPIC);
    tr_put_i32(&c.out, PARTITION);
    tr_frame_end(&c.out, start);
    if (conn_flush(&c) < 0)
        die("write to the worker failed");

    uint8_t *value = malloc(value_len ? value_len : 1);
    if (!value)
        die("out of memory");
    memset(value, '.', value_len);
    memcpy(value, "bench transport message", value_len < 23 ? value_len : 23);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    int64_t ts_ms = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;

    uint64_t ring_head = 0;
    long sent = 0, done = 0, bad = 0;
    uint64_t token = 1, expect = 1;
    int64_t offset = 0;
    out->frames_out = out->frames_in = out->polls = out->reads = 0;
    double cpu0 = rusage_s(RUSAGE_SELF);
    double wcpu0 = proc_cpu_s(wp.pid);
    double t0 = mono();
    while (done < total) {
        /* Top up the window as dispatch_pump does: any free room goes out,
         * in frames of at most `batch`. */
        while (sent < total && sent - done < (long)window &&
               buf_pending(&c.out) < KH_OUTBUF_MAX) {
            long n = (long)window - (sent - done);
            if (n > (long)batch)
                n = batch;
            if (n > total - sent)
                n = total - sent;
            if (!ring) {
                put_frame(&c.out, (uint32_t)n, &token, &offset, value,
                          value_len, ts_ms);
            } else {
                size_t skip;
                size_t room = tr_ring_place(ring_head,
                                            status_ring_tail(wp.status), &skip);
                long fit = room > KH_FRAME_HEADER_SIZE + 4
                               ? (long)((room - KH_FRAME_HEADER_SIZE - 4) /
                                        message_size(value_len))
                               : 0;
                if (fit < n)
                    n = fit;
                if (n == 0)
                    break; /* full: wait for results */
                uint64_t pos = ring_head + skip;
                kh_buf fb = {.data = wp.ring + pos % KH_RING_BYTES,
                             .cap = room,
                             .fixed = true};
                put_frame(&fb, (uint32_t)n, &token, &offset, value, value_len,
                          ts_ms);
                ring_head = pos + fb.len;
                size_t rs = tr_frame_begin(&c.out, KH_F_RING);
                tr_put_u64(&c.out, pos);
                tr_put_u32(&c.out, (uint32_t)fb.len);
                tr_frame_end(&c.out, rs);
            }
            sent += n;
            out->frames_out++;
        }
        short ev = POLLIN;
        if (buf_pending(&c.out)) {
            int f = conn_flush(&c);
            if (f < 0)
                die("write to the worker failed");
            if (f == 1)
                ev |= POLLOUT;
        }
        struct pollfd pfd = {.fd = c.fd, .events = ev};
        out->polls++;
        int pn = poll(&pfd, 1, 30000);
        if (pn == 0)
            die("the worker stalled for 30 s");
        if (pn < 0) {
            if (errno == EINTR)
                continue;
            die("poll failed");
        }
        if (!(pfd.revents & (POLLIN | POLLHUP | POLLERR)))
            continue;
        out->reads++;
        long got = conn_fill(&c);
        if (got == 0)
            die("the worker closed the channel");
        if (got < 0 && got != -EAGAIN)
            die("read from the worker failed");
        int rc;
        while ((rc = conn_next_frame(&c, &type, &r)) == 1) {
            if (type != KH_F_RESULTS) {
                fprintf(stderr, "bench_transport: unexpected frame %u\n",
                        (unsigned)type);
                exit(1);
            }
            out->frames_in++;
            uint32_t n = tr_get_u32(&r);
            for (uint32_t i = 0; i < n && !r.error; i++) {
                uint64_t t = tr_get_u64(&r);
                uint8_t res = tr_get_u8(&r);
                if (t != expect++ || res != KHOST_ACK)
                    bad++;
            }
            if (r.error)
                die("truncated RESULTS frame");
            done += n;
        }
        if (rc < 0)
            die("the worker sent a bad frame");
    }
    double t1 = mono();
    double cpu1 = rusage_s(RUSAGE_SELF);
    double wcpu1 = proc_cpu_s(wp.pid);
    if (bad) {
        fprintf(stderr,
                "bench_transport: %ld results out of order or not ACK\n", bad);
        exit(1);
    }
    if (done != total)
        die("more results than messages");

    start = tr_frame_begin(&c.out, KH_F_SHUTDOWN);
    tr_frame_end(&c.out, start);
    if (conn_flush(&c) < 0)
        die("write of SHUTDOWN failed");
    double ch0 = rusage_s(RUSAGE_CHILDREN);
    int st;
    while (waitpid(wp.pid, &st, 0) < 0)
        if (errno != EINTR)
            die("waitpid failed");
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        fprintf(stderr, "bench_transport: worker ended with status 0x%x\n", st);
    out->worker_total_s = rusage_s(RUSAGE_CHILDREN) - ch0;
    /* What the plugin wrote to stdout or stderr (the pipe worker_proc
     * gives it; nonblocking): to our stderr, then close. noop writes
     * nothing; a plugin writing more than the pipe holds during a run
     * would stall, as nobody reads it meanwhile. */
    char chunk[4096];
    ssize_t got;
    while ((got = read(wp.out_fd, chunk, sizeof chunk)) > 0)
        if (write(STDERR_FILENO, chunk, (size_t)got) < 0)
            break;
    close(wp.out_fd);
    conn_close(&c);
    worker_proc_unmap(wp.status);
    free(value);

    out->seconds = t1 - t0;
    out->msgs_per_s = out->seconds > 0 ? (double)total / out->seconds : 0;
    out->host_cpu_s = cpu1 - cpu0;
    out->worker_cpu_s = wcpu0 >= 0 && wcpu1 >= 0 ? wcpu1 - wcpu0 : -1;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median (and min, max) of v[0..n), sorted in place. */
static double median(double *v, int n, double *lo, double *hi) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    *lo = v[0];
    *hi = v[n - 1];
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static long num(const char *what, const char *s, long lo, long hi) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end || errno || v < lo || v > hi) {
        fprintf(stderr, "bench_transport: %s must be %ld..%ld, not '%s'\n",
                what, lo, hi, s);
        exit(2);
    }
    return v;
}

static int bench_main(int argc, char **argv) {
    long total = 5000000, window = KH_MAX_INFLIGHT, value_len = 100, rounds = 3;
    uint32_t batches[MAX_BATCHES] = {64, 256, 1024};
    int n_batches = 3;
    char plugin[PATH_MAX];
    plugin[0] = '\0';
    int opt;
    bool ring = false;
    while ((opt = getopt(argc, argv, "n:b:w:s:r:p:Rxhv")) != -1) {
        switch (opt) {
        case 'R':
            ring = true;
            break;
        case 'n':
            total = num("-n", optarg, 1, 1000000000L);
            break;
        case 'b': {
            n_batches = 0;
            char *save = NULL;
            for (char *t = strtok_r(optarg, ",", &save); t;
                 t = strtok_r(NULL, ",", &save)) {
                if (n_batches == MAX_BATCHES)
                    die("too many batch sizes");
                batches[n_batches++] = (uint32_t)num("-b", t, 1, 65536);
            }
            if (!n_batches)
                die("-b needs at least one batch size");
            break;
        }
        case 'w':
            window = num("-w", optarg, 1, 1000000);
            break;
        case 's':
            value_len = num("-s", optarg, 0, 1 << 20);
            break;
        case 'r':
            rounds = num("-r", optarg, 1, MAX_ROUNDS);
            break;
        case 'p':
            snprintf(plugin, sizeof plugin, "%s", optarg);
            break;
        case 'v':
            break; /* taken by main() */
        case 'x': {
            /* For valgrind --trace-children=yes: kh_self_exe() is
             * /proc/self/fd/N of a CLOEXEC fd, which valgrind's launcher
             * in the child can no longer open; keep it inheritable. */
            int fd = -1;
            if (sscanf(kh_self_exe(), "/proc/self/fd/%d", &fd) == 1)
                fcntl(fd, F_SETFD, 0);
            break;
        }
        default:
            fprintf(stderr,
                    "usage: bench_transport [-n MESSAGES] [-b BATCH,...] "
                    "[-w WINDOW] [-s VALUE_BYTES] [-r ROUNDS] [-p PLUGIN] "
                    "[-R] [-x]\n");
            return opt == 'h' ? 0 : 2;
        }
    }
    if (!plugin[0]) {
        /* build/bench/bench_transport -> build/plugins/noop.so */
        char self[PATH_MAX - 32];
        ssize_t k = readlink("/proc/self/exe", self, sizeof self - 1);
        if (k <= 0)
            die("cannot read /proc/self/exe; pass -p PLUGIN");
        self[k] = '\0';
        char *slash = strrchr(self, '/');
        if (slash)
            *slash = '\0';
        snprintf(plugin, sizeof plugin, "%s/../plugins/noop.so", self);
    }
    char *real = realpath(plugin, NULL);
    if (!real) {
        fprintf(stderr, "bench_transport: plugin %s: %s\n", plugin,
                strerror(errno));
        return 1;
    }
    /* A worker that dies must not kill us with SIGPIPE (conn_flush uses
     * MSG_NOSIGNAL already; this is for safety). */
    signal(SIGPIPE, SIG_IGN);

    printf("transport ceiling: %ld messages of %ld B per run, window %ld, "
           "1 worker (%s), %s, median of %ld round(s)\n",
           total, value_len, window, real,
           ring ? "frames in the message ring" : "frames on the socket",
           rounds);
    run_result res[MAX_BATCHES][MAX_ROUNDS];
    /* Rounds outermost, so a drift in machine load spreads over all batch
     * sizes. */
    for (int rd = 0; rd < rounds; rd++)
        for (int b = 0; b < n_batches; b++) {
            run_result *x = &res[b][rd];
            one_run(real, total, batches[b], (uint32_t)window,
                    (size_t)value_len, ring, x);
            printf("BENCH_TRANSPORT mode=%s round=%d batch=%u window=%ld "
                   "messages=%ld seconds=%.4f msgs_per_s=%.0f "
                   "host_cpu_s=%.3f worker_cpu_s=%.2f worker_total_cpu_s=%.3f "
                   "frames_out=%ld frames_in=%ld polls=%ld reads=%ld\n",
                   ring ? "ring" : "socket", rd + 1, batches[b], window, total,
                   x->seconds, x->msgs_per_s, x->host_cpu_s, x->worker_cpu_s,
                   x->worker_total_s, x->frames_out, x->frames_in, x->polls,
                   x->reads);
            fflush(stdout);
        }
    printf("\n| batch/frame | msg/s (median) | min-max | seconds | host CPU s "
           "| worker CPU s | host ns/msg | worker ns/msg | CPU-bound msg/s "
           "| RESULTS frames |\n"
           "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for (int b = 0; b < n_batches; b++) {
        double v[MAX_ROUNDS], lo, hi, rate, secs, hc, wc, fi, l2, h2;
        for (int rd = 0; rd < rounds; rd++)
            v[rd] = res[b][rd].msgs_per_s;
        rate = median(v, (int)rounds, &lo, &hi);
        for (int rd = 0; rd < rounds; rd++)
            v[rd] = res[b][rd].seconds;
        secs = median(v, (int)rounds, &l2, &h2);
        for (int rd = 0; rd < rounds; rd++)
            v[rd] = res[b][rd].host_cpu_s;
        hc = median(v, (int)rounds, &l2, &h2);
        for (int rd = 0; rd < rounds; rd++)
            v[rd] = res[b][rd].worker_total_s;
        wc = median(v, (int)rounds, &l2, &h2);
        for (int rd = 0; rd < rounds; rd++)
            v[rd] = (double)res[b][rd].frames_in;
        fi = median(v, (int)rounds, &l2, &h2);
        /* With a core each, the busier side sets the pace. */
        double busier = hc > wc ? hc : wc;
        printf("| %u | %.0f | %.0f-%.0f | %.3f | %.3f | %.3f | %.0f | %.0f | "
               "%.0f | %.0f |\n",
               batches[b], rate, lo, hi, secs, hc, wc, 1e9 * hc / (double)total,
               1e9 * wc / (double)total,
               busier > 0 ? (double)total / busier : 0, fi);
    }
    printf("\nhost CPU: this process over the streaming phase (getrusage); "
           "worker CPU: the whole worker process after reaping "
           "(RUSAGE_CHILDREN, start-up included); ns/msg = CPU / messages; "
           "CPU-bound msg/s = messages / the larger of the two CPU times (the "
           "rate with one idle core each, which other load on the machine "
           "does not lower as much as it lowers msg/s).\n");
    free(real);
    return 0;
}

int main(int argc, char **argv) {
    /* The options and the `worker` dispatch exactly as host/main.c has
     * them: worker_proc_spawn execs this binary as
     * `khost-worker [-v] worker --host-pid PID ...`. */
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (!strcmp(argv[i], "-v") || !strcmp(argv[i], "--verbose"))
            klog_set_verbose(true);
        else
            break; /* a bench option */
    }
    if (i < argc && !strcmp(argv[i], "worker"))
        return worker_main(argc - i, argv + i);
    return bench_main(argc, argv);
}
