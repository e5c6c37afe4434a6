/*
 * ops: what an operator may ask of a running host, the same whether it
 * comes over the control socket (admin.c) or the HTTP admin API (http.c):
 * a reload, a pipeline's restart, a partition's pause and resume, a
 * worker's restart. Each begins the step and says how it went with one
 * of kh_ops_rc and one line; a step that takes time (a reload, a worker
 * restart) is then followed with ops_check until it settles.
 */
#ifndef KHOST_OPS_H
#define KHOST_OPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct kh_host kh_host;

typedef enum kh_ops_rc {
    KH_OPS_OK = 0,         /* done, or begun (then follow with ops_check) */
    KH_OPS_FAILED = -1,    /* it ran and failed (msg says why) */
    KH_OPS_NOT_FOUND = -2, /* no such pipeline, partition or worker */
    KH_OPS_CONFLICT = -3,  /* not now: busy, FAILED, shutting down */
    KH_OPS_REJECTED = -4,  /* the new configuration is invalid */
} kh_ops_rc;

/* What a begun step waits for, for ops_check. */
typedef struct kh_ops_wait {
    enum { KH_OPS_WAIT_RELOAD, KH_OPS_WAIT_WORKER } kind;
    char pipeline[128]; /* KH_OPS_WAIT_WORKER: whose worker */
    int worker;
    pid_t old_pid;
} kh_ops_wait;

/* `who` names the asker for the log ("on the control socket", "over
 * HTTP from 127.0.0.1"). Each fills msg with one line. */
kh_ops_rc ops_reload(kh_host *host, const char *who, kh_ops_wait *wait,
                     char *msg, size_t len);
kh_ops_rc ops_restart_pipeline(kh_host *host, const char *pipeline,
                               const char *who, kh_ops_wait *wait, char *msg,
                               size_t len);
/* pause: stop fetching and dispatching partition TOPIC/P of the pipeline
 * (kept across its reassignments to this host); resume: go on, releasing
 * an on_failure = pause hold. Immediate: KH_OPS_OK is the outcome. */
kh_ops_rc ops_pause(kh_host *host, const char *pipeline, const char *topic,
                    int32_t partition, bool pause, const char *who, char *msg,
                    size_t len);
kh_ops_rc ops_restart_worker(kh_host *host, const char *pipeline, int worker,
                             const char *who, kh_ops_wait *wait, char *msg,
                             size_t len);
/* Where a begun step stands: 1 still under way, 0 done, -1 failed (msg
 * says which, in one line). */
int ops_check(kh_host *host, const kh_ops_wait *wait, char *msg, size_t len);

#endif
