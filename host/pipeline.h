/*
 * pipeline: one pipeline's running state (kh_pipeline_rt), shared by the
 * modules that serve it, and the API of pipeline.c, the hub that starts,
 * stops and frees it and handles its consumer's and supervisor's events.
 * Everything runs on the host's single event-loop thread; librdkafka's
 * own threads never call into this code except through rd_kafka_*poll*,
 * which the loop calls.
 */
#ifndef KHOST_PIPELINE_H
#define KHOST_PIPELINE_H

#include "config.h"
#include "kafka.h"
#include "partition.h"
#include "supervisor.h"

#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <systemd/sd-event.h>

typedef struct kh_host kh_host;

/* Where a step an operator asked for stands: a pipeline's start (its
 * workers' first READY, pipeline.c) or a plugin swap (its new workers'
 * READY, swap.c). A reload waits until none of its steps is pending. */
typedef enum kh_outcome {
    KH_OUTCOME_NONE = 0,
    KH_OUTCOME_PENDING,
    KH_OUTCOME_OK,
    KH_OUTCOME_FAILED,
} kh_outcome;

enum { KH_STEP_SWAP = 1, KH_STEP_START = 2 };

/* The results a handler gives, and why workers die, as counted. */
enum { KH_RES_ACK, KH_RES_DEFERRED, KH_RES_RETRY, KH_RES_FAIL, KH_RES_N };
enum {
    KH_CRASH_SIGNAL, /* died of a signal the host did not send */
    KH_CRASH_EXIT,   /* exited on its own */
    KH_CRASH_HANG,   /* killed by the host: a handler or init overran */
    KH_CRASH_LIE,    /* killed by the host: it broke the protocol */
    KH_CRASH_N
};

/* Recent crashes (and reloads, host.h) are kept this many deep. */
#define KH_RECENT 16

/* A worker's death the pipeline saw: a crash while serving, or a start
 * that failed. */
typedef struct kh_crash_rec {
    double time_s; /* seconds since the epoch */
    int worker;
    pid_t pid;
    char how[200];
    char topic[128]; /* the message in hand, "" when none */
    int32_t partition;
    int64_t offset; /* -1 when none */
} kh_crash_rec;

