/*
 * runtime: the state the host's modules share while running.
 *
 *   host.c        event loop, signals, mock cluster, shutdown order
 *   kafka.c       one consumer per pipeline: poll, rebalance, commit
 *   dispatch.c    pending queues -> worker frames; results -> offsets
 *   supervisor.c  worker processes: spawn, crash, backoff, hang, limits
 *   offsets.c     the per-partition dispatch/ack ledger
 *
 * Everything runs on the host's single event-loop thread; librdkafka's
 * own threads never call into this code except through rd_kafka_*_poll,
 * which the loop calls.
 */
#ifndef KHOST_RUNTIME_H
#define KHOST_RUNTIME_H

#include "config.h"
#include "mock_cluster.h"
#include "offsets.h"
#include "partition.h"
#include "transport.h"

#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <systemd/sd-event.h>

typedef struct kh_host kh_host;

typedef enum kh_worker_state {
    KH_W_STOPPED = 0,
    KH_W_STARTING, /* spawned, INIT sent, waiting for READY */
    KH_W_READY,
    KH_W_BACKOFF,  /* dead, restart timer armed */
    KH_W_STOPPING, /* SHUTDOWN sent */
} kh_worker_state;

struct kh_worker {
    kh_pipeline_rt *pl;
    const kh_pipeline *cfg;  /* this worker's generation's config */
    const char *plugin_path; /* its plugin snapshot */
    bool candidate;          /* started by a reload, not cut over yet */
    int index;
    kh_worker_state state;
    pid_t pid;
    kh_conn conn;
    sd_event_source *io_src;
    sd_event_source *child_src;
    sd_event_source *restart_timer;
    sd_event_source *eof_timer; /* channel closed: is it dying, or hiding? */
    kh_worker_status *status;   /* shared page, read-only for the host */
    size_t inflight;            /* messages sent without a result */
    int n_parts;                /* partitions owned */
    unsigned rr;                /* round-robin start among owned parts */
    int consecutive_crashes;
    int64_t spawned_ms;
    char kill_reason[160]; /* why the host killed it, for the crash log */
    char plugin_name[128];
    char init_error[512]; /* INIT_FAILED text */
    char plugin_version[64];
};

/* What the consumer (kafka.c) tells its pipeline; pipeline.c handles it.
 * Calls go down, these events go up. */
typedef struct kh_consumer_events {
    /* Newly assigned and fetching (part_assign done): owners wanted. */
    void (*assigned)(kh_pipeline_rt *pl, kh_part **parts, size_t n);
    /* About to be revoked: drain and commit now; the consumer releases
     * them (part_release) when this returns. */
    void (*revoking)(kh_pipeline_rt *pl, kh_part **parts, size_t n);
    /* A poll queued what Kafka delivered: time to dispatch. */
    void (*polled)(kh_pipeline_rt *pl);
} kh_consumer_events;

/* A worker's crash, as the supervisor saw it. */
typedef struct kh_crash {
    const char *how;        /* "killed by SIGSEGV", "exited with status 3" */
    kh_part *suspect;       /* partition of the message in hand, or NULL */
    int64_t suspect_offset; /* its offset */
    uint32_t suspect_count; /* messages in the call in hand (>1: a batch) */
} kh_crash;

/* What the supervisor tells its pipeline; pipeline.c handles it. */
typedef struct kh_supervisor_events {
    /* Read and handle what w sent (its channel is readable or closed, or
     * it is exiting). Returns -1 when the channel is gone. */
    int (*read)(kh_worker *w);
    /* After a worker's I/O: time to dispatch. */
    void (*pump)(kh_pipeline_rt *pl);
    /* w answered READY (its state is READY now). */
    void (*ready)(kh_worker *w);
    /* w crashed or was killed while serving: its partitions need a
     * rewind. Comes before `died`. */
    void (*crashed)(kh_worker *w, const kh_crash *c);
    /* w died unplanned (a crash, or a new-generation worker that did not
     * start). The handler may free a new-generation w. */
    void (*died)(kh_worker *w, const char *how);
    /* The restart limit was exceeded, or a worker cannot be restarted. */
    void (*exhausted)(kh_pipeline_rt *pl);
} kh_supervisor_events;

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
    kh_worker *workers;         /* the current generation */
    int n_workers;
    /* The next generation: a plugin swap's new workers while they start
     * and while a canary runs; NULL when none. Both are the supervisor's;
     * the swap (reload.c) starts, promotes or drops the next one. */
    kh_worker *next;
    int n_next;
    char *snapshot; /* the plugin copy current workers load */
    kh_part **parts;
    size_t n_parts, cap_parts;
    kh_part *last_part; /* lookup cache: messages come in runs */
    bool failed;        /* restart intensity exceeded */
    bool stopping;
    int64_t *restarts; /* ring of restart times for the intensity check */
    size_t n_restarts;
    /* counters (the metrics endpoint will expose them) */
    uint64_t handled, acked_count, crashes, restarts_total, rebalances;
    uint64_t retries, failures, lies;
    uint64_t poison, dlq_written, dlq_errors, skipped, reloads;
    rd_kafka_t *dlq; /* dead-letter producer, with on_failure = dlq */
    struct kh_dlq_job *dlq_retry; /* writes waiting for their retry */
    struct kh_dlq_job *dlq_live;  /* every write not yet finished */
    char plugin_name[128];
    char plugin_version[64];
    uint64_t reported_handled;
};

