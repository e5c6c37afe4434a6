/*
 * transport: frame codec, nonblocking framed connection and the worker
 * status page (see transport.h for the wire format).
 *
 * Integers are encoded byte by byte so the wire format does not depend
 * on the host's endianness or struct layout. Decoders treat every input
 * as hostile: a frame from a worker comes from a process running plugin
 * code, and a frame to a worker can be as large as 256 MiB, so no length
 * read from the wire is trusted before it is checked against what is
 * actually left.
 */
#define _GNU_SOURCE
#include "transport.h"

#include "log.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* A header is at least an empty name and a null value. */
#define HEADER_MIN_WIRE 8
/* Read granularity when no frame size is known yet. */
#define READ_CHUNK (64u * 1024)

/* ------------------------------------------------------------------ */
/* Buffer                                                             */
/* ------------------------------------------------------------------ */

void buf_free(kh_buf *b) {
    free(b->data);
    memset(b, 0, sizeof *b);
}

static void buf_reserve(kh_buf *b, size_t extra) {
    if (b->cap - b->len >= extra)
        return;
    if (b->fixed) {
        /* The caller sized the region for what it writes (a ring frame
         * is measured by tr_kafka_message_size first): this is a bug. */
        klog_error("transport: %zu bytes do not fit a fixed buffer of %zu",
                   b->len + extra, b->cap);
        abort();
    }
    size_t need = b->len + extra;
    if (need < b->len)
        goto oom;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need) {
        if (cap > SIZE_MAX / 2) {
            cap = need;
            break;
        }
        cap *= 2;
    }
    uint8_t *p = realloc(b->data, cap);
    if (!p)
        goto oom;
    b->data = p;
    b->cap = cap;
    return;
oom:
    /* The encoders return void: there is no caller to hand the error to,
     * and a half-written frame would desynchronise the stream. */
    klog_error("transport: out of memory growing a buffer to %zu bytes",
               b->len + extra);
    abort();
}

void buf_compact(kh_buf *b) {
    if (b->off == 0)
        return;
    if (b->off == b->len) {
        b->off = b->len = 0;
        return;
    }
    /* Moving is only worth it when the dead prefix dominates; otherwise
     * every small read would shift a large frame. */
    if (b->off > b->len / 2) {
        memmove(b->data, b->data + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
    }
}

static uint8_t *buf_grab(kh_buf *b, size_t n) {
    buf_reserve(b, n);
    uint8_t *p = b->data + b->len;
    b->len += n;
    return p;
}

/* Little-endian integers through memcpy and <endian.h>: one load or
 * store each (the byte-at-a-time loops they replace cost about 44
 * instructions per u32 read and 73 per u64, measured with callgrind by
 * tests/bench/bench_transport.c). */
static void le16(uint8_t *p, uint16_t v) {
    v = htole16(v);
    memcpy(p, &v, 2);
}

static void le32(uint8_t *p, uint32_t v) {
    v = htole32(v);
    memcpy(p, &v, 4);
}

static void le64(uint8_t *p, uint64_t v) {
    v = htole64(v);
    memcpy(p, &v, 8);
}

static uint16_t rd16(const uint8_t *p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return le16toh(v);
}

static uint32_t rd32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return le32toh(v);
}

static uint64_t rd64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return le64toh(v);
}

/* ------------------------------------------------------------------ */
/* Encoding                                                           */
/* ------------------------------------------------------------------ */

size_t tr_frame_begin(kh_buf *b, kh_frame_type type) {
    size_t start = b->len;
    uint8_t *p = buf_grab(b, KH_FRAME_HEADER_SIZE);
    le32(p, 0);
    le16(p + 4, (uint16_t)type);
    le16(p + 6, 0);
    return start;
}

void tr_frame_end(kh_buf *b, size_t start) {
    size_t payload = b->len - start - KH_FRAME_HEADER_SIZE;
    if (payload > UINT32_MAX) {
        klog_error("transport: frame of %zu bytes cannot be encoded", payload);
        abort();
    }
    le32(b->data + start, (uint32_t)payload);
}

void tr_put_u8(kh_buf *b, uint8_t v) {
    *buf_grab(b, 1) = v;
}

void tr_put_u32(kh_buf *b, uint32_t v) {
    le32(buf_grab(b, 4), v);
}

void tr_put_i32(kh_buf *b, int32_t v) {
    tr_put_u32(b, (uint32_t)v);
}

