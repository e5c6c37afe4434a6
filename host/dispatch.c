/*
 * dispatch: moves messages from the host's per-partition queues to the
 * owning worker in batches, and turns what workers answer into offsets.
 *
 * A worker is untrusted: every token it sends back is checked against the
 * ledger (offsets.c). A result for a message it was never given, a second
 * result for one message, or an undecodable frame gets the worker killed;
 * the crash path then rewinds its partitions as for any other crash.
 */
#define _GNU_SOURCE
#include "dispatch.h"
#include "failure.h"
#include "host.h"
#include "jitter.h"
#include "log.h"
#include "pipeline.h"
#include "supervisor.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- sending ---- */

kh_worker *dispatch_owner(kh_part *part) {
    return part->owner;
}

void dispatch_send_partition_event(kh_part *part, kh_frame_type type) {
    kh_worker *w = dispatch_owner(part);
    if (!w || (w->state != KH_W_READY && w->state != KH_W_STOPPING))
        return;
    size_t start = tr_frame_begin(&w->conn.out, type);
    tr_put_str(&w->conn.out, part->topic);
    tr_put_i32(&w->conn.out, part->partition);
    tr_frame_end(&w->conn.out, start);
    if (conn_flush(&w->conn) == 1 && w->io_src)
        sd_event_source_set_io_events(w->io_src, EPOLLIN | EPOLLOUT);
}

/* Where fill_frame writes one MESSAGES frame: the socket's buffer
 * (limit 0), or a region of the message ring of `limit` bytes. */
typedef struct frame_dst {
    kh_buf *b;
    size_t limit;
    bool too_big; /* ring: the first message can never fit a ring frame */
} frame_dst;

/* Fill one MESSAGES frame for `w` into d; returns the number of
 * messages. Into the ring, each message is measured before it is taken,
 * so the frame stops short of the region instead of overflowing it. */
static size_t fill_frame(kh_pipeline_rt *pl, kh_worker *w, int64_t now,
                         frame_dst *d) {
    kh_buf *b = d->b;
    bool headers = !(w->plugin_flags & KHOST_PLUGIN_NO_HEADERS);
    size_t start = tr_frame_begin(b, KH_F_MESSAGES);
    size_t count_pos = b->len;
    tr_put_u32(b, 0);
    size_t n = 0, bytes = 0;
    for (size_t k = 0; k < pl->n_parts; k++) {
        kh_part *part = pl->parts[(w->rr + k) % pl->n_parts];
        if (part->owner != w || !part_dispatchable(part, now))
            continue;
        bool frame_full = false;
        rd_kafka_message_t *head;
        while ((head = part_head(part)) && n < KH_BATCH_MAX &&
               w->inflight + n < KH_MAX_INFLIGHT &&
               (n == 0 || bytes < KH_BATCH_BYTES)) {
            if (part_head_failed(part)) {
                if (!failure_apply(part))
                    break; /* held at it (on_failure = pause) */
                continue;
            }
            /* After a crash inside a batch call, messages up to the crash
             * point go one per frame, so a second crash names its
             * message exactly (poison detection needs that). */
            bool isolate = head->offset <= part->isolate_through;
            if (!isolate)
                part->isolate_through = -1;
            else if (n > 0) {
                frame_full = true;
                break;
            }
            if (d->limit) {
                size_t sz = tr_kafka_message_size(head, headers);
                if (sz > d->limit - b->len) {
                    if (n == 0 &&
                        sz > KH_RING_FRAME_MAX - KH_FRAME_HEADER_SIZE - 4)
                        d->too_big = true;
                    frame_full = true;
                    break;
                }
            }
            uint64_t seq;
            uint32_t attempt;
            rd_kafka_message_t *m = part_take(part, &seq, &attempt);
            if (!m)
                continue; /* acked before a rewind: not sent again */
            tr_put_kafka_message(b, kh_token_make(part->slot, seq), attempt, m,
                                 headers);
            offsets_stamp(&part->off, seq, now,
                          rd_kafka_message_timestamp(m, NULL));
            bytes += m->len + m->key_len;
            n++;
            part_keep(part, seq, m); /* for a rewind to requeue */
            if (isolate) {
                frame_full = true;
                break;
            }
        }
        if (frame_full || n >= KH_BATCH_MAX || bytes >= KH_BATCH_BYTES)
            break;
    }
    w->rr++;
    if (!n) {
        b->len = start; /* nothing to send: take the empty frame back */
        return 0;
    }
    tr_patch_u32(b, count_pos, (uint32_t)n);
    tr_frame_end(b, start);
    w->inflight += n;
    return n;
}

