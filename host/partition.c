/*
 * partition: one partition's queue, ledger, owed seek and stored offset
 * (see partition.h). Calls only offsets.c, log.c and its consumer port.
 *
 * The rules it keeps, checked here and nowhere else:
 *
 * I1, commit safety: the offset stored or committed for a partition never
 * passes a message fetched under the current assignment that is not
 * resolved (acked, dead-lettered with a delivery report, or skipped by
 * policy). The unresolved messages are exactly: the ledger's INFLIGHT,
 * DEFERRED and DLQ entries, the queue of fetched, undispatched messages,
 * and what was dropped from either without a seek yet (refetch_from).
 * part_commit_offset is the only source of stored and committed offsets;
 * a violation refuses the store, logs an ERROR and, in checked builds
 * (CI's), aborts.
 *
 * I4, seeks: a drop owes a seek to the lowest offset dropped
 * (refetch_from). A failed seek keeps it owed, pauses the partition and
 * is retried (part_retry_seek); what Kafka delivers meanwhile comes from
 * the old position and is discarded. Nothing owed is ever skipped.
 *
 * A rewind that can deliver again from memory does (requeue): every
 * message it gives up on was kept (part_keep), their offsets rise, they
 * all lie below the queue's head and no seek is owed. They then go back
 * to the front of the queue, which is the sequence a seek would have made
 * Kafka deliver, so I1 and I4 hold as for a seek: they are in the queue,
 * which part_commit_offset counts, and nothing was dropped.
 */
#define _GNU_SOURCE
#include "partition.h"

#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static size_t msg_bytes(const rd_kafka_message_t *m) {
    return m->len + m->key_len;
}

/* The host's prefetch budget (see partition.h): the cost of every queued,
 * undispatched message over all partitions of the process, and how many
 * partitions are assigned to share it. The loop is single-threaded, and
 * only pend_push/pend_pop and part_assign/part_release/part_free change
 * them. */
static size_t queued_host_cost, assigned_host_n;
static uint64_t popped_host_n; /* messages that left any queue, ever */
static size_t budget_bytes = KH_BUDGET_DEFAULT;

void part_set_budget(size_t bytes) {
    budget_bytes = bytes ? bytes : KH_BUDGET_DEFAULT;
}

bool part_budget_full(uint64_t *popped) {
    if (popped)
        *popped = popped_host_n;
    return queued_host_cost > budget_bytes;
}

/* The group of partitions no pipeline was given (part_set_group). */
static kh_budget_group ungrouped;

void part_set_group(kh_part *part, kh_budget_group *g) {
    if (part->assigned || part->pend_len)
        abort(); /* its counts would move from one group to the other */
    part->group = g ? g : &ungrouped;
}

/* B1 (partition.h). A group's share is the budget split by assigned
 * partitions, so a host with one pipeline holds it at the budget itself,
 * as before there were groups. */
bool part_budget_holds(const kh_budget_group *g) {
    if (queued_host_cost <= budget_bytes)
        return false;
    size_t share = assigned_host_n
                       ? (size_t)((double)budget_bytes * (double)g->assigned /
                                  (double)assigned_host_n)
                       : 0;
    return g->queued_cost > share ||
           queued_host_cost > budget_bytes + budget_bytes / 4;
}

size_t part_budget(size_t *queued, size_t *assigned) {
    if (queued)
        *queued = queued_host_cost;
    if (assigned)
        *assigned = assigned_host_n;
    return budget_bytes;
}

static size_t own_cost(const kh_part *part) {
    return part->pend_bytes + part->pend_len * KH_MSG_OVERHEAD;
}

/* A partition's fair share of the budget, never below KH_SHARE_MIN (or
 * the whole budget, if that is smaller). */
static size_t fair_share(void) {
    size_t share = budget_bytes / (assigned_host_n ? assigned_host_n : 1);
    size_t floor = budget_bytes < KH_SHARE_MIN ? budget_bytes : KH_SHARE_MIN;
    return share < floor ? floor : share;
}

size_t part_fair_share(void) {
    return fair_share();
}

size_t part_queued_cost(const kh_part *part) {
    return own_cost(part);
}

/* The host-wide count of kept messages (KH_KEEP_HOST_MAX): the loop is
 * single-threaded, and only the functions below change it. */
