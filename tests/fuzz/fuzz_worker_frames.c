/*
 * fuzz_worker_frames: everything a (hostile) worker can send the host.
 *
 * The host's side of one worker channel is set up once per process, in
 * memory: a pipeline with a real librdkafka consumer (never polled; its
 * broker 127.0.0.1:1 refuses), three partitions of topic "t" (slots 0 and 1
 * assigned and owned by the worker, slot 2 unassigned) and one worker
 * with pid 0, so supervisor_kill only records the verdict. Before every
 * input the ledgers are rebuilt identically: 8 messages dispatched per
 * partition, seqs 0..7, so these tokens are valid:
 *
 *   slot 0: kh_token_make(0, seq) = seq,             offsets 100..107
 *   slot 1: kh_token_make(1, seq) = (1 << 40) | seq, offsets 0..7
 *   slot 2: (2 << 40) | seq, but unassigned: answers are stale
 * (u64 little endian on the wire, like every integer).
 *
 * seq 3 of each partition is on its last attempt (max_attempts = 5), so
 * a RETRY for it fails the message; seq 5 is on attempt 3, so its retry
 * delay hits retry_backoff_max_ms (300).
 *
 * Input: byte 0 is a control byte, the rest is the byte stream the worker
 * writes into its socket (frames as in transport.h):
 *   bit 0      worker state: 0 READY, 1 STARTING (a READY frame is due)
 *   bit 1      in-flight count: 0 KH_MAX_INFLIGHT, 1 only 4
 *   bits 2..7  0: write the whole stream at once; N: write it N bytes at
 *              a time with a dispatch_read after each write, so frames
 *              arrive split across reads
 * The stream is then closed and dispatch_read called until it reports
 * the channel closed or the worker killed.
 *
 * Checks besides the sanitizers: no message is counted handled or acked
 * twice, the in-flight count never goes below zero, and the watermark
 * only covers offsets that were dispatched.
 */
#define _GNU_SOURCE
#include "dispatch.h"
#include "host.h"
#include "kafka.h"
#include "log.h"
#include "pipeline.h"
#include "supervisor.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define N_PARTS 3
#define N_OWNED 2   /* slots 0 .. N_OWNED-1 belong to the worker */
#define N_ENTRIES 8 /* dispatched per partition before each input */
#define LAST_ATTEMPT_SEQ 3
#define THIRD_ATTEMPT_SEQ 5
#define SMALL_INFLIGHT 4

static char *topics[] = {"t"};
static kh_pipeline pcfg = {
    .name = "fuzz",
    .line = 1,
    .topics = topics,
    .n_topics = 1,
    .group = "fuzz",
    .plugin = "fuzz.so",
    .plugin_path = "/nonexistent/fuzz.so",
    .workers = 1,
    .max_restarts = 30,
    .max_seconds = 5,
    .handler_timeout_ms = 30000,
    .shutdown_timeout_ms = 10000,
    .tick_interval_ms = 1000,
    .max_attempts = 5,
    .retry_backoff_ms = 100,
    .retry_backoff_max_ms = 300,
    .poison_after = 3,
    .on_failure = KH_ON_FAILURE_SKIP,
    .reload_max_crashes = 2,
    .reload_probation_ms = 10000,
    .on_exhausted = KH_ON_EXHAUSTED_PAUSE,
    .run_as_uid = -1,
    .run_as_gid = -1,
};
static kh_config root;
static kh_host host;
static kh_pipeline_rt pl;
static kh_worker worker;

/* Diagnostics go to a copy of stderr taken before libFuzzer's
 * -close_fd_mask=2 points fd 2 at /dev/null (run.sh uses it to mute
 * khost's log); the sanitizers and libFuzzer keep their own copy. */
static FILE *diag;

static void setup(void);
int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv) {
    int fd = dup(STDERR_FILENO);
    diag = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (!diag)
        diag = stderr;
    setvbuf(diag, NULL, _IONBF, 0);
    setup();
    return 0;
}