static bool lie(kh_worker *w, const char *what);

/* Load and check the tail the worker stored (transport.h's rules). */
static bool ring_sync(kh_worker *w) {
    uint64_t tail = status_ring_tail(w->status);
    if (tail < w->ring_tail || tail > w->ring_head)
        return lie(w, "moved its message ring tail outside what it was given");
    w->ring_tail = tail;
    return true;
}

/* Fill one MESSAGES frame into w's ring and queue the RING frame that
 * points at it; a message too big for any ring frame goes on the socket
 * instead. Returns the number of messages (0: nothing to send, or no
 * room until the worker answers). */
static size_t fill_ring_frame(kh_pipeline_rt *pl, kh_worker *w, int64_t now) {
    if (!ring_sync(w))
        return 0;
    size_t skip;
    size_t room = tr_ring_place(w->ring_head, w->ring_tail, &skip);
    kh_buf fb = {.data = w->ring + (w->ring_head + skip) % KH_RING_BYTES,
                 .cap = room,
                 .fixed = true};
    /* Too small for a frame header: wait for the worker to free more. */
    if (fb.cap < KH_FRAME_HEADER_SIZE + 4)
        return 0;
    frame_dst d = {.b = &fb, .limit = fb.cap};
    size_t n = fill_frame(pl, w, now, &d);
    if (n) {
        uint64_t pos = w->ring_head + skip;
        w->ring_head = pos + fb.len;
        size_t start = tr_frame_begin(&w->conn.out, KH_F_RING);
        tr_put_u64(&w->conn.out, pos);
        tr_put_u32(&w->conn.out, (uint32_t)fb.len);
        tr_frame_end(&w->conn.out, start);
        return n;
    }
    if (!d.too_big)
        return 0;
    w->rr--; /* the same round-robin start, on the socket */
    frame_dst sock = {.b = &w->conn.out};
    return fill_frame(pl, w, now, &sock);
}

void dispatch_pump(kh_pipeline_rt *pl) {
    if (pl->failed)
        return;
    int64_t now = kh_now_ms();
    for (int i = 0; i < pl_n_all_workers(pl); i++) {
        kh_worker *w = pl_worker(pl, i);
        /* A spare owns no partition (supervisor.c): nothing to fill, and
         * no scan of every partition for it on each pump. */
        if (w->state != KH_W_READY || w->spare)
            continue;
        frame_dst sock = {.b = &w->conn.out};
        while (w->state == KH_W_READY && w->inflight < KH_MAX_INFLIGHT &&
               buf_pending(&w->conn.out) < KH_OUTBUF_MAX &&
               (w->ring ? fill_ring_frame(pl, w, now)
                        : fill_frame(pl, w, now, &sock)) > 0)
            ;
        if (buf_pending(&w->conn.out) && conn_flush(&w->conn) == 1)
            sd_event_source_set_io_events(w->io_src, EPOLLIN | EPOLLOUT);
    }
    parts_store(pl->parts, pl->n_parts);
}

/* ---- receiving ---- */

static bool lie(kh_worker *w, const char *what) {
    w->pl->lies++;
    supervisor_kill(w, what);
    return false;
}

/* Find the ledger entry a token names, as seen from worker w. */
static kh_lookup lookup(kh_worker *w, uint64_t token, kh_part **part,
                        kh_entry **e) {
    uint32_t slot = kh_token_slot(token);
    if (slot >= w->pl->n_parts)
        return KH_LOOKUP_LIE;
    *part = w->pl->parts[slot];
    if (!(*part)->assigned || (*part)->owner != w) {
        /* Revoked or moved since: an answer from the old epoch. */
        return KH_LOOKUP_STALE;
    }
    return part_find(*part, kh_token_seq(token), e);
}

/* retry_backoff_ms doubling per attempt up to retry_backoff_max_ms, with
 * +-25% jitter so that retries of many partitions do not line up. */
