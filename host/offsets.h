/*
 * offsets: per-partition bookkeeping of what was dispatched and acked.
 *
 * Every dispatched message gets a sequence number (seq) that is never
 * reused for the life of the partition slot, and an entry in a deque
 * ordered by seq. The contiguous acked watermark advances only over the
 * head of the deque, so out-of-order (deferred) acks never let a commit
 * skip an unacked message. Tokens handed to workers encode (slot, seq):
 * a result for a seq that was never dispatched is a lie, one for a seq
 * before the head is stale (fenced by a revoke or a rewind) and dropped.
 *
 * Nothing here talks to Kafka or to workers; it is pure bookkeeping so it
 * can be tested exhaustively.
 */
#ifndef KHOST_OFFSETS_H
#define KHOST_OFFSETS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KH_SEQ_BITS 40
#define KH_SEQ_MASK ((UINT64_C(1) << KH_SEQ_BITS) - 1)

static inline uint64_t kh_token_make(uint32_t slot, uint64_t seq) {
    return ((uint64_t)slot << KH_SEQ_BITS) | (seq & KH_SEQ_MASK);
}
static inline uint32_t kh_token_slot(uint64_t token) {
    return (uint32_t)(token >> KH_SEQ_BITS);
}
static inline uint64_t kh_token_seq(uint64_t token) {
    return token & KH_SEQ_MASK;
}

typedef enum kh_entry_state {
    KH_ENTRY_INFLIGHT = 0, /* sent to the worker, no result yet */
    KH_ENTRY_DEFERRED = 1, /* handler said deferred; waiting for its ack */
    KH_ENTRY_ACKED = 2,
    KH_ENTRY_DROPPED = 3, /* abandoned by a rewind; will be redelivered */
    /* A failed message whose dead-letter copy is being written; only its
     * delivery report resolves it. A rewind drops it like the others but
     * keeps it marked failed: it never goes back to a handler, and the
     * write in flight is reattached to it when it is delivered again
     * (failure.c), so it is not dead-lettered twice. */
    KH_ENTRY_DLQ = 4,
} kh_entry_state;

typedef struct kh_entry {
    int64_t offset;
    uint32_t attempt;
    uint8_t state;
    /* For the metrics only (offsets_stamp): when it was dispatched
     * (CLOCK_MONOTONIC ms, 0 unknown) and the message's Kafka timestamp
     * (ms since the epoch, -1 none). */
    int64_t since_ms;
    int64_t ts_ms;
    /* The message itself, when its owner kept it (partition.c's
     * part_keep) so that a rewind can deliver it again without fetching
     * it from Kafka; NULL otherwise. Handed to the release callback when
     * the entry pops, is reset or is dropped by a rewind. */
    void *msg;
} kh_entry;

/* An offset to treat specially when it is dispatched again after a
 * rewind: with a higher attempt number, or (already_acked) not at all. */
typedef struct kh_replay {
    int64_t offset;
    uint32_t attempt;
    bool already_acked;
    bool failed; /* goes to the failure policy instead of a handler */
} kh_replay;

typedef struct kh_offsets {
    kh_entry *ring; /* deque of entries, seq head_seq .. next_seq-1 */
    size_t cap;     /* power of two */
    size_t head;    /* ring index of head_seq */
    uint64_t head_seq;
    uint64_t next_seq;
    int64_t acked;      /* contiguous watermark; -1 before any ack */
    int64_t first_seen; /* first offset ever dispatched; -1 before */
    kh_replay *replay;  /* sorted by offset */
    size_t n_replay, cap_replay;
    /* Frees an entry's kept msg; NULL when none are ever kept. */
    void (*release)(void *ud, void *msg);
    void *release_ud;
} kh_offsets;

/* The outcome of looking up a token. */
typedef enum kh_lookup {
    KH_LOOKUP_OK = 0,
    KH_LOOKUP_STALE = 1, /* before the head, or dropped: ignore quietly */
    KH_LOOKUP_LIE = 2,   /* never dispatched: the worker is lying */
} kh_lookup;

