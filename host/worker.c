/*
 * worker: `khost worker --host-pid PID [--tag NAME]`, the process that
 * runs one plugin for the host (see worker.h and transport.h).
 *
 * The worker is deliberately simple and single-threaded: it blocks on
 * the channel, hands each MESSAGES frame to the plugin and answers with
 * RESULTS. Flow control is the host's job (it bounds the work in
 * flight), so blocking on a full socket here is harmless. The status
 * page tells the host which message a call was handling, so a crash or
 * hang can be pinned on a message even though the worker is gone.
 *
 * Exit paths: SHUTDOWN and init failure use exit() after freeing what the
 * worker allocated, so LeakSanitizer checks them; paths where the plugin
 * still holds state (host gone, protocol error) use _exit(), because a
 * plugin that was never terminated legitimately still owns memory.
 */
#define _GNU_SOURCE
#include "worker.h"

#include "hardening.h"
#include "log.h"
#include "plugin_loader.h"
#include "transport.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Smallest message on the wire (see transport.h): bounds how many
 * messages a frame can claim before anything is allocated for them. */
#define MSG_MIN_WIRE (8 + 4 + 4 + 4 + 8 + 8 + 4 + 4 + 4 + 4)
/* Entries of a frame from the worker, kept under the host's frame cap. */
#define RESULTS_PER_FRAME ((KH_FRAME_MAX_FROM_WORKER - 4) / 9)
/* How often a worker busy with a slow batch reports results early. */
#define EARLY_RESULTS_MS 5
#define ACKS_PER_FRAME ((KH_FRAME_MAX_FROM_WORKER - 4) / 8)

/* ---- set of deferred tokens: open addressing, linear probing ---- */

typedef struct token_set {
    uint64_t *keys;
    uint8_t *used;
    size_t cap; /* power of two, or 0 */
    size_t count;
} token_set;

/* CLOCK_MONOTONIC in ns: handler calls are timed with it (the same clock
 * as kh_now_ms, so the status page's ms agree). */
static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static size_t token_hash(uint64_t x) {
    /* splitmix64 finaliser: tokens are often sequential, which would
     * cluster badly with an identity hash. */
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return (size_t)x;
}

static size_t set_find(const token_set *s, uint64_t token) {
    size_t mask = s->cap - 1;
    size_t i = token_hash(token) & mask;
    while (s->used[i] && s->keys[i] != token)
        i = (i + 1) & mask;
    return i;
}

static void set_insert(token_set *s, uint64_t token);

static void set_grow(token_set *s) {
    token_set bigger = {0};
    bigger.cap = s->cap ? s->cap * 2 : 64;
    bigger.keys = malloc(bigger.cap * sizeof *bigger.keys);
    bigger.used = calloc(bigger.cap, 1);
    if (!bigger.keys || !bigger.used) {
        klog_error("out of memory growing the deferred token set");
        _exit(1);
    }
    for (size_t i = 0; i < s->cap; i++)
        if (s->used[i])
            set_insert(&bigger, s->keys[i]);
    free(s->keys);
    free(s->used);
    *s = bigger;
}

static void set_insert(token_set *s, uint64_t token) {
    if ((s->count + 1) * 2 > s->cap)
        set_grow(s);
    size_t i = set_find(s, token);
    if (!s->used[i]) {
        s->used[i] = 1;
        s->keys[i] = token;
        s->count++;
    }
}

/* Returns 1 when the token was there (and is now gone). */
static int set_remove(token_set *s, uint64_t token) {
    if (!s->cap)
        return 0;
    size_t mask = s->cap - 1;
    size_t i = set_find(s, token);
    if (!s->used[i])
        return 0;
    /* Backward-shift deletion keeps probe chains intact without
     * tombstones, so a set that churns forever never degrades. */
    size_t j = i;
    for (;;) {
        s->used[i] = 0;
        for (;;) {
            j = (j + 1) & mask;
            if (!s->used[j]) {
                s->count--;
                return 1;
            }
            size_t home = token_hash(s->keys[j]) & mask;
            /* Move keys[j] into the hole unless its home lies
             * cyclically in (i, j]. */
            if (i <= j ? (home <= i || home > j) : (home <= i && home > j))
                break;
        }
        s->keys[i] = s->keys[j];
        s->used[i] = 1;
        i = j;
    }
}

static bool set_has(const token_set *s, uint64_t token) {
    return s->cap && s->used[set_find(s, token)];
}

/* Forget every token, keeping the memory. */
static void set_clear(token_set *s) {
    if (s->cap)
        memset(s->used, 0, s->cap);
    s->count = 0;
}

static void set_free(token_set *s) {
    free(s->keys);
    free(s->used);
    memset(s, 0, sizeof *s);
}

/* ---- worker state ---- */