static size_t kept_host_n, kept_host_bytes;

size_t part_kept_host(size_t *bytes) {
    if (bytes)
        *bytes = kept_host_bytes;
    return kept_host_n;
}

static void unkeep(kh_part *part, const rd_kafka_message_t *m) {
    part->kept_n--;
    part->kept_bytes -= msg_bytes(m);
    kept_host_n--;
    kept_host_bytes -= msg_bytes(m);
}

/* The ledger frees a kept message (offsets.c's release callback). */
static void release_kept(void *ud, void *msg) {
    unkeep(ud, msg);
    rd_kafka_message_destroy(msg);
}

/* Take e's kept message out of the ledger's keeping. */
static rd_kafka_message_t *take_kept(kh_part *part, kh_entry *e) {
    rd_kafka_message_t *m = e->msg;
    unkeep(part, m);
    e->msg = NULL;
    return m;
}

kh_part *part_new(kh_pipeline_rt *pl, const char *pipeline,
                  const kh_consumer_port *port, const char *topic,
                  int32_t partition, uint32_t slot) {
    kh_part *part = calloc(1, sizeof *part);
    /* Its own copy of the name: a plugin swap replaces the pipeline's
     * config, and the old one is freed while the partition lives on. */
    if (!part || !(part->topic = strdup(topic)) ||
        !(part->pipeline = strdup(pipeline)))
        abort();
    part->pl = pl;
    part->port = port;
    part->group = &ungrouped;
    part->partition = partition;
    part->slot = slot;
    part->stored = -1;
    part->committed = -1;
    part->refetch_from = -1;
    part->next_offset = -1;
    part->crash_offset = -1;
    part->isolate_through = -1;
    part->fail_offset = -1;
    offsets_init(&part->off);
    part->off.release = release_kept;
    part->off.release_ud = part;
    return part;
}

void part_free(kh_part *part) {
    if (!part)
        return;
    if (part->assigned) {
        assigned_host_n--;
        part->group->assigned--;
    }
    part->assigned = false; /* nothing is owed to a freed partition */
    part_drop_pending(part);
    free(part->pend);
    offsets_free(&part->off);
    free(part->topic);
    free(part->pipeline);
    free(part);
}

static void forget_assignment(kh_part *part) {
    part->stall_since_ms = part->stall_logged_ms = 0;
    part->stall_acked = -1;
    part->pause = 0;
    part->held = false;
    part->retry_at_ms = 0;
    part->refetch_from = -1;
    part->seek_failures = 0;
    part->next_offset = -1;
    /* Answers still on their way carry old seqs: reset fences them. */
    offsets_reset(&part->off);
}

void part_assign(kh_part *part) {
    forget_assignment(part);
    if (!part->assigned) {
        assigned_host_n++;
        part->group->assigned++;
    }
    part->assigned = true;
    part->stored = -1;
    part->committed = -1;
}

void part_release(kh_part *part) {
    size_t left = offsets_outstanding(&part->off);
    if (left)
        klog_warn("pipeline=%s topic=%s partition=%d released at acked "
                  "offset=%lld with %zu message(s) after it not committed; "
                  "the next owner starts after the acked offset",
                  part->pipeline, part->topic, part->partition,
                  (long long)part->off.acked, left);
    part_drop_pending(part);
    /* librdkafka keeps a partition's pause across assignments: resumed
     * now, while still assigned, or a later assignment of it would never
     * fetch although the host thinks it unpaused (seen in chaos: a revoke
     * while its worker restarted left it stuck for good). */
    if (part->pause)
        part->port->set_paused(part->port->ud, part, false);
    if (part->assigned) {
        assigned_host_n--;
        part->group->assigned--;
    }
    part->assigned = false;
    forget_assignment(part);
}

/* ---- fetching ---- */

void part_pause(kh_part *part, unsigned reason, bool on) {
    unsigned old = part->pause;
    part->pause = on ? old | reason : old & ~reason;
    if (part->assigned && !old != !part->pause)
        part->port->set_paused(part->port->ud, part, part->pause != 0);
}

static rd_kafka_message_t *pend_pop(kh_part *part) {
    rd_kafka_message_t *m = part->pend[part->pend_head];
    part->pend_head = (part->pend_head + 1) % part->pend_cap;
    part->pend_len--;
    part->pend_bytes -= msg_bytes(m);
    queued_host_cost -= msg_bytes(m) + KH_MSG_OVERHEAD;
    part->group->queued_cost -= msg_bytes(m) + KH_MSG_OVERHEAD;
    part->group->popped++;
    popped_host_n++;
    return m;
}

