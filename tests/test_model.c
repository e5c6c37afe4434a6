/*
 * test_model: the pipeline core's partition module (host/partition.c, with
 * the real ledger, host/offsets.c) driven through its ports by seeded
 * random event scripts, with no Kafka and no processes. Each script
 * interleaves fetches, dispatches, results in any order (ack, retry, fail,
 * deferred, skipped), deferred acks in any order, worker crashes with late
 * answers from the dead worker, plugin hand-overs, revokes and assigns,
 * dead-letter writes (confirmed, failed and retried, slow), failed seeks,
 * librdkafka going back on its own, and host restarts, then runs quiet
 * until every message is resolved.
 *
 * The simulated consumer (kh_consumer_port) is a Kafka log with a fetch
 * position; the simulated workers and failure policy do what the router
 * (dispatch.c), the supervisor and failure.c do with the partition API.
 *
 * Checked after every step, against the script's own record of what
 * handlers did, not the module's:
 *   I1  no stored or committed offset passes a message that no handler
 *       acknowledged, no dead-letter write confirmed, and no policy skipped;
 *   I3  an answer for a message fenced by a rewind, a crash or a revoke is
 *       stale: it changes nothing;
 *       a failed message never goes back to a handler in its assignment;
 *   I4  a failed seek is owed until one succeeds (nothing is fetched from
 *       the old position past it).
 * At the end of each script:
 *   I2  every produced message was resolved, and the stored offset reached
 *       the end of the log, within a bound of quiet steps;
 *   and no message object leaked.
 *
 * KHOST_MODEL_SCRIPTS (default 50000) sets how many scripts run and
 * KHOST_MODEL_SEED the first seed; a failure names the seed and step, and
 * KHOST_MODEL_SEED=<seed> KHOST_MODEL_SCRIPTS=1 replays it, with
 * KHOST_MODEL_TRACE=1 printing each event. CI runs seeds 1..50000 (about
 * 9 s); other seeds explore further (1,000,000 scripts took 94 s before
 * operator events were added). Three scripts in ten hold a partition at
 * a failed message (on_failure = pause), and operators pause and resume
 * partitions at random (a resume releases a hold); the quiet end resumes
 * every partition.
 *
 * A second test drives the router (dispatch.c), the failure policy
 * (failure.c, on_failure = skip, poison counting), the plugin swap
 * (swap.c: reloads, canary, probation crashes and rollback), the expiry
 * of deferred messages (dispatch_expire_deferred) and the one
 * bounded wait (drain.c) the same way, over real frames on socketpairs
 * (see "the router model" below): 5,000 scripts in CI
 * (KHOST_MODEL_ROUTER_SCRIPTS), about 20 s. It fails with any of these
 * faults put in one at a time: a stale answer taken as a lie; no check for
 * failed messages before dispatch; a RETRY answer without its rewind; a
 * SKIPPED answer without its rewind; poison counted but not marked failed;
 * no owner check on answers (a forged ack then counts); ACKS accepted for
 * messages never deferred; a canary rollback that hands the canary
 * partition over again when a rebalance already gave it to an old worker
 * (the swap then rewinds a partition it does not move: the bug this model
 * found in swap.c).
 *
 * Checked to fail: with any of these faults put into partition.c, it
 * fails within the first few seeds (tried one by one): a queue drop that
 * owes no seek; a rewind that ignores an owed seek; a failed seek that
 * forgets what it owed; fetches from the old position taken while a seek
 * is owed; no next_offset check; a successful seek that does not move
 * next_offset; a revoke that leaves the consumer paused (librdkafka keeps
 * a partition's pause across assignments; the simulated consumer does too).
 */
#define _GNU_SOURCE
#include "dispatch.h"
#include "failure.h"
#include "host.h"
#include "log.h"
#include "partition.h"
#include "pipeline.h"
#include "supervisor.h"
#include "swap.h"
#include "transport.h" /* KH_RESULT_SKIPPED */

#include <khost/plugin.h>

#include <criterion/criterion.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define NP_MAX 3
#define NW 2
#define NS 4 /* worker slots of the router model: two generations */
#define LOG_MAX 600
#define ITEMS_MAX 2048
#define JOBS_MAX 256
#define MAX_ATTEMPTS 3

/* ---- message objects: the partition frees what it takes ---- */

static long live_msgs;

void rd_kafka_message_destroy(rd_kafka_message_t *m) {
    live_msgs--;
    free(m);
}

static rd_kafka_message_t *new_msg(int32_t partition, int64_t offset) {
    rd_kafka_message_t *m = calloc(1, sizeof *m);
    if (!m)
        abort();
    m->partition = partition;
    m->offset = offset;
    live_msgs++;
    return m;
}

/* ---- the script's world ---- */

typedef struct item {
    int p;
    uint64_t seq;
    int64_t offset;
    uint32_t attempt;
    bool fenced; /* the script fenced it: its answer must be stale */
} item;

typedef struct worker {
    bool alive;
    int down_steps;
    item inflight[ITEMS_MAX]; /* in dispatch order */
    int n_inflight;
    item deferred[ITEMS_MAX];
    int n_deferred;
} worker;

typedef struct dlq_job {
    int p;
    int64_t offset;
    uint64_t seq;
    bool waiting_retry; /* the write failed; failure_poll retries it */
} dlq_job;

typedef struct model {
    uint64_t rng;
    uint64_t seed;
    int step;
    bool quiet; /* the end of a script: no faults, everything acks */
    int np;
    bool policy_dlq;  /* on_failure = dlq, else skip */
    bool policy_hold; /* on_failure = pause (wins over policy_dlq) */
    int seek_fail_pct, crash_pct;
    int64_t now;
    kh_consumer_port port;
    kh_part *parts[NP_MAX];
    int owner[NP_MAX];
    /* the consumer, as Kafka and librdkafka would behave */
    int64_t log_end[NP_MAX];
    int64_t pos[NP_MAX];
    bool paused[NP_MAX];
    bool assigned[NP_MAX];
    int64_t stored[NP_MAX];
    int64_t committed[NP_MAX];
    int64_t owed_min[NP_MAX]; /* lowest offset a failed seek still owes */
    /* what handlers and the policy did */
    bool resolved[NP_MAX][LOG_MAX];
    int64_t first_unresolved[NP_MAX];
    bool failed[NP_MAX][LOG_MAX]; /* failed, not resolved by policy yet */
    worker w[NS];
    item zombies[ITEMS_MAX]; /* answers still on their way from the dead */
    int n_zombies;
    dlq_job jobs[JOBS_MAX];
    int n_jobs;
    /* Fenced seq ranges [lo, hi) per partition: what was dispatched when
     * the script fenced it, so a message still on its way to a worker at
     * that moment is known fenced when it arrives. */
    struct {
        uint64_t lo, hi;
    } fences[NP_MAX][1024];
    int n_fences[NP_MAX];
    /* counts, for the summary */
    uint64_t n_events, n_stale, n_seek_fail, n_crash, n_dlq;
} model;

static model *M;
static int saved_stderr = -1;
static bool tracing; /* KHOST_MODEL_TRACE=1: print every event */

#define TRACE(...)                                                             \
    do {                                                                       \
        if (tracing)                                                           \
            dprintf(saved_stderr, __VA_ARGS__);                                \
    } while (0)

