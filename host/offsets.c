/*
 * offsets: dispatch/ack deque and the contiguous acked watermark.
 *
 * Invariant: the watermark only ever moves over ACKED entries at the head
 * of the deque. A rewind turns every entry from the rewind point on into
 * DROPPED (even acked ones, which are then remembered as already_acked):
 * otherwise an acked entry behind a dropped one could pull the watermark
 * over a message that still has to be handled again.
 */
#include "offsets.h"

#include <stdlib.h>
#include <string.h>

void offsets_init(kh_offsets *o) {
    memset(o, 0, sizeof *o);
    o->acked = -1;
    o->first_seen = -1;
}

static kh_entry *entry_at(kh_offsets *o, uint64_t seq) {
    return &o->ring[(o->head + (size_t)(seq - o->head_seq)) & (o->cap - 1)];
}

static void release_msg(kh_offsets *o, kh_entry *e) {
    if (e->msg && o->release)
        o->release(o->release_ud, e->msg);
    e->msg = NULL;
}

static void release_all(kh_offsets *o) {
    for (uint64_t seq = o->head_seq; seq < o->next_seq; seq++)
        release_msg(o, entry_at(o, seq));
}

void offsets_free(kh_offsets *o) {
    if (o->ring)
        release_all(o);
    free(o->ring);
    free(o->replay);
    memset(o, 0, sizeof *o);
}

void offsets_reset(kh_offsets *o) {
    if (o->ring)
        release_all(o);
    o->head_seq = o->next_seq;
    o->head = 0;
    o->acked = -1;
    o->first_seen = -1;
    o->n_replay = 0;
}

static void grow_ring(kh_offsets *o) {
    size_t n = offsets_outstanding(o);
    size_t cap = o->cap ? o->cap * 2 : 256;
    kh_entry *ring = malloc(cap * sizeof *ring);
    if (!ring)
        abort(); /* out of memory on the bookkeeping path: no safe way on */
    for (size_t i = 0; i < n; i++)
        ring[i] = *entry_at(o, o->head_seq + i);
    free(o->ring);
    o->ring = ring;
    o->cap = cap;
    o->head = 0;
}

uint32_t offsets_plan(kh_offsets *o, int64_t offset) {
    size_t skip = 0;
    while (skip < o->n_replay && o->replay[skip].offset < offset)
        skip++;
    uint32_t attempt = 1;
    if (skip < o->n_replay && o->replay[skip].offset == offset) {
        attempt = o->replay[skip].already_acked ? 0 : o->replay[skip].attempt;
        skip++;
    }
    if (skip) {
        memmove(o->replay, o->replay + skip,
                (o->n_replay - skip) * sizeof *o->replay);
        o->n_replay -= skip;
    }
    return attempt;
}

static uint64_t push(kh_offsets *o, int64_t offset, uint32_t attempt,
                     kh_entry_state state) {
    if (offsets_outstanding(o) == o->cap)
        grow_ring(o);
    uint64_t seq = o->next_seq++;
    kh_entry *e = entry_at(o, seq);
    e->offset = offset;
    e->attempt = attempt;
    e->state = (uint8_t)state;
    e->since_ms = 0;
    e->ts_ms = -1;
    e->msg = NULL;
    if (o->first_seen < 0)
        o->first_seen = offset;
    return seq;
}

bool offsets_replay_failed(const kh_offsets *o, int64_t offset) {
    for (size_t i = 0; i < o->n_replay && o->replay[i].offset <= offset; i++)
        if (o->replay[i].offset == offset)
            return o->replay[i].failed;
    return false;
}

int64_t offsets_last_dispatched(const kh_offsets *o) {
    if (o->next_seq == o->head_seq)
        return -1;
    return o
        ->ring[(o->head + (size_t)(o->next_seq - 1 - o->head_seq)) &
               (o->cap - 1)]
        .offset;
}

void offsets_stamp(kh_offsets *o, uint64_t seq, int64_t since_ms,
                   int64_t ts_ms) {
    if (seq < o->head_seq || seq >= o->next_seq)
        return;
    kh_entry *e = entry_at(o, seq);
    e->since_ms = since_ms;
    e->ts_ms = ts_ms;
}

int64_t offsets_oldest_since(const kh_offsets *o) {
    for (uint64_t seq = o->head_seq; seq < o->next_seq; seq++) {
        const kh_entry *e =
            &o->ring[(o->head + (size_t)(seq - o->head_seq)) & (o->cap - 1)];
        if (e->state == KH_ENTRY_INFLIGHT || e->state == KH_ENTRY_DEFERRED ||
            e->state == KH_ENTRY_DLQ)
            return e->since_ms;
    }
    return 0;
}

int64_t offsets_first_unresolved(const kh_offsets *o) {
    for (uint64_t seq = o->head_seq; seq < o->next_seq; seq++) {
        const kh_entry *e =
            &o->ring[(o->head + (size_t)(seq - o->head_seq)) & (o->cap - 1)];
        if (e->state == KH_ENTRY_INFLIGHT || e->state == KH_ENTRY_DEFERRED ||
            e->state == KH_ENTRY_DLQ)
            return e->offset;
    }
    return -1;
}

bool offsets_has_inflight(const kh_offsets *o) {
    for (uint64_t seq = o->head_seq; seq < o->next_seq; seq++)
        if (o->ring[(o->head + (size_t)(seq - o->head_seq)) & (o->cap - 1)]
                .state == KH_ENTRY_INFLIGHT)
            return true;
    return false;
}

uint64_t offsets_dispatch(kh_offsets *o, int64_t offset, uint32_t attempt) {
    return push(o, offset, attempt, KH_ENTRY_INFLIGHT);
}