static void pend_reserve(kh_part *part) {
    if (part->pend_len < part->pend_cap)
        return;
    size_t cap = part->pend_cap ? part->pend_cap * 2 : 256;
    rd_kafka_message_t **ring = malloc(cap * sizeof *ring);
    if (!ring)
        abort();
    for (size_t i = 0; i < part->pend_len; i++)
        ring[i] = part->pend[(part->pend_head + i) % part->pend_cap];
    free(part->pend);
    part->pend = ring;
    part->pend_cap = cap;
    part->pend_head = 0;
}

/* Queue m at the back (a fetch) or the front (a requeue). */
static void pend_push(kh_part *part, rd_kafka_message_t *m, bool front) {
    pend_reserve(part);
    if (front) {
        part->pend_head =
            (part->pend_head + part->pend_cap - 1) % part->pend_cap;
        part->pend[part->pend_head] = m;
    } else {
        part->pend[(part->pend_head + part->pend_len) % part->pend_cap] = m;
    }
    part->pend_len++;
    part->pend_bytes += msg_bytes(m);
    queued_host_cost += msg_bytes(m) + KH_MSG_OVERHEAD;
    part->group->queued_cost += msg_bytes(m) + KH_MSG_OVERHEAD;
}

/* Above a high mark, fetching pauses (KH_PAUSE_FLOW); so it does while
 * the host is over its budget by a quarter and this partition over its
 * fair share. A partition within its share keeps fetching whatever the
 * others hold, so one stuck partition cannot stop the rest. The quarter:
 * kafka.c stops taking from librdkafka at the budget itself, so this
 * pause, which costs librdkafka's prefetch of the partition, only comes
 * when that cannot hold the queue (kafka.c polling on past a stuck one,
 * rewinds that requeue). */
static void check_high_marks(kh_part *part) {
    if (part->pend_len >= KH_PENDING_HIGH ||
        part->pend_bytes >= KH_PENDING_HIGH_BYTES ||
        (queued_host_cost > budget_bytes + budget_bytes / 4 &&
         own_cost(part) > fair_share()))
        part_pause(part, KH_PAUSE_FLOW, true);
}

bool part_accept(kh_part *part, rd_kafka_message_t *m) {
    /* While a seek is owed (I4), what arrives comes from the old
     * position: queueing it would skip the dropped messages. */
    if (!part->assigned ||
        (part->refetch_from >= 0 && m->offset > part->refetch_from)) {
        rd_kafka_message_destroy(m);
        return false;
    }
    if (m->offset < part->next_offset) {
        klog_debug("pipeline=%s topic=%s partition=%d: dropped offset=%lld "
                   "delivered again below offset=%lld",
                   part->pipeline, part->topic, part->partition,
                   (long long)m->offset, (long long)part->next_offset);
        rd_kafka_message_destroy(m);
        return false;
    }
    part->next_offset = m->offset + 1;
    pend_push(part, m, false);
    check_high_marks(part);
    return true;
}

static void owe_seek(kh_part *part, int64_t offset) {
    if (offset >= 0 && (part->refetch_from < 0 || offset < part->refetch_from))
        part->refetch_from = offset;
}

/* Dropping fetched messages is half of a rewind: the lowest one dropped
 * is owed a seek (refetch_from) until a seek succeeds at or below it,
 * and I1 keeps the stored offset from passing it meanwhile. */
void part_drop_pending(kh_part *part) {
    if (part->pend_len && part->assigned)
        owe_seek(part, part->pend[part->pend_head]->offset);
    while (part->pend_len)
        rd_kafka_message_destroy(pend_pop(part));
    part_pause(part, KH_PAUSE_FLOW, false);
}

void part_drop_kept(kh_part *part) {
    for (uint64_t seq = part->off.head_seq; seq < part->off.next_seq; seq++) {
        kh_entry *e;
        offsets_find(&part->off, seq, &e);
        if (e && e->msg)
            rd_kafka_message_destroy(take_kept(part, e));
    }
}

/* ---- seeks ---- */