/* Every input frees a 64 KiB read buffer; ASan's default 256 MiB
 * quarantine then makes each run fault in fresh pages. A smaller one
 * still catches use after free within an input and doubles the speed.
 * ASAN_OPTIONS overrides it. */
const char *__asan_default_options(void);
const char *__asan_default_options(void) {
    return "quarantine_size_mb=16";
}

static int64_t base_offset(size_t slot) {
    return slot == 0 ? 100 : 0;
}

static void conf_set(rd_kafka_conf_t *conf, const char *k, const char *v) {
    char err[256];
    if (rd_kafka_conf_set(conf, k, v, err, sizeof err) != RD_KAFKA_CONF_OK) {
        fprintf(diag, "fuzz_worker_frames: %s: %s\n", k, err);
        abort();
    }
}

static void setup(void) {
    /* Logging stays on (its formatting is code under test too); run with
     * -close_fd_mask=2 to send it to /dev/null, or KHOST_FUZZ_LOG=0. */
    const char *lvl = getenv("KHOST_FUZZ_LOG");
    klog_set_level(lvl ? atoi(lvl) : KLOG_DEBUG);
    klog_set_tag("fuzz");

    if (sd_event_new(&host.ev) < 0)
        abort();
    host.cfg = &root;
    host.admin_fd = -1;
    host.signal_fd = -1;
    host.bootstraps = "127.0.0.1:1";

    pl.host = &host;
    pl.root = &root;
    pl.cfg = &pcfg;
    pl.wake_fd[0] = pl.wake_fd[1] = -1;
    pipeline_wire(&pl);

    /* A real consumer so kafka_pause/seek/store have something to call;
     * its partitions are never assigned in librdkafka, so those calls
     * fail fast with "unknown partition", and it is never polled. */
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    conf_set(conf, "group.id", "fuzz");
    conf_set(conf, "bootstrap.servers", "127.0.0.1:1");
    conf_set(conf, "log_level", "0");
    conf_set(conf, "enable.auto.offset.store", "false");
    conf_set(conf, "enable.auto.commit", "false");
    char err[512];
    pl.rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
    if (!pl.rk) {
        fprintf(diag, "fuzz_worker_frames: rd_kafka_new: %s\n", err);
        abort();
    }

    kafka_port_init(&pl);
    worker.pl = &pl;
    worker.cfg = &pcfg;
    worker.plugin_path = pcfg.plugin_path;
    worker.conn.fd = -1;
    pl.workers = &worker;
    pl.n_workers = 1;
    for (int32_t p = 0; p < N_PARTS; p++)
        pipeline_part(&pl, "t", p, true);
}

static uint32_t attempt_of(uint32_t seq) {
    if (seq == LAST_ATTEMPT_SEQ)
        return (uint32_t)pcfg.max_attempts;
    return seq == THIRD_ATTEMPT_SEQ ? 3 : 1;
}

/* Every input starts from the same state. */
static void reset(uint8_t ctl) {
    srand(1); /* retry jitter */
    pl.failed = pl.stopping = false;
    pl.last_part = NULL;
    pl.handled = pl.acked_count = pl.crashes = pl.restarts_total = 0;
    pl.rebalances = pl.retries = pl.failures = pl.lies = 0;
    pl.poison = pl.dlq_written = pl.dlq_errors = pl.skipped = 0;
    pl.plugin_name[0] = pl.plugin_version[0] = '\0';

    bool starting = ctl & 1;
    for (size_t i = 0; i < pl.n_parts; i++) {
        kh_part *part = pl.parts[i];
        bool owned = i < N_OWNED;
        offsets_init(&part->off);
        for (uint32_t k = 0; k < N_ENTRIES; k++)
            offsets_dispatch(&part->off, base_offset(i) + k, attempt_of(k));
        part->assigned = owned;
        part->owner = owned ? &worker : NULL;
        /* A starting worker's partitions wait for its READY. */
        part->pause = owned && starting ? KH_PAUSE_WORKER : 0;
        part->held = false;
        part->retry_at_ms = 0;
        part->stored = -1;
        part->committed = -1;
        part->crash_offset = -1;
        part->crash_count = 0;
        part->isolate_through = -1;
        part->fail_offset = -1;
        part->fail_reason[0] = '\0';
        part->dlq_pending = 0;
    }

    worker.state = starting ? KH_W_STARTING : KH_W_READY;
    worker.pid = 0;
    worker.candidate = false;
    worker.status = NULL;
    worker.io_src = worker.child_src = worker.restart_timer = NULL;
    worker.inflight = ctl & 2 ? SMALL_INFLIGHT : KH_MAX_INFLIGHT;
    worker.n_parts = N_OWNED;
    worker.rr = 0;
    worker.consecutive_crashes = 0;
    worker.kill_reason[0] = worker.init_error[0] = '\0';
    worker.plugin_name[0] = worker.plugin_version[0] = '\0';
}

