/* offsets: the acked watermark never passes an unacked message. */
#include "offsets.h"

#include <criterion/criterion.h>

static uint64_t send(kh_offsets *o, int64_t offset) {
    uint32_t attempt = offsets_plan(o, offset);
    cr_assert_neq(attempt, 0, "offset %lld planned as already acked",
                  (long long)offset);
    return offsets_dispatch(o, offset, attempt);
}

static void set_state(kh_offsets *o, uint64_t seq, kh_entry_state st) {
    kh_entry *e;
    cr_assert_eq(offsets_find(o, seq, &e), KH_LOOKUP_OK);
    e->state = (uint8_t)st;
}

Test(offsets, watermark_follows_contiguous_acks) {
    kh_offsets o;
    offsets_init(&o);
    uint64_t s[5];
    for (int i = 0; i < 5; i++)
        s[i] = send(&o, 100 + i);
    cr_assert_eq(o.acked, -1);
    set_state(&o, s[1], KH_ENTRY_ACKED);
    set_state(&o, s[2], KH_ENTRY_ACKED);
    cr_assert_not(offsets_advance(&o), "moved over unacked 100");
    cr_assert_eq(o.acked, -1);
    set_state(&o, s[0], KH_ENTRY_ACKED);
    cr_assert(offsets_advance(&o));
    cr_assert_eq(o.acked, 102);
    set_state(&o, s[3], KH_ENTRY_DEFERRED);
    set_state(&o, s[4], KH_ENTRY_ACKED);
    offsets_advance(&o);
    cr_assert_eq(o.acked, 102, "a deferred message must hold the watermark");
    set_state(&o, s[3], KH_ENTRY_ACKED);
    offsets_advance(&o);
    cr_assert_eq(o.acked, 104);
    cr_assert_eq(offsets_outstanding(&o), 0);
    offsets_free(&o);
}

Test(offsets, gaps_in_offsets_are_fine) {
    kh_offsets o;
    offsets_init(&o);
    /* Compaction or transaction markers leave holes in offsets. */
    uint64_t a = send(&o, 10), b = send(&o, 15), c = send(&o, 16);
    set_state(&o, a, KH_ENTRY_ACKED);
    set_state(&o, b, KH_ENTRY_ACKED);
    set_state(&o, c, KH_ENTRY_ACKED);
    offsets_advance(&o);
    cr_assert_eq(o.acked, 16);
    offsets_free(&o);
}

Test(offsets, tokens_classify_lies_and_stale_answers) {
    kh_offsets o;
    offsets_init(&o);
    uint64_t a = send(&o, 0);
    kh_entry *e;
    cr_assert_eq(offsets_find(&o, a + 1, &e), KH_LOOKUP_LIE,
                 "a seq never dispatched is a lie");
    set_state(&o, a, KH_ENTRY_ACKED);
    offsets_advance(&o);
    cr_assert_eq(offsets_find(&o, a, &e), KH_LOOKUP_STALE,
                 "an answer for a popped seq is stale");
    uint64_t b = send(&o, 1);
    offsets_reset(&o); /* revoke */
    cr_assert_eq(offsets_find(&o, b, &e), KH_LOOKUP_STALE,
                 "answers from before a revoke are fenced");
    cr_assert_eq(o.acked, -1);
    uint64_t c = send(&o, 1);
    cr_assert_gt(c, b, "seqs are never reused");
    offsets_free(&o);
}

Test(offsets, token_round_trip) {
    uint64_t t = kh_token_make(1234, (UINT64_C(1) << 39) + 7);
    cr_assert_eq(kh_token_slot(t), 1234);
    cr_assert_eq(kh_token_seq(t), (UINT64_C(1) << 39) + 7);
}

Test(offsets, crash_rewind_redelivers_unacked_and_skips_acked) {
    kh_offsets o;
    offsets_init(&o);
    uint64_t s[6];
    for (int i = 0; i < 6; i++)
        s[i] = send(&o, 50 + i);
    set_state(&o, s[0], KH_ENTRY_ACKED);    /* 50 */
    set_state(&o, s[1], KH_ENTRY_DEFERRED); /* 51: never acked */
    set_state(&o, s[2], KH_ENTRY_ACKED);    /* 52: acked out of order */
    offsets_advance(&o);
    cr_assert_eq(o.acked, 50);
    size_t unacked = 0;
    cr_assert_eq(offsets_rewind_all(&o, &unacked), 51, "seek to acked + 1");
    cr_assert_eq(unacked, 4, "51 (deferred) and 53..55 may come twice");
    cr_assert_eq(o.acked, 50);
    kh_entry *e;
    cr_assert_eq(offsets_find(&o, s[3], &e), KH_LOOKUP_STALE,
                 "results of abandoned messages are ignored");
    /* Kafka delivers 51.. again. */
    cr_assert_eq(offsets_plan(&o, 51), 2, "redelivery is attempt 2");
    uint64_t r51 = offsets_dispatch(&o, 51, 2);
    cr_assert_eq(offsets_plan(&o, 52), 0, "52 was acked: not handled again");
    offsets_skip(&o, 52);
    cr_assert_eq(offsets_plan(&o, 53), 2);
    uint64_t r53 = offsets_dispatch(&o, 53, 2);
    offsets_advance(&o);
    cr_assert_eq(o.acked, 50, "51 is not acked yet");
    set_state(&o, r51, KH_ENTRY_ACKED);
    offsets_advance(&o);
    cr_assert_eq(o.acked, 52);
    set_state(&o, r53, KH_ENTRY_ACKED);
    offsets_advance(&o);
    cr_assert_eq(o.acked, 53);
    cr_assert_eq(offsets_plan(&o, 54), 2);
    offsets_free(&o);
}