void tr_put_u64(kh_buf *b, uint64_t v) {
    le64(buf_grab(b, 8), v);
}

void tr_put_i64(kh_buf *b, int64_t v) {
    tr_put_u64(b, (uint64_t)v);
}

static void put_bytes(kh_buf *b, const void *p, size_t len) {
    /* KH_BLOB_NULL is taken, and a frame cannot hold 4 GiB anyway. */
    if (len >= KH_BLOB_NULL) {
        klog_error("transport: field of %zu bytes cannot be encoded", len);
        abort();
    }
    uint8_t *dst = buf_grab(b, 4 + len);
    le32(dst, (uint32_t)len);
    if (len)
        memcpy(dst + 4, p, len);
}

void tr_put_str(kh_buf *b, const char *s) {
    put_bytes(b, s, s ? strlen(s) : 0);
}

void tr_put_blob(kh_buf *b, const void *p, size_t len) {
    if (!p) {
        tr_put_u32(b, KH_BLOB_NULL);
        return;
    }
    put_bytes(b, p, len);
}

void tr_patch_u32(kh_buf *b, size_t pos, uint32_t v) {
    le32(b->data + pos, v);
}

void tr_put_kafka_message(kh_buf *b, uint64_t token, uint32_t attempt,
                          const rd_kafka_message_t *m, bool headers) {
    rd_kafka_timestamp_type_t tstype = RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
    int64_t ts = rd_kafka_message_timestamp(m, &tstype);
    int32_t kh_tstype;
    switch (tstype) {
    case RD_KAFKA_TIMESTAMP_CREATE_TIME:
        kh_tstype = KHOST_TIMESTAMP_CREATE_TIME;
        break;
    case RD_KAFKA_TIMESTAMP_LOG_APPEND_TIME:
        kh_tstype = KHOST_TIMESTAMP_LOG_APPEND_TIME;
        break;
    default:
        kh_tstype = KHOST_TIMESTAMP_NONE;
        ts = -1;
        break;
    }
    tr_put_u64(b, token);
    tr_put_u32(b, attempt);
    tr_put_str(b, m->rkt ? rd_kafka_topic_name(m->rkt) : "");
    tr_put_i32(b, m->partition);
    tr_put_i64(b, m->offset);
    tr_put_i64(b, ts);
    tr_put_i32(b, kh_tstype);
    tr_put_blob(b, m->key, m->key_len);
    tr_put_blob(b, m->payload, m->len);
    if (!headers) {
        tr_put_u32(b, 0);
        return;
    }

    /* rd_kafka_message_headers only parses lazily into the message; it
     * does not change what the message means, so casting away const is
     * safe here. */
    rd_kafka_headers_t *hdrs = NULL;
    if (rd_kafka_message_headers((rd_kafka_message_t *)m, &hdrs) !=
            RD_KAFKA_RESP_ERR_NO_ERROR ||
        !hdrs) {
        tr_put_u32(b, 0);
        return;
    }
    size_t count = rd_kafka_header_cnt(hdrs);
    size_t count_pos = b->len;
    tr_put_u32(b, 0);
    uint32_t written = 0;
    for (size_t i = 0; i < count; i++) {
        const char *name;
        const void *value;
        size_t size;
        if (rd_kafka_header_get_all(hdrs, i, &name, &value, &size) !=
            RD_KAFKA_RESP_ERR_NO_ERROR)
            break;
        tr_put_str(b, name);
        tr_put_blob(b, value, size);
        written++;
    }
    tr_patch_u32(b, count_pos, written);
}

size_t tr_ring_place(uint64_t head, uint64_t tail, size_t *skip) {
    size_t size = KH_RING_BYTES;
    size_t free_b = size - (size_t)(head - tail);
    size_t at = (size_t)(head % size);
    size_t room = size - at < free_b ? size - at : free_b;
    *skip = 0;
    /* Little left before the end and more free at the front: start there
     * (the skipped bytes are freed with this frame). */
    if (room < KH_RING_FRAME_MAX && free_b - room > room) {
        *skip = room;
        room = free_b - room;
    }
    return room < KH_RING_FRAME_MAX ? room : KH_RING_FRAME_MAX;
}