static int seek_owed(kh_part *part) {
    int64_t offset = part->refetch_from;
    char why[256] = "";
    if (part->port->seek(part->port->ud, part, offset, why, sizeof why) == 0) {
        part->refetch_from = -1;
        part->next_offset = offset;
        part->seek_failures = 0;
        part_pause(part, KH_PAUSE_SEEK, false);
        return 0;
    }
    /* I4: never skipped. The seek stays owed; the partition fetches
     * nothing until it succeeds, and the tick retries it. */
    part->seek_failures++;
    part_pause(part, KH_PAUSE_SEEK, true);
    klog_error("pipeline=%s topic=%s partition=%d: seek to offset=%lld "
               "failed (try %d): %s; the partition is paused and the seek "
               "retried",
               part->pipeline, part->topic, part->partition, (long long)offset,
               part->seek_failures, why[0] ? why : "unknown error");
    return -1;
}

void part_retry_seek(kh_part *part) {
    if (part->assigned && part->seek_failures > 0 && part->refetch_from >= 0)
        seek_owed(part);
}

/* The rewind line: the chaos test sums its unacked= (the most messages a
 * crash can make handlers see twice), other tests find its offset=. */
static void log_rewind(kh_part *part, int64_t from, size_t unacked,
                       const char *how, const char *why) {
    klog(strstr(why, "skipped") ? KLOG_DEBUG : KLOG_INFO,
         "pipeline=%s topic=%s partition=%d rewound to offset=%lld "
         "(acked=%lld, unacked=%zu, %s): %s",
         part->pipeline, part->topic, part->partition, (long long)from,
         (long long)part->off.acked, unacked, how, why);
}

/* Drop the queue and seek so that Kafka delivers from `seek_to` again
 * (or from lower, when something lower is owed already). `unacked`: the
 * in-flight messages given up on, logged because it bounds what a crash
 * can make handlers see twice (the chaos test checks it). */
static int64_t rewind_to(kh_part *part, int64_t seek_to, size_t unacked,
                         const char *why) {
    part_drop_pending(part);
    if (!part->assigned) {
        part->refetch_from = -1;
        return -1;
    }
    owe_seek(part, seek_to);
    if (part->refetch_from < 0)
        return -1; /* nothing dispatched or queued: the position is right */
    seek_to = part->refetch_from;
    part->n_sought++;
    seek_owed(part);
    log_rewind(part, seek_to, unacked, "by a seek", why);
    return seek_to;
}

/* Can the rewind from from_seq deliver again from memory (see the rules
 * at the top)? *n gets how many messages it would requeue. */
static bool can_requeue(kh_part *part, uint64_t from_seq, size_t *n) {
    *n = 0;
    if (!part->assigned || part->refetch_from >= 0)
        return false;
    int64_t last = part->off.acked;
    for (uint64_t seq = from_seq; seq < part->off.next_seq; seq++) {
        kh_entry *e;
        if (offsets_find(&part->off, seq, &e) != KH_LOOKUP_OK)
            continue; /* dropped by an earlier rewind */
        if (!e->msg || e->offset <= last)
            return false;
        last = e->offset;
        (*n)++;
    }
    return !part->pend_len || part_head(part)->offset > last;
}

static int64_t rewind_range(kh_part *part, uint64_t from_seq, kh_bump bump,
                            const char *why) {
    if (from_seq < part->off.head_seq)
        from_seq = part->off.head_seq;
    size_t n, unacked = 0;
    if (!can_requeue(part, from_seq, &n)) {
        int64_t seek_to = offsets_rewind(&part->off, from_seq, bump, &unacked);
        return rewind_to(part, seek_to, unacked, why);
    }
    rd_kafka_message_t **ms = n ? malloc(n * sizeof *ms) : NULL;
    if (n && !ms)
        abort();
    size_t i = 0;
    for (uint64_t seq = from_seq; seq < part->off.next_seq; seq++) {
        kh_entry *e;
        if (offsets_find(&part->off, seq, &e) != KH_LOOKUP_OK)
            continue;
        ms[i++] = take_kept(part, e); /* from the ledger into the queue */
    }
    offsets_rewind(&part->off, from_seq, bump, &unacked);
    for (i = n; i-- > 0;)
        pend_push(part, ms[i], true);
    free(ms);
    if (!n)
        return -1;
    check_high_marks(part);
    part->n_requeued++;
    int64_t from = part_head(part)->offset;
    log_rewind(part, from, unacked, "from memory", why);
    return from;
}