/* One decoded message of the current frame. Each slot owns its strings
 * and header array so that decoding message i+1 never moves the memory
 * message i points into (handle_batch sees them all at once). */
typedef struct msg_slot {
    khost_message msg;
    kh_buf strings;
    khost_header *headers;
    size_t headers_cap;
} msg_slot;

/* The opaque handle of plugin.h is the worker itself. */
struct khost_host {
    kh_conn conn;
    kh_worker_status *status;
    size_t status_size;
    /* The message ring after the status page (transport.h), or NULL when
     * the host gave none; ring_end is where the last ring frame ended. */
    const uint8_t *ring;
    size_t ring_size;
    uint64_t ring_end;

    kh_plugin plugin;
    void *state;
    const khost_plugin_descriptor *desc;

    char *pipeline;
    int32_t worker_index;
    uint32_t tick_ms;
    char **cfg_keys;
    char **cfg_values;
    size_t n_cfg;
    khost_host_api api;

    token_set deferred;
    /* The handler call in progress (its messages: call[0..call_n)), and
     * the tokens of it the plugin acked before answering: such an ack
     * counts, and a KHOST_DEFERRED answer for one becomes KHOST_ACK. */
    const khost_message *const *call;
    size_t call_n;
    token_set early;
    uint64_t *acks; /* acked tokens not yet sent */
    size_t n_acks, cap_acks;

    msg_slot *slots;
    size_t cap_slots;
    /* Per-slot scratch of the current frame, cap_slots entries each. */
    const khost_message **batch;
    size_t frame_n; /* messages of the frame being handled, 0 between */
    khost_result *results;
    uint8_t *codes; /* what goes into RESULTS */
    /* Partitions whose messages are answered SKIPPED until RESUME (see
     * transport.h): after a retry/fail answer or during a host drain. */
    struct held_partition {
        char *topic;
        int32_t partition;
    } * held;
    size_t n_held, cap_held;
};

typedef struct khost_host worker;

static void worker_free(worker *w) {
    for (size_t i = 0; i < w->n_cfg; i++) {
        free(w->cfg_keys[i]);
        free(w->cfg_values[i]);
    }
    free(w->cfg_keys);
    free(w->cfg_values);
    free(w->pipeline);
    set_free(&w->deferred);
    set_free(&w->early);
    free(w->acks);
    for (size_t i = 0; i < w->cap_slots; i++) {
        buf_free(&w->slots[i].strings);
        free(w->slots[i].headers);
    }
    free(w->slots);
    free(w->batch);
    free(w->results);
    free(w->codes);
    for (size_t i = 0; i < w->n_held; i++)
        free(w->held[i].topic);
    free(w->held);
    plugin_unload(&w->plugin);
    conn_close(&w->conn);
    if (w->status)
        munmap(w->status, w->status_size);
    free(w);
}

static void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size);
    if (!p) {
        klog_error("out of memory");
        _exit(1);
    }
    return p;
}

static void *xrealloc(void *p, size_t size) {
    p = realloc(p, size ? size : 1);
    if (!p) {
        klog_error("out of memory");
        _exit(1);
    }
    return p;
}

static char *xstrndup(const uint8_t *s, size_t len) {
    char *p = xcalloc(len + 1, 1);
    if (len)
        memcpy(p, s, len);
    return p;
}

/* ---- sending ---- */

/* Write all of conn.out, waiting for the socket when it is full.
 * Returns 0, or -errno when the host is gone or the socket broke. */
static int send_all(worker *w) {
    for (;;) {
        int rc = conn_flush(&w->conn);
        if (rc <= 0)
            return rc;
        struct pollfd pfd = {.fd = w->conn.fd, .events = POLLOUT};
        if (poll(&pfd, 1, -1) < 0 && errno != EINTR)
            return -errno;
    }
}

/* The host is unreachable: there is nobody left to work for. */
static void __attribute__((noreturn)) host_gone(int err) {
    if (err == -EPIPE || err == -ECONNRESET || err == 0)
        klog_warn("host closed the channel; exiting without terminate");
    else
        klog_error("channel failed: %s; exiting without terminate",
                   strerror(-err));
    _exit(0);
}

static void __attribute__((noreturn)) protocol_error(const char *what) {
    klog_error("protocol error: %s", what);
    _exit(KH_EXIT_PROTOCOL);
}

static void send_or_die(worker *w) {
    int rc = send_all(w);
    if (rc < 0)
        host_gone(rc);
}

static void queue_acks(worker *w) {
    size_t done = 0;
    while (done < w->n_acks) {
        size_t n = w->n_acks - done;
        if (n > ACKS_PER_FRAME)
            n = ACKS_PER_FRAME;
        size_t start = tr_frame_begin(&w->conn.out, KH_F_ACKS);
        tr_put_u32(&w->conn.out, (uint32_t)n);
        for (size_t i = 0; i < n; i++)
            tr_put_u64(&w->conn.out, w->acks[done + i]);
        tr_frame_end(&w->conn.out, start);
        done += n;
    }
    w->n_acks = 0;
}