static int64_t retry_delay_ms(const kh_pipeline *cfg, uint32_t attempt) {
    int64_t delay = cfg->retry_backoff_ms;
    for (uint32_t i = 1; i < attempt && delay < cfg->retry_backoff_max_ms; i++)
        delay *= 2;
    if (delay > cfg->retry_backoff_max_ms)
        delay = cfg->retry_backoff_max_ms;
    return kh_jitter(delay);
}

static void stop_partition_after(kh_worker *w, kh_part *part, uint64_t seq,
                                 uint8_t result) {
    const kh_pipeline *cfg = w->pl->cfg;
    kh_entry *e;
    part_find(part, seq, &e);
    int64_t offset = e->offset;
    uint32_t attempt = e->attempt;
    const char *text = part->fail_offset == offset && part->fail_reason[0]
                           ? part->fail_reason
                           : NULL;
    char reason[1100]; /* prefix + fail_reason; failure_note cuts to fit */
    bool failed =
        result == KHOST_FAIL || attempt >= (uint32_t)cfg->max_attempts;
    if (result == KHOST_FAIL)
        snprintf(reason, sizeof reason, "handler answered FAIL: %s",
                 text ? text : "no reason given");
    else
        snprintf(reason, sizeof reason,
                 "handler asked for a retry on all %u attempts "
                 "(max_attempts=%d): %s",
                 attempt, cfg->max_attempts, text ? text : "no reason given");
    /* The worker skips the rest of this partition until it sees RESUME,
     * so nothing later is handled before the message comes again. */
    part_rewind_from(part, seq, KH_BUMP_FIRST,
                     result == KHOST_RETRY ? "handler asked for a retry"
                                           : "handler failed the message");
    dispatch_send_partition_event(part, KH_F_RESUME);
    if (failed) {
        failure_note(part, offset, "%s", reason);
        part_mark_failed(part, offset);
        return;
    }
    w->pl->retries++;
    int64_t delay = retry_delay_ms(cfg, attempt);
    part_backoff(part, kh_now_ms() + delay);
    klog_warn("pipeline=%s topic=%s partition=%d offset=%lld: handler asked "
              "for a retry (attempt %u of %d%s%s); redelivering in %lld ms, "
              "later messages of the partition wait",
              w->pl->cfg->name, part->topic, part->partition, (long long)offset,
              attempt, cfg->max_attempts, text ? ": " : "", text ? text : "",
              (long long)delay);
}

static bool handle_error_text(kh_worker *w, kh_reader *r) {
    uint64_t token = tr_get_u64(r);
    size_t len;
    const uint8_t *text = tr_get_str(r, &len);
    if (r->error || r->left)
        return lie(w, "sent a malformed ERROR frame");
    kh_part *part = NULL;
    kh_entry *e = NULL;
    kh_lookup found = lookup(w, token, &part, &e);
    if (found == KH_LOOKUP_LIE)
        return lie(w, "sent an error for a message it was never given");
    if (found == KH_LOOKUP_OK)
        failure_note(part, e->offset, "%.*s", (int)(len > 500 ? 500 : len),
                     (const char *)text);
    return true;
}

/* End-to-end latency: from the message's Kafka timestamp to the ack the
 * host received. The wall clock is read once per frame (*now, 0 until
 * read); a timestamp in the future (clock skew) counts as 0. */
static void observe_e2e(kh_pipeline_rt *pl, const kh_entry *e, int64_t *now) {
    if (e->ts_ms <= 0)
        return;
    if (!*now) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        *now = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    }
    int64_t d = *now - e->ts_ms;
    kh_hist_observe(&pl->e2e_hist, kh_e2e_bounds_s,
                    d > 0 ? (double)d / 1000.0 : 0.0);
}

