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
#include "transport.h"

#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <systemd/sd-event.h>

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

typedef struct kh_host kh_host;
typedef struct kh_pipeline_rt kh_pipeline_rt;

typedef enum kh_worker_state {
    KH_W_STOPPED = 0,
    KH_W_STARTING, /* spawned, INIT sent, waiting for READY */
    KH_W_READY,
    KH_W_BACKOFF,  /* dead, restart timer armed */
    KH_W_STOPPING, /* SHUTDOWN sent */
} kh_worker_state;

typedef struct kh_worker {
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
} kh_worker;

/* Why fetching of a partition is paused; paused while any bit is set. */
enum {
    KH_PAUSE_FLOW = 1 << 0,     /* host-side queue too long */
    KH_PAUSE_WORKER = 1 << 1,   /* owner not ready (starting, restarting) */
    KH_PAUSE_FAILED = 1 << 2,   /* pipeline failed, or a message failed */
    KH_PAUSE_UNACKED = 1 << 3,  /* too many deferred acks outstanding */
    KH_PAUSE_SHUTDOWN = 1 << 4, /* draining for shutdown */
    KH_PAUSE_DLQ = 1 << 5,      /* a dead-letter write failed; retrying */
    KH_PAUSE_SEEK = 1 << 6,     /* a seek failed; retried from the tick */
};

typedef struct kh_part {
    kh_pipeline_rt *pl;
    char *topic;
    int32_t partition;
    uint32_t slot; /* index in pl->parts; encoded in tokens */
    bool assigned;
    /* The worker that owns it, NULL when unassigned. A pointer, not an
     * index: during a plugin reload two generations of workers coexist. */
    kh_worker *owner;
    kh_offsets off;
    rd_kafka_message_t **pend; /* ring of polled, undispatched messages */
    size_t pend_head, pend_len, pend_cap;
    size_t pend_bytes;   /* payload + key bytes queued */
    unsigned pause;      /* KH_PAUSE_* bits as last told to librdkafka */
    int64_t retry_at_ms; /* no dispatch before this (retry backoff) */
    bool held;           /* stopped at a failed message */
    int64_t stored;      /* last offset handed to offsets_store, -1 none */
    int64_t committed;   /* last committed offset seen, -1 none */
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
    /* Failure policy (failure.c): */
    int64_t crash_offset;    /* offset of the last crash's suspect, -1 none */
    int crash_count;         /* consecutive crashes at crash_offset */
    int64_t isolate_through; /* after a crash in a batch call: dispatch
                                one message per frame up to here, so the
                                next crash names its message; -1 none */
    int64_t fail_offset;     /* the offset fail_reason is about */
    char fail_reason[512];
    int dlq_pending; /* dead-letter writes not yet confirmed */
} kh_part;

struct kh_pipeline_rt {
    kh_host *host;
    const kh_config *root; /* the whole file this pipeline came from */
    const kh_pipeline *cfg;
    struct stat plugin_stat;  /* of cfg->plugin_path when snapshotted */
    struct kh_reload *reload; /* reload.c state, NULL when none */
    rd_kafka_t *rk;
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
void kafka_pause(kh_part *part, unsigned reason, bool on);
/* Seek so that Kafka delivers from `offset` again. Returns 0, or -1 when
 * the seek failed (logged; part->refetch_from keeps it owed, I4). */
int kafka_seek(kh_part *part, int64_t offset);
/* I4: retry the owed seeks of pl's partitions (from the host's tick). */
void kafka_retry_seeks(kh_pipeline_rt *pl);
void kafka_store(kh_part *part);
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
void dispatch_enqueue(kh_part *part, rd_kafka_message_t *m);
void dispatch_drop_pending(kh_part *part);
/* Rewind a partition to its watermark, dropping what is queued. */
void dispatch_rewind_part(kh_part *part, const char *why);
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
void dispatch_store_dirty(kh_pipeline_rt *pl);
/* The offset that may be stored or committed for `part` (acked + 1), or
 * -1 when there is none or it would break I1 (then logged as an ERROR and,
 * in checked builds, abort()). The only source of stored offsets. */
int64_t dispatch_commit_offset(kh_part *part);

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
