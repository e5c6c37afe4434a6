/*
 * partition: one partition's delivery state, and the only code that
 * writes it. It owns the queue of fetched, undispatched messages, the
 * ledger (offsets.c) with the dispatched messages it keeps for a rewind, the
 * owed seek (refetch_from), the fetch position (next_offset), the pause bits
 * and the stored offset. It is the only place that computes a rewind target or
 * an offset to store: I1 and I4 are enforced here (see partition.c).
 *
 * It talks down to the consumer through kh_consumer_port (kafka.c gives
 * the real one; the model test a simulated one) and calls nothing else
 * above the leaves: it knows no workers, frames or policy. The router,
 * the failure policy, the supervisor and the swap tell it what happened
 * through the calls below.
 */
#ifndef KHOST_PARTITION_H
#define KHOST_PARTITION_H

#include "offsets.h"

#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Flow-control bounds. A worker never has more than KH_MAX_INFLIGHT
 * messages without a result; a partition's host-side queue of polled but
 * undispatched messages pauses fetching above KH_PENDING_HIGH messages or
 * KH_PENDING_HIGH_BYTES and resumes below both low marks, so host memory
 * stays bounded whatever a handler does. The marks are wide on purpose:
 * a pause makes librdkafka drop what it had prefetched and a resume waits
 * for a broker long-poll, so frequent pauses cost most of the throughput
 * (measured: 0.37x the reference consumer at 4096/1024, 0.92x at
 * 65536/16384). Deferred-but-unacked messages pause at KH_MAX_UNACKED. */
#define KH_MAX_INFLIGHT 4096
#define KH_BATCH_MAX 512
#define KH_BATCH_BYTES (1u << 20)
#define KH_OUTBUF_MAX (8u << 20)
#define KH_PENDING_HIGH 65536
#define KH_PENDING_LOW 16384
#define KH_PENDING_HIGH_BYTES (16u << 20)
#define KH_PENDING_LOW_BYTES (4u << 20)
#define KH_MAX_UNACKED 100000
/* What a partition keeps of messages it dispatched (part_keep), so that a
 * rewind delivers them again from memory instead of fetching them again
 * (a refetch waits out the consumer's fetch in flight: up to
 * fetch.wait.max.ms). Per partition, and for the whole host process
 * (each kept message costs librdkafka's message object, about 350 B,
 * besides its bytes: 16,384 of them at most 6 MB plus their bytes).
 * Past any bound, dispatched messages are freed and a rewind over them
 * seeks. */
#define KH_KEEP_MAX 4096
#define KH_KEEP_BYTES (2u << 20)
#define KH_KEEP_HOST_MAX 16384
#define KH_KEEP_HOST_BYTES (16u << 20)
/* The host's prefetch budget ([host] prefetch_budget_mb): what all
 * partitions of the process queue polled but undispatched may cost, each
 * message counted as its value and key plus KH_MSG_OVERHEAD (librdkafka's
 * message object and the host's slot for it). At the budget kafka.c
 * stops taking from librdkafka; over it by a quarter, a
 * partition over its fair share (the budget over the partitions assigned,
 * at least KH_SHARE_MIN or the whole budget if smaller) pauses
 * (KH_PAUSE_FLOW) and resumes once within
 * half its share or the host within half its budget. */
#define KH_BUDGET_DEFAULT ((size_t)32 << 20)
#define KH_MSG_OVERHEAD 320
#define KH_SHARE_MIN ((size_t)64 << 10)

/* Why fetching of a partition is paused; paused while any bit is set. */
enum {
    KH_PAUSE_FLOW = 1 << 0,     /* host-side queue too long */
    KH_PAUSE_WORKER = 1 << 1,   /* owner not ready (starting, restarting) */
    KH_PAUSE_FAILED = 1 << 2,   /* pipeline failed, or a message failed */
    KH_PAUSE_UNACKED = 1 << 3,  /* too many deferred acks outstanding */
    KH_PAUSE_SHUTDOWN = 1 << 4, /* draining for shutdown */
    KH_PAUSE_DLQ = 1 << 5,      /* a dead-letter write failed; retrying */
    KH_PAUSE_SEEK = 1 << 6,     /* a seek failed; retried from the tick */
    KH_PAUSE_OPERATOR = 1 << 7, /* an operator paused it (khost pause) */
};
#define KH_PAUSE_N_BITS 8
/* Their short names, by bit number (flow, worker, failed, unacked,
 * shutdown, dlq, seek, operator): status and metrics labels. */