int64_t part_rewind_from(kh_part *part, uint64_t seq, kh_bump bump,
                         const char *why) {
    return rewind_range(part, seq, bump, why);
}

int64_t part_rewind_all(kh_part *part, const char *why) {
    return rewind_range(part, part->off.head_seq, KH_BUMP_ALL, why);
}

void part_mark_failed(kh_part *part, int64_t offset) {
    offsets_mark_failed(&part->off, offset);
}

/* ---- dispatching ---- */

bool part_dispatchable(const kh_part *part, int64_t now_ms) {
    return part->assigned && !part->held && part->pend_len &&
           !(part->pause & (KH_PAUSE_FAILED | KH_PAUSE_SHUTDOWN | KH_PAUSE_DLQ |
                            KH_PAUSE_OPERATOR)) &&
           now_ms >= part->retry_at_ms &&
           offsets_outstanding(&part->off) < KH_MAX_UNACKED;
}

bool part_head_failed(const kh_part *part) {
    return part->pend_len &&
           offsets_replay_failed(&part->off,
                                 part->pend[part->pend_head]->offset);
}

/* After a message left the queue: resume fetching below the low marks,
 * once the partition is within half its fair share or the host within
 * half its budget; pause while too many deferred acks are outstanding. */
static void after_take(kh_part *part) {
    if ((part->pause & KH_PAUSE_FLOW) && part->pend_len < KH_PENDING_LOW &&
        part->pend_bytes < KH_PENDING_LOW_BYTES &&
        (own_cost(part) <= fair_share() / 2 ||
         queued_host_cost <= budget_bytes / 2))
        part_pause(part, KH_PAUSE_FLOW, false);
    if (offsets_outstanding(&part->off) >= KH_MAX_UNACKED)
        part_pause(part, KH_PAUSE_UNACKED, true);
}

rd_kafka_message_t *part_take(kh_part *part, uint64_t *seq, uint32_t *attempt) {
    rd_kafka_message_t *m = pend_pop(part);
    *attempt = offsets_plan(&part->off, m->offset);
    if (*attempt == 0) {
        /* Acked before a rewind: Kafka sent it again, we do not. Kept
         * like a dispatched one: a later rewind over it requeues it. */
        part_keep(part, offsets_skip(&part->off, m->offset), m);
        after_take(part);
        return NULL;
    }
    *seq = offsets_dispatch(&part->off, m->offset, *attempt);
    after_take(part);
    return m;
}

void part_keep(kh_part *part, uint64_t seq, rd_kafka_message_t *m) {
    kh_entry *e;
    size_t bytes = msg_bytes(m);
    if (part->assigned && part->kept_n < KH_KEEP_MAX &&
        part->kept_bytes + bytes <= KH_KEEP_BYTES &&
        kept_host_n < KH_KEEP_HOST_MAX &&
        kept_host_bytes + bytes <= KH_KEEP_HOST_BYTES &&
        offsets_find(&part->off, seq, &e) == KH_LOOKUP_OK && !e->msg &&
        e->offset == m->offset) {
        e->msg = m;
        part->kept_n++;
        part->kept_bytes += bytes;
        kept_host_n++;
        kept_host_bytes += bytes;
        return;
    }
    rd_kafka_message_destroy(m);
}

rd_kafka_message_t *part_take_failed(kh_part *part, uint32_t *attempts) {
    rd_kafka_message_t *m = pend_pop(part);
    /* The replay carries the attempt number this delivery would have had;
     * the handler saw one fewer. */
    uint32_t a = offsets_plan(&part->off, m->offset);
    *attempts = a > 1 ? a - 1 : 1;
    after_take(part);
    return m;
}

void part_skip(kh_part *part, int64_t offset) {
    offsets_skip(&part->off, offset);
}

uint64_t part_track_dlq(kh_part *part, int64_t offset, uint32_t attempts) {
    uint64_t seq = offsets_dispatch(&part->off, offset, attempts);
    kh_entry *e;
    offsets_find(&part->off, seq, &e);
    e->state = KH_ENTRY_DLQ;
    return seq;
}