size_t tr_kafka_message_size(const rd_kafka_message_t *m, bool headers) {
    /* token, attempt, topic length, partition, offset, timestamp,
     * timestamp type, key and value lengths, header count */
    size_t n = 8 + 4 + 4 + 4 + 8 + 8 + 4 + 4 + 4 + 4;
    n += strlen(m->rkt ? rd_kafka_topic_name(m->rkt) : "");
    if (m->key)
        n += m->key_len;
    if (m->payload)
        n += m->len;
    rd_kafka_headers_t *hdrs = NULL;
    if (!headers ||
        rd_kafka_message_headers((rd_kafka_message_t *)m, &hdrs) !=
            RD_KAFKA_RESP_ERR_NO_ERROR ||
        !hdrs)
        return n;
    size_t count = rd_kafka_header_cnt(hdrs);
    for (size_t i = 0; i < count; i++) {
        const char *name;
        const void *value;
        size_t size;
        if (rd_kafka_header_get_all(hdrs, i, &name, &value, &size) !=
            RD_KAFKA_RESP_ERR_NO_ERROR)
            break; /* tr_put_kafka_message stops at the same place */
        n += 4 + strlen(name ? name : "") + 4 + (value ? size : 0);
    }
    return n;
}

/* ------------------------------------------------------------------ */
/* Decoding                                                           */
/* ------------------------------------------------------------------ */

static const uint8_t *take(kh_reader *r, size_t n) {
    if (r->error || r->left < n) {
        r->error = 1;
        return NULL;
    }
    const uint8_t *p = r->p;
    r->p += n;
    r->left -= n;
    return p;
}

uint8_t tr_get_u8(kh_reader *r) {
    const uint8_t *p = take(r, 1);
    return p ? p[0] : 0;
}

uint32_t tr_get_u32(kh_reader *r) {
    const uint8_t *p = take(r, 4);
    return p ? rd32(p) : 0;
}

int32_t tr_get_i32(kh_reader *r) {
    return (int32_t)tr_get_u32(r);
}

uint64_t tr_get_u64(kh_reader *r) {
    const uint8_t *p = take(r, 8);
    return p ? rd64(p) : 0;
}

int64_t tr_get_i64(kh_reader *r) {
    return (int64_t)tr_get_u64(r);
}

const uint8_t *tr_get_str(kh_reader *r, size_t *len) {
    *len = 0;
    uint32_t n = tr_get_u32(r);
    if (r->error)
        return NULL;
    if (n > r->left) {
        r->error = 1;
        return NULL;
    }
    *len = n;
    return take(r, n);
}

const uint8_t *tr_get_blob(kh_reader *r, size_t *len) {
    *len = 0;
    uint32_t n = tr_get_u32(r);
    if (r->error || n == KH_BLOB_NULL)
        return NULL;
    if (n > r->left) {
        r->error = 1;
        return NULL;
    }
    *len = n;
    return take(r, n);
}

/* Copy a wire string with a NUL into `strings`; returns its offset. */
static size_t push_cstr(kh_buf *strings, const uint8_t *s, size_t len) {
    size_t at = strings->len;
    uint8_t *dst = buf_grab(strings, len + 1);
    if (len)
        memcpy(dst, s, len);
    dst[len] = '\0';
    return at;
}

int tr_get_message(kh_reader *r, khost_message *out, kh_buf *strings,
                   khost_header **headers, size_t *headers_cap) {
    memset(out, 0, sizeof *out);
    out->struct_size = sizeof *out;
    out->ack_token = tr_get_u64(r);
    out->attempt = tr_get_u32(r);
    size_t topic_len;
    const uint8_t *topic = tr_get_str(r, &topic_len);
    out->partition = tr_get_i32(r);
    out->offset = tr_get_i64(r);
    out->timestamp_ms = tr_get_i64(r);
    out->timestamp_type = tr_get_i32(r);
    out->key = tr_get_blob(r, &out->key_len);
    out->value = tr_get_blob(r, &out->value_len);
    uint32_t n = tr_get_u32(r);
    if (r->error)
        return -1;
    /* A hostile count must not size an allocation: every header takes at
     * least HEADER_MIN_WIRE bytes of what is left. */
    if (n > r->left / HEADER_MIN_WIRE) {
        r->error = 1;
        return -1;
    }

    /* Validate the headers and size the strings first, so `strings`
     * grows at most once and the pointers taken below stay valid. */
    kh_reader probe = *r;
    size_t need = topic_len + 1;
    for (uint32_t i = 0; i < n; i++) {
        size_t len, vlen;
        tr_get_str(&probe, &len);
        tr_get_blob(&probe, &vlen);
        need += len + 1;
    }
    if (probe.error) {
        *r = probe;
        return -1;
    }
    if (n > *headers_cap) {
        size_t cap = *headers_cap ? *headers_cap : 4;
        while (cap < n)
            cap *= 2;
        khost_header *h = realloc(*headers, cap * sizeof *h);
        if (!h) {
            r->error = 1;
            return -1;
        }
        *headers = h;
        *headers_cap = cap;
    }
    buf_reserve(strings, need);
    size_t topic_at = push_cstr(strings, topic, topic_len);
    for (uint32_t i = 0; i < n; i++) {
        size_t len;
        const uint8_t *name = tr_get_str(r, &len);
        khost_header *h = &(*headers)[i];
        h->name = (const char *)strings->data + push_cstr(strings, name, len);
        h->value = tr_get_blob(r, &h->value_len);
    }
    out->topic = (const char *)strings->data + topic_at;
    out->headers = n ? *headers : NULL;
    out->header_count = n;
    return r->error ? -1 : 0;
}