static void report(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void report(const char *fmt, ...) {
    char line[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    dprintf(saved_stderr >= 0 ? saved_stderr : 2,
            "test_model: seed=%" PRIu64 " step=%d: %s\n"
            "  replay: KHOST_MODEL_SEED=%" PRIu64 " KHOST_MODEL_SCRIPTS=1\n",
            M ? M->seed : 0, M ? M->step : -1, line, M ? M->seed : 0);
}

#define CHECK(cond, ...)                                                       \
    do {                                                                       \
        if (!(cond)) {                                                         \
            report(__VA_ARGS__);                                               \
            cr_assert_fail("model check failed (seed %" PRIu64 ")", M->seed);  \
        }                                                                      \
    } while (0)

/* A checked build aborts inside partition.c on its own I1 check: name the
 * script that got there. */
static void on_abort(int sig) {
    report("aborted (signal %d): partition.c refused an offset (I1) or "
           "another check failed",
           sig);
    signal(sig, SIG_DFL);
    raise(sig);
}

static uint32_t rnd(model *m, uint32_t n) {
    m->rng ^= m->rng << 13;
    m->rng ^= m->rng >> 7;
    m->rng ^= m->rng << 17;
    return n ? (uint32_t)(m->rng % n) : 0;
}

static bool pct(model *m, int p) {
    return (int)rnd(m, 100) < p;
}

static int index_of(model *m, const kh_part *part) {
    for (int p = 0; p < m->np; p++)
        if (m->parts[p] == part)
            return p;
    abort();
}

static void resolve(model *m, int p, int64_t offset) {
    m->resolved[p][offset] = true;
    m->failed[p][offset] = false;
    while (m->first_unresolved[p] < LOG_MAX &&
           m->resolved[p][m->first_unresolved[p]])
        m->first_unresolved[p]++;
}

/* A failed message under on_failure = skip: the policy resolves it when
 * Kafka delivers it again (the router model cannot see the skip itself).
 * It stays marked failed: it must not go back to a handler. */
static void resolve_by_policy(model *m, int p, int64_t offset) {
    m->resolved[p][offset] = true;
    while (m->first_unresolved[p] < LOG_MAX &&
           m->resolved[p][m->first_unresolved[p]])
        m->first_unresolved[p]++;
}

/* I1, against the script's record. */
static void check_offset(model *m, int p, int64_t offset, const char *what) {
    CHECK(offset <= m->first_unresolved[p],
          "I1: %s offset=%lld for partition %d passes offset=%lld, which no "
          "handler acked, no dead-letter write confirmed and no policy "
          "skipped",
          what, (long long)offset, p, (long long)m->first_unresolved[p]);
}

/* Where a restart would resume: the stored offset, or before any store in
 * this assignment, the committed one. */
static int64_t resume_at(const model *m, int p) {
    int64_t at = m->stored[p] >= 0 ? m->stored[p] : m->committed[p];
    return at > 0 ? at : 0;
}

/* ---- the consumer port ---- */

static void port_set_paused(void *ud, kh_part *part, bool paused) {
    model *m = ud;
    m->paused[index_of(m, part)] = paused;
}

static int port_seek(void *ud, kh_part *part, int64_t offset, char *why,
                     size_t len) {
    model *m = ud;
    int p = index_of(m, part);
    CHECK(m->assigned[p], "seek on unassigned partition %d", p);
    CHECK(offset >= 0 && offset <= m->log_end[p], "seek to offset=%lld",
          (long long)offset);
    if (!m->quiet && pct(m, m->seek_fail_pct)) {
        snprintf(why, len, "simulated seek failure");
        m->n_seek_fail++;
        if (m->owed_min[p] < 0 || offset < m->owed_min[p])
            m->owed_min[p] = offset;
        return -1;
    }
    /* I4: a seek that succeeds covers what a failed one owed. */
    CHECK(m->owed_min[p] < 0 || offset <= m->owed_min[p],
          "I4: seek to offset=%lld succeeds while offset=%lld is still owed "
          "by a failed seek",
          (long long)offset, (long long)m->owed_min[p]);
    m->owed_min[p] = -1;
    m->pos[p] = offset;
    return 0;
}

static int port_store(void *ud, kh_part *part, int64_t offset, char *why,
                      size_t len) {
    (void)why;
    (void)len;
    model *m = ud;
    int p = index_of(m, part);
    check_offset(m, p, offset, "stored");
    m->stored[p] = offset;
    return 0;
}

/* ---- fencing, as the script sees it ---- */

static void fence_list(item *items, int n, int p, uint64_t from_seq,
                       uint64_t hi) {
    for (int i = 0; i < n; i++)
        if (items[i].p == p && items[i].seq >= from_seq && items[i].seq < hi)
            items[i].fenced = true;
}

/* A rewind from from_seq, a crash or a revoke (from_seq 0): everything of
 * p dispatched from there on is fenced. */
static bool fenced_seq(const model *m, int p, uint64_t seq) {
    for (int i = 0; i < m->n_fences[p]; i++)
        if (seq >= m->fences[p][i].lo && seq < m->fences[p][i].hi)
            return true;
    return false;
}

/* Fence seqs from_seq .. hi-1 of p. */
static void fence_upto(model *m, int p, uint64_t from_seq, uint64_t hi) {
    if (from_seq < hi) {
        while (m->n_fences[p] &&
               from_seq <= m->fences[p][m->n_fences[p] - 1].lo)
            m->n_fences[p]--; /* covered by the new one */
        int n = m->n_fences[p];
        if (n && m->fences[p][n - 1].lo <= from_seq &&
            m->fences[p][n - 1].hi >= from_seq) {
            m->fences[p][n - 1].hi = hi; /* extends the last one */
        } else {
            CHECK(n < 1024, "too many fences");
            m->fences[p][n].lo = from_seq;
            m->fences[p][n].hi = hi;
            m->n_fences[p]++;
        }
    }
    for (int k = 0; k < NS; k++) {
        fence_list(m->w[k].inflight, m->w[k].n_inflight, p, from_seq, hi);
        fence_list(m->w[k].deferred, m->w[k].n_deferred, p, from_seq, hi);
    }
    fence_list(m->zombies, m->n_zombies, p, from_seq, hi);
}

static void fence(model *m, int p, uint64_t from_seq) {
    fence_upto(m, p, from_seq, m->parts[p]->off.next_seq);
}

static void remove_at(item *items, int *n, int i) {
    memmove(items + i, items + i + 1, (size_t)(*n - i - 1) * sizeof *items);
    (*n)--;
}

/* Find the entry an answer is about; I3 for fenced answers. Returns the
 * entry when the answer counts, NULL when it is stale. */
static kh_entry *lookup(model *m, const item *it, uint8_t want_state) {
    kh_entry *e = NULL;
    kh_lookup found = part_find(m->parts[it->p], it->seq, &e);
    if (it->fenced) {
        CHECK(found != KH_LOOKUP_LIE, "fenced answer seq=%llu taken as a lie",
              (unsigned long long)it->seq);
        CHECK(found == KH_LOOKUP_STALE || e->state != want_state,
              "I3: a fenced answer for partition %d offset=%lld (seq %llu) "
              "would count",
              it->p, (long long)it->offset, (unsigned long long)it->seq);
        m->n_stale++;
        return NULL;
    }
    CHECK(found == KH_LOOKUP_OK && e->state == want_state &&
              e->offset == it->offset,
          "live answer for partition %d offset=%lld seq=%llu: lookup %d, "
          "state %d, entry offset %lld",
          it->p, (long long)it->offset, (unsigned long long)it->seq, found,
          e ? e->state : -1, e ? (long long)e->offset : -1LL);
    return e;
}

/* ---- events ---- */

static void ev_produce(model *m) {
    int p = (int)rnd(m, (uint32_t)m->np);
    int64_t n = 1 + rnd(m, 12);
    if (m->log_end[p] + n > LOG_MAX)
        n = LOG_MAX - m->log_end[p];
    m->log_end[p] += n;
}

static void ev_fetch(model *m) {
    int p = (int)rnd(m, (uint32_t)m->np);
    /* A pause is not instant: what librdkafka had queued may still come. */
    if (!m->assigned[p] || (m->paused[p] && (m->quiet || !pct(m, 20))))
        return;
    /* librdkafka going back on its own: seen around rebalances. */
    if (!m->quiet && pct(m, 3) && m->pos[p] > 0)
        m->pos[p] -= 1 + rnd(m, (uint32_t)(m->pos[p] < 8 ? m->pos[p] : 8));
    int n = m->paused[p] ? 1 + (int)rnd(m, 3) : 1 + (int)rnd(m, 16);
    kh_part *part = m->parts[p];
    for (int i = 0; i < n && m->pos[p] < m->log_end[p]; i++) {
        int64_t o = m->pos[p]++;
        TRACE("  fetch p%d o=%lld\n", p, (long long)o);
        /* I4: while a failed seek is owed, what arrives comes from the old
         * position: the partition must not take anything past the owed
         * offset. */
        bool owed_past = m->owed_min[p] >= 0 && o > m->owed_min[p];
        size_t before = part->pend_len;
        part_accept(part, new_msg(p, o));
        CHECK(!owed_past || part->pend_len == before,
              "I4: offset=%lld queued while a seek to offset=%lld is owed",
              (long long)o, (long long)m->owed_min[p]);
        /* The budget: over it, a partition over its share stops fetching. */
        size_t queued, budget = part_budget(&queued, NULL);
        CHECK(part->pend_len == before || queued <= budget + budget / 4 ||
                  part_queued_cost(part) <= part_fair_share() ||
                  (part->pause & KH_PAUSE_FLOW),
              "budget: partition %d queues %zu of the host's %zu over a "
              "budget of %zu and is not paused",
              p, part_queued_cost(part), queued, budget);
    }
}

/* The budget's accounting: the host's count is the sum of what each
 * partition queues, and the partitions sharing it are those assigned. */
static void check_budget(model *m) {
    size_t queued, assigned, sum = 0, n = 0;
    part_budget(&queued, &assigned);
    for (int p = 0; p < m->np; p++) {
        sum += part_queued_cost(m->parts[p]);
        n += m->parts[p]->assigned;
    }
    CHECK(queued == sum,
          "budget: the host counts %zu queued, its partitions "
          "%zu",
          queued, sum);
    CHECK(assigned == n, "budget: the host counts %zu assigned, %zu are",
          assigned, n);
}

/* Returns false when the partition is held at the failed head (on_failure
 * = pause: dispatch.c stops there). */
static bool apply_failure_policy(model *m, int p) {
    kh_part *part = m->parts[p];
    if (m->policy_hold) {
        TRACE("  policy p%d hold at o=%lld\n", p,
              (long long)part_head(part)->offset);
        part_hold(part);
        return false;
    }
    uint32_t attempts;
    rd_kafka_message_t *msg = part_take_failed(part, &attempts);
    int64_t o = msg->offset;
    rd_kafka_message_destroy(msg);
    TRACE("  policy p%d o=%lld attempts=%u %s\n", p, (long long)o, attempts,
          m->policy_dlq ? "dlq" : "skip");
    CHECK(attempts >= 1, "failed offset=%lld with 0 attempts", (long long)o);
    if (!m->policy_dlq) {
        part_skip(part, o);
        resolve(m, p, o);
        return true;
    }
    /* A write still on its way answers for this delivery too (failure.c). */
    for (int j = 0; j < m->n_jobs; j++)
        if (m->jobs[j].p == p && m->jobs[j].offset == o) {
            m->jobs[j].seq = part_track_dlq(part, o, attempts);
            return true;
        }
    CHECK(m->n_jobs < JOBS_MAX, "too many dead-letter jobs");
    m->jobs[m->n_jobs++] = (dlq_job){
        .p = p, .offset = o, .seq = part_track_dlq(part, o, attempts)};
    part->dlq_pending++;
    m->n_dlq++;
    return true;
}

/* An operator's pause or resume (ops.c): a resume releases a hold, and
 * the failed message goes to a handler once more. */
static void ev_operator(model *m, int p, bool pause) {
    kh_part *part = m->parts[p];
    int64_t o = part->held_offset;
    TRACE("  operator %s p%d\n", pause ? "pause" : "resume", p);
    if (part_operator_pause(part, pause)) {
        CHECK(o >= 0, "a hold released without its offset");
        m->failed[p][o] = false;
    }
}

static void ev_dispatch(model *m) {
    int k = (int)rnd(m, NW);
    worker *w = &m->w[k];
    if (!w->alive)
        return;
    int budget = 1 + (int)rnd(m, 24);
    for (int p = 0; p < m->np && budget > 0; p++) {
        kh_part *part = m->parts[p];
        if (m->owner[p] != k || !part_dispatchable(part, m->now))
            continue;
        while (budget > 0 && part_head(part) && w->n_inflight < ITEMS_MAX) {
            if (part_head_failed(part)) {
                if (!apply_failure_policy(m, p))
                    break;
                continue;
            }
            uint64_t seq;
            uint32_t attempt;
            rd_kafka_message_t *msg = part_take(part, &seq, &attempt);
            if (!msg)
                continue;
            int64_t o = msg->offset;
            part_keep(part, seq, msg);
            CHECK(!m->failed[p][o],
                  "a failed message, partition %d offset=%lld, went back to "
                  "a handler (attempt %u)",
                  p, (long long)o, attempt);
            w->inflight[w->n_inflight++] =
                (item){.p = p, .seq = seq, .offset = o, .attempt = attempt};
            TRACE("  dispatch w%d p%d o=%lld seq=%llu attempt=%u\n", k, p,
                  (long long)o, (unsigned long long)seq, attempt);
            budget--;
        }
    }
}

static void answer(model *m, int k, item it, int result) {
    worker *w = &m->w[k];
    kh_part *part = m->parts[it.p];
    /* A fenced answer is stale: the message counts as resolved only by an
     * answer that counts. */
    TRACE("  answer w%d p%d o=%lld seq=%llu result=%d%s\n", k, it.p,
          (long long)it.offset, (unsigned long long)it.seq, result,
          it.fenced ? " (fenced)" : "");
    kh_entry *e = lookup(m, &it, KH_ENTRY_INFLIGHT);
    if (!e)
        return;
    if (result == KHOST_DEFERRED && w->n_deferred == ITEMS_MAX)
        result = KHOST_ACK;
    switch (result) {
    case KHOST_ACK:
        resolve(m, it.p, it.offset);
        part_ack(part, e);
        break;
    case KHOST_DEFERRED:
        part_defer(part, e);
        w->deferred[w->n_deferred++] = it;
        break;
    case KHOST_RETRY:
    case KHOST_FAIL: {
        bool failed = result == KHOST_FAIL || e->attempt >= MAX_ATTEMPTS;
        fence(m, it.p, it.seq);
        part_rewind_from(part, it.seq, KH_BUMP_FIRST,
                         failed ? "handler failed the message"
                                : "handler asked for a retry");
        if (failed) {
            part_mark_failed(part, it.offset);
            m->failed[it.p][it.offset] = true;
        } else {
            part_backoff(part, m->now + rnd(m, 200));
        }
        break;
    }
    default: /* KH_RESULT_SKIPPED: a drain or a hold */
        fence(m, it.p, it.seq);
        part_rewind_from(part, it.seq, KH_BUMP_NONE, "worker skipped it");
        break;
    }
}

static int pick_result(model *m) {
    if (m->quiet)
        return KHOST_ACK;
    uint32_t r = rnd(m, 100);
    return r < 62   ? KHOST_ACK
           : r < 80 ? KHOST_DEFERRED
           : r < 89 ? KHOST_RETRY
           : r < 94 ? KHOST_FAIL
                    : KH_RESULT_SKIPPED;
}

/* Results come back in dispatch order per worker. */
static void ev_results(model *m, int k, int n) {
    worker *w = &m->w[k];
    while (n-- > 0 && w->n_inflight > 0) {
        item it = w->inflight[0];
        remove_at(w->inflight, &w->n_inflight, 0);
        answer(m, k, it, pick_result(m));
    }
}

/* Deferred acks come in any order. */
static void ev_ack_deferred(model *m, int k) {
    worker *w = &m->w[k];
    if (!w->n_deferred)
        return;
    int i = (int)rnd(m, (uint32_t)w->n_deferred);
    item it = w->deferred[i];
    remove_at(w->deferred, &w->n_deferred, i);
    kh_entry *e = lookup(m, &it, KH_ENTRY_DEFERRED);
    if (e) {
        resolve(m, it.p, it.offset);
        part_ack(m->parts[it.p], e);
    }
}

static void ev_crash(model *m, int k) {
    worker *w = &m->w[k];
    if (!w->alive)
        return;
    m->n_crash++;
    TRACE("  crash w%d\n", k);
    /* Some of what it sent is still in the pipe: it arrives later and
     * must be fenced. */
    for (int i = 0; i < w->n_inflight && m->n_zombies < ITEMS_MAX; i++)
        if (pct(m, 30))
            m->zombies[m->n_zombies++] = w->inflight[i];
    /* The suspect is the message in hand, named only among the dead
     * worker's own live messages (supervisor.c find_suspect, I3). */
    bool named = w->n_inflight && !w->inflight[0].fenced;
    int64_t suspect = named ? w->inflight[0].offset : -1;
    int suspect_p = named ? w->inflight[0].p : -1;
    w->n_inflight = w->n_deferred = 0;
    w->alive = false;
    w->down_steps = 1 + (int)rnd(m, 6);
    for (int p = 0; p < m->np; p++) {
        if (m->owner[p] != k || !m->assigned[p])
            continue;
        part_pause(m->parts[p], KH_PAUSE_WORKER, true);
        fence(m, p, 0);
        part_rewind_all(m->parts[p], "worker crashed");
    }
    /* Poison: the crash's suspect fails (supervisor.c count_poison). */
    if (suspect >= 0 && m->assigned[suspect_p] && pct(m, 25) &&
        !m->resolved[suspect_p][suspect]) {
        TRACE("  poison p%d o=%lld\n", suspect_p, (long long)suspect);
        part_mark_failed(m->parts[suspect_p], suspect);
        m->failed[suspect_p][suspect] = true;
    }
}

static void ev_restart(model *m, int k) {
    worker *w = &m->w[k];
    if (w->alive || --w->down_steps > 0)
        return;
    w->alive = true;
    for (int p = 0; p < m->np; p++)
        if (m->owner[p] == k)
            part_pause(m->parts[p], KH_PAUSE_WORKER, false);
}

static void ev_zombie(model *m) {
    if (!m->n_zombies)
        return;
    int i = (int)rnd(m, (uint32_t)m->n_zombies);
    item it = m->zombies[i];
    remove_at(m->zombies, &m->n_zombies, i);
    CHECK(it.fenced, "a dead worker's answer was not fenced");
    lookup(m, &it, pct(m, 50) ? KH_ENTRY_INFLIGHT : KH_ENTRY_DEFERRED);
}

/* A drain: some of the owner's answers arrive before the wait ends. */
static void drain_some(model *m, int p) {
    int k = m->owner[p];
    if (m->w[k].alive)
        ev_results(m, k, (int)rnd(m, 6));
    for (int n = (int)rnd(m, 4); n > 0; n--)
        if (m->w[k].alive)
            ev_ack_deferred(m, k);
}

/* The swap (reload.c hand_over): REVOKE, drain, rewind, new owner. */
static void ev_handover(model *m) {
    int p = (int)rnd(m, (uint32_t)m->np);
    if (!m->assigned[p])
        return;
    kh_part *part = m->parts[p];
    TRACE("  handover p%d\n", p);
    part_drop_pending(part);
    drain_some(m, p);
    fence(m, p, 0);
    part_rewind_all(part, "plugin hand-over");
    m->owner[p] = (m->owner[p] + 1) % NW;
    part_pause(part, KH_PAUSE_WORKER, !m->w[m->owner[p]].alive);
}

static void commit(model *m, int p, const char *what) {
    int64_t c = part_commit_offset(m->parts[p]);
    if (c >= 0) {
        check_offset(m, p, c, what);
        m->committed[p] = c;
    }
}

static void ev_revoke(model *m, int p) {
    if (!m->assigned[p])
        return;
    kh_part *part = m->parts[p];
    TRACE("  revoke p%d\n", p);
    part_drop_pending(part);
    drain_some(m, p);
    commit(m, p, "committed on revoke");
    fence(m, p, 0);
    part_release(part);
    m->assigned[p] = false;
    m->owed_min[p] = -1;
    /* A new assignment forgets failures (the next owner meets them). */
    for (int64_t o = 0; o < LOG_MAX; o++)
        m->failed[p][o] = false;
}

static void ev_assign(model *m, int p) {
    if (m->assigned[p])
        return;
    kh_part *part = m->parts[p];
    TRACE("  assign p%d from %lld\n", p, (long long)m->committed[p]);
    part_assign(part);
    m->assigned[p] = true;
    m->stored[p] = -1;
    m->pos[p] = m->committed[p] >= 0 ? m->committed[p] : 0;
    m->owner[p] = (int)rnd(m, NW);
    if (part->operator_paused) /* as pipeline.c on_assigned */
        part_pause(part, KH_PAUSE_OPERATOR, true);
    if (!m->w[m->owner[p]].alive)
        part_pause(part, KH_PAUSE_WORKER, true);
}

static void ev_dlq(model *m) {
    if (!m->n_jobs)
        return;
    int j = (int)rnd(m, (uint32_t)m->n_jobs);
    dlq_job job = m->jobs[j];
    kh_part *part = m->parts[job.p];
    if (job.waiting_retry) {
        /* failure_poll: a job whose entry went is dropped; the message
         * comes again and gets a new one. */
        kh_entry *e;
        if (!part->assigned || part_find(part, job.seq, &e) != KH_LOOKUP_OK) {
            m->jobs[j] = m->jobs[--m->n_jobs];
            if (--part->dlq_pending == 0)
                part_pause(part, KH_PAUSE_DLQ, false);
            return;
        }
        m->jobs[j].waiting_retry = false;
        return;
    }
    if (!m->quiet && pct(m, 25)) {
        m->jobs[j].waiting_retry = true;
        part_pause(part, KH_PAUSE_DLQ, true);
        return;
    }
    /* The broker has the copy: the message is resolved, whatever the
     * partition makes of the report. */
    resolve(m, job.p, job.offset);
    bool later;
    part_dlq_done(part, job.seq, job.offset, &later);
    m->jobs[j] = m->jobs[--m->n_jobs];
    if (--part->dlq_pending == 0)
        part_pause(part, KH_PAUSE_DLQ, false);
}

/* A host restart mid-stream (pipeline_stop, then a new start): every
 * partition is drained results-only, committed and released. */
static void ev_restart_host(model *m) {
    for (int p = 0; p < m->np; p++) {
        if (!m->assigned[p])
            continue;
        part_pause(m->parts[p], KH_PAUSE_SHUTDOWN, true);
        part_drop_pending(m->parts[p]);
    }
    for (int k = 0; k < NW; k++)
        if (m->w[k].alive) {
            ev_results(m, k, (int)rnd(m, 8));
            for (int n = (int)rnd(m, 4); n > 0; n--)
                ev_ack_deferred(m, k); /* from the last tick and terminate */
        }
    for (int p = 0; p < m->np; p++) {
        if (!m->assigned[p])
            continue;
        part_store(m->parts[p]);
        commit(m, p, "committed at shutdown");
        fence(m, p, 0);
        part_release(m->parts[p]);
        m->assigned[p] = false;
        m->owed_min[p] = -1;
        for (int64_t o = 0; o < LOG_MAX; o++)
            m->failed[p][o] = false;
    }
    for (int k = 0; k < NW; k++) {
        m->w[k].n_inflight = m->w[k].n_deferred = 0;
        m->w[k].alive = true;
    }
    m->n_zombies = 0;
    /* The dead-letter producer is gone with the old host: its jobs are
     * dropped unconfirmed (their offsets were not committed). */
    for (int j = 0; j < m->n_jobs; j++)
        m->parts[m->jobs[j].p]->dlq_pending--;
    m->n_jobs = 0;
    for (int p = 0; p < m->np; p++) {
        m->parts[p]->dlq_pending = 0;
        ev_assign(m, p);
    }
}

static void step(model *m) {
    m->step++;
    m->n_events++;
    m->now += rnd(m, 40);
    uint32_t r = rnd(m, 1000);
    int k = (int)rnd(m, NW);
    TRACE("step %d r=%u k=%d\n", m->step, r, k);
    if (r < 120)
        ev_produce(m);
    else if (r < 320)
        ev_fetch(m);
    else if (r < 520)
        ev_dispatch(m);
    else if (r < 700) {
        if (m->w[k].alive)
            ev_results(m, k, 1 + (int)rnd(m, 8));
    } else if (r < 790) {
        if (m->w[k].alive)
            ev_ack_deferred(m, k);
    } else if (r < (uint32_t)(790 + m->crash_pct))
        ev_crash(m, k);
    else if (r < 850)
        ev_restart(m, k);
    else if (r < 870)
        ev_zombie(m);
    else if (r < 890)
        ev_handover(m);
    else if (r < 905)
        ev_revoke(m, (int)rnd(m, (uint32_t)m->np));
    else if (r < 940)
        ev_assign(m, (int)rnd(m, (uint32_t)m->np));
    else if (r < 980)
        ev_dlq(m);
    else if (r < 988)
        parts_retry_seeks(m->parts, (size_t)m->np);
    else if (r < 995)
        ev_operator(m, (int)rnd(m, (uint32_t)m->np), pct(m, 50));
    else
        ev_restart_host(m);
    parts_store(m->parts, (size_t)m->np);
    check_budget(m);
}

/* The quiet end: no faults, every worker up, every partition assigned,
 * every answer an ack. Everything produced must resolve (I2). */
static void settle(model *m) {
    m->quiet = true;
    for (int k = 0; k < NW; k++) {
        m->w[k].down_steps = 0;
        if (!m->w[k].alive) {
            m->w[k].down_steps = 1;
            ev_restart(m, k);
        }
    }
    for (int p = 0; p < m->np; p++)
        ev_assign(m, p);
    for (int round = 0; round < 4000; round++) {
        m->step++;
        m->now += 50;
        parts_retry_seeks(m->parts, (size_t)m->np);
        for (int p = 0; p < m->np; p++)
            if (m->parts[p]->operator_paused || m->parts[p]->held)
                ev_operator(m, p, false);
        for (int p = 0; p < m->np; p++)
            for (int i = 0; i < 4; i++)
                ev_fetch(m);
        for (int k = 0; k < NW; k++) {
            ev_dispatch(m);
            ev_results(m, k, 64);
            while (m->w[k].n_deferred)
                ev_ack_deferred(m, k);
        }
        while (m->n_jobs)
            ev_dlq(m);
        parts_store(m->parts, (size_t)m->np);
        bool done = true;
        for (int p = 0; p < m->np; p++)
            done = done && resume_at(m, p) == m->log_end[p];
        if (done)
            break;
    }
    for (int p = 0; p < m->np; p++) {
        kh_part *part = m->parts[p];
        CHECK(m->first_unresolved[p] >= m->log_end[p],
              "I2: partition %d: offset=%lld of %lld never resolved "
              "(stored=%lld, queued=%zu, pause=0x%x, refetch_from=%lld, "
              "acked=%lld)",
              p, (long long)m->first_unresolved[p], (long long)m->log_end[p],
              (long long)m->stored[p], part->pend_len, part->pause,
              (long long)part->refetch_from, (long long)part->off.acked);
        CHECK(resume_at(m, p) == m->log_end[p],
              "I2: partition %d: stored offset=%lld, committed %lld, end of "
              "log %lld",
              p, (long long)m->stored[p], (long long)m->committed[p],
              (long long)m->log_end[p]);
    }
}

/* Rewinds over all scripts, by how they delivered again: both ways must
 * be exercised (run_many checks). */
static uint64_t n_requeued, n_sought;

static void count_rewinds(const kh_part *part) {
    n_requeued += part->n_requeued;
    n_sought += part->n_sought;
}

static void run_script(uint64_t seed, uint64_t *events) {
    model *m = calloc(1, sizeof *m);
    cr_assert_not_null(m);
    M = m;
    m->seed = seed;
    m->rng = seed * 0x9E3779B97F4A7C15ull + 1;
    m->np = 1 + (int)rnd(m, NP_MAX);
    m->policy_dlq = pct(m, 50);
    m->policy_hold = pct(m, 30);
    m->seek_fail_pct = (int)rnd(m, 30);
    m->crash_pct = 10 + (int)rnd(m, 30);
    /* Half the scripts run under a budget small enough to pause (a
     * message costs KH_MSG_OVERHEAD here: 320 B), the rest the default. */
    part_set_budget(pct(m, 50) ? (1 + rnd(m, 64)) * 1024 : 0);
    m->port = (kh_consumer_port){.ud = m,
                                 .set_paused = port_set_paused,
                                 .seek = port_seek,
                                 .store = port_store};
    for (int k = 0; k < NW; k++)
        m->w[k].alive = true;
    for (int p = 0; p < m->np; p++) {
        m->parts[p] = part_new(NULL, "model", &m->port, "t", p, (uint32_t)p);
        m->committed[p] = -1;
        m->stored[p] = -1;
        m->owed_min[p] = -1;
        ev_assign(m, p);
    }
    int steps = 100 + (int)rnd(m, 500);
    for (int i = 0; i < steps; i++)
        step(m);
    settle(m);
    *events += m->n_events;
    for (int p = 0; p < m->np; p++) {
        count_rewinds(m->parts[p]);
        part_free(m->parts[p]);
    }
    CHECK(live_msgs == 0, "%ld message object(s) leaked", live_msgs);
    CHECK(part_kept_host(NULL) == 0, "%zu kept message(s) still counted",
          part_kept_host(NULL));
    size_t queued, assigned;
    part_budget(&queued, &assigned);
    CHECK(queued == 0 && assigned == 0,
          "budget: %zu B queued and %zu partition(s) assigned still counted",
          queued, assigned);
    part_set_budget(0);
    M = NULL;
    free(m);
}

static uint64_t env_u64(const char *name, uint64_t dflt) {
    const char *v = getenv(name);
    return v && *v ? strtoull(v, NULL, 10) : dflt;
}

/* Run n scripts from the first seed with the host's log kept out of the
 * output (the modules log every rewind and failed seek, thousands per
 * second here; failures go to the real stderr), then print the figures.
 * KHOST_MODEL_TRACE=1 prints each event, =2 the host's log lines too. */
static void run_many(const char *what, const char *count_env, uint64_t dflt,
                     void (*run)(uint64_t seed, uint64_t *events)) {
    uint64_t first = env_u64("KHOST_MODEL_SEED", 1);
    uint64_t n = env_u64(count_env, dflt);
    uint64_t trace = env_u64("KHOST_MODEL_TRACE", 0);
    signal(SIGABRT, on_abort);
    signal(SIGPIPE, SIG_IGN);
    tracing = trace != 0;
    klog_set_level(trace > 1 ? KLOG_DEBUG : KLOG_ERROR);
    saved_stderr = dup(2);
    int devnull = trace > 1 ? -1 : open("/dev/null", O_WRONLY);
    if (devnull >= 0) {
        dup2(devnull, 2);
        close(devnull);
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    uint64_t events = 0;
    n_requeued = n_sought = 0;
    for (uint64_t s = first; s < first + n; s++)
        run(s, &events);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) +
                  (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    dprintf(saved_stderr,
            "test_model%s: %" PRIu64 " scripts (seeds %" PRIu64 "..%" PRIu64
            "), %" PRIu64 " events, %.1f s; rewinds: %" PRIu64
            " requeued, %" PRIu64 " sought\n",
            what, n, first, first + n - 1, events, secs, n_requeued, n_sought);
    if (n >= 100)
        cr_assert(n_requeued && n_sought,
                  "the scripts never %s: the model no longer covers it",
                  n_requeued ? "sought after a rewind"
                             : "requeued kept messages after a rewind");
}

Test(model, partition_core_under_random_scripts, .timeout = 240) {
    run_many("", "KHOST_MODEL_SCRIPTS", 50000, run_script);
}

/* ---- I2: a stuck partition says why (part_check_stall) ---- */

static char *read_file_all(FILE *f) {
    fflush(f);
    long n = ftell(f);
    char *buf = calloc(1, (size_t)n + 1);
    cr_assert_not_null(buf);
    rewind(f);
    cr_assert_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
    return buf;
}

Test(model, a_stalled_partition_names_its_oldest_unresolved_message) {
    model *m = calloc(1, sizeof *m);
    cr_assert_not_null(m);
    M = m;
    m->np = 1;
    m->port = (kh_consumer_port){.ud = m,
                                 .set_paused = port_set_paused,
                                 .seek = port_seek,
                                 .store = port_store};
    m->stored[0] = m->committed[0] = m->owed_min[0] = -1;
    m->log_end[0] = 3;
    m->quiet = true;
    kh_part *part = m->parts[0] = part_new(NULL, "stall", &m->port, "t", 0, 0);
    part_assign(part);
    m->assigned[0] = true;
    FILE *log = tmpfile();
    cr_assert_not_null(log);
    saved_stderr = dup(2);
    dup2(fileno(log), 2);
    klog_set_level(KLOG_WARN);

    for (int64_t o = 0; o < 3; o++)
        part_accept(part, new_msg(0, o));
    uint64_t seq[3];
    for (int i = 0; i < 3; i++) {
        uint32_t attempt;
        rd_kafka_message_destroy(part_take(part, &seq[i], &attempt));
    }
    kh_entry *e;
    part_find(part, seq[0], &e);
    part_ack(part, e);
    resolve(m, 0, 0);
    part_find(part, seq[1], &e);
    part_defer(part, e);
    part_store(part);
    /* Progress, then 29 s without: quiet. At 30 s: one line. */
    cr_assert(!part_check_stall(part, 1000, 30000));
    cr_assert(!part_check_stall(part, 30000, 30000));
    cr_assert(part_check_stall(part, 31000, 30000));
    cr_assert(part_check_stall(part, 32000, 30000)); /* no second line */
    char *text = read_file_all(log);
    cr_assert(strstr(text, "pipeline=stall topic=t partition=0: no progress "
                           "for 30 s (acked offset=0): the oldest unresolved "
                           "message, offset=1, is deferred by the handler "
                           "and not acked"),
              "%s", text);
    cr_assert_eq(strstr(strstr(text, "no progress") + 1, "no progress"), NULL,
                 "logged twice within the bound: %s", text);
    free(text);

    /* The ack moves the watermark: the watch starts over. */
    part_find(part, seq[1], &e);
    part_ack(part, e);
    resolve(m, 0, 1);
    part_store(part);
    cr_assert(!part_check_stall(part, 33000, 30000));
    /* Paused for its worker: that is the reason given. */
    part_pause(part, KH_PAUSE_WORKER, true);
    cr_assert(part_check_stall(part, 64000, 30000));
    text = read_file_all(log);
    cr_assert(strstr(text, "(acked offset=1): paused: its worker is not ready"),
              "%s", text);
    free(text);

    dup2(saved_stderr, 2);
    part_free(part);
    cr_assert_eq(live_msgs, 0);
    M = NULL;
    free(m);
}

/* ---- a rewind delivers again from memory, or seeks (part_keep) ---- */

static int unit_seeks;
static int64_t unit_seek_to;

static void unit_paused(void *ud, kh_part *part, bool paused) {
    (void)ud, (void)part, (void)paused;
}
static int unit_seek(void *ud, kh_part *part, int64_t offset, char *why,
                     size_t len) {
    (void)ud, (void)part, (void)why, (void)len;
    unit_seeks++;
    unit_seek_to = offset;
    return 0;
}
static int unit_store(void *ud, kh_part *part, int64_t offset, char *why,
                      size_t len) {
    (void)ud, (void)part, (void)offset, (void)why, (void)len;
    return 0;
}

static const kh_consumer_port unit_port = {
    .set_paused = unit_paused, .seek = unit_seek, .store = unit_store};

/* Offsets 0..n-1 fetched, all dispatched and kept. */
static void unit_dispatch(kh_part *part, int n, uint64_t *seq) {
    for (int64_t o = 0; o < n; o++)
        part_accept(part, new_msg(0, o));
    for (int i = 0; i < n; i++) {
        uint32_t attempt;
        rd_kafka_message_t *msg = part_take(part, &seq[i], &attempt);
        cr_assert_not_null(msg);
        part_keep(part, seq[i], msg);
    }
}

/* A new partition with offsets 0..n-1 dispatched and kept; the seek
 * count starts over. */
static kh_part *unit_part(int n, uint64_t *seq) {
    klog_set_level(KLOG_ERROR);
    unit_seeks = 0;
    kh_part *part = part_new(NULL, "keep", &unit_port, "t", 0, 0);
    part_assign(part);
    unit_dispatch(part, n, seq);
    return part;
}

Test(model, a_crash_requeues_kept_messages_without_a_seek) {
    uint64_t seq[5];
    kh_part *part = unit_part(5, seq);
    cr_assert_eq(part->kept_n, 5);
    part_accept(part, new_msg(0, 5)); /* fetched, not dispatched yet */
    kh_entry *e;
    part_find(part, seq[0], &e);
    part_ack(part, e);
    part_find(part, seq[2], &e);
    part_ack(part, e); /* acked behind the unacked 1 */
    part_store(part);
    cr_assert_eq(part->kept_n, 4, "the popped entry's message is freed");

    cr_assert_eq(part_rewind_all(part, "worker crashed"), 1);
    cr_assert_eq(unit_seeks, 0, "a crash with every message kept sought");
    cr_assert_eq(part->refetch_from, -1);
    cr_assert_eq(part->kept_n, 0);
    cr_assert_eq(part->pend_len, 5, "1..4 requeued before the fetched 5");
    /* The same sequence a refetch gives: 1 and 3, 4 again with their
     * attempt bumped (a crash), 2 acked before and not sent again. */
    int64_t want_off[] = {1, 3, 4, 5};
    uint32_t want_att[] = {2, 2, 2, 1};
    for (int i = 0; i < 4; i++) {
        uint64_t s;
        uint32_t attempt;
        rd_kafka_message_t *msg = part_take(part, &s, &attempt);
        if (!msg && want_off[i] == 3) /* 2, acked before the crash */
            msg = part_take(part, &s, &attempt);
        cr_assert_not_null(msg, "offset %lld skipped", (long long)want_off[i]);
        cr_assert_eq(msg->offset, want_off[i]);
        cr_assert_eq(attempt, want_att[i], "offset %lld attempt %u",
                     (long long)msg->offset, attempt);
        part_keep(part, s, msg);
        part_find(part, s, &e);
        part_ack(part, e);
    }
    cr_assert_eq(part->pend_len, 0);
    part_store(part);
    cr_assert_eq(part->stored, 6);
    cr_assert_eq(part->kept_n, 0);
    cr_assert_eq(part->n_requeued, 1);
    part_free(part);
    cr_assert_eq(live_msgs, 0);
}

Test(model, a_rewind_over_a_deferred_message_seeks) {
    uint64_t seq[4];
    kh_part *part = unit_part(4, seq);
    kh_entry *e;
    part_find(part, seq[1], &e);
    part_defer(part, e); /* frees its message: deferred acks can take long */
    cr_assert_eq(part->kept_n, 3);
    part_accept(part, new_msg(0, 4));
    cr_assert_eq(part_rewind_all(part, "worker crashed"), 0);
    cr_assert_eq(unit_seeks, 1);
    cr_assert_eq(unit_seek_to, 0);
    cr_assert_eq(part->pend_len, 0, "the queue is dropped for the seek");
    cr_assert_eq(part->kept_n, 0, "what was kept is freed");
    cr_assert_eq(part->n_sought, 1);
    /* A retry past the deferred one still requeues. */
    unit_dispatch(part, 4, seq);
    part_find(part, seq[1], &e);
    part_defer(part, e);
    cr_assert_eq(part_rewind_from(part, seq[2], KH_BUMP_FIRST, "retry"), 2);
    cr_assert_eq(unit_seeks, 1, "the retry past the deferred one sought");
    cr_assert_eq(part->pend_len, 2);
    part_free(part);
    cr_assert_eq(live_msgs, 0);
}

Test(model, kept_messages_stay_within_their_bound) {
    static uint64_t seq[KH_KEEP_MAX + 10];
    kh_part *part = unit_part(KH_KEEP_MAX + 10, seq);
    cr_assert_eq(part->kept_n, KH_KEEP_MAX);
    cr_assert_eq(live_msgs, KH_KEEP_MAX, "past the bound, messages are freed");
    /* Not all kept: the crash seeks. */
    cr_assert_eq(part_rewind_all(part, "worker crashed"), 0);
    cr_assert_eq(unit_seeks, 1);
    cr_assert_eq(live_msgs, 0);
    part_free(part);

    /* The host's bound holds over all partitions. */
    enum { NPARTS = KH_KEEP_HOST_MAX / KH_KEEP_MAX + 1 };
    kh_part *parts[NPARTS];
    for (int i = 0; i < NPARTS; i++)
        parts[i] = unit_part(KH_KEEP_MAX, seq);
    cr_assert_eq(part_kept_host(NULL), KH_KEEP_HOST_MAX);
    cr_assert_eq(parts[NPARTS - 1]->kept_n, 0, "kept past the host's bound");
    for (int i = 0; i < NPARTS; i++)
        part_free(parts[i]);
    cr_assert_eq(part_kept_host(NULL), 0);
    cr_assert_eq(live_msgs, 0);
}

/* B1 (partition.h): the budget holds a pipeline's group only while the
 * host is over it and the group over its share, or the host a quarter
 * over; the group's counts follow its partitions. */
Test(model, the_budget_holds_a_group_over_its_share_only) {
    klog_set_level(KLOG_ERROR);
    part_set_budget(1u << 20); /* 4 partitions, 2 a group: 512 KiB each */
    kh_budget_group a = {0}, b = {0};
    kh_part *parts[4];
    for (int i = 0; i < 4; i++) {
        parts[i] = part_new(NULL, "groups", &unit_port, "t", i, (uint32_t)i);
        part_set_group(parts[i], i < 2 ? &a : &b);
        part_assign(parts[i]);
    }
    cr_assert_eq(a.assigned, 2);
    cr_assert_eq(b.assigned, 2);
    int64_t next[4] = {0};
    /* a alone over the budget (3,300 messages of KH_MSG_OVERHEAD). */
    for (int i = 0; i < 2; i++)
        while (next[i] < 1650)
            part_accept(parts[i], new_msg(i, next[i]++));
    cr_assert_eq(a.queued_cost, 3300u * KH_MSG_OVERHEAD);
    cr_assert(part_budget_full(NULL));
    cr_assert(part_budget_holds(&a), "a is over its share");
    cr_assert_not(part_budget_holds(&b), "b queues nothing: not held by a");
    /* b fills until the host is a quarter over the budget: 797 more. */
    size_t queued;
    part_budget(&queued, NULL);
    while (!part_budget_holds(&b)) {
        part_accept(parts[2], new_msg(2, next[2]++));
        part_budget(&queued, NULL);
    }
    cr_assert_gt(queued, (1u << 20) + (1u << 18));
    cr_assert_eq(next[2], 797);
    cr_assert_lt(b.queued_cost, 512u << 10, "held below its share");
    /* a drains below its share; the host is within its budget again. */
    int taken = 0;
    while (part_budget_holds(&a)) {
        uint64_t seq;
        uint32_t attempt;
        rd_kafka_message_t *msg = part_take(parts[0], &seq, &attempt);
        part_keep(parts[0], seq, msg);
        taken++;
    }
    cr_assert_eq(a.popped, (uint64_t)taken);
    part_budget(&queued, NULL);
    cr_assert_leq(queued, 1u << 20);
    cr_assert_not(part_budget_holds(&b));
    for (int i = 0; i < 4; i++)
        part_free(parts[i]);
    cr_assert_eq(a.queued_cost, 0);
    cr_assert_eq(b.queued_cost, 0);
    cr_assert_eq(a.assigned + b.assigned, 0);
    cr_assert_eq(live_msgs, 0);
    part_set_budget(0);
}

Test(model, the_host_budget_pauses_partitions_over_their_share) {
    klog_set_level(KLOG_ERROR);
    part_set_budget(1u << 20); /* 4 partitions: a share of 256 KiB */
    kh_part *parts[4];
    for (int i = 0; i < 4; i++) {
        parts[i] = part_new(NULL, "budget", &unit_port, "t", i, (uint32_t)i);
        part_assign(parts[i]);
    }
    cr_assert_eq(part_fair_share(), 256u << 10);
    /* Each message costs KH_MSG_OVERHEAD (no value, no key). */
    int64_t next[4] = {0};
    for (int i = 0; i < 3; i++)
        while (next[i] < 1200)
            part_accept(parts[i], new_msg(i, next[i]++));
    size_t queued;
    part_budget(&queued, NULL);
    cr_assert_eq(queued, 3600u * KH_MSG_OVERHEAD);
    cr_assert(part_budget_full(NULL));
    for (int i = 0; i < 3; i++)
        cr_assert_eq(parts[i]->pause, 0,
                     "within a quarter over the budget, nobody pauses");
    /* Past that, a partition within its share keeps fetching... */
    while (queued <= (1u << 20) + (1u << 18)) {
        part_accept(parts[3], new_msg(3, next[3]++));
        part_budget(&queued, NULL);
    }
    cr_assert_eq(next[3], 497);
    cr_assert_eq(parts[3]->pause, 0, "within its share, it fetches");
    /* ...and one over its share stops. */
    part_accept(parts[0], new_msg(0, next[0]++));
    cr_assert_eq(parts[0]->pause, KH_PAUSE_FLOW);
    cr_assert_eq(parts[1]->pause, 0, "a partition pauses when it fetches");
    /* It resumes at half its share (128 KiB: 409 messages). */
    int taken = 0;
    while (parts[0]->pause) {
        uint64_t seq;
        uint32_t attempt;
        rd_kafka_message_t *msg = part_take(parts[0], &seq, &attempt);
        cr_assert_not_null(msg);
        part_keep(parts[0], seq, msg);
        taken++;
    }
    cr_assert_eq(taken, 792);
    cr_assert_eq(parts[0]->pend_len, 409);
    /* A revoke leaves a bigger share to the others and drops its queue. */
    part_release(parts[3]);
    cr_assert_eq(part_fair_share(), (1u << 20) / 3);
    size_t assigned;
    part_budget(&queued, &assigned);
    cr_assert_eq(assigned, 3);
    cr_assert_eq(queued, (409u + 1200 + 1200) * KH_MSG_OVERHEAD);
    for (int i = 0; i < 4; i++)
        part_free(parts[i]);
    part_budget(&queued, &assigned);
    cr_assert_eq(queued, 0);
    cr_assert_eq(assigned, 0);
    cr_assert_eq(live_msgs, 0);
    part_set_budget(0);
}

/* ---- the router model: dispatch.c, failure.c, swap.c, drain.c ----
 *
 * The same world, one level up: the script's workers sit at the far end
 * of real socketpairs. The router (dispatch.c) fills real MESSAGES frames
 * and applies real RESULTS and ACKS frames, fencing answers by owner and
 * seq (I3), killing a worker that lies; failure.c applies on_failure =
 * skip and counts poison; swap.c runs reloads with their new generation,
 * cutover, canary, probation and rollback, and drain.c its waits. The
 * supervisor is simulated here (its calls are defined below, so
 * supervisor.c is not linked: a worker slot is a socketpair), as are the
 * pipeline's event handlers (pipeline.c on_crashed, on_died and on_ready,
 * mirrored in r_crash and supervisor_worker_ready).
 * Checked after every event: I1 as above (a message failed by policy counts
 * as resolvable, since skip resolves it), and that no answer the script
 * knows is fenced gets a worker killed or a message counted. */

static int64_t ts_none = -1;

int64_t rd_kafka_message_timestamp(const rd_kafka_message_t *m,
                                   rd_kafka_timestamp_type_t *tstype) {
    (void)m;
    if (tstype)
        *tstype = RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
    return ts_none;
}

rd_kafka_resp_err_t rd_kafka_message_headers(const rd_kafka_message_t *m,
                                             rd_kafka_headers_t **hdrsp) {
    (void)m;
    *hdrsp = NULL;
    return RD_KAFKA_RESP_ERR__NOENT;
}

static int kills; /* supervisor_kill calls the script did not expect */
static bool lie_expected;

void supervisor_kill(kh_worker *w, const char *reason) {
    (void)reason;
    if (!w->pid || w->state == KH_W_KILLED)
        return;
    w->state = KH_W_KILLED;
    if (!lie_expected)
        kills++;
}

void supervisor_worker_ready(kh_worker *w, const char *name,
                             const char *version, uint64_t plugin_flags) {
    w->state = KH_W_READY;
    w->plugin_flags = plugin_flags;
    snprintf(w->plugin_name, sizeof w->plugin_name, "%s", name);
    snprintf(w->plugin_version, sizeof w->plugin_version, "%s", version);
    if (w->candidate)
        swap_worker_ready(w); /* pipeline.c on_ready */
}

typedef struct rmodel {
    model *m;
    kh_pipeline cfg;
    kh_host host;
    kh_pipeline_rt pl;
    kh_worker *kw[NS]; /* slot -> worker, NULL when the slot is free */
    kh_conn wend[NS];  /* the workers' ends of the channels */
    kh_pipeline cfg2;  /* the other config a swap moves to */
    char *dir;
    kh_buf strings;
    khost_header *hdrs;
    size_t hdrs_cap;
    /* Each partition's next seq before the last event that may move it
     * (r_snap): a move rewinds what was dispatched before it, while what
     * the new owner gets in the same event (a rewind can requeue kept
     * messages, which go out at once) is live. */
    uint64_t snap[NP_MAX];
} rmodel;

static void r_snap(rmodel *r) {
    for (int p = 0; p < r->m->np; p++)
        r->snap[p] = r->pl.parts[p]->off.next_seq;
}

static rmodel *RM;

static char *tu_tmpdir_model(void) {
    char *d = strdup("/tmp/khost-model-XXXXXX");
    cr_assert(d && mkdtemp(d));
    return d;
}

static int rm_one(const char *path, const struct stat *st, int flag,
                  struct FTW *ftw) {
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void tu_rmdir_model(const char *dir) {
    nftw(dir, rm_one, 8, FTW_DEPTH | FTW_PHYS);
}

static int slot_of(rmodel *r, const kh_worker *w) {
    for (int k = 0; k < NS; k++)
        if (w && r->kw[k] == w)
            return k;
    return -1;
}

static bool is_next(rmodel *r, const kh_worker *w) {
    return r->pl.next && w >= r->pl.next && w < r->pl.next + r->pl.n_next;
}

/* A random slot whose worker is READY, -1 when none. With current_only,
 * only the current generation's. */
static int pick_slot(rmodel *r, bool current_only) {
    int cand[NS], n = 0;
    for (int k = 0; k < NS; k++)
        if (r->kw[k] && r->kw[k]->state == KH_W_READY &&
            (!current_only || !is_next(r, r->kw[k])))
            cand[n++] = k;
    return n ? cand[rnd(r->m, (uint32_t)n)] : -1;
}

static void slot_close(rmodel *r, int k) {
    conn_close(&r->kw[k]->conn);
    conn_close(&r->wend[k]);
    r->kw[k] = NULL;
    r->m->w[k].n_inflight = r->m->w[k].n_deferred = 0;
    r->m->w[k].alive = false;
}

/* After the swap moved partitions: a partition whose owner changed was
 * rewound (hand_over), so everything it had out is fenced. The swap
 * rewinds only partitions it moves: an answer the script still counts on
 * must still have its live entry (checked here). */
static void resync(rmodel *r) {
    model *m = r->m;
    for (int p = 0; p < m->np; p++) {
        if (!m->assigned[p])
            continue;
        int k = slot_of(r, r->pl.parts[p]->owner);
        CHECK(k >= 0,
              "partition %d is owned by no live worker (a dangling "
              "owner)",
              p);
        if (k != m->owner[p]) {
            fence_upto(m, p, 0, r->snap[p]);
            m->owner[p] = k;
        }
        worker *w = &m->w[k];
        for (int i = 0; i < w->n_inflight + w->n_deferred; i++) {
            item *it = i < w->n_inflight ? &w->inflight[i]
                                         : &w->deferred[i - w->n_inflight];
            kh_entry *e;
            CHECK(it->p != p || it->fenced ||
                      part_find(r->pl.parts[p], it->seq, &e) == KH_LOOKUP_OK,
                  "the swap rewound partition %d (offset=%lld) without "
                  "moving it",
                  p, (long long)it->offset);
        }
    }
}

static void r_connect(rmodel *r, int k);

/* The supervisor's generations and stop steps, as the swap and the drain
 * use them; processes are the script's socketpairs. */
int supervisor_start_next(kh_pipeline_rt *pl, const kh_pipeline *cfg,
                          const char *snapshot) {
    rmodel *r = RM;
    pl->next = calloc((size_t)cfg->workers, sizeof *pl->next);
    cr_assert_not_null(pl->next);
    pl->n_next = cfg->workers;
    for (int i = 0; i < pl->n_next; i++) {
        kh_worker *w = &pl->next[i];
        w->pl = pl;
        w->cfg = cfg;
        w->plugin_path = snapshot;
        w->candidate = true;
        w->index = i;
        int k = slot_of(r, NULL);
        for (k = 0; k < NS && r->kw[k]; k++)
            ;
        CHECK(k < NS, "no free worker slot for a new generation");
        r->kw[k] = w;
        r_connect(r, k);
        w->state = KH_W_STARTING;
    }
    return 0;
}

void supervisor_drop_next(kh_pipeline_rt *pl) {
    for (int i = 0; i < pl->n_next; i++) {
        int k = slot_of(RM, &pl->next[i]);
        if (k >= 0)
            slot_close(RM, k);
    }
    free(pl->next);
    pl->next = NULL;
    pl->n_next = 0;
}

void supervisor_promote_next(kh_pipeline_rt *pl) {
    for (int i = 0; i < pl->n_workers; i++) {
        int k = slot_of(RM, &pl->workers[i]);
        if (k >= 0)
            slot_close(RM, k);
    }
    free(pl->workers);
    pl->workers = pl->next;
    pl->n_workers = pl->n_next;
    pl->next = NULL;
    pl->n_next = 0;
}

/* Spares are the supervisor's: seen from the core, a restart served by a
 * spare is a READY of the same worker, which the script already makes. */
void supervisor_start_spares(kh_pipeline_rt *pl) {
    (void)pl;
}

/* SHUTDOWN: the script's worker exits at once, unread answers lost. */
void supervisor_shutdown(kh_worker *w) {
    w->pid = 0;
    w->state = KH_W_STOPPED;
}

bool supervisor_reap(kh_worker *w) {
    return !w->pid;
}

void supervisor_kill_and_reap(kh_worker *w, const char *why) {
    (void)why;
    w->pid = 0;
    w->state = KH_W_STOPPED;
}

void supervisor_lost(kh_worker *w) {
    w->state = KH_W_KILLED; /* r_step runs its crash */
}

void supervisor_check_hangs(kh_pipeline_rt *pl, int64_t now_ms) {
    (void)pl;
    (void)now_ms;
}

static bool never_stop(kh_host *h) {
    (void)h;
    return false;
}

static void r_connect(rmodel *r, int k) {
    int sv[2];
    cr_assert_not_null(r->kw[k]);
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    kh_worker *w = r->kw[k];
    conn_init(&w->conn, sv[0], KH_FRAME_MAX_FROM_WORKER);
    conn_init(&r->wend[k], sv[1], KH_FRAME_MAX_TO_WORKER);
    w->state = KH_W_READY;
    w->pid = 100000 + k; /* never signalled: supervisor_kill is ours */
    w->inflight = 0;
    r->m->w[k].alive = true;
    r->m->w[k].n_inflight = r->m->w[k].n_deferred = 0;
}

/* The worker side reads what the router sent: messages join its window. */
static void r_worker_read(rmodel *r, int k) {
    model *m = r->m;
    kh_conn *c = &r->wend[k];
    for (;;) {
        long got = conn_fill(c);
        uint16_t type;
        kh_reader rd;
        while (conn_next_frame(c, &type, &rd) == 1) {
            if (type != KH_F_MESSAGES)
                continue; /* ASSIGN, REVOKE, RESUME */
            uint32_t n = tr_get_u32(&rd);
            r->strings.len = 0;
            for (uint32_t i = 0; i < n; i++) {
                khost_message msg;
                CHECK(tr_get_message(&rd, &msg, &r->strings, &r->hdrs,
                                     &r->hdrs_cap) == 0,
                      "undecodable MESSAGES frame");
                int p = (int)kh_token_slot(msg.ack_token);
                CHECK(p < m->np && msg.partition == p, "token of partition %d",
                      p);
                CHECK(!m->failed[p][msg.offset],
                      "a failed message, partition %d offset=%lld, went back "
                      "to a handler (attempt %u)",
                      p, (long long)msg.offset, msg.attempt);
                worker *w = &m->w[k];
                TRACE("  w%d gets p%d o=%lld seq=%llu attempt=%u\n", k, p,
                      (long long)msg.offset,
                      (unsigned long long)kh_token_seq(msg.ack_token),
                      msg.attempt);
                CHECK(w->n_inflight < ITEMS_MAX, "window overflow");
                uint64_t seq = kh_token_seq(msg.ack_token);
                w->inflight[w->n_inflight++] =
                    (item){.p = p,
                           .seq = seq,
                           .offset = msg.offset,
                           .attempt = msg.attempt,
                           .fenced = fenced_seq(m, p, seq)};
            }
        }
        if (got <= 0)
            return;
    }
}

static void r_pump(rmodel *r) {
    dispatch_pump(&r->pl);
    for (int k = 0; k < NS; k++)
        if (r->kw[k])
            r_worker_read(r, k);
}

static void r_send(rmodel *r, int k, kh_frame_type type, const uint64_t *tok,
                   const uint8_t *res, uint32_t n) {
    kh_buf *b = &r->wend[k].out;
    for (uint32_t i = 0; i < n; i++)
        TRACE("  w%d sends %s p%u seq=%llu result=%d\n", k,
              type == KH_F_ACKS ? "ACK" : "RESULT", kh_token_slot(tok[i]),
              (unsigned long long)kh_token_seq(tok[i]), res ? res[i] : -1);
    size_t start = tr_frame_begin(b, type);
    tr_put_u32(b, n);
    for (uint32_t i = 0; i < n; i++) {
        tr_put_u64(b, tok[i]);
        if (res)
            tr_put_u8(b, res[i]);
    }
    tr_frame_end(b, start);
    while (buf_pending(b))
        CHECK(conn_flush(&r->wend[k]) >= 0, "worker end cannot write");
    dispatch_read(r->kw[k]);
    CHECK(kills == 0,
          "the router killed worker %d for an answer it was "
          "entitled to give (a fenced answer must be stale, not a lie)",
          k);
}

/* n results, in dispatch order, as the worker's handler gives them. */
static void r_crash(rmodel *r, int k, bool lie);

static void r_results(rmodel *r, int k, int n) {
    model *m = r->m;
    worker *w = &m->w[k];
    uint64_t tok[64];
    uint8_t res[64];
    item its[64];
    int cnt = 0;
    while (cnt < n && cnt < 64 && w->n_inflight > 0) {
        item it = w->inflight[0];
        remove_at(w->inflight, &w->n_inflight, 0);
        int result = pick_result(m);
        if (result == KHOST_DEFERRED && w->n_deferred == ITEMS_MAX)
            result = KHOST_ACK;
        its[cnt] = it;
        tok[cnt] = kh_token_make((uint32_t)it.p, it.seq);
        res[cnt] = (uint8_t)result;
        cnt++;
        if (result != KHOST_ACK && result != KHOST_DEFERRED)
            break; /* the router rewinds now; send what we have */
    }
    if (!cnt)
        return;
    /* What the script expects the router to make of them. */
    for (int i = 0; i < cnt; i++) {
        item it = its[i];
        if (it.fenced)
            continue;
        switch (res[i]) {
        case KHOST_ACK:
            resolve(m, it.p, it.offset);
            break;
        case KHOST_DEFERRED:
            w->deferred[w->n_deferred++] = it;
            break;
        case KHOST_RETRY:
        case KHOST_FAIL:
            fence(m, it.p, it.seq);
            if (res[i] == KHOST_FAIL || it.attempt >= MAX_ATTEMPTS) {
                TRACE("  expect p%d o=%lld failed (seq %llu)\n", it.p,
                      (long long)it.offset, (unsigned long long)it.seq);
                m->failed[it.p][it.offset] = true;
                resolve_by_policy(m, it.p, it.offset);
            }
            break;
        default:
            fence(m, it.p, it.seq);
        }
    }
    r_send(r, k, KH_F_RESULTS, tok, res, (uint32_t)cnt);
}

static void r_ack_deferred(rmodel *r, int k) {
    worker *w = &r->m->w[k];
    if (!w->n_deferred)
        return;
    int i = (int)rnd(r->m, (uint32_t)w->n_deferred);
    item it = w->deferred[i];
    remove_at(w->deferred, &w->n_deferred, i);
    if (!it.fenced)
        resolve(r->m, it.p, it.offset);
    uint64_t tok = kh_token_make((uint32_t)it.p, it.seq);
    r_send(r, k, KH_F_ACKS, &tok, NULL, 1);
}

/* A worker answers for a message of another worker's partition (I3): the
 * answer must not count, whether it is taken as stale or as a lie (then
 * the forger is killed and restarts). The real owner's answer still counts
 * later; had the forged one counted, that answer would be a second result
 * for one message, and the owner would be killed. */
static void r_forge(rmodel *r, int k) {
    model *m = r->m;
    int j = pick_slot(r, false);
    if (j < 0 || j == k)
        return;
    worker *o = &m->w[j];
    bool deferred = o->n_deferred && pct(m, 50);
    int n = deferred ? o->n_deferred : o->n_inflight;
    if (!n)
        return;
    item it = deferred ? o->deferred[rnd(m, (uint32_t)n)]
                       : o->inflight[rnd(m, (uint32_t)n)];
    if (it.fenced || m->owner[it.p] != j)
        return;
    uint64_t tok = kh_token_make((uint32_t)it.p, it.seq);
    uint8_t res = KHOST_ACK;
    TRACE("  w%d forges for w%d\n", k, j);
    lie_expected = true;
    r_send(r, k, deferred ? KH_F_ACKS : KH_F_RESULTS, &tok,
           deferred ? NULL : &res, 1);
    lie_expected = false;
    /* Taken as stale, it still counted against the forger's own window,
     * so its next honest results would look like too many: it is a liar
     * either way, and is replaced. */
    r_crash(r, k, false);
}

/* pipeline.c on_crashed and on_died, and (for a worker that is not a
 * new-generation one still starting) a restart. */
static void r_crash(rmodel *r, int k, bool lie) {
    model *m = r->m;
    kh_pipeline_rt *pl = &r->pl;
    kh_worker *w = r->kw[k];
    if (!w)
        return;
    if (lie && w->state == KH_W_READY) {
        /* A result for a message it was never given, or an ack for one of
         * its own messages it never deferred: killed either way. */
        worker *lw = &m->w[k];
        bool own = lw->n_inflight && !lw->inflight[0].fenced && pct(m, 50);
        uint64_t tok = own ? kh_token_make((uint32_t)lw->inflight[0].p,
                                           lw->inflight[0].seq)
                           : kh_token_make(999, 1); /* no such partition */
        uint8_t res = KHOST_ACK;
        lie_expected = true;
        if (own)
            r_send(r, k, KH_F_ACKS, &tok, NULL, 1);
        else
            r_send(r, k, KH_F_RESULTS, &tok, &res, 1);
        lie_expected = false;
        CHECK(w->state == KH_W_KILLED, "a lying worker was not killed (%s)",
              own ? "it acked a message it had not deferred"
                  : "it answered for a message it was never given");
    }
    TRACE("  crash w%d%s%s\n", k, lie ? " (lie)" : "",
          w->candidate ? " (new generation)" : "");
    worker *mw = &m->w[k];
    bool named = mw->n_inflight && !mw->inflight[0].fenced;
    item suspect = named ? mw->inflight[0] : (item){0};
    conn_close(&r->wend[k]);
    dispatch_read(w); /* the channel closes */
    conn_close(&w->conn);
    mw->n_inflight = mw->n_deferred = 0;
    for (size_t i = 0; i < pl->n_parts; i++) {
        kh_part *part = pl->parts[i];
        if (!part->assigned || part->owner != w)
            continue;
        part_pause(part, KH_PAUSE_WORKER, true);
        fence(m, (int)i, 0);
        part_rewind_all(part, "worker crashed");
    }
    if (named && m->assigned[suspect.p] && pl->parts[suspect.p]->owner == w) {
        uint64_t before = pl->poison;
        failure_count_crash(pl, pl->parts[suspect.p], suspect.offset, 1,
                            "killed");
        if (pl->poison > before) {
            TRACE("  poison p%d o=%lld\n", suspect.p,
                  (long long)suspect.offset);
            m->failed[suspect.p][suspect.offset] = true;
            resolve_by_policy(m, suspect.p, suspect.offset);
        }
    }
    parts_store(pl->parts, pl->n_parts);
    bool starting = w->candidate;
    w->state = KH_W_STOPPED;
    w->pid = 0;
    r_snap(r);
    swap_worker_died(w, "killed"); /* may abandon the swap and free w */
    resync(r);
    if (r->kw[k] != w)
        return; /* gone with its generation */
    if (starting) {
        slot_close(r, k); /* cannot happen: a starting death abandons */
        return;
    }
    r_connect(r, k);
    for (size_t i = 0; i < pl->n_parts; i++) {
        kh_part *part = pl->parts[i];
        if (!part->assigned || part->owner != w)
            continue;
        dispatch_send_partition_event(part, KH_F_ASSIGN);
        part_pause(part, KH_PAUSE_WORKER, false);
    }
}

/* The rebalance-free hand-over as a test of the router alone (the real
 * swap moves partitions in r_tick): REVOKE, some answers, rewind, another
 * current worker. The old owner keeps its window: its answers are stale. */
static void r_handover(rmodel *r, int p) {
    model *m = r->m;
    kh_part *part = r->pl.parts[p];
    if (!part->assigned || r->pl.swap)
        return;
    int from = slot_of(r, part->owner);
    int to = pick_slot(r, true);
    if (from < 0 || to < 0 || to == from)
        return;
    TRACE("  handover p%d w%d -> w%d\n", p, from, to);
    dispatch_send_partition_event(part, KH_F_REVOKE);
    part_drop_pending(part);
    r_worker_read(r, from);
    if (r->kw[from]->state == KH_W_READY)
        r_results(r, from, (int)rnd(m, 6));
    fence(m, p, 0);
    part_rewind_all(part, "plugin hand-over");
    r->kw[from]->n_parts--;
    r->kw[to]->n_parts++;
    part->owner = r->kw[to];
    m->owner[p] = to;
    dispatch_send_partition_event(part, KH_F_ASSIGN);
}

static void r_revoke(rmodel *r, int p) {
    model *m = r->m;
    kh_part *part = r->pl.parts[p];
    if (!part->assigned)
        return;
    part_drop_pending(part);
    dispatch_send_partition_event(part, KH_F_REVOKE);
    int k = slot_of(r, part->owner);
    if (k >= 0 && r->kw[k]->state == KH_W_READY) {
        r_worker_read(r, k);
        r_results(r, k, (int)rnd(m, 6));
    }
    commit(m, p, "committed on revoke");
    fence(m, p, 0);
    part->owner->n_parts--;
    part->owner = NULL;
    part_release(part);
    m->assigned[p] = false;
    m->owed_min[p] = -1;
    for (int64_t o = 0; o < LOG_MAX; o++)
        m->failed[p][o] = false;
}

/* pipeline.c on_assigned: the least loaded current worker. */
static void r_assign(rmodel *r, int p) {
    model *m = r->m;
    if (m->assigned[p])
        return;
    kh_part *part = r->pl.parts[p];
    part_assign(part);
    m->assigned[p] = true;
    m->stored[p] = -1;
    m->pos[p] = m->committed[p] >= 0 ? m->committed[p] : 0;
    kh_worker *best = &r->pl.workers[0];
    for (int i = 1; i < r->pl.n_workers; i++)
        if (r->pl.workers[i].n_parts < best->n_parts)
            best = &r->pl.workers[i];
    best->n_parts++;
    part->owner = best;
    m->owner[p] = slot_of(r, best);
    part->crash_offset = -1;
    part->crash_count = 0;
    part->isolate_through = -1;
    part->fail_offset = -1;
    if (best->state != KH_W_READY)
        part_pause(part, KH_PAUSE_WORKER, true);
    else
        dispatch_send_partition_event(part, KH_F_ASSIGN);
}

/* ---- the swap (swap.c, real): reload, READY, tick ---- */

static void r_reload(rmodel *r) {
    if (r->pl.swap)
        return;
    const kh_pipeline *to = r->pl.cfg == &r->cfg ? &r->cfg2 : &r->cfg;
    TRACE("  reload\n");
    r_snap(r);
    swap_begin(&r->pl, to, NULL, NULL, false);
    resync(r);
}

/* A new-generation worker finished init. */
static void r_ready_next(rmodel *r) {
    for (int k = 0; k < NS; k++) {
        kh_worker *w = r->kw[k];
        if (!w || w->state != KH_W_STARTING)
            continue;
        TRACE("  w%d ready (new generation)\n", k);
        kh_buf *b = &r->wend[k].out;
        size_t start = tr_frame_begin(b, KH_F_READY);
        tr_put_str(b, "fault");
        tr_put_str(b, "model");
        tr_put_u64(b, 0); /* plugin flags */
        tr_frame_end(b, start);
        while (buf_pending(b))
            CHECK(conn_flush(&r->wend[k]) >= 0, "worker end cannot write");
        r_snap(r);
        dispatch_read(w); /* a canary or cutover moves partitions */
        resync(r);
        return;
    }
}

static void r_tick(rmodel *r) {
    r_snap(r);
    swap_tick(&r->pl, kh_now_ms());
    resync(r);
    dispatch_pump(&r->pl);
}

/* deferred_timeout_ms runs out for every deferred message (the router's
 * dispatch_expire_deferred, with a clock far ahead): per partition whose
 * owner serves, the oldest DEFERRED entry is retried like a RETRY answer.
 * The script expects the same of it first. */
static void r_expire(rmodel *r) {
    model *m = r->m;
    for (int p = 0; p < m->np; p++) {
        kh_part *part = r->pl.parts[p];
        if (!m->assigned[p] || !part->owner || part->owner->state != KH_W_READY)
            continue;
        for (uint64_t seq = part->off.head_seq; seq < part->off.next_seq;
             seq++) {
            kh_entry *e;
            if (part_find(part, seq, &e) != KH_LOOKUP_OK ||
                e->state != KH_ENTRY_DEFERRED)
                continue;
            TRACE("  expire p%d o=%lld (seq %llu, attempt %u)\n", p,
                  (long long)e->offset, (unsigned long long)seq, e->attempt);
            int64_t offset = e->offset;
            uint32_t attempt = e->attempt;
            fence(m, p, seq);
            if (attempt >= MAX_ATTEMPTS) {
                m->failed[p][offset] = true;
                resolve_by_policy(m, p, offset);
            }
            break;
        }
    }
    dispatch_expire_deferred(&r->pl, kh_now_ms() + 1000000000LL);
}

static void r_step(rmodel *r) {
    model *m = r->m;
    m->step++;
    m->n_events++;
    for (int k = 0; k < NS; k++)
        if (r->kw[k] && r->kw[k]->state == KH_W_KILLED)
            r_crash(r, k, false);
    uint32_t x = rnd(m, 1000);
    int k = pick_slot(r, false);
    int p = (int)rnd(m, (uint32_t)m->np);
    if (x < 110)
        ev_produce(m);
    else if (x < 300)
        ev_fetch(m);
    else if (x < 480)
        r_pump(r);
    else if (x < 660) {
        if (k >= 0)
            r_results(r, k, 1 + (int)rnd(m, 8));
    } else if (x < 740) {
        if (k >= 0)
            r_ack_deferred(r, k);
    } else if (x < 760) {
        if (k >= 0)
            r_crash(r, k, false);
    } else if (x < 770) {
        if (k >= 0)
            r_crash(r, k, true);
    } else if (x < 780) {
        if (k >= 0)
            r_forge(r, k);
    } else if (x < 810)
        r_handover(r, p);
    else if (x < 825)
        r_revoke(r, p);
    else if (x < 870)
        r_assign(r, p);
    else if (x < 885)
        r_reload(r);
    else if (x < 930)
        r_ready_next(r);
    else if (x < 980)
        r_tick(r);
    else if (x < 992)
        parts_retry_seeks(r->pl.parts, r->pl.n_parts);
    else
        r_expire(r);
    parts_store(r->pl.parts, r->pl.n_parts);
}

static void r_settle(rmodel *r) {
    model *m = r->m;
    m->quiet = true;
    for (int p = 0; p < m->np; p++)
        r_assign(r, p);
    for (int round = 0; round < 4000; round++) {
        m->step++;
        for (int k = 0; k < NS; k++)
            if (r->kw[k] && r->kw[k]->state == KH_W_KILLED)
                r_crash(r, k, false);
        r_ready_next(r);
        r_tick(r);
        parts_retry_seeks(r->pl.parts, r->pl.n_parts);
        for (int i = 0; i < 12; i++)
            ev_fetch(m);
        r_pump(r);
        for (int k = 0; k < NS; k++) {
            if (!r->kw[k] || r->kw[k]->state != KH_W_READY)
                continue;
            while (m->w[k].n_inflight)
                r_results(r, k, 64);
            while (m->w[k].n_deferred)
                r_ack_deferred(r, k);
        }
        parts_store(r->pl.parts, r->pl.n_parts);
        bool done = !r->pl.swap;
        for (int p = 0; p < m->np; p++)
            done = done && resume_at(m, p) == m->log_end[p];
        if (done)
            break;
        /* A probation ends by the clock (1..3 ms): rounds with nothing
         * left to do can be quicker than that. */
        if (r->pl.swap && round > 100)
            usleep(200);
    }
    for (int p = 0; p < m->np; p++)
        CHECK(resume_at(m, p) == m->log_end[p],
              "I2 (router): partition %d: stored offset=%lld, committed "
              "%lld, end of log %lld (first unresolved %lld)",
              p, (long long)m->stored[p], (long long)m->committed[p],
              (long long)m->log_end[p], (long long)m->first_unresolved[p]);
    CHECK(!r->pl.swap, "a swap never finished");
}

static void r_run(uint64_t seed, uint64_t *events) {
    rmodel *r = calloc(1, sizeof *r);
    model *m = calloc(1, sizeof *m);
    cr_assert(r && m);
    M = m;
    RM = r;
    r->m = m;
    m->seed = seed;
    m->rng = seed * 0x9E3779B97F4A7C15ull + 7;
    m->np = 1 + (int)rnd(m, NP_MAX);
    m->seek_fail_pct = (int)rnd(m, 20);
    m->port = (kh_consumer_port){.ud = m,
                                 .set_paused = port_set_paused,
                                 .seek = port_seek,
                                 .store = port_store};
    r->dir = tu_tmpdir_model();
    char *plugin, *snapdir;
    cr_assert_neq(asprintf(&plugin, "%s/p.so", r->dir), -1);
    cr_assert_neq(asprintf(&snapdir, "%s/snap", r->dir), -1);
    FILE *f = fopen(plugin, "w");
    cr_assert_not_null(f);
    fputs("not really a plugin: the swap only copies it", f);
    fclose(f);
    cr_assert_eq(mkdir(snapdir, 0700), 0);
    r->cfg = (kh_pipeline){.name = "router",
                           .plugin_path = plugin,
                           .workers = NW,
                           .max_attempts = MAX_ATTEMPTS,
                           .poison_after = 2,
                           .on_failure = KH_ON_FAILURE_SKIP,
                           .shutdown_timeout_ms = 1,
                           .deferred_timeout_ms = 1,
                           .max_restarts = 1000,
                           .reload_max_crashes = (int)rnd(m, 3),
                           .reload_probation_ms = 1 + (int)rnd(m, 3),
                           .reload_canary = pct(m, 50)};
    r->cfg2 = r->cfg;
    r->host.hooks.should_stop = never_stop;
    r->host.snapshot_dir = snapdir;
    r->pl.host = &r->host;
    r->pl.cfg = &r->cfg;
    r->pl.snapshot = strdup(plugin);
    r->pl.workers = calloc(NW, sizeof *r->pl.workers);
    cr_assert_not_null(r->pl.workers);
    r->pl.n_workers = NW;
    kh_part *parts[NP_MAX];
    r->pl.parts = parts;
    for (int k = 0; k < NW; k++) {
        r->kw[k] = &r->pl.workers[k];
        r->kw[k]->pl = &r->pl;
        r->kw[k]->cfg = &r->cfg;
        r->kw[k]->index = k;
        r_connect(r, k);
    }
    for (int p = 0; p < m->np; p++) {
        parts[p] = m->parts[p] =
            part_new(&r->pl, "router", &m->port, "t", p, (uint32_t)p);
        r->pl.n_parts++;
        m->committed[p] = m->stored[p] = m->owed_min[p] = -1;
        r_assign(r, p);
    }
    int steps = 100 + (int)rnd(m, 400);
    for (int i = 0; i < steps; i++)
        r_step(r);
    r_settle(r);
    *events += m->n_events;
    swap_free(&r->pl);
    for (int k = 0; k < NS; k++)
        if (r->kw[k])
            slot_close(r, k);
    free(r->pl.workers);
    free(r->pl.next);
    free(r->pl.restarts); /* a cutover's new restart window */
    for (int p = 0; p < m->np; p++) {
        count_rewinds(parts[p]);
        part_free(parts[p]);
    }
    buf_free(&r->strings);
    free(r->hdrs);
    CHECK(live_msgs == 0, "%ld message object(s) leaked", live_msgs);
    unlink(r->pl.snapshot);
    free(r->pl.snapshot);
    tu_rmdir_model(r->dir);
    free(r->dir);
    free(plugin);
    free(snapdir);
    M = NULL;
    RM = NULL;
    free(m);
    free(r);
}

Test(model, router_and_failure_policy_under_random_scripts, .timeout = 240) {
    run_many(" (router)", "KHOST_MODEL_ROUTER_SCRIPTS", 5000, r_run);
}