void offsets_init(kh_offsets *o);
/* Releases every kept msg, then frees the ledger. */
void offsets_free(kh_offsets *o);
/* Forget everything dispatched (on assign/revoke); seqs stay unique.
 * Kept msgs are released. */
void offsets_reset(kh_offsets *o);

static inline size_t offsets_outstanding(const kh_offsets *o) {
    return (size_t)(o->next_seq - o->head_seq);
}

/*
 * Decide how to dispatch `offset`: returns the attempt number to send,
 * or 0 when the message was already acked before a rewind and must not
 * be handled again (the caller then records it with offsets_skip).
 */
uint32_t offsets_plan(kh_offsets *o, int64_t offset);

/* Is `offset` the next replay and marked failed? Does not consume it;
 * offsets_plan does. */
bool offsets_replay_failed(const kh_offsets *o, int64_t offset);

/* A dead-letter write for `offset` was confirmed after a rewind dropped
 * its entry: its redelivery is acked without dispatch. Returns false when
 * no replay of it is known (revoked since). */
bool offsets_replay_resolved(kh_offsets *o, int64_t offset);

/* Note when entry seq was dispatched and its message's timestamp. */
void offsets_stamp(kh_offsets *o, uint64_t seq, int64_t since_ms,
                   int64_t ts_ms);
/* The dispatch time of the oldest unresolved entry, 0 when none (or not
 * stamped). */
int64_t offsets_oldest_since(const kh_offsets *o);

/* Mark a replayed offset (after a rewind) as failed. */
void offsets_mark_failed(kh_offsets *o, int64_t offset);
/* An operator released a failed message (on_failure = pause): its replay
 * goes to a handler again, with the attempt number it would have had (it
 * goes on counting). False when `offset` was not marked failed. */
bool offsets_unmark_failed(kh_offsets *o, int64_t offset);

/* Offset of the newest dispatched entry, -1 when none is outstanding. */
int64_t offsets_last_dispatched(const kh_offsets *o);

/* Offset of the oldest entry still waiting for a result or an ack
 * (INFLIGHT, DEFERRED or DLQ), -1 when none. */
int64_t offsets_first_unresolved(const kh_offsets *o);

/* Is any entry still waiting for its handler's result (INFLIGHT)? */
bool offsets_has_inflight(const kh_offsets *o);

/* Record a dispatch; returns the seq for the token. */
uint64_t offsets_dispatch(kh_offsets *o, int64_t offset, uint32_t attempt);

/* Record an offset that is acked without dispatch (replayed duplicate);
 * returns its seq. */
uint64_t offsets_skip(kh_offsets *o, int64_t offset);

/* Find the entry of `seq`. */
kh_lookup offsets_find(kh_offsets *o, uint64_t seq, kh_entry **entry);

/* Pop acked/dropped entries off the head (releasing their kept msgs).
 * Returns true when the watermark moved; the offset to store is then
 * acked + 1. */
bool offsets_advance(kh_offsets *o);

/* Which abandoned messages count as attempted when replayed. */
typedef enum kh_bump {
    KH_BUMP_NONE = 0,  /* none was given to the plugin (skipped) */
    KH_BUMP_FIRST = 1, /* only from_seq was (a retry or fail answer) */
    KH_BUMP_ALL = 2,   /* any may have been (a crash: unknown) */
} kh_bump;

/*
 * Abandon every entry from seq `from_seq` on that is not acked (dropped
 * entries' results are ignored when they come). Returns the offset to
 * seek to: the smallest abandoned offset, or -1 when nothing was
 * abandoned. Abandoned offsets are replayed with their attempt number,
 * plus one where `bump` says they were attempted; acked ones after the
 * watermark are replayed as already_acked. *abandoned (if not NULL) gets
 * how many unacked entries were abandoned: after a crash, the most
 * messages the dead worker can have handled that will be handled again.
 * The kept msgs of the abandoned entries are released: a caller that
 * delivers them again itself takes them out of the entries first.
 */
int64_t offsets_rewind(kh_offsets *o, uint64_t from_seq, kh_bump bump,
                       size_t *abandoned);

/* Rewind everything past the watermark (a crash or a lost worker). */
int64_t offsets_rewind_all(kh_offsets *o, size_t *abandoned);

#endif