static void flush_acks(worker *w) {
    if (!w->n_acks)
        return;
    queue_acks(w);
    send_or_die(w);
}

/* ---- host API for the plugin ---- */

static void api_log(khost_host *h, int level, const char *message) {
    (void)h;
    int kl = level <= KHOST_LOG_ERROR  ? KLOG_ERROR
             : level <= KHOST_LOG_WARN ? KLOG_WARN
             : level <= KHOST_LOG_INFO ? KLOG_INFO
                                       : KLOG_DEBUG;
    klog(kl, "%s", message ? message : "(null)");
}

static const char *api_config_get(khost_host *h, const char *key) {
    if (!key)
        return NULL;
    for (size_t i = 0; i < h->n_cfg; i++)
        if (!strcmp(h->cfg_keys[i], key))
            return h->cfg_values[i];
    return NULL;
}

static int api_config_entry(khost_host *h, size_t index, const char **key,
                            const char **value) {
    if (index >= h->n_cfg)
        return -1;
    if (key)
        *key = h->cfg_keys[index];
    if (value)
        *value = h->cfg_values[index];
    return 0;
}

/* The token of a message of the handler call in progress? */
static bool in_call(const khost_host *h, uint64_t token) {
    for (size_t i = 0; i < h->call_n; i++)
        if (h->call[i]->ack_token == token)
            return true;
    return false;
}

static int api_ack(khost_host *h, uint64_t token) {
    /* A message of the call in progress, acked before its answer (a
     * plugin that finishes its work synchronously and then says
     * DEFERRED): it counts, once the answer is in (answered). */
    if (in_call(h, token)) {
        if (set_has(&h->early, token))
            return -EINVAL; /* acked twice */
        set_insert(&h->early, token);
        return 0;
    }
    /* Else only tokens answered KHOST_DEFERRED and not acked yet: the
     * host would otherwise commit past a message nobody finished. */
    if (!set_remove(&h->deferred, token))
        return -EINVAL;
    if (h->n_acks == h->cap_acks) {
        h->cap_acks = h->cap_acks ? h->cap_acks * 2 : 64;
        h->acks = xrealloc(h->acks, h->cap_acks * sizeof *h->acks);
    }
    h->acks[h->n_acks++] = token;
    return 0;
}

/* The answer for m, given the acks its own call made: DEFERRED for a
 * message the plugin acked already is ACK (its ack counted); any other
 * answer stands and the early ack is dropped. */
static uint8_t answered(khost_host *h, const khost_message *m, uint8_t res) {
    if (!h->early.count || !set_remove(&h->early, m->ack_token))
        return res;
    return res == KHOST_DEFERRED ? KHOST_ACK : res;
}

/* The answer's reason goes out before the RESULTS that carry the answer,
 * so the host has it when it applies the failure policy. */
static int api_set_error(khost_host *h, uint64_t token, const char *text) {
    bool current = false;
    for (size_t i = 0; i < h->frame_n && !current; i++)
        current = h->batch[i]->ack_token == token;
    if (!current || !text)
        return -EINVAL;
    char line[1001]; /* one line for a log and a header: cap it */
    snprintf(line, sizeof line, "%s", text);
    size_t start = tr_frame_begin(&h->conn.out, KH_F_ERROR);
    tr_put_u64(&h->conn.out, token);
    tr_put_str(&h->conn.out, line);
    tr_frame_end(&h->conn.out, start);
    return 0;
}

/* ---- setup ---- */

static void map_status(worker *w) {
    long page = sysconf(_SC_PAGESIZE);
    size_t pg = page > 0 ? (size_t)page : 4096;
    w->status_size = (sizeof(kh_worker_status) + pg - 1) / pg * pg;
    /* A memfd longer than the page carries the message ring after it. */
    struct stat st;
    if (fstat(KH_WORKER_STATUS_FD, &st) == 0 && st.st_size > KH_RING_OFFSET &&
        w->status_size <= KH_RING_OFFSET &&
        (uint64_t)st.st_size - KH_RING_OFFSET <= KH_FRAME_MAX_TO_WORKER) {
        w->ring_size = (size_t)st.st_size - KH_RING_OFFSET;
        w->status_size = (size_t)st.st_size;
    }
    void *p = mmap(NULL, w->status_size, PROT_READ | PROT_WRITE, MAP_SHARED,
                   KH_WORKER_STATUS_FD, 0);
    if (p == MAP_FAILED) {
        klog_error("cannot map the status page from fd %d: %s",
                   KH_WORKER_STATUS_FD, strerror(errno));
        exit(1);
    }
    w->status = p;
    if (w->ring_size)
        w->ring = (const uint8_t *)p + KH_RING_OFFSET;
    close(KH_WORKER_STATUS_FD);
}