static bool handle_results(kh_worker *w, kh_reader *r) {
    int64_t now_real_ms = 0;
    uint32_t n = tr_get_u32(r);
    if (r->error || n > w->inflight)
        return lie(w, "sent more results than it had messages in flight");
    for (uint32_t i = 0; i < n; i++) {
        uint64_t token = tr_get_u64(r);
        uint8_t result = tr_get_u8(r);
        if (r->error)
            return lie(w, "sent a truncated RESULTS frame");
        w->inflight--;
        kh_part *part = NULL;
        kh_entry *e = NULL;
        kh_lookup found = lookup(w, token, &part, &e);
        if (found == KH_LOOKUP_LIE)
            return lie(w, "sent a result for a message it was never given");
        if (found == KH_LOOKUP_STALE)
            continue;
        if (result != KH_RESULT_SKIPPED)
            w->answered++; /* it works: its next crash is not a loop */
        if (e->state != KH_ENTRY_INFLIGHT)
            return lie(w, "sent a second result for one message");
        switch (result) {
        case KHOST_ACK:
            observe_e2e(w->pl, e, &now_real_ms);
            part_ack(part, e);
            w->pl->handled++;
            w->pl->acked_count++;
            w->pl->results[KH_RES_ACK]++;
            break;
        case KHOST_DEFERRED:
            part_defer(part, e);
            w->pl->handled++;
            w->pl->results[KH_RES_DEFERRED]++;
            break;
        case KHOST_RETRY:
        case KHOST_FAIL:
            w->pl->handled++;
            w->pl
                ->results[result == KHOST_RETRY ? KH_RES_RETRY : KH_RES_FAIL]++;
            stop_partition_after(w, part, kh_token_seq(token), result);
            break;
        case KH_RESULT_SKIPPED: {
            /* Not handled (a drain, or a hold the worker keeps): the
             * message and everything after it come again, in order. A
             * worker that skips everything only starves itself. */
            part_rewind_from(part, kh_token_seq(token), KH_BUMP_NONE,
                             "worker skipped it (drain or hold)");
            dispatch_send_partition_event(part, KH_F_RESUME);
            break;
        }
        default:
            return lie(w, "sent an unknown result code");
        }
    }
    if (r->left)
        return lie(w, "sent trailing bytes after its results");
    /* Every message answered: the worker stored the tail of each ring
     * frame before its last results, so the whole ring must be free. */
    if (w->ring && w->inflight == 0) {
        if (!ring_sync(w))
            return false;
        if (w->ring_tail != w->ring_head)
            return lie(w, "answered every message but kept message ring "
                          "space");
    }
    return true;
}

static bool handle_acks(kh_worker *w, kh_reader *r) {
    int64_t now_real_ms = 0;
    uint32_t n = tr_get_u32(r);
    uint32_t stale = 0;
    for (uint32_t i = 0; i < n && !r->error; i++) {
        uint64_t token = tr_get_u64(r);
        if (r->error)
            break;
        kh_part *part = NULL;
        kh_entry *e = NULL;
        kh_lookup found = lookup(w, token, &part, &e);
        if (found == KH_LOOKUP_LIE)
            return lie(w, "acked a message it was never given");
        if (found == KH_LOOKUP_STALE) {
            stale++; /* revoked or rewound since: fenced */
            continue;
        }
        if (e->state != KH_ENTRY_DEFERRED)
            return lie(w, "acked a message that was not deferred");
        observe_e2e(w->pl, e, &now_real_ms);
        part_ack(part, e);
        w->pl->acked_count++;
        w->pl->deferred_acks++;
    }
    if (r->error || r->left)
        return lie(w, "sent a malformed ACKS frame");
    if (stale)
        klog_info("pipeline=%s worker=%d: ignored %u ack(s) for messages "
                  "revoked or rewound since they were dispatched",
                  w->pl->cfg->name, w->index, stale);
    return true;
}

static bool handle_frame(kh_worker *w, uint16_t type, kh_reader *r) {
    size_t len1, len2;
    const uint8_t *s1, *s2;
    switch (type) {
    case KH_F_READY:
        s1 = tr_get_str(r, &len1);
        s2 = tr_get_str(r, &len2);
        uint64_t flags = tr_get_u64(r);
        if (!r->error && w->state == KH_W_STOPPING)
            return true; /* SHUTDOWN was sent while it started */
        if (r->error || w->state != KH_W_STARTING)
            return lie(w, "sent an unexpected READY frame");
        char name[128], version[64];
        snprintf(name, sizeof name, "%.*s", (int)len1, (const char *)s1);
        snprintf(version, sizeof version, "%.*s", (int)len2, (const char *)s2);
        supervisor_worker_ready(w, name, version, flags);
        return true;
    case KH_F_INIT_FAILED:
        s1 = tr_get_str(r, &len1);
        if (r->error)
            return lie(w, "sent a malformed INIT_FAILED frame");
        snprintf(w->init_error, sizeof w->init_error, "%.*s", (int)len1,
                 (const char *)s1);
        return true;
    case KH_F_RESULTS:
        if (w->state != KH_W_READY && w->state != KH_W_STOPPING)
            return lie(w, "sent results before READY");
        return handle_results(w, r);
    case KH_F_ACKS:
        return handle_acks(w, r);
    case KH_F_ERROR:
        return handle_error_text(w, r);
    default:
        return lie(w, "sent an unknown frame type");
    }
}

