/*
 * transport: the byte protocol between the host and a worker process.
 *
 * One SOCK_STREAM unix socketpair per worker carries length-prefixed
 * frames; MESSAGES frames themselves usually sit in a shared-memory ring
 * beside it, named by small RING frames on the socket (see "message ring"). The
 * host batches many messages into one MESSAGES frame and the worker answers a
 * whole batch with one RESULTS frame, so the cost of a syscall is spread over a
 * batch. The host bounds how many messages each worker has in flight (flow
 * control lives in the host, not here).
 *
 * Everything a worker sends is untrusted: a worker runs plugin code that
 * may scribble over memory. Decoders never read past a frame, and frame
 * sizes from workers are capped at KH_FRAME_MAX_FROM_WORKER.
 *
 * Frame: u32 payload_length (little endian), u16 type, u16 reserved(0),
 * then payload_length bytes. All integers little endian. A "str" is
 * u32 length + bytes (no NUL on the wire); a "blob" is u32 length + bytes
 * where length 0xFFFFFFFF means NULL (no bytes follow).
 *
 * Payloads:
 *   host -> worker
 *     INIT      str pipeline, u32 worker_index, str plugin_path,
 *               u32 tick_interval_ms, u32 n, n x (str key, str value)
 *     MESSAGES  u32 n, n x message:
 *                 u64 token, u32 attempt, str topic, i32 partition,
 *                 i64 offset, i64 timestamp_ms, i32 timestamp_type,
 *                 blob key, blob value, u32 n_headers,
 *                 n_headers x (str name, blob value)
 *     ASSIGN    str topic, i32 partition
 *     REVOKE    str topic, i32 partition
 *     SHUTDOWN  (empty)
 *     RESUME    str topic, i32 partition: after the worker answered retry
 *               or fail for a message of this partition it skips the
 *               partition's later messages (KH_RESULT_SKIPPED) until this
 *               frame, so nothing is handled out of order while the host
 *               rewinds and redelivers.
 *     RING      u64 pos, u32 len: a whole MESSAGES frame (header and
 *               payload, len bytes) sits in the worker's ring at absolute
 *               position pos (see "message ring" below). It is handled in
 *               its place in the stream, as if it had come on the socket.
 *   worker -> host
 *     READY        str plugin_name, str plugin_version, u64 plugin_flags
 *                  (the descriptor's flags, ABI 1.2; 0 for older plugins)
 *     INIT_FAILED  str message
 *     RESULTS      u32 n, n x (u64 token, u8 result)
 *                  result: khost_result, or KH_RESULT_SKIPPED
 *                  A worker may answer one MESSAGES frame with several
 *                  RESULTS frames, in order (early results while a slow
 *                  handler works through a batch shrink what a crash costs).
 *     ACKS         u32 n, n x u64 token   (deferred acks)
 *     ERROR        u64 token, str text: the plugin's reason for a retry or
 *                  fail answer (api->set_error), sent before the RESULTS
 *                  that carry the answer
 */
#ifndef KHOST_TRANSPORT_H
#define KHOST_TRANSPORT_H

#include <khost/plugin.h>
#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KH_FRAME_HEADER_SIZE 8
/* Workers only send results and acks: 1 MiB is ~90k results. */
#define KH_FRAME_MAX_FROM_WORKER (1u << 20)
/* One Kafka message can be large (message.max.bytes); allow 256 MiB. */
#define KH_FRAME_MAX_TO_WORKER (256u << 20)
#define KH_BLOB_NULL 0xFFFFFFFFu

/* A message the worker did not hand to the plugin: its partition is held
 * (an earlier message was answered retry or fail, or the host asked for a
 * drain) until the host sends RESUME. The host redelivers it in order. */
#define KH_RESULT_SKIPPED 255

/* Worker exit codes with a meaning for the supervisor. */
#define KH_EXIT_INIT_FAILED 78 /* plugin load or init failed */
#define KH_EXIT_PROTOCOL 76    /* the host sent something undecodable */

typedef enum kh_frame_type {
    KH_F_INIT = 1,
    KH_F_MESSAGES = 2,
    KH_F_ASSIGN = 3,
    KH_F_REVOKE = 4,
    KH_F_SHUTDOWN = 5,
    KH_F_RESUME = 6,
    KH_F_RING = 7,
    KH_F_READY = 64,
    KH_F_INIT_FAILED = 65,
    KH_F_RESULTS = 66,
    KH_F_ACKS = 67,
    KH_F_ERROR = 68,
} kh_frame_type;

/* ---- growable buffer ---- */

typedef struct kh_buf {
    uint8_t *data;
    size_t len; /* bytes written */
    size_t off; /* bytes already consumed from the front (reads/writes) */
    size_t cap;
    /* Memory the buffer does not own (a region of the message ring):
     * writing past cap aborts instead of growing, and buf_free must not
     * be called on it. */
    bool fixed;
} kh_buf;