/* Wait for the next complete frame until `deadline` (kh_now_ms time, or
 * -1 for none). Returns the frame type, or sets *timed_out; exits when
 * the host is gone or speaks nonsense. */
static uint16_t wait_frame(worker *w, kh_reader *payload, int64_t deadline,
                           int *timed_out) {
    *timed_out = 0;
    for (;;) {
        uint16_t type;
        int rc = conn_next_frame(&w->conn, &type, payload);
        if (rc == 1)
            return type;
        if (rc < 0)
            protocol_error("frame over the size limit or with a nonzero "
                           "reserved field");
        int timeout_ms = -1;
        if (deadline >= 0) {
            int64_t left = deadline - kh_now_ms();
            timeout_ms = left <= 0          ? 0
                         : left > INT32_MAX ? INT32_MAX
                                            : (int)left;
        }
        struct pollfd pfd = {.fd = w->conn.fd, .events = POLLIN};
        int n = poll(&pfd, 1, timeout_ms);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            host_gone(-errno);
        }
        if (n == 0) {
            *timed_out = 1;
            return 0;
        }
        long got = conn_fill(&w->conn);
        if (got == 0)
            host_gone(0);
        if (got < 0 && got != -EAGAIN)
            host_gone((int)got);
    }
}

static void decode_init(worker *w, kh_reader *r, char **plugin_path) {
    size_t len;
    const uint8_t *s = tr_get_str(r, &len);
    if (r->error)
        protocol_error("truncated INIT frame");
    w->pipeline = xstrndup(s, len);
    w->worker_index = (int32_t)tr_get_u32(r);
    s = tr_get_str(r, &len);
    if (r->error)
        protocol_error("truncated INIT frame");
    *plugin_path = xstrndup(s, len);
    w->tick_ms = tr_get_u32(r);
    uint32_t n = tr_get_u32(r);
    if (r->error || n > r->left / 8)
        protocol_error("truncated INIT frame");
    w->cfg_keys = xcalloc(n, sizeof *w->cfg_keys);
    w->cfg_values = xcalloc(n, sizeof *w->cfg_values);
    for (uint32_t i = 0; i < n; i++) {
        size_t klen, vlen;
        const uint8_t *k = tr_get_str(r, &klen);
        const uint8_t *v = tr_get_str(r, &vlen);
        if (r->error)
            protocol_error("truncated INIT frame");
        /* Copies: the frame buffer is reused, but plugin.h promises the
         * strings live until terminate returns. */
        w->cfg_keys[i] = xstrndup(k, klen);
        w->cfg_values[i] = xstrndup(v, vlen);
        w->n_cfg++;
    }
}

static void __attribute__((noreturn))
init_failed(worker *w, char *path, const char *err) {
    klog_error("%s", err);
    size_t start = tr_frame_begin(&w->conn.out, KH_F_INIT_FAILED);
    tr_put_str(&w->conn.out, err);
    tr_frame_end(&w->conn.out, start);
    int rc = send_all(w);
    if (rc < 0)
        klog_warn("could not report the init failure to the host: %s",
                  strerror(-rc));
    free(path);
    worker_free(w);
    exit(KH_EXIT_INIT_FAILED);
}

/* startup_error: set when the worker could not harden itself
 * (hardening_apply); then the plugin is never loaded and the host gets
 * the reason as the init failure. */
static void start_plugin(worker *w, const char *startup_error) {
    kh_reader r;
    int timed_out;
    uint16_t type = wait_frame(w, &r, -1, &timed_out);
    if (type == KH_F_SHUTDOWN) {
        klog_info("shutdown before init");
        worker_free(w);
        exit(0);
    }
    if (type != KH_F_INIT)
        protocol_error("expected INIT first");
    char *path = NULL;
    decode_init(w, &r, &path);

    char tag[128];
    snprintf(tag, sizeof tag, "worker %s/%" PRId32 " pid=%ld", w->pipeline,
             w->worker_index, (long)getpid());
    klog_set_tag(tag);
    if (startup_error)
        init_failed(w, path, startup_error);

    w->api = (khost_host_api){
        .struct_size = sizeof(khost_host_api),
        .abi_major = KHOST_ABI_MAJOR,
        .abi_minor = KHOST_ABI_MINOR,
        .log = api_log,
        .config_get = api_config_get,
        .config_entry = api_config_entry,
        .ack = api_ack,
        .set_error = api_set_error,
    };

    char err[1024];
    if (plugin_load(path, &w->plugin, err, sizeof err) != 0)
        init_failed(w, path, err);
    w->desc = w->plugin.desc;
    char errbuf[1024];
    khost_init_args args = {
        .struct_size = sizeof args,
        .api = &w->api,
        .host = w,
        .pipeline = w->pipeline,
        .worker_index = w->worker_index,
        .errbuf = errbuf,
        .errbuf_size = sizeof errbuf,
    };
    if (plugin_init(&w->plugin, &args, &w->state, err, sizeof err) != 0)
        init_failed(w, path, err);
    free(path);

    const char *version = w->desc->version ? w->desc->version : "";
    size_t start = tr_frame_begin(&w->conn.out, KH_F_READY);
    tr_put_str(&w->conn.out, w->desc->name);
    tr_put_str(&w->conn.out, version);
    tr_put_u64(&w->conn.out,
               KHOST_DESCRIPTOR_HAS(w->desc, flags) ? w->desc->flags : 0);
    tr_frame_end(&w->conn.out, start);
    /* Logged before READY goes out so the line is there by the time the
     * host acts on READY. */
    klog_info("plugin %s %s ready", w->desc->name, version);
    send_or_die(w);
}