bool part_dlq_done(kh_part *part, uint64_t seq, int64_t offset, bool *later) {
    *later = false;
    if (!part->assigned)
        return false;
    kh_entry *e;
    kh_lookup found = offsets_find(&part->off, seq, &e);
    if (found == KH_LOOKUP_OK && e->state == KH_ENTRY_DLQ) {
        e->state = KH_ENTRY_ACKED;
        return true;
    }
    /* A rewind dropped the entry while the copy was on its way: its
     * redelivery is acked without being handled or written again. */
    *later =
        found == KH_LOOKUP_STALE && offsets_replay_resolved(&part->off, offset);
    return *later;
}

void part_backoff(kh_part *part, int64_t until_ms) {
    part->retry_at_ms = until_ms;
}

void part_hold(kh_part *part) {
    part->held = true;
    part->held_offset = part_head(part) ? part_head(part)->offset : -1;
    part_pause(part, KH_PAUSE_FAILED, true);
}

bool part_operator_pause(kh_part *part, bool on) {
    part->operator_paused = on;
    part_pause(part, KH_PAUSE_OPERATOR, on);
    if (on || !part->held)
        return false;
    /* The failed message goes back to a handler (it may have left the
     * queue since: a hand-over drops it, and Kafka delivers it again);
     * the failure policy's memory of it (crashes at it) starts again. */
    if (part->held_offset >= 0)
        offsets_unmark_failed(&part->off, part->held_offset);
    part->held = false;
    part->crash_offset = -1;
    part->crash_count = 0;
    part->fail_offset = -1;
    part->fail_reason[0] = '\0';
    part_pause(part, KH_PAUSE_FAILED, false);
    return true;
}

/* ---- answers ---- */

kh_lookup part_find(kh_part *part, uint64_t seq, kh_entry **e) {
    return offsets_find(&part->off, seq, e);
}

void part_ack(kh_part *part, kh_entry *e) {
    (void)part;
    e->state = KH_ENTRY_ACKED;
}

void part_defer(kh_part *part, kh_entry *e) {
    e->state = KH_ENTRY_DEFERRED;
    /* A deferred ack can take long, and a kept message holds its whole
     * fetch buffer: freed now (a rewind over it seeks). */
    if (e->msg)
        rd_kafka_message_destroy(take_kept(part, e));
}

/* ---- waiting ---- */

bool part_unsettled(kh_part *part, bool results_only) {
    offsets_advance(&part->off);
    if (!part->assigned)
        return false;
    if (results_only)
        return offsets_has_inflight(&part->off);
    return offsets_outstanding(&part->off) > 0;
}

/* ---- I2: say why a partition makes no progress ---- */

const char *const kh_pause_names[KH_PAUSE_N_BITS] = {
    "flow",     "worker", "failed", "unacked",
    "shutdown", "dlq",    "seek",   "operator"};

static void describe_pause(unsigned bits, char *buf, size_t len) {
    static const char *const names[] = {"its queue is full",
                                        "its worker is not ready",
                                        "failed",
                                        "too many deferred acks outstanding",
                                        "shutting down",
                                        "a dead-letter write is failing",
                                        "a seek is failing",
                                        "paused by an operator"};
    size_t used = 0;
    buf[0] = '\0';
    for (unsigned i = 0; i < sizeof names / sizeof *names; i++) {
        if (!(bits & (1u << i)))
            continue;
        int n = snprintf(buf + used, len - used, "%s%s", used ? ", " : "",
                         names[i]);
        if (n < 0 || (size_t)n >= len - used)
            break;
        used += (size_t)n;
    }
}