extern const char *const kh_pause_names[KH_PAUSE_N_BITS];

typedef struct kh_part kh_part;
typedef struct kh_worker kh_worker;
typedef struct kh_pipeline_rt kh_pipeline_rt;

/* What a partition asks of its consumer. Each call is about one
 * partition; `ud` is the port's own. */
typedef struct kh_consumer_port {
    void *ud;
    /* Stop or restart fetching (called on a change only). */
    void (*set_paused)(void *ud, kh_part *part, bool paused);
    /* Make Kafka deliver from `offset` again: 0, or -1 with why[] set. */
    int (*seek)(void *ud, kh_part *part, int64_t offset, char *why, size_t len);
    /* Store `offset` for the next commit: 0, or -1 with why[] set. */
    int (*store)(void *ud, kh_part *part, int64_t offset, char *why,
                 size_t len);
} kh_consumer_port;

/* One pipeline's part of the budget, kept by partition.c for the
 * partitions given to it (part_set_group) and embedded in the pipeline,
 * which reads it. A partition not given to one counts in a group of its
 * own (the model test's). */
typedef struct kh_budget_group {
    size_t queued_cost; /* what its partitions queue, by the budget's cost */
    size_t assigned;    /* how many of them are assigned */
    uint64_t popped;    /* messages that left their queues (taken or dropped) */
} kh_budget_group;

struct kh_part {
    kh_pipeline_rt *pl;
    char *pipeline; /* its pipeline's name, for log lines (a copy) */
    const kh_consumer_port *port;
    char *topic;
    int32_t partition;
    uint32_t slot; /* index in pl->parts; encoded in tokens */
    bool assigned;
    /* The worker that owns it, NULL when unassigned. A pointer, not an
     * index: during a plugin reload two generations of workers coexist.
     * Written by the rebalance (kafka.c) and the swap (reload.c). */
    kh_worker *owner;
    /* ---- partition.c's own; others read them at most ---- */
    kh_offsets off;
    rd_kafka_message_t **pend; /* ring of polled, undispatched messages */
    size_t pend_head, pend_len, pend_cap;
    size_t pend_bytes;      /* payload + key bytes queued */
    kh_budget_group *group; /* its pipeline's part of the budget */
    /* Dispatched messages kept in their ledger entries (part_keep), and
     * their payload + key bytes: bounded by KH_KEEP_MAX/KH_KEEP_BYTES
     * here and by KH_KEEP_HOST_MAX/KH_KEEP_HOST_BYTES over all
     * partitions (kept_host_n/kept_host_bytes, partition.c's own). */
    size_t kept_n, kept_bytes;
    /* Rewinds that delivered again from memory, and those that sought. */
    uint64_t n_requeued, n_sought;
    unsigned pause;      /* KH_PAUSE_* bits as last told to the consumer */
    int64_t retry_at_ms; /* no dispatch before this (retry backoff) */
    bool held;           /* stopped at a failed message, at held_offset */
    int64_t held_offset; /* (the queue may be dropped while held) */
    /* An operator paused it: kept across assignments on this host (the
     * pipeline pauses it again when it is assigned back, pipeline.c). */
    bool operator_paused;
    int64_t stored;    /* last offset stored, -1 none */
    int64_t committed; /* last committed offset seen, -1 none (kafka.c) */
    /* The lowest offset fetched under this assignment, dropped unresolved
     * from the queue or the ledger, that Kafka has not yet been told to
     * deliver again (no successful seek to it or below); -1 none. While
     * set, nothing at or past it may be stored (I1), later fetches are
     * discarded, and the seek is retried (I4). */
    int64_t refetch_from;
    int seek_failures; /* consecutive failed seeks to refetch_from */
    /* One past the highest offset taken from Kafka since the assignment or
     * the last seek, -1 none. librdkafka can go back on its own (seen in
     * chaos around a rebalance with the owner restarting): a message below
     * it is one the host already has, queued, in the ledger or resolved,
     * and taking it again would put the ledger out of offset order, so a
     * later ack could carry the watermark over an unresolved message (I1
     * refused exactly that). Such a message is dropped. */
    int64_t next_offset;
    /* I2 watch (part_check_stall): the watermark last seen, since when,
     * and when the last stall line was written. */
    int64_t stall_acked, stall_since_ms, stall_logged_ms;
    /* ---- failure policy's (failure.c, supervisor.c) ---- */
    int64_t crash_offset;    /* offset of the last crash's suspect, -1 none */
    int crash_count;         /* consecutive crashes at crash_offset */
    int64_t isolate_through; /* after a crash in a batch call: dispatch
                                one message per frame up to here, so the
                                next crash names its message; -1 none */
    int64_t fail_offset;     /* the offset fail_reason is about */
    char fail_reason[512];
    int dlq_pending; /* dead-letter writes not yet confirmed */
};