/* ---- callbacks ---- */

static int has_batch(const worker *w) {
    return KHOST_DESCRIPTOR_HAS(w->desc, handle_batch) && w->desc->handle_batch;
}

/* Map a plugin's answer onto the protocol, logging nonsense. */
static uint8_t check_result(const khost_message *m, khost_result r) {
    if ((unsigned)r <= KHOST_DEFERRED)
        return (uint8_t)r;
    klog_error("plugin returned invalid result %d for topic %s partition "
               "%" PRId32 " offset %" PRId64 "; treating it as FAIL",
               (int)r, m->topic, m->partition, m->offset);
    return KHOST_FAIL;
}

static ssize_t find_held(const worker *w, const char *topic,
                         int32_t partition) {
    for (size_t i = 0; i < w->n_held; i++)
        if (w->held[i].partition == partition &&
            !strcmp(w->held[i].topic, topic))
            return (ssize_t)i;
    return -1;
}

static void hold(worker *w, const khost_message *m) {
    if (find_held(w, m->topic, m->partition) >= 0)
        return;
    if (w->n_held == w->cap_held) {
        w->cap_held = w->cap_held ? w->cap_held * 2 : 8;
        w->held = xrealloc(w->held, w->cap_held * sizeof *w->held);
    }
    w->held[w->n_held].topic =
        xstrndup((const uint8_t *)m->topic, strlen(m->topic));
    w->held[w->n_held].partition = m->partition;
    w->n_held++;
}

static void unhold(worker *w, const char *topic, int32_t partition) {
    ssize_t i = find_held(w, topic, partition);
    if (i < 0)
        return;
    free(w->held[i].topic);
    w->held[i] = w->held[--w->n_held];
}

/* Should m be skipped rather than handled? Partitions are few, so the
 * scan is cheap; the drain check is one load from the status page. */
static int must_skip(worker *w, const khost_message *m) {
    if (w->n_held && find_held(w, m->topic, m->partition) >= 0)
        return 1;
    if (status_draining(w->status)) {
        hold(w, m);
        return 1;
    }
    return 0;
}

/* Queue RESULTS for messages [from, to) of the current frame. */
static void put_results(worker *w, uint32_t from, uint32_t to) {
    while (from < to) {
        uint32_t k = to - from;
        if (k > RESULTS_PER_FRAME)
            k = RESULTS_PER_FRAME;
        size_t start = tr_frame_begin(&w->conn.out, KH_F_RESULTS);
        tr_put_u32(&w->conn.out, k);
        for (uint32_t i = from; i < from + k; i++) {
            tr_put_u64(&w->conn.out, w->batch[i]->ack_token);
            tr_put_u8(&w->conn.out, w->codes[i]);
        }
        tr_frame_end(&w->conn.out, start);
        from += k;
    }
}

static void ensure_slots(worker *w, size_t n) {
    if (n <= w->cap_slots)
        return;
    size_t cap = w->cap_slots ? w->cap_slots : 16;
    while (cap < n)
        cap *= 2;
    w->slots = xrealloc(w->slots, cap * sizeof *w->slots);
    memset(w->slots + w->cap_slots, 0, (cap - w->cap_slots) * sizeof *w->slots);
    w->cap_slots = cap;
    w->batch = xrealloc(w->batch, cap * sizeof *w->batch);
    w->results = xrealloc(w->results, cap * sizeof *w->results);
    w->codes = xrealloc(w->codes, cap * sizeof *w->codes);
}

/* Handle one MESSAGES frame. ring_end: for a frame in the ring, the
 * tail to store once its messages are no longer used (0: a socket
 * frame). */