void buf_free(kh_buf *b);
/* Drop consumed bytes from the front once they dominate the buffer. */
void buf_compact(kh_buf *b);
static inline size_t buf_pending(const kh_buf *b) {
    return b->len - b->off;
}

/* ---- encoding ---- */

/* Start a frame; returns the position to pass to tr_frame_end. */
size_t tr_frame_begin(kh_buf *b, kh_frame_type type);
/* Patch the length of the frame started at `start`. */
void tr_frame_end(kh_buf *b, size_t start);

void tr_put_u8(kh_buf *b, uint8_t v);
void tr_put_u32(kh_buf *b, uint32_t v);
void tr_put_i32(kh_buf *b, int32_t v);
void tr_put_u64(kh_buf *b, uint64_t v);
void tr_put_i64(kh_buf *b, int64_t v);
void tr_put_str(kh_buf *b, const char *s);              /* NULL encodes as "" */
void tr_put_blob(kh_buf *b, const void *p, size_t len); /* p NULL: null */

/* Append one message of a MESSAGES frame, straight from librdkafka's
 * message (no intermediate copy). The caller writes the u32 count first
 * (and may patch it later through tr_patch_u32). With `headers` false
 * the message goes with 0 headers and librdkafka's headers are not
 * parsed (the worker's plugin set KHOST_PLUGIN_NO_HEADERS). */
void tr_put_kafka_message(kh_buf *b, uint64_t token, uint32_t attempt,
                          const rd_kafka_message_t *m, bool headers);
void tr_patch_u32(kh_buf *b, size_t pos, uint32_t v);

/* ---- decoding (bounds-checked cursor over one frame's payload) ---- */

typedef struct kh_reader {
    const uint8_t *p;
    size_t left;
    int error; /* set once anything was out of bounds or malformed */
} kh_reader;

uint8_t tr_get_u8(kh_reader *r);
uint32_t tr_get_u32(kh_reader *r);
int32_t tr_get_i32(kh_reader *r);
uint64_t tr_get_u64(kh_reader *r);
int64_t tr_get_i64(kh_reader *r);
/* Borrowed pointer into the frame; *len set. Not NUL-terminated. */
const uint8_t *tr_get_str(kh_reader *r, size_t *len);
/* Borrowed; returns NULL with *len 0 for a null blob. */
const uint8_t *tr_get_blob(kh_reader *r, size_t *len);

/*
 * Decode one message of a MESSAGES frame into `out`, borrowing from the
 * frame. Strings that the ABI wants NUL-terminated (topic, header names)
 * are copied into `strings`, a scratch buffer the caller resets per frame
 * (kept alive while the khost_message is used). Headers go into *headers,
 * grown as needed (caller frees). Returns 0, or -1 on malformed input.
 */
int tr_get_message(kh_reader *r, khost_message *out, kh_buf *strings,
                   khost_header **headers, size_t *headers_cap);

/* ---- nonblocking framed connection ---- */

typedef struct kh_conn {
    int fd;
    kh_buf in;
    kh_buf out;
    uint32_t max_frame; /* largest payload accepted from the peer */
} kh_conn;

void conn_init(kh_conn *c, int fd, uint32_t max_frame);
void conn_close(kh_conn *c); /* closes fd, frees buffers */

/* Write as much of c->out as the socket takes. Returns 0 when all is
 * written, 1 when bytes remain (EAGAIN), or -errno. */
int conn_flush(kh_conn *c);

/* Read what is available into c->in. Returns bytes read (> 0), 0 on EOF,
 * -EAGAIN when nothing is there, or -errno. */
long conn_fill(kh_conn *c);

/* Take the next complete frame from c->in. Returns 1 with *type and
 * *payload set (valid until the next conn_* call), 0 when more bytes are
 * needed, -EPROTO when the peer sent a frame over max_frame or a nonzero
 * reserved field. */
int conn_next_frame(kh_conn *c, uint16_t *type, kh_reader *payload);

/* ---- message ring ---- */

/*
 * The status memfd goes on past its first page with a ring of
 * KH_RING_BYTES: the host writes whole MESSAGES frames into it and sends
 * only a small RING frame on the socket, so a message's bytes cross from
 * the host to the worker with one copy (librdkafka's buffer to the ring)
 * instead of three (to the socket buffer, into the kernel, out of it).
 * Control frames, and messages too big for the ring, stay on the socket;
 * both go through one ordered stream, so order is kept.
 *
 * Positions are absolute byte counts (u64, never wrap in practice); a
 * frame's bytes sit at pos % size and never wrap around the end (the
 * host skips to the start instead, and the skipped bytes are freed with
 * the next frame). The rules each side keeps:
 *   host:   writes only in [head, tail + size), and pos >= the end of the
 *           previous ring frame; reads nothing from the ring;
 *   worker: after it is done with a ring frame's messages (every handler
 *           call on them returned) and before it sends the frame's last
 *           RESULTS, it stores tail = pos + len (status page, release).
 * The host checks every tail it loads: it never goes back, never passes
 * head, and equals head once every message sent is answered. A worker
 * that breaks that is killed like one that lies in a RESULTS frame. The
 * memfd is sealed against resizing, so a worker cannot make the host's
 * mapping fault.
 */