bool part_check_stall(kh_part *part, int64_t now_ms, int64_t bound_ms) {
    if (!part->assigned)
        return false;
    offsets_advance(&part->off);
    int64_t first = offsets_first_unresolved(&part->off);
    bool waiting = first >= 0 || part->pend_len || part->refetch_from >= 0;
    if (!waiting || part->off.acked != part->stall_acked ||
        !part->stall_since_ms) {
        part->stall_acked = part->off.acked;
        part->stall_since_ms = now_ms;
        part->stall_logged_ms = 0;
        return false;
    }
    int64_t stalled = now_ms - part->stall_since_ms;
    if (stalled < bound_ms)
        return false;
    if (part->stall_logged_ms && now_ms - part->stall_logged_ms < bound_ms)
        return true;
    part->stall_logged_ms = now_ms;
    char why[400];
    if (part->held) {
        rd_kafka_message_t *h = part_head(part);
        snprintf(why, sizeof why,
                 "held at the failed message at offset=%lld (on_failure = "
                 "pause) until an operator resumes it (khost resume) or the "
                 "pipeline restarts",
                 h ? (long long)h->offset : (long long)first);
    } else if (part->pause & KH_PAUSE_FAILED) {
        snprintf(why, sizeof why, "its pipeline FAILED (restart limit)");
    } else if (part->pause & ~KH_PAUSE_FLOW) {
        char bits[300];
        describe_pause(part->pause, bits, sizeof bits);
        snprintf(why, sizeof why, "paused: %s", bits);
    } else if (first >= 0) {
        kh_entry *e = NULL;
        for (uint64_t seq = part->off.head_seq; seq < part->off.next_seq;
             seq++) {
            kh_entry *x;
            if (offsets_find(&part->off, seq, &x) == KH_LOOKUP_OK &&
                x->offset == first) {
                e = x;
                break;
            }
        }
        const char *state = !e                              ? "unresolved"
                            : e->state == KH_ENTRY_DEFERRED ? "deferred by the "
                                                              "handler and not "
                                                              "acked"
                            : e->state == KH_ENTRY_DLQ
                                ? "waiting for its dead-letter write"
                                : "in flight (its handler has not answered)";
        snprintf(why, sizeof why,
                 "the oldest unresolved message, offset=%lld, "
                 "is %s",
                 (long long)first, state);
    } else {
        snprintf(why, sizeof why,
                 "waiting for Kafka to deliver offset=%lld "
                 "again",
                 (long long)(part->refetch_from >= 0 ? part->refetch_from
                                                     : part->off.acked + 1));
    }
    klog_warn("pipeline=%s topic=%s partition=%d: no progress for %lld s "
              "(acked offset=%lld): %s",
              part->pipeline, part->topic, part->partition,
              (long long)(stalled / 1000), (long long)part->off.acked, why);
    return true;
}

/* ---- stores (I1) ---- */

int64_t part_commit_offset(kh_part *part) {
    offsets_advance(&part->off);
    if (!part->assigned || part->off.acked < 0)
        return -1;
    int64_t want = part->off.acked + 1;
    int64_t limits[3] = {offsets_first_unresolved(&part->off),
                         part->pend_len ? part->pend[part->pend_head]->offset
                                        : -1,
                         part->refetch_from};
    static const char *const what[3] = {"a message in flight or deferred",
                                        "a fetched message not dispatched",
                                        "a dropped message not fetched again"};
    for (int i = 0; i < 3; i++) {
        if (limits[i] < 0 || want <= limits[i])
            continue;
        klog_error("pipeline=%s topic=%s partition=%d: INVARIANT I1 "
                   "violated: refusing to store offset=%lld past %s at "
                   "offset=%lld",
                   part->pipeline, part->topic, part->partition,
                   (long long)want, what[i], (long long)limits[i]);
#ifdef KHOST_CHECKED
        abort();
#endif
        return -1;
    }
    return want;
}

void part_store(kh_part *part) {
    if (!part->assigned)
        return;
    bool moved = offsets_advance(&part->off);
    int64_t offset = moved || part->off.acked + 1 != part->stored
                         ? part_commit_offset(part)
                         : -1;
    if (offset >= 0 && offset != part->stored) {
        char why[256] = "";
        if (part->port->store(part->port->ud, part, offset, why, sizeof why))
            klog_warn("pipeline=%s topic=%s partition=%d: storing "
                      "offset=%lld failed: %s",
                      part->pipeline, part->topic, part->partition,
                      (long long)offset, why);
        else
            part->stored = offset;
    }
    if (offsets_outstanding(&part->off) < KH_MAX_UNACKED / 2 &&
        (part->pause & KH_PAUSE_UNACKED))
        part_pause(part, KH_PAUSE_UNACKED, false);
}

void parts_store(kh_part **parts, size_t n) {
    for (size_t i = 0; i < n; i++)
        part_store(parts[i]);
}

void parts_retry_seeks(kh_part **parts, size_t n) {
    for (size_t i = 0; i < n; i++)
        part_retry_seek(parts[i]);
}