static void handle_messages(worker *w, kh_reader *r, uint64_t ring_end) {
    uint32_t n = tr_get_u32(r);
    if (r->error || n > r->left / MSG_MIN_WIRE)
        protocol_error("MESSAGES frame with a bad count");
    ensure_slots(w, n);
    for (uint32_t i = 0; i < n; i++) {
        msg_slot *s = &w->slots[i];
        s->strings.len = s->strings.off = 0;
        if (tr_get_message(r, &s->msg, &s->strings, &s->headers,
                           &s->headers_cap) != 0)
            protocol_error("malformed message in a MESSAGES frame");
        w->batch[i] = &s->msg;
    }

    uint8_t *res = w->codes;
    uint32_t sent = 0;
    w->frame_n = n;

    if (n && has_batch(w)) {
        /* Only messages of partitions that are not held go to the plugin;
         * w->batch is reordered so they come first, and `order` remembers
         * where each answer belongs. */
        uint32_t k = 0;
        for (uint32_t i = 0; i < n; i++) {
            res[i] = must_skip(w, w->batch[i]) ? KH_RESULT_SKIPPED : 0xff;
            if (res[i] == 0xff)
                w->results[k++] = KHOST_FAIL;
        }
        if (k) {
            const khost_message **call = xcalloc(k, sizeof *call);
            uint32_t j = 0;
            for (uint32_t i = 0; i < n; i++)
                if (res[i] == 0xff)
                    call[j++] = w->batch[i];
            int64_t t0 = now_ns();
            status_enter_call(w->status, call[0]->ack_token, k, t0 / 1000000);
            w->call = call;
            w->call_n = k;
            w->desc->handle_batch(w->state, call, k, w->results);
            w->call_n = 0;
            status_leave_call(w->status);
            status_observe_call(w->status, now_ns() - t0);
            free(call);
        }
        /* The host redelivers a partition from its first retry/fail on,
         * so later answers of that partition cannot stand: they become
         * SKIPPED (a batch plugin may therefore see them again). */
        uint32_t j = 0;
        for (uint32_t i = 0; i < n; i++) {
            if (res[i] != 0xff)
                continue;
            const khost_message *m = w->batch[i];
            khost_result got = w->results[j++];
            if (find_held(w, m->topic, m->partition) >= 0) {
                res[i] = KH_RESULT_SKIPPED;
                continue;
            }
            res[i] = answered(w, m, check_result(m, got));
            if (res[i] == KHOST_RETRY || res[i] == KHOST_FAIL)
                hold(w, m);
            else if (res[i] == KHOST_DEFERRED)
                set_insert(&w->deferred, m->ack_token);
        }
    } else {
        int64_t last_flush = kh_now_ms();
        for (uint32_t i = 0; i < n; i++) {
            const khost_message *m = w->batch[i];
            if (must_skip(w, m)) {
                res[i] = KH_RESULT_SKIPPED;
                continue;
            }
            int64_t t0 = now_ns();
            status_enter_call(w->status, m->ack_token, 1, t0 / 1000000);
            w->call = &w->batch[i];
            w->call_n = 1;
            khost_result got = w->desc->handle(w->state, m);
            w->call_n = 0;
            int64_t t1 = now_ns();
            status_leave_call(w->status);
            status_observe_call(w->status, t1 - t0);
            res[i] = answered(w, m, check_result(m, got));
            if (res[i] == KHOST_RETRY || res[i] == KHOST_FAIL) {
                hold(w, m);
            } else if (res[i] == KHOST_DEFERRED) {
                /* Registered at once: a later call may already ack it. */
                set_insert(&w->deferred, m->ack_token);
            }
            /* A slow handler reports as it goes, so a crash later in the
             * batch does not cost the acks of what was already done. The
             * last result always waits for the end of the frame: a ring
             * frame must be freed (ring_tail) before it goes. */
            int64_t now = t1 / 1000000;
            if (i + 1 < n && now - last_flush >= EARLY_RESULTS_MS) {
                put_results(w, sent, i + 1);
                sent = i + 1;
                send_or_die(w);
                last_flush = now;
            }
        }
    }

    w->frame_n = 0;
    /* An early ack of a message answered SKIPPED (held) does not count. */
    set_clear(&w->early);
    /* RESULTS before ACKS, so the host always learns that a message was
     * deferred before it sees the ack. */
    put_results(w, sent, n);
    queue_acks(w);
    /* Nothing points into the ring frame any more (results and acks are
     * copied out): free it before the host sees the last results, which
     * is when it may check that the ring is empty. */
    if (ring_end)
        status_set_ring_tail(w->status, ring_end);
    send_or_die(w);
}

/* A RING frame: check where it points, then handle the MESSAGES frame
 * there. The host is trusted, but what it points at is checked as if it
 * came on the socket. */