/* ------------------------------------------------------------------ */
/* Connection                                                         */
/* ------------------------------------------------------------------ */

void conn_init(kh_conn *c, int fd, uint32_t max_frame) {
    memset(c, 0, sizeof *c);
    c->fd = fd;
    c->max_frame = max_frame;
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0 && !(fl & O_NONBLOCK))
        fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

void conn_close(kh_conn *c) {
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    buf_free(&c->in);
    buf_free(&c->out);
}

int conn_flush(kh_conn *c) {
    kh_buf *b = &c->out;
    while (b->off < b->len) {
        size_t n = b->len - b->off;
        /* MSG_NOSIGNAL: a dead peer must be an EPIPE, not a SIGPIPE. */
        ssize_t w = send(c->fd, b->data + b->off, n, MSG_NOSIGNAL);
        if (w < 0 && errno == ENOTSOCK)
            w = write(c->fd, b->data + b->off, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                buf_compact(b);
                return 1;
            }
            return -errno;
        }
        b->off += (size_t)w;
    }
    b->off = b->len = 0;
    return 0;
}

/* Parse the header at the front of `in` if complete. Returns the whole
 * frame size, or 0 when the header is incomplete or invalid. */
static size_t pending_frame_size(const kh_conn *c) {
    const kh_buf *b = &c->in;
    if (b->len - b->off < KH_FRAME_HEADER_SIZE)
        return 0;
    const uint8_t *h = b->data + b->off;
    uint32_t len = rd32(h);
    if (len > c->max_frame || rd16(h + 6) != 0)
        return 0;
    return KH_FRAME_HEADER_SIZE + (size_t)len;
}

long conn_fill(kh_conn *c) {
    kh_buf *b = &c->in;
    buf_compact(b);
    /* When a valid header says how big the frame is, make room for all of
     * it so a large frame arrives in few reads; a header over max_frame
     * never sizes anything (conn_next_frame rejects it). */
    size_t want = READ_CHUNK;
    size_t frame = pending_frame_size(c);
    if (frame > b->len - b->off && frame - (b->len - b->off) > want)
        want = frame - (b->len - b->off);
    buf_reserve(b, want);
    for (;;) {
        ssize_t n = read(c->fd, b->data + b->len, b->cap - b->len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return -EAGAIN;
            return -errno;
        }
        b->len += (size_t)n;
        return (long)n;
    }
}

int conn_next_frame(kh_conn *c, uint16_t *type, kh_reader *payload) {
    kh_buf *b = &c->in;
    size_t have = b->len - b->off;
    if (have < KH_FRAME_HEADER_SIZE)
        return 0;
    const uint8_t *h = b->data + b->off;
    uint32_t len = rd32(h);
    /* Checked before waiting for the payload so a bogus length cannot
     * make us buffer (or wait for) up to 4 GiB. */
    if (len > c->max_frame || rd16(h + 6) != 0)
        return -EPROTO;
    if (have - KH_FRAME_HEADER_SIZE < len)
        return 0;
    *type = rd16(h + 4);
    payload->p = h + KH_FRAME_HEADER_SIZE;
    payload->left = len;
    payload->error = 0;
    b->off += KH_FRAME_HEADER_SIZE + (size_t)len;
    return 1;
}

/* ------------------------------------------------------------------ */
/* Status page                                                        */
/* ------------------------------------------------------------------ */