static int on_eof_timer(sd_event_source *s, uint64_t usec, void *ud) {
    kh_worker *w = ud;
    (void)s;
    (void)usec;
    w->eof_timer = sd_event_source_disable_unref(w->eof_timer);
    if (w->pid)
        supervisor_kill(w, "closed its channel to the host but kept running");
    return 0;
}

int dispatch_read(kh_worker *w) {
    if (w->conn.fd < 0)
        return -1;
    bool closed = false;
    /* Bounded so one chatty worker cannot starve the loop. */
    for (int round = 0; round < 64; round++) {
        long got = conn_fill(&w->conn);
        if (got == -EAGAIN)
            break;
        if (got <= 0) {
            closed = true;
            break;
        }
        uint16_t type;
        kh_reader r;
        int rc;
        while ((rc = conn_next_frame(&w->conn, &type, &r)) == 1)
            if (!handle_frame(w, type, &r))
                return -1;
        if (rc < 0) {
            lie(w, "sent an oversized or malformed frame");
            return -1;
        }
    }
    parts_store(w->pl->parts, w->pl->n_parts);
    if (closed) {
        if (w->io_src)
            sd_event_source_set_enabled(w->io_src, SD_EVENT_OFF);
        /* A dying worker's exit reaches the loop right after its
         * channel closes. One that closed its channel and lives on would
         * hold its partitions forever: give the exit a moment, then kill. */
        if (w->pid && w->state != KH_W_STOPPING && !w->eof_timer && w->pl &&
            w->pl->host->ev) {
            uint64_t now;
            sd_event_now(w->pl->host->ev, CLOCK_MONOTONIC, &now);
            sd_event_add_time(w->pl->host->ev, &w->eof_timer, CLOCK_MONOTONIC,
                              now + 200 * 1000, 10 * 1000, on_eof_timer, w);
        }
        return -1;
    }
    return 0;
}

/* deferred_timeout_ms: the oldest DEFERRED entry of each partition that
 * waited longer is given up on as if the handler had asked for a retry
 * (attempts counted, max_attempts then the failure policy), with a WARN
 * naming it. Entries are in dispatch order, so the scan stops at the
 * first one dispatched within the limit. An ack that comes later is stale
 * (I3) and dropped. */
void dispatch_expire_deferred(kh_pipeline_rt *pl, int64_t now_ms) {
    int64_t limit = pl->cfg->deferred_timeout_ms;
    if (limit <= 0)
        return;
    for (size_t i = 0; i < pl->n_parts; i++) {
        kh_part *part = pl->parts[i];
        kh_worker *w = part->owner;
        if (!part->assigned || !w || w->state != KH_W_READY)
            continue;
        for (uint64_t seq = part->off.head_seq; seq < part->off.next_seq;
             seq++) {
            kh_entry *e;
            if (part_find(part, seq, &e) != KH_LOOKUP_OK || !e->since_ms)
                continue;
            if (now_ms - e->since_ms <= limit)
                break;
            if (e->state != KH_ENTRY_DEFERRED)
                continue;
            klog_warn("pipeline=%s topic=%s partition=%d offset=%lld: "
                      "deferred for %lld ms without an ack, over "
                      "deferred_timeout_ms=%lld; treated as a retry",
                      pl->cfg->name, part->topic, part->partition,
                      (long long)e->offset, (long long)(now_ms - e->since_ms),
                      (long long)limit);
            pl->deferred_timeouts++;
            failure_note(part, e->offset,
                         "no ack within deferred_timeout_ms=%lld",
                         (long long)limit);
            stop_partition_after(w, part, seq, KHOST_RETRY);
            break;
        }
    }
}