/* ---- life ---- */
kh_part *part_new(kh_pipeline_rt *pl, const char *pipeline,
                  const kh_consumer_port *port, const char *topic,
                  int32_t partition, uint32_t slot);
void part_free(kh_part *part);
/* A new assignment: everything about the last one is forgotten (seqs stay
 * unique, so answers from before are stale, I3). */
void part_assign(kh_part *part);
/* Revoked: drop what is queued and forget the ledger (answers still on
 * their way are then stale). Logs what was left uncommitted. */
void part_release(kh_part *part);

/* ---- fetching ---- */
void part_pause(kh_part *part, unsigned reason, bool on);
/* A message Kafka delivered; the partition takes it (and frees it when it
 * is not wanted: fetched from the old position while a seek is owed, or
 * below next_offset). Returns true when it was queued. */
bool part_accept(kh_part *part, rd_kafka_message_t *m);
/* Drop the queue. The lowest message dropped is owed a seek. */
void part_drop_pending(kh_part *part);
/* Free the dispatched messages the ledger keeps (part_keep); their
 * entries stay, and a rewind over them seeks. Before the consumer is
 * destroyed: librdkafka waits for its messages to be freed. */
void part_drop_kept(kh_part *part);

/* ---- dispatching ---- */
static inline rd_kafka_message_t *part_head(const kh_part *part) {
    return part->pend_len ? part->pend[part->pend_head] : NULL;
}
/* Can messages be dispatched now (assigned, not held or paused by
 * policy, backoff over, ledger not full)? */
bool part_dispatchable(const kh_part *part, int64_t now_ms);
/* Is the head a replay of a failed message (for the failure policy, not
 * a handler)? */
bool part_head_failed(const kh_part *part);
/* Take the head for a handler: returns it with its seq and attempt, or
 * NULL when it was acked before a rewind (then it is resolved here, and
 * the caller goes on with the next). The caller hands a message it got
 * back with part_keep once it has copied it out. */
rd_kafka_message_t *part_take(kh_part *part, uint64_t *seq, uint32_t *attempt);
/* The caller is done with m, taken as seq: the partition keeps it in the
 * ledger entry, within KH_KEEP_MAX/KH_KEEP_BYTES, until the entry is
 * resolved and passed by the watermark, or frees it now. */
void part_keep(kh_part *part, uint64_t seq, rd_kafka_message_t *m);
/* Messages kept by all partitions of this process, and their bytes. */
size_t part_kept_host(size_t *bytes);
/* Set the host's prefetch budget in bytes (0: KH_BUDGET_DEFAULT). Takes
 * effect at the next fetch or dispatch of each partition. */
void part_set_budget(size_t bytes);
/* The budget; *queued gets what all partitions queue now (by the cost
 * above), *assigned how many partitions share it. */
size_t part_budget(size_t *queued, size_t *assigned);
/* Is the host over its budget? *popped gets how many messages have left
 * any partition's queue so far (dispatched or dropped): unchanged over
 * time while over the budget, nothing that holds it can dispatch. */
bool part_budget_full(uint64_t *popped);
/* Only while part is unassigned and queues nothing. */
void part_set_group(kh_part *part, kh_budget_group *g);
/* Does the budget hold group g (its pipeline takes nothing from
 * librdkafka)? Rule B1: only while the host is over its budget and g
 * queues more than its share (the budget times its part of the assigned
 * partitions), or the host is over it by a quarter. So a pipeline within
 * its share is never held by what another queues, and the host stays
 * within a quarter over the budget by what is taken from librdkafka. */
