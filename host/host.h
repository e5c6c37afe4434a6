/*
 * host: the daemon's event loop (sd-event). Owns the pipelines, signals
 * and, for `brokers = mock`, the embedded mock cluster.
 */
#ifndef KHOST_HOST_H
#define KHOST_HOST_H

#include "config.h"
#include "mock_cluster.h"
#include "pipeline.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <systemd/sd-event.h>

/* What the modules below the host may ask of it, passed down as hooks so
 * that nothing below calls host.c (calls go down, events go up). */
typedef struct kh_host_hooks {
    /* From bounded waits: true when the wait should end now (a first
     * SIGTERM/SIGINT arrived; the shutdown follows in the loop). */
    bool (*should_stop)(kh_host *host);
    /* Leave the event loop with this exit status (the highest asked). */
    void (*request_exit)(kh_host *host, int code);
    /* From bounded waits, often: the host is alive (systemd's watchdog
     * ping, rate-limited by notify.c). May be NULL. */
    void (*keepalive)(kh_host *host);
} kh_host_hooks;

/* A settled reload (or restart, or rejected reload). */
typedef struct kh_reload_rec {
    double time_s; /* when it settled, seconds since the epoch */
    bool ok;
    char outcome[512];
} kh_reload_rec;

/* The latest reload (or `khost restart`) and what became of it. Owned by
 * reload.c. */
typedef struct kh_reload_state {
    uint64_t gen;       /* reloads begun; pipelines carry the last one's */
    bool pending;       /* a step of `gen` is still under way */
    int64_t started_ms; /* kh_now_ms when `gen` began */
    int rc;             /* when settled: 0 applied, -1 failed */
    char applied[512];  /* what gen did, as its first line said */
    char failed[1024];  /* pipelines that could not even be started */
    char outcome[2048]; /* when settled: the whole answer, one line */
    /* Settled reloads by outcome, and the last KH_RECENT of them (all
     * three kinds), newest at (n_recent - 1) % KH_RECENT. */
    uint64_t n_applied, n_failed, n_rejected;
    kh_reload_rec recent[KH_RECENT];
    uint64_t n_recent;
} kh_reload_state;

struct kh_host {
    kh_host_hooks hooks;
    kh_reload_state reload;
    uint64_t notified_reload_gen; /* the last reload READY=1 was sent for */
    struct kh_admin_wait *admin_waits; /* clients waiting for the reload
                                          outcome (admin.c) */
    sd_event *ev;
    kh_config *cfg;      /* the current configuration (owned) */
    kh_config **retired; /* earlier ones still referenced (reload.c) */
    size_t n_retired;
    int admin_fd; /* control socket, -1 when none */
    char *admin_path;
    dev_t admin_dev; /* the socket file bound at admin_path (admin.c) */
    ino_t admin_ino;
    sd_event_source *admin_src;
    struct kh_http *http; /* the HTTP server (http.c), NULL when off */
    double start_time_s;  /* when host_run began, seconds since the epoch */
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

/* Run until SIGTERM/SIGINT. Takes ownership of cfg (a reload replaces
 * it). Returns the process exit code. */
int host_run(kh_config *cfg);

#endif