static void handle_ring(worker *w, kh_reader *r) {
    uint64_t pos = tr_get_u64(r);
    uint32_t len = tr_get_u32(r);
    if (r->error || r->left)
        protocol_error("malformed RING frame");
    if (!w->ring)
        protocol_error("RING frame without a message ring");
    size_t at = (size_t)(pos % w->ring_size);
    if (pos < w->ring_end || len < KH_FRAME_HEADER_SIZE ||
        len > w->ring_size - at || pos - w->ring_end > w->ring_size - len)
        protocol_error("RING frame outside the message ring");
    const uint8_t *f = w->ring + at;
    uint32_t plen;
    uint16_t type, reserved;
    memcpy(&plen, f, 4);
    memcpy(&type, f + 4, 2);
    memcpy(&reserved, f + 6, 2);
    if (le32toh(plen) != len - KH_FRAME_HEADER_SIZE ||
        le16toh(type) != KH_F_MESSAGES || reserved != 0)
        protocol_error("RING frame that does not hold one MESSAGES frame");
    kh_reader payload = {.p = f + KH_FRAME_HEADER_SIZE,
                         .left = len - KH_FRAME_HEADER_SIZE};
    w->ring_end = pos + len;
    handle_messages(w, &payload, w->ring_end);
}

static void handle_partition(worker *w, kh_reader *r, int assign) {
    size_t len;
    const uint8_t *t = tr_get_str(r, &len);
    int32_t partition = tr_get_i32(r);
    if (r->error)
        protocol_error(assign ? "truncated ASSIGN frame"
                              : "truncated REVOKE frame");
    char *topic = xstrndup(t, len);
    klog_debug("%s topic %s partition %" PRId32, assign ? "assign" : "revoke",
               topic, partition);
    /* A fresh assignment, or the end of one, starts without a hold. */
    unhold(w, topic, partition);
    void (*cb)(void *, const char *, int32_t) = NULL;
    if (assign && KHOST_DESCRIPTOR_HAS(w->desc, on_assign))
        cb = w->desc->on_assign;
    else if (!assign && KHOST_DESCRIPTOR_HAS(w->desc, on_revoke))
        cb = w->desc->on_revoke;
    if (cb) {
        /* Count 0: the status page shows a live call that is not about
         * any message, so a hang here is still visible to the host. */
        status_enter_call(w->status, 0, 0, kh_now_ms());
        cb(w->state, topic, partition);
        status_leave_call(w->status);
    }
    free(topic);
    flush_acks(w);
}

static void handle_resume(worker *w, kh_reader *r) {
    size_t len;
    const uint8_t *t = tr_get_str(r, &len);
    int32_t partition = tr_get_i32(r);
    if (r->error)
        protocol_error("truncated RESUME frame");
    char *topic = xstrndup(t, len);
    unhold(w, topic, partition);
    free(topic);
}

static void call_tick(worker *w) {
    if (!KHOST_DESCRIPTOR_HAS(w->desc, tick) || !w->desc->tick)
        return;
    int64_t now = kh_now_ms();
    status_enter_call(w->status, 0, 0, now);
    w->desc->tick(w->state, now);
    status_leave_call(w->status);
    flush_acks(w);
}

static void __attribute__((noreturn)) shutdown_worker(worker *w) {
    klog_info("shutting down");
    call_tick(w);
    status_enter_call(w->status, 0, 0, kh_now_ms());
    w->desc->terminate(w->state);
    status_leave_call(w->status);
    w->state = NULL;
    flush_acks(w);
    klog_info("terminated");
    worker_free(w);
    exit(0);
}

static void __attribute__((noreturn)) run(worker *w) {
    int64_t next_tick = w->tick_ms ? kh_now_ms() + w->tick_ms : -1;
    for (;;) {
        kh_reader r;
        int timed_out;
        uint16_t type = wait_frame(w, &r, next_tick, &timed_out);
        if (!timed_out) {
            switch (type) {
            case KH_F_MESSAGES:
                handle_messages(w, &r, 0);
                break;
            case KH_F_RING:
                handle_ring(w, &r);
                break;
            case KH_F_ASSIGN:
                handle_partition(w, &r, 1);
                break;
            case KH_F_REVOKE:
                handle_partition(w, &r, 0);
                break;
            case KH_F_RESUME:
                handle_resume(w, &r);
                break;
            case KH_F_SHUTDOWN:
                shutdown_worker(w);
            default: {
                char what[64];
                snprintf(what, sizeof what, "unexpected frame type %u",
                         (unsigned)type);
                protocol_error(what);
            }
            }
        }
        /* Ticks are due by the clock, not by idleness: a busy worker
         * still flushes and acks on time. */
        if (w->tick_ms && kh_now_ms() >= next_tick) {
            call_tick(w);
            next_tick = kh_now_ms() + w->tick_ms;
        }
        flush_acks(w);
    }
}