Test(offsets, retry_rewind_keeps_earlier_inflight) {
    kh_offsets o;
    offsets_init(&o);
    uint64_t s[4];
    for (int i = 0; i < 4; i++)
        s[i] = send(&o, i);
    /* 0 still in flight, 1 asks for retry: 1.. are abandoned, 0 is not. */
    size_t unacked = 0;
    cr_assert_eq(offsets_rewind(&o, s[1], KH_BUMP_FIRST, &unacked), 1);
    cr_assert_eq(unacked, 3);
    kh_entry *e;
    cr_assert_eq(offsets_find(&o, s[0], &e), KH_LOOKUP_OK);
    cr_assert_eq(e->state, KH_ENTRY_INFLIGHT);
    cr_assert_eq(offsets_plan(&o, 1), 2, "the retried message: attempt 2");
    uint64_t r1 = offsets_dispatch(&o, 1, 2);
    cr_assert_eq(offsets_plan(&o, 2), 1, "skipped after it: still attempt 1");
    uint64_t r2 = offsets_dispatch(&o, 2, 1);
    set_state(&o, r1, KH_ENTRY_ACKED);
    set_state(&o, r2, KH_ENTRY_ACKED);
    offsets_advance(&o);
    cr_assert_eq(o.acked, -1, "0 is still in flight");
    set_state(&o, s[0], KH_ENTRY_ACKED);
    offsets_advance(&o);
    cr_assert_eq(o.acked, 2);
    offsets_free(&o);
}

Test(offsets, acked_behind_rewind_point_cannot_pull_watermark) {
    kh_offsets o;
    offsets_init(&o);
    uint64_t a = send(&o, 0), b = send(&o, 1);
    set_state(&o, b, KH_ENTRY_ACKED);
    offsets_rewind_all(&o, NULL);
    kh_entry *e;
    cr_assert_eq(offsets_find(&o, a, &e), KH_LOOKUP_STALE);
    offsets_advance(&o);
    cr_assert_eq(o.acked, -1, "1 was acked but 0 was not handled");
    offsets_free(&o);
}

Test(offsets, many_messages_grow_the_ring) {
    kh_offsets o;
    offsets_init(&o);
    enum { N = 100000 };
    for (int i = 0; i < N; i++)
        send(&o, i);
    cr_assert_eq(offsets_outstanding(&o), N);
    for (uint64_t seq = o.head_seq; seq < o.next_seq; seq += 2)
        set_state(&o, seq + 1 < o.next_seq ? seq + 1 : seq, KH_ENTRY_ACKED);
    offsets_advance(&o);
    cr_assert_eq(o.acked, -1);
    for (uint64_t seq = o.head_seq; seq < o.next_seq; seq += 2)
        set_state(&o, seq, KH_ENTRY_ACKED);
    offsets_advance(&o);
    cr_assert_eq(o.acked, N - 1);
    offsets_free(&o);
}

/* A dead-letter write in flight when a crash rewinds its partition: the
 * message stays failed (never back to a handler), and a confirmed write
 * acks its redelivery without dispatch. Before KH_ENTRY_DLQ the rewind
 * turned it into an ordinary replay with a higher attempt number. */
Test(offsets, rewind_keeps_dead_letter_in_flight_failed) {
    kh_offsets o;
    offsets_init(&o);
    uint64_t a = send(&o, 10);
    uint64_t d = send(&o, 11);
    set_state(&o, d, KH_ENTRY_DLQ);
    uint64_t b = send(&o, 12);
    (void)b;
    set_state(&o, a, KH_ENTRY_ACKED);
    offsets_advance(&o);
    cr_assert_eq(offsets_first_unresolved(&o), 11);
    size_t unacked = 0;
    cr_assert_eq(offsets_rewind_all(&o, &unacked), 11);
    cr_assert_eq(unacked, 1, "the dead-letter write is not a handler's");
    cr_assert_eq(o.acked, 10);
    cr_assert(offsets_replay_failed(&o, 11), "lost its failed mark");
    cr_assert_not(offsets_replay_failed(&o, 12));
    /* The write is confirmed before Kafka delivers 11 again. */
    cr_assert(offsets_replay_resolved(&o, 11));
    cr_assert_not(offsets_replay_failed(&o, 11));
    cr_assert_eq(offsets_plan(&o, 11), 0, "redelivery must be skipped");
    offsets_skip(&o, 11);
    cr_assert_eq(offsets_plan(&o, 12), 2);
    offsets_advance(&o);
    cr_assert_eq(o.acked, 11);
    offsets_free(&o);
}

Test(offsets, first_unresolved_and_inflight) {
    kh_offsets o;
    offsets_init(&o);
    cr_assert_eq(offsets_first_unresolved(&o), -1);
    cr_assert_not(offsets_has_inflight(&o));
    uint64_t a = send(&o, 5), b = send(&o, 6);
    set_state(&o, a, KH_ENTRY_ACKED);
    set_state(&o, b, KH_ENTRY_DEFERRED);
    cr_assert_eq(offsets_first_unresolved(&o), 6);
    cr_assert_not(offsets_has_inflight(&o), "deferred is not in flight");
    send(&o, 7);
    cr_assert(offsets_has_inflight(&o));
    offsets_free(&o);
}