struct kh_pipeline_rt {
    kh_host *host;
    const kh_consumer_events *consumer_events;
    const kh_supervisor_events *supervisor_events;
    const kh_config *root; /* the whole file this pipeline came from */
    const kh_pipeline *cfg;
    struct stat plugin_stat; /* of cfg->plugin_path when snapshotted */
    struct kh_swap *swap;    /* swap.c state, NULL when none */
    rd_kafka_t *rk;
    kh_consumer_port consumer; /* rk as partition.c sees it (kafka.c) */
    rd_kafka_queue_t *queue;
    int wake_fd[2]; /* librdkafka writes here when its queue fills */
    sd_event_source *wake_src;
    sd_event_source *defer_src; /* keeps polling while the budget ran out */
    /* While the host's prefetch budget is full (kafka.c): polls again
     * after any other event, and when messages last left a queue. */
    sd_event_source *post_src;
    /* Its partitions' part of the budget (partition.c keeps it). */
    kh_budget_group budget_group;
    uint64_t budget_popped; /* budget_group.popped when it last moved */
    int64_t budget_progress_ms, budget_poll_ms; /* budget_poll: last poll */
    bool budget_bypass; /* stuck over the budget: polling on until within */
    kh_worker *workers; /* the current generation */
    int n_workers;
    /* The next generation: a plugin swap's new workers while they start
     * and while a canary runs; NULL when none. Both are the supervisor's;
     * the swap (reload.c) starts, promotes or drops the next one. */
    kh_worker *next;
    int n_next;
    /* Spare workers (spare_workers): processes of the current generation
     * past init, owning nothing, each ready to take over a worker that
     * dies (supervisor.c). Started once every worker was READY. */
    kh_worker *spares;
    int n_spares;
    char *snapshot; /* the plugin copy current workers load */
    kh_part **parts;
    size_t n_parts, cap_parts;
    kh_part *last_part; /* lookup cache: messages come in runs */
    /* pl->parts by topic, then by partition id (kafka.c pipeline_part):
     * a run of messages of another partition finds its own at once, not
     * by a scan of every partition. Parts live as long as the pipeline,
     * so the index never dangles. */
    struct kh_topic_index *tix;
    size_t n_tix;
    bool failed; /* restart intensity exceeded */
    bool stopping;
    /* The consumer is leaving the group (kafka_pipeline_close): its
     * partitions are never assigned on this handle again. */
    bool closing;
    int64_t close_deadline_ms; /* while closing */
    int rebalance_protocol;    /* 0 not known yet, 1 eager, 2 cooperative */
    int64_t *restarts; /* ring of restart times for the intensity check */
    size_t n_restarts;
    /* counters (the metrics endpoint will expose them) */
    uint64_t handled, acked_count, crashes, restarts_total, rebalances;
    uint64_t spare_takeovers; /* restarts served by a spare's process */
    uint64_t retries, failures, lies;
    uint64_t poison, dlq_written, dlq_errors, skipped, reloads;
    /* Results as the host received them (dispatch.c), deferred tokens
     * acked later, crashes by cause (supervisor.c), and two histograms:
     * end-to-end latency at the ack (dispatch.c) and the handler
     * durations of workers that are gone (folded in by the supervisor
     * when it releases one; live workers' are on their status pages). */
    uint64_t results[KH_RES_N], deferred_acks, deferred_timeouts;
    uint64_t crash_causes[KH_CRASH_N];
    kh_hist e2e_hist, handle_hist_gone;
    rd_kafka_t *dlq; /* dead-letter producer, with on_failure = dlq */
    struct kh_dlq_job *dlq_retry; /* writes waiting for their retry */
    struct kh_dlq_job *dlq_live;  /* every write not yet finished */
    char plugin_name[128];
    char plugin_version[64];
    uint64_t reported_handled;
    /* Written by pipeline.c only: every worker READY since the start, or
     * why not (the first failed start, or FAILED). */
    kh_outcome start_outcome;
    char start_why[600];
    /* Written by swap.c only: the last plugin swap a reload began. */
    kh_outcome swap_outcome;
    char swap_why[600];
    /* Written by reload.c only: the reload that last touched it, and
     * how (KH_STEP_*). */
    uint64_t reload_gen;
    int reload_steps;
    /* Written by pipeline.c only: the last KH_RECENT worker deaths,
     * newest at (n_recent_crashes - 1) % KH_RECENT. */
    kh_crash_rec recent_crashes[KH_RECENT];
    uint64_t n_recent_crashes;
    /* Written by kafka.c only: librdkafka's last statistics (NULL before
     * the first), the re-commit timer, and commits the broker confirmed
     * by kind (khost_offset_commits_total). */
    struct kh_kstats *kstats;
    sd_event_source *recommit_src;
    int64_t recommit_ms; /* auto.commit.interval.ms x 10 */
    uint64_t commits_auto, commits_sync, commits_recommit;
};

/* Every worker of both generations, then the spares: pl_worker(pl, i),
 * i < pl_n_all_workers. */
static inline int pl_n_all_workers(const kh_pipeline_rt *pl) {
    return pl->n_workers + pl->n_next + pl->n_spares;
}
static inline kh_worker *pl_worker(kh_pipeline_rt *pl, int i) {
    if (i < pl->n_workers)
        return &pl->workers[i];
    i -= pl->n_workers;
    return i < pl->n_next ? &pl->next[i] : &pl->spares[i - pl->n_next];
}

/* A pipeline's state for status and metrics: running, starting,
 * swapping, failed, paused (every assigned partition paused by an
 * operator or held) or stopping. */
static inline const char *pipeline_state_name(const kh_pipeline_rt *pl) {
    if (pl->failed)
        return "failed";
    if (pl->stopping)
        return "stopping";
    if (pl->swap || pl->n_next)
        return "swapping";
    for (int w = 0; w < pl->n_workers; w++)
        if (!pl->workers[w].served)
            return "starting";
    size_t assigned = 0, stopped = 0;
    for (size_t j = 0; j < pl->n_parts; j++) {
        const kh_part *part = pl->parts[j];
        if (!part || !part->assigned)
            continue;
        assigned++;
        stopped += part->operator_paused || part->held;
    }
    return assigned && stopped == assigned ? "paused" : "running";
}

kh_pipeline_rt *pipeline_start(kh_host *host, const kh_config *root,
                               const kh_pipeline *cfg);
void pipeline_stop(kh_pipeline_rt *pl); /* drain, commit, leave the group */
void pipeline_free(kh_pipeline_rt *pl);
/* Connect pl's consumer and supervisor events to the pipeline's handlers
 * (done by pipeline_start; the fuzz harness builds its pl by hand). */
void pipeline_wire(kh_pipeline_rt *pl);

#endif