static void check(size_t inflight_before) {
    const uint64_t total = (uint64_t)N_OWNED * N_ENTRIES;
    if (pl.acked_count > total || pl.handled > total) {
        fprintf(diag, "acked_count=%llu handled=%llu of %llu messages\n",
                (unsigned long long)pl.acked_count,
                (unsigned long long)pl.handled, (unsigned long long)total);
        abort();
    }
    if (worker.inflight > inflight_before) {
        fprintf(diag, "in-flight count went from %zu to %zu\n", inflight_before,
                worker.inflight);
        abort();
    }
    for (size_t i = 0; i < N_OWNED; i++) {
        const kh_offsets *o = &pl.parts[i]->off;
        int64_t lo = base_offset(i), hi = lo + N_ENTRIES - 1;
        if (o->head_seq > o->next_seq || o->next_seq != N_ENTRIES ||
            (o->acked != -1 && (o->acked < lo || o->acked > hi))) {
            fprintf(diag,
                    "slot %zu ledger: head_seq=%llu next_seq=%llu "
                    "acked=%lld\n",
                    i, (unsigned long long)o->head_seq,
                    (unsigned long long)o->next_seq, (long long)o->acked);
            abort();
        }
    }
    if (memchr(worker.init_error, '\0', sizeof worker.init_error) == NULL ||
        memchr(worker.plugin_name, '\0', sizeof worker.plugin_name) == NULL)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0)
        return 0;
    uint8_t ctl = data[0];
    data++;
    size--;
    reset(ctl);
    size_t inflight_before = worker.inflight;
    size_t chunk = ctl >> 2;

    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0,
                   sv) != 0) {
        fprintf(diag, "socketpair: %s\n", strerror(errno));
        abort();
    }
    int sz = 4 << 20; /* as supervisor_spawn sets them */
    setsockopt(sv[0], SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
    setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
    conn_init(&worker.conn, sv[0], KH_FRAME_MAX_FROM_WORKER);

    bool alive = true;
    size_t off = 0;
    while (alive && off < size) {
        size_t n = size - off;
        if (chunk && n > chunk)
            n = chunk;
        ssize_t got = write(sv[1], data + off, n);
        if (got < 0 && errno != EAGAIN && errno != EINTR) {
            fprintf(diag, "write: %s\n", strerror(errno));
            abort();
        }
        if (got > 0)
            off += (size_t)got;
        /* Read after every chunk, and whenever the socket is full. */
        if (chunk || got <= 0)
            alive = dispatch_read(&worker) == 0;
    }
    close(sv[1]);
    for (int i = 0; alive && i < 1000; i++)
        alive = dispatch_read(&worker) == 0;
    if (alive) {
        fprintf(diag, "dispatch_read never saw the channel close\n");
        abort();
    }
    conn_close(&worker.conn);
    check(inflight_before);
    /* Free what this input allocated now, not at the next input, so that
     * libFuzzer's per-input malloc/free balance (-detect_leaks) holds. */
    for (size_t i = 0; i < pl.n_parts; i++)
        offsets_free(&pl.parts[i]->off);
    return 0;
}