bool part_budget_holds(const kh_budget_group *g);
/* A partition's fair share of the budget now, and what part queues by
 * the budget's cost. */
size_t part_fair_share(void);
size_t part_queued_cost(const kh_part *part);
/* Take a failed head for the failure policy; *attempts gets how often a
 * handler had it. The caller then resolves it with part_skip or tracks
 * its dead-letter write with part_track_dlq. */
rd_kafka_message_t *part_take_failed(kh_part *part, uint32_t *attempts);
void part_skip(kh_part *part, int64_t offset);
/* A dead-letter write for `offset`: its ledger entry (returned seq) holds
 * the watermark until part_dlq_done. */
uint64_t part_track_dlq(kh_part *part, int64_t offset, uint32_t attempts);
/* The write of seq/offset was confirmed. Returns true when that resolved
 * a message: its entry, or (*later set) its redelivery after a rewind. */
bool part_dlq_done(kh_part *part, uint64_t seq, int64_t offset, bool *later);
/* A retry backoff: nothing is dispatched before until_ms. */
void part_backoff(kh_part *part, int64_t until_ms);
/* on_failure = pause: stop at the head until an operator resumes the
 * partition or the pipeline restarts. */
void part_hold(kh_part *part);
/* An operator's pause (on) or resume (off) of the partition: nothing more
 * is fetched or dispatched while paused; messages in flight finish and
 * their acks count. A resume also releases a hold (on_failure = pause):
 * the failed message goes to a handler once more (its attempt number goes
 * on; a RETRY with the retries used up, or a FAIL, holds it again).
 * Returns true when a hold was released. */
bool part_operator_pause(kh_part *part, bool on);

/* ---- answers (the caller fenced the worker: it is the owner, I3) ---- */
kh_lookup part_find(kh_part *part, uint64_t seq, kh_entry **e);
void part_ack(kh_part *part, kh_entry *e);
void part_defer(kh_part *part, kh_entry *e);
/* Give up on seq and everything after it that is not acked, and deliver
 * them again from the lowest offset given up on (or owed). `bump` says
 * which count as attempted. When the partition kept every message given
 * up on (part_keep) and owes no seek, they go back to the front of the
 * queue in offset order, and Kafka's position does not change; otherwise
 * the queue is dropped and the partition seeks. Either way the same
 * messages come next, with the same attempt numbers and replay facts.
 * Returns the offset delivered next, -1 when nothing was given up on or
 * owed. */
int64_t part_rewind_from(kh_part *part, uint64_t seq, kh_bump bump,
                         const char *why);
/* Give up on everything past the acked watermark (a crash, a hand-over,
 * a lost worker). */
int64_t part_rewind_all(kh_part *part, const char *why);
/* The message at `offset` failed: when Kafka delivers it again it goes
 * to the failure policy (part_head_failed). */
void part_mark_failed(kh_part *part, int64_t offset);

/* ---- waiting ---- */
/* Does the partition still wait for answers? With results_only, only for
 * results of messages in flight (not for deferred acks). */
bool part_unsettled(kh_part *part, bool results_only);

/* I2: a partition with unresolved messages whose watermark has not moved
 * for bound_ms says why in the log (a WARN, once per bound_ms): paused and
 * by what, held at a failed message, or the oldest unresolved message, in
 * flight, deferred or being dead-lettered, and for how long. Returns true
 * when it is stalled. Called from the host's tick. */
bool part_check_stall(kh_part *part, int64_t now_ms, int64_t bound_ms);

/* ---- seeks and stores ---- */
/* I4: retry an owed seek that failed. */
void part_retry_seek(kh_part *part);
/* The offset that may be stored or committed (acked + 1), or -1 when
 * there is none or it would break I1 (then logged as an ERROR and, in
 * checked builds, abort()). The only source of stored offsets. */
int64_t part_commit_offset(kh_part *part);
/* Store the watermark if it moved (and lift the unacked pause). */
void part_store(kh_part *part);
/* The same for n partitions (a pipeline's). */
void parts_store(kh_part **parts, size_t n);
void parts_retry_seeks(kh_part **parts, size_t n);

#endif
