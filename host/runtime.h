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

struct kh_pipeline_rt {
    kh_host *host;
    const kh_config *root; /* the whole file this pipeline came from */
    const kh_pipeline *cfg;
    struct stat plugin_stat;  /* of cfg->plugin_path when snapshotted */
    struct kh_reload *reload; /* reload.c state, NULL when none */
    rd_kafka_t *rk;
    kh_consumer_port consumer; /* rk as partition.c sees it (kafka.c) */
    rd_kafka_queue_t *queue;
    int wake_fd[2]; /* librdkafka writes here when its queue fills */
    sd_event_source *wake_src;
    sd_event_source *defer_src; /* keeps polling while the budget ran out */
    kh_worker *workers;
    int n_workers;
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
void reload_worker_ready(kh_worker *w);
/* A worker of pl died: a candidate's death aborts its reload; a crash
 * during probation may roll the reload back. */
void reload_worker_died(kh_worker *w, const char *how);
void reload_tick(kh_pipeline_rt *pl, int64_t now_ms);
void reload_abort(kh_pipeline_rt *pl, const char *why);
void reload_free(kh_pipeline_rt *pl);
/* Workers of a swap in progress (the new generation while a canary runs
 * or candidates start), which pump, hang checks and drains serve too. */
kh_worker *reload_workers(kh_pipeline_rt *pl, int *n);

/* ---- admin.c ---- */
/* The control socket (mode 0600) that `khost reload -c FILE` talks to. */
int admin_start(kh_host *host, char *err, size_t errlen);
void admin_stop(kh_host *host);
/* [host] watch = true: (re)arm inotify on the folders of the config file
 * and the plugins; a change schedules a reload after a quiet period. */
void admin_watch(kh_host *host);

#endif