static void __attribute__((noreturn)) usage_error(const char *why) {
    fprintf(stderr,
            "khost worker: %s\n"
            "usage: khost worker --host-pid PID [--tag NAME] [--output-fd N] "
            "[--rlimit-as BYTES]\n"
            "       [--rlimit-nofile N] [--rlimit-cpu SECONDS] [--uid UID] "
            "[--gid GID]\n"
            "       (internal: started by khost run)\n",
            why);
    exit(2);
}

/* Show "khost-worker PIPELINE/N" in ps and top instead of the name of
 * the fd the host exec'd us from. The comm (top, ps -o comm) holds 15
 * bytes: "khost-worker". The command line (ps aux) gets the whole title,
 * written over the argument strings, which the kernel keeps in one block.
 * Called once
 * the arguments are parsed: nothing points into them afterwards. */
static void set_process_title(const char *tag, int argc, char **argv) {
    char title[160];
    snprintf(title, sizeof title, "khost-%s", tag);
    prctl(PR_SET_NAME, "khost-worker", 0, 0, 0);
    /* argv here starts at "worker": the block begins at the process's
     * argv[0]. Rewrite only when the strings are laid out as exec left
     * them, one after the other. */
    char *start = program_invocation_name;
    if (!start || argc < 1 || argv[0] < start)
        return;
    char *end = argv[argc - 1] + strlen(argv[argc - 1]) + 1;
    char *p = start;
    int k = 0;
    while (p < end) {
        if (k < argc && p == argv[k])
            k++;
        p += strlen(p) + 1;
    }
    if (p != end || k != argc)
        return;
    size_t room = (size_t)(end - start);
    size_t len = strlen(title);
    if (len >= room)
        len = room - 1;
    memcpy(start, title, len);
    memset(start + len, 0, room - len);
}

int worker_main(int argc, char **argv) {
    long host_pid = -1, output_fd = -1;
    const char *tag = "worker";
    kh_hardening hard = {.uid = -1, .gid = -1};
    for (int i = 1; i < argc; i++) {
        const char *why = NULL;
        int hrc = hardening_parse_arg(&hard, argc, argv, &i, &why);
        if (hrc < 0)
            usage_error(why);
        if (hrc > 0)
            continue;
        if (!strcmp(argv[i], "--host-pid") && i + 1 < argc) {
            char *end;
            errno = 0;
            host_pid = strtol(argv[++i], &end, 10);
            if (errno || *end || end == argv[i] || host_pid <= 0)
                usage_error("--host-pid needs a process id");
        } else if (!strcmp(argv[i], "--tag") && i + 1 < argc) {
            tag = argv[++i];
        } else if (!strcmp(argv[i], "--output-fd") && i + 1 < argc) {
            char *end;
            errno = 0;
            output_fd = strtol(argv[++i], &end, 10);
            if (errno || *end || end == argv[i] || output_fd < 3)
                usage_error("--output-fd needs a descriptor number above 2");
        } else {
            usage_error("unexpected argument");
        }
    }
    if (host_pid <= 0)
        usage_error("--host-pid is required");

    /* Arm the death signal first, then check the parent: if the host died
     * before prctl, we were reparented and the signal will never come. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if ((long)getppid() != host_pid)
        exit(1);
    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    signal(SIGPIPE, SIG_IGN);
    /* The host decides when a worker stops (SHUTDOWN, or SIGKILL). A
     * terminal's Ctrl-C or a service manager's SIGTERM to the whole
     * process group must not kill workers before the host has drained. */
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    klog_set_tag(tag);
    set_process_title(tag, argc, argv);
    /* The plugin's stdout and stderr go to the host, which tags and
     * rate-limits them; the worker's own lines keep the original stderr
     * (journald's stream under systemd). Done before the limits: a low
     * RLIMIT_NOFILE must not refuse the descriptor. */
    if (output_fd >= 0) {
        int logfd = fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 10);
        if (logfd >= 0 && dup2((int)output_fd, STDOUT_FILENO) >= 0 &&
            dup2((int)output_fd, STDERR_FILENO) >= 0) {
            klog_set_fd(logfd);
            /* A pipe makes stdout fully buffered: lines would show up
             * late, or never when the worker is killed. */
            setvbuf(stdout, NULL, _IOLBF, 0);
        } else if (logfd >= 0)
            close(logfd);
        close((int)output_fd);
    }
    /* Limits and identity before anything of the plugin's is loaded. */
    char hard_err[512];
    bool hardened =
        hardening_apply(&hard, host_pid, hard_err, sizeof hard_err) == 0;

    worker *w = xcalloc(1, sizeof *w);
    w->conn.fd = -1;
    map_status(w);
    conn_init(&w->conn, KH_WORKER_CHANNEL_FD, KH_FRAME_MAX_TO_WORKER);
    start_plugin(w, hardened ? NULL : hard_err);
    run(w);
}