/* Every worker of both generations: pl_worker(pl, i), i < pl_n_all_workers. */
static inline int pl_n_all_workers(const kh_pipeline_rt *pl) {
    return pl->n_workers + pl->n_next;
}
static inline kh_worker *pl_worker(kh_pipeline_rt *pl, int i) {
    return i < pl->n_workers ? &pl->workers[i] : &pl->next[i - pl->n_workers];
}

/* What the modules below the host may ask of it, passed down as hooks so
 * that nothing below calls host.c (calls go down, events go up). */
typedef struct kh_host_hooks {
    /* From bounded waits: true when the wait should end now (a first
     * SIGTERM/SIGINT arrived; the shutdown follows in the loop). */
    bool (*should_stop)(kh_host *host);
    /* Leave the event loop with this exit status (the highest asked). */
    void (*request_exit)(kh_host *host, int code);
} kh_host_hooks;

struct kh_host {
    kh_host_hooks hooks;
    sd_event *ev;
    kh_config *cfg;      /* the current configuration (owned) */
    kh_config **retired; /* earlier ones still referenced (reload.c) */
    size_t n_retired;
    int admin_fd; /* control socket, -1 when none */
    char *admin_path;
    sd_event_source *admin_src;
    kh_pipeline_rt **pipelines;
    size_t n_pipelines;
    kh_mock mock;
    bool has_mock;
    char *bootstraps;
    char *snapshot_dir; /* private copies of plugins (plugin_snapshot) */
    int signal_fd;
    bool shutting_down;
    bool stop_requested;   /* a first SIGTERM/SIGINT was received */
    bool reload_requested; /* SIGHUP seen, not acted on yet */
    int64_t watch_due_ms;  /* a watched file changed: reload at this time */
    sd_event_source **watch_srcs; /* inotify watches of folders */
    size_t n_watch;
    int exit_code;
    sd_event_source *signal_src, *hang_timer, *report_timer;
};

/* ---- kafka.c ---- */
int kafka_pipeline_start(kh_pipeline_rt *pl, char *err, size_t errlen);
void kafka_poll(kh_pipeline_rt *pl);
/* Commit the given parts' watermarks (all when NULL) and wait at most
 * timeout_ms for the broker's answer. */
void kafka_commit_sync(kh_pipeline_rt *pl, kh_part **parts, size_t n,
                       int timeout_ms);
/* Leave the group (bounded by timeout_ms) and free the consumer. */
void kafka_pipeline_close(kh_pipeline_rt *pl, int timeout_ms);
/* Consumers whose destroy was given up on and still runs in the
 * background; the host must then leave with _exit. */
int kafka_abandoned(void);
kh_part *pipeline_part(kh_pipeline_rt *pl, const char *topic, int32_t p,
                       bool create);

/* ---- dispatch.c ---- */
void dispatch_pump(kh_pipeline_rt *pl);
/* Read and handle what a worker sent. Returns -1 when the channel is
 * closed or the worker misbehaved (it has then been killed). */
int dispatch_read(kh_worker *w);
/* Wait up to deadline_ms for in-flight results of `parts`, pumping the
 * worker channels directly (used inside rebalance and shutdown). With
 * results_only, deferred messages do not keep it waiting: shutdown
 * collects their acks from the workers' tick and terminate. */
void dispatch_drain(kh_pipeline_rt *pl, kh_part **parts, size_t n,
                    int64_t deadline_ms, bool results_only);
/* Clear the drain flags dispatch_drain raised on the pipeline's workers. */
void dispatch_end_drain(kh_pipeline_rt *pl);
/* ASSIGN, REVOKE or RESUME to the partition's owner, if it is up. */
void dispatch_send_partition_event(kh_part *part, kh_frame_type type);
kh_worker *dispatch_owner(kh_part *part);