uint64_t offsets_skip(kh_offsets *o, int64_t offset) {
    return push(o, offset, 0, KH_ENTRY_ACKED);
}

kh_lookup offsets_find(kh_offsets *o, uint64_t seq, kh_entry **entry) {
    *entry = NULL;
    if (seq >= o->next_seq)
        return KH_LOOKUP_LIE;
    if (seq < o->head_seq)
        return KH_LOOKUP_STALE;
    *entry = entry_at(o, seq);
    return (*entry)->state == KH_ENTRY_DROPPED ? KH_LOOKUP_STALE : KH_LOOKUP_OK;
}

bool offsets_advance(kh_offsets *o) {
    bool moved = false;
    while (o->head_seq < o->next_seq) {
        kh_entry *e = entry_at(o, o->head_seq);
        if (e->state == KH_ENTRY_ACKED) {
            if (e->offset > o->acked) {
                o->acked = e->offset;
                moved = true;
            }
        } else if (e->state != KH_ENTRY_DROPPED) {
            break;
        }
        release_msg(o, e);
        o->head_seq++;
        o->head = (o->head + 1) & (o->cap - 1);
    }
    return moved;
}

static int replay_cmp(const void *a, const void *b) {
    const kh_replay *x = a, *y = b;
    return (x->offset > y->offset) - (x->offset < y->offset);
}

static void replay_add(kh_offsets *o, int64_t offset, uint32_t attempt,
                       bool already_acked) {
    if (o->n_replay == o->cap_replay) {
        o->cap_replay = o->cap_replay ? o->cap_replay * 2 : 64;
        o->replay = realloc(o->replay, o->cap_replay * sizeof *o->replay);
        if (!o->replay)
            abort();
    }
    o->replay[o->n_replay++] = (kh_replay){
        .offset = offset, .attempt = attempt, .already_acked = already_acked};
}

/* Sort the replay list and keep one entry per offset. The newest facts
 * (added last) win. Rewinds are rare and the list is bounded by what was
 * in flight, so a quadratic dedupe is fine here. */
static void replay_normalize(kh_offsets *o) {
    size_t n = o->n_replay;
    if (n < 2)
        return;
    kh_replay *tmp = malloc(n * sizeof *tmp);
    if (!tmp)
        abort();
    /* Walk newest to oldest, keep the first seen of each offset. */
    size_t kept = 0;
    for (size_t i = n; i-- > 0;) {
        bool seen = false;
        for (size_t j = 0; j < kept && !seen; j++)
            seen = tmp[j].offset == o->replay[i].offset;
        if (!seen)
            tmp[kept++] = o->replay[i];
    }
    qsort(tmp, kept, sizeof *tmp, replay_cmp);
    memcpy(o->replay, tmp, kept * sizeof *tmp);
    o->n_replay = kept;
    free(tmp);
}

int64_t offsets_rewind(kh_offsets *o, uint64_t from_seq, kh_bump bump,
                       size_t *abandoned) {
    if (from_seq < o->head_seq)
        from_seq = o->head_seq;
    int64_t seek_to = -1;
    size_t unacked = 0;
    for (uint64_t seq = from_seq; seq < o->next_seq; seq++) {
        kh_entry *e = entry_at(o, seq);
        if (e->state == KH_ENTRY_DROPPED)
            continue;
        if (e->state == KH_ENTRY_ACKED) {
            replay_add(o, e->offset, 0, true);
        } else if (e->state == KH_ENTRY_DLQ) {
            /* Still failed when it comes again: never a handler's. */
            replay_add(o, e->offset, e->attempt + 1, false);
            o->replay[o->n_replay - 1].failed = true;
        } else {
            unacked++;
            replay_add(o, e->offset,
                       e->attempt +
                           (bump == KH_BUMP_ALL ||
                            (bump == KH_BUMP_FIRST && seq == from_seq)),
                       false);
        }
        e->state = KH_ENTRY_DROPPED;
        release_msg(o, e);
        if (seek_to < 0 || e->offset < seek_to)
            seek_to = e->offset;
    }
    replay_normalize(o);
    /* Replays at or below the watermark can never be dispatched again. */
    size_t drop = 0;
    while (drop < o->n_replay && o->replay[drop].offset <= o->acked)
        drop++;
    if (drop) {
        memmove(o->replay, o->replay + drop,
                (o->n_replay - drop) * sizeof *o->replay);
        o->n_replay -= drop;
    }
    offsets_advance(o);
    if (abandoned)
        *abandoned = unacked;
    return seek_to;
}

bool offsets_replay_resolved(kh_offsets *o, int64_t offset) {
    for (size_t i = 0; i < o->n_replay; i++) {
        if (o->replay[i].offset == offset) {
            o->replay[i].failed = false;
            o->replay[i].already_acked = true;
            return true;
        }
    }
    return false;
}

void offsets_mark_failed(kh_offsets *o, int64_t offset) {
    for (size_t i = 0; i < o->n_replay; i++) {
        if (o->replay[i].offset == offset) {
            o->replay[i].failed = true;
            o->replay[i].already_acked = false;
            return;
        }
    }
    replay_add(o, offset, 1, false);
    o->replay[o->n_replay - 1].failed = true;
    replay_normalize(o);
}

bool offsets_unmark_failed(kh_offsets *o, int64_t offset) {
    for (size_t i = 0; i < o->n_replay; i++) {
        if (o->replay[i].offset == offset && o->replay[i].failed) {
            o->replay[i].failed = false;
            return true;
        }
    }
    return false;
}

int64_t offsets_rewind_all(kh_offsets *o, size_t *abandoned) {
    return offsets_rewind(o, o->head_seq, KH_BUMP_ALL, abandoned);
}
