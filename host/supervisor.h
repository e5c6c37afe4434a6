/*
 * supervisor: the API of supervisor.c and the worker it owns (kh_worker),
 * with the events it emits (kh_supervisor_events). See host/README.md.
 */
#ifndef KHOST_SUPERVISOR_H
#define KHOST_SUPERVISOR_H

#include "config.h"
#include "partition.h"
#include "plugin_output.h"
#include "transport.h"

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <systemd/sd-event.h>

/* A worker's states. Only supervisor.c changes them, through its table of
 * state x event (supervisor.c `transitions`); an event a state does not
 * expect is a bug, logged, and an abort in checked builds. */
typedef enum kh_worker_state {
    KH_W_STOPPED = 0, /* no process, no restart planned */
    KH_W_STARTING,    /* spawned, INIT sent, waiting for READY */
    KH_W_READY,       /* serving */
    KH_W_BACKOFF,     /* no process, restart timer armed */
    KH_W_STOPPING,    /* SHUTDOWN sent: tick and terminate, then exit */
    KH_W_KILLED,      /* SIGKILLed by the host, or its channel is gone:
                         not served any more, waiting to be reaped */
    KH_W_N_STATES
} kh_worker_state;

struct kh_worker {
    kh_pipeline_rt *pl;
    const kh_pipeline *cfg;  /* this worker's generation's config */
    const char *plugin_path; /* its plugin snapshot */
    bool candidate;          /* started by a reload, not cut over yet */
    /* A spare (pl->spares): past init, owns nothing; when a worker dies
     * its process moves into that worker (supervisor.c, take_spare). */
    bool spare;
    int index;      /* its slot: workers 0..n-1, spares n.. (log lines) */
    int proc_index; /* the worker_index its process was given at INIT */
    /* What its process was started with beyond the plugin: limits, user,
     * group, log level. A spare serves a worker only when they match what
     * that worker would be started with now (a reload may change them). */
    char spawned_as[192];
    kh_worker_state state;
    pid_t pid;
    pid_t last_pid; /* the last process's, kept after it is reaped */
    kh_conn conn;
    sd_event_source *io_src;
    int out_fd; /* the plugin's stdout and stderr, or -1 */
    sd_event_source *out_src;
    kh_plugin_output output; /* their lines, tagged and rate-limited */
    char out_tag[96];        /* "pipeline=P worker=N pid=X" */
    sd_event_source *child_src;
    sd_event_source *restart_timer;
    sd_event_source *eof_timer; /* channel closed: is it dying, or hiding? */
    kh_worker_status *status;   /* shared page, read-only for the host */
    size_t inflight;            /* messages sent without a result */
    /* The message ring (transport.h), written by dispatch: NULL while no
     * process runs. head is where the next frame goes; tail is the last
     * checked value the worker stored. */
    uint8_t *ring;
    uint64_t ring_head, ring_tail;
    int n_parts;             /* partitions owned */
    unsigned rr;             /* round-robin start among owned parts */
    int consecutive_crashes; /* crashes after READY, for the backoff */
    int failed_starts;       /* deaths before READY since the last READY */
    bool served;             /* this process answered READY */
    /* An operator asked for a restart (supervisor_restart): SHUTDOWN was
     * sent at stop_sent_ms; an orderly exit is followed by a spawn. */
    bool restart_requested;
    int64_t stop_sent_ms;
    int64_t spawned_ms;
    uint64_t answered;     /* messages this process answered (dispatch.c) */
    char kill_reason[160]; /* why the host killed it, for the crash log */
    char plugin_name[128];
    char init_error[512]; /* INIT_FAILED text */
    char plugin_version[64];
    uint64_t plugin_flags; /* its plugin's descriptor.flags (READY) */
};

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
    /* w exited in order after an operator's restart request, having sent
     * every result (read already): what is still unresolved (deferred,
     * never acked) needs a rewind that counts no attempt. A new process
     * is spawned right after. */
    void (*restarted)(kh_worker *w);
} kh_supervisor_events;

int supervisor_start(kh_pipeline_rt *pl);
/* Start the pipeline's spare workers (cfg->spare_workers, on its current
 * plugin snapshot), replacing any earlier ones, whose processes must be
 * gone (drain_stop_workers on pl->spares). */
void supervisor_start_spares(kh_pipeline_rt *pl);
/* A reload changed limits, user or log level in place: stop in order the
 * READY spares started with the old ones; each starts again with the new
 * (on its orderly exit). Returns how many; none during a plugin swap. */
int supervisor_refresh_spares(kh_pipeline_rt *pl);
void supervisor_worker_ready(kh_worker *w, const char *name,
                             const char *version, uint64_t plugin_flags);
void supervisor_kill(kh_worker *w, const char *reason);
/* An operator's restart of a serving worker: SHUTDOWN now (it handles
 * what it was sent, runs terminate, exits), then a new process at once,
 * without a backoff and not counted against max_restarts. One that does
 * not exit within the pipeline's shutdown_timeout_ms is killed (then it
 * is a crash). Returns -1 with why[] set when w is not READY. */
int supervisor_restart(kh_worker *w, char *why, size_t len);
/* w's channel failed while a bounded wait read it: stop serving it (it is
 * dying, or is killed when it lingers). */
void supervisor_lost(kh_worker *w);
void supervisor_check_hangs(kh_pipeline_rt *pl, int64_t now_ms);
/* Pick the worker that owns a newly assigned partition. */
kh_worker *supervisor_assign_owner(kh_pipeline_rt *pl);
/* Generations: start the next one (new-generation workers, on cfg's
 * plugin snapshot); free it (its processes are gone: drain_stop_workers);
 * or make it the current one, freeing the old. */
int supervisor_start_next(kh_pipeline_rt *pl, const kh_pipeline *cfg,
                          const char *snapshot);
void supervisor_drop_next(kh_pipeline_rt *pl);
void supervisor_promote_next(kh_pipeline_rt *pl);
/* An ordered stop, step by step (drain.c does the waiting): SHUTDOWN to a
 * worker that is up or starting (no restart after); reap it if it exited,
 * reading what it sent last (true when it has no process any more); or
 * SIGKILL and reap it, logging why. */
void supervisor_shutdown(kh_worker *w);
bool supervisor_reap(kh_worker *w);
void supervisor_kill_and_reap(kh_worker *w, const char *why);
/* Free both generations (their processes are gone). */
void supervisor_free(kh_pipeline_rt *pl);
int supervisor_spawn(kh_worker *w);

#endif