/* ---- failure.c ---- */
int failure_pipeline_start(kh_pipeline_rt *pl, char *err, size_t errlen);
void failure_pipeline_stop(kh_pipeline_rt *pl, int timeout_ms);
/* Remember why the message at `offset` failed (for log and headers). */
void failure_note(kh_part *part, int64_t offset, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The message at the head of part's queue failed: apply on_failure.
 * Returns true when the message was taken (dlq, skip), false when the
 * partition is now held at it (pause) and it stays queued. */
bool failure_apply(kh_part *part);
/* Serve dead-letter delivery reports and retry failed writes. */
void failure_poll(kh_pipeline_rt *pl);
/* A worker crashed with `count` messages in its call, the first at
 * `offset` of `part` (after the rewind): count it towards poison_after,
 * and fail the message when it crashed its worker that often in a row. */
void failure_count_crash(kh_pipeline_rt *pl, kh_part *part, int64_t offset,
                         uint32_t count, const char *how);

/* ---- supervisor.c ---- */
int supervisor_start(kh_pipeline_rt *pl);
void supervisor_worker_ready(kh_worker *w, const char *name,
                             const char *version);
void supervisor_kill(kh_worker *w, const char *reason);
void supervisor_check_hangs(kh_pipeline_rt *pl, int64_t now_ms);
/* Pick the worker that owns a newly assigned partition. */
kh_worker *supervisor_assign_owner(kh_pipeline_rt *pl);
/* SHUTDOWN every worker and wait (bounded) for them to exit. */
void supervisor_stop_all(kh_pipeline_rt *pl, int64_t deadline_ms);
void supervisor_stop_workers(kh_pipeline_rt *pl, kh_worker *ws, int n,
                             int64_t deadline_ms);
/* Generations: start the next one (new-generation workers, on cfg's
 * plugin snapshot); stop and free it; or make it the current one after
 * stopping the old (each stop bounded by deadline_ms). */
int supervisor_start_next(kh_pipeline_rt *pl, const kh_pipeline *cfg,
                          const char *snapshot);
void supervisor_drop_next(kh_pipeline_rt *pl, int64_t deadline_ms);
void supervisor_promote_next(kh_pipeline_rt *pl, int64_t deadline_ms);
/* Free both generations (their processes are gone). */
void supervisor_free(kh_pipeline_rt *pl);
int supervisor_spawn(kh_worker *w);

/* ---- pipeline.c ---- */
kh_pipeline_rt *pipeline_start(kh_host *host, const kh_config *root,
                               const kh_pipeline *cfg);
void pipeline_stop(kh_pipeline_rt *pl); /* drain, commit, leave the group */
void pipeline_free(kh_pipeline_rt *pl);

/* ---- reload.c ---- */
/* Re-read the config file and apply what changed. Returns 0 when the new
 * file was accepted (plugin swaps go on in the background), -1 when it
 * was rejected and the old configuration keeps running; msg gets one
 * line either way. The caller re-arms admin_watch (plugin paths may have
 * changed). */
int reload_apply(kh_host *host, char *msg, size_t len);
/* From the host's tick: drive every swap, free configurations no longer
 * referenced. */
void reload_tick(kh_host *host, int64_t now_ms);

/* ---- swap.c ---- */
/* Begin a swap of pl's workers to cfg's plugin (a reload), or back to a
 * previous one (a rollback: its snapshot given). */
void swap_begin(kh_pipeline_rt *pl, const kh_pipeline *cfg, char *snapshot,
                const struct stat *st, bool is_rollback);
void swap_worker_ready(kh_worker *w);
/* A worker of pl died: a new-generation one's death abandons the swap
 * (and frees w); a crash during probation may roll the swap back. */
void swap_worker_died(kh_worker *w, const char *how);
/* Time-driven steps; true when configurations may have been released. */
bool swap_tick(kh_pipeline_rt *pl, int64_t now_ms);
void swap_abort(kh_pipeline_rt *pl, const char *why);
/* End a probation early (a newer reload replaces it). */
void swap_end_probation(kh_pipeline_rt *pl);
void swap_free(kh_pipeline_rt *pl);
/* Does pl's swap point into the pipelines [lo, hi) of a configuration? */
bool swap_references(const kh_pipeline_rt *pl, const kh_pipeline *lo,
                     const kh_pipeline *hi);

/* ---- admin.c ---- */
/* The control socket (mode 0600) that `khost reload -c FILE` talks to. */
int admin_start(kh_host *host, char *err, size_t errlen);
void admin_stop(kh_host *host);
/* [host] watch = true: (re)arm inotify on the folders of the config file
 * and the plugins; a change schedules a reload after a quiet period. */
void admin_watch(kh_host *host);

#endif