#define KH_RING_OFFSET 4096      /* the status page comes first */
#define KH_RING_BYTES (1u << 20) /* per worker */
#define KH_RING_FRAME_MAX (KH_RING_BYTES / 4)

/* Where the next ring frame goes, for a ring of KH_RING_BYTES with the
 * host at head and the worker's tail at tail (tail <= head <= tail +
 * size): returns the bytes the frame may take (at most
 * KH_RING_FRAME_MAX; 0 when full), starting at absolute position head +
 * *skip. A short stretch before the end is skipped when the front has
 * more room; an empty ring always gives KH_RING_FRAME_MAX. */
size_t tr_ring_place(uint64_t head, uint64_t tail, size_t *skip);

/* Exact encoded size of what tr_put_kafka_message appends for m. */
size_t tr_kafka_message_size(const rd_kafka_message_t *m, bool headers);

/* ---- worker status page ---- */

/*
 * A page of shared memory (memfd) per worker, written by the worker and
 * read by the host. It lets the host tell, with no syscall on the hot
 * path, which message a worker was handling when it died or hung: that
 * is the crash's suspect offset.
 */
/* A histogram of durations: counts per bucket (not cumulative; the last
 * one is over the top bound), their sum and count. The host keeps them
 * for end-to-end latency and folds the handler-duration ones of workers
 * that are gone; bounds are per use (KH_HANDLE_BOUNDS_S in transport.c,
 * KH_E2E_BOUNDS_S in metrics.c). */
#define KH_HIST_N 16
typedef struct kh_hist {
    uint64_t bucket[KH_HIST_N + 1];
    uint64_t count;
    double sum_s;
} kh_hist;
extern const double kh_handle_bounds_s[KH_HIST_N];
extern const double kh_e2e_bounds_s[KH_HIST_N];
/* Count v (seconds) in h, against `bounds` (ascending, KH_HIST_N). */
static inline void kh_hist_observe(kh_hist *h, const double *bounds, double v) {
    int i = 0;
    while (i < KH_HIST_N && v > bounds[i])
        i++;
    h->bucket[i]++;
    h->count++;
    h->sum_s += v;
}

typedef struct kh_worker_status {
    uint64_t current_token; /* first message of the current handler call */
    uint32_t current_count; /* messages in that call (1, or batch size) */
    uint32_t pad;
    int64_t call_started_ms; /* CLOCK_MONOTONIC ms; 0 while not in a call */
    uint64_t calls;          /* handler calls so far */
    /* Written by the host, read by the worker between handler calls (one
     * load, no syscall): while set, the worker answers every message it
     * has not started with KH_RESULT_SKIPPED and holds its partition until
     * RESUME. The host sets it to drain quickly for a revoke or shutdown
     * instead of waiting for a whole in-flight window to be handled. */
    uint32_t drain;
    uint32_t pad2;
    /* Written by the worker after each handler call (a handle_batch call
     * counts once): its duration in the buckets of kh_handle_bounds_s,
     * not cumulative, and the sum in ns. The host only displays them
     * (/metrics): a worker can write anything here. */
    uint64_t handle_bucket[KH_HIST_N + 1];
    uint64_t handle_sum_ns;
    /* Written by the worker: how far it is done with the message ring
     * (see "message ring" above). The host checks what it reads. */
    uint64_t ring_tail;
} kh_worker_status;

/* Accessors with the right memory ordering for a cross-process page. */
void status_enter_call(kh_worker_status *s, uint64_t token, uint32_t count,
                       int64_t now_ms);
void status_leave_call(kh_worker_status *s);
/* Worker side, after a call: count its duration (ns). */
void status_observe_call(kh_worker_status *s, int64_t ns);
/* Host side: add what the page counted to h (bucket counts, sum; count
 * is the buckets' total), saturating. */
void status_read_hist(const kh_worker_status *s, kh_hist *h);
void status_set_drain(kh_worker_status *s, bool on);           /* host */
bool status_draining(const kh_worker_status *s);               /* worker */
void status_set_ring_tail(kh_worker_status *s, uint64_t tail); /* worker */
uint64_t status_ring_tail(const kh_worker_status *s);          /* host */
/* Host side: snapshot. */
void status_read(const kh_worker_status *s, uint64_t *token, uint32_t *count,
                 int64_t *started_ms);

int64_t kh_now_ms(void); /* CLOCK_MONOTONIC in ms */

#endif