void status_enter_call(kh_worker_status *s, uint64_t token, uint32_t count,
                       int64_t now_ms) {
    /* Token and count first: the started time is what marks the call as
     * live, so a reader that sees it must also see the matching token. */
    __atomic_store_n(&s->current_token, token, __ATOMIC_RELEASE);
    __atomic_store_n(&s->current_count, count, __ATOMIC_RELEASE);
    __atomic_store_n(&s->call_started_ms, now_ms > 0 ? now_ms : 1,
                     __ATOMIC_RELEASE);
    /* Only this process writes `calls`, so load + store is enough. */
    uint64_t calls = __atomic_load_n(&s->calls, __ATOMIC_RELAXED);
    __atomic_store_n(&s->calls, calls + 1, __ATOMIC_RELEASE);
}

void status_set_drain(kh_worker_status *s, bool on) {
    __atomic_store_n(&s->drain, on ? 1u : 0u, __ATOMIC_RELEASE);
}

bool status_draining(const kh_worker_status *s) {
    return __atomic_load_n(&s->drain, __ATOMIC_ACQUIRE) != 0;
}

void status_set_ring_tail(kh_worker_status *s, uint64_t tail) {
    /* Release: every read of the ring bytes before it is done. */
    __atomic_store_n(&s->ring_tail, tail, __ATOMIC_RELEASE);
}

uint64_t status_ring_tail(const kh_worker_status *s) {
    /* Acquire: the host writes over the freed bytes only after. */
    return __atomic_load_n(&s->ring_tail, __ATOMIC_ACQUIRE);
}

/* 0.1 ms to 10 s: handlers are fast, or they talk to something slow. */
const double kh_handle_bounds_s[KH_HIST_N] = {
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,    10};

/* 1 ms to 5 min: from a message's Kafka timestamp to its ack. */
const double kh_e2e_bounds_s[KH_HIST_N] = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5,   1,      2.5,   5,    10,    30,   60,  300};

void status_observe_call(kh_worker_status *s, int64_t ns) {
    if (ns < 0)
        ns = 0;
    double v = (double)ns / 1e9;
    int i = 0;
    while (i < KH_HIST_N && v > kh_handle_bounds_s[i])
        i++;
    /* Only this process writes them: load + store is enough. */
    uint64_t b = __atomic_load_n(&s->handle_bucket[i], __ATOMIC_RELAXED);
    __atomic_store_n(&s->handle_bucket[i], b + 1, __ATOMIC_RELAXED);
    uint64_t sum = __atomic_load_n(&s->handle_sum_ns, __ATOMIC_RELAXED);
    __atomic_store_n(&s->handle_sum_ns, sum + (uint64_t)ns, __ATOMIC_RELAXED);
}

static uint64_t sat_add(uint64_t a, uint64_t b) {
    return a + b < a ? UINT64_MAX : a + b;
}

void status_read_hist(const kh_worker_status *s, kh_hist *h) {
    for (int i = 0; i <= KH_HIST_N; i++) {
        uint64_t b = __atomic_load_n(&s->handle_bucket[i], __ATOMIC_RELAXED);
        h->bucket[i] = sat_add(h->bucket[i], b);
        h->count = sat_add(h->count, b);
    }
    h->sum_s +=
        (double)__atomic_load_n(&s->handle_sum_ns, __ATOMIC_RELAXED) / 1e9;
}

void status_leave_call(kh_worker_status *s) {
    __atomic_store_n(&s->call_started_ms, 0, __ATOMIC_RELEASE);
}

void status_read(const kh_worker_status *s, uint64_t *token, uint32_t *count,
                 int64_t *started_ms) {
    /* A live worker may start the next call between our loads; retry
     * until the started time is stable around the token read. A dead or
     * hung worker (the cases that matter) does not write at all. */
    for (int tries = 0;; tries++) {
        int64_t started =
            __atomic_load_n(&s->call_started_ms, __ATOMIC_ACQUIRE);
        uint64_t t = __atomic_load_n(&s->current_token, __ATOMIC_ACQUIRE);
        uint32_t n = __atomic_load_n(&s->current_count, __ATOMIC_ACQUIRE);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        int64_t again = __atomic_load_n(&s->call_started_ms, __ATOMIC_ACQUIRE);
        if (again == started) {
            *token = t;
            *count = n;
            *started_ms = started;
            return;
        }
        if (tries >= 8) {
            /* Still racing: report no call rather than pair a time with
             * the token of another call. */
            *token = t;
            *count = n;
            *started_ms = 0;
            return;
        }
    }
}

int64_t kh_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
