/*
 * plugin_loader: opens a plugin .so and validates its descriptor against
 * the host's ABI, so that every rejection is one clear line naming the
 * file, what is wrong and what was expected, instead of a crash. The
 * host's own checks (check-config, run, reload) do it in a spawned
 * `khost probe-plugin` child, so a plugin's constructors never run in
 * the host: a crash or a hang there costs the check, not the daemon.
 */
#ifndef KHOST_PLUGIN_LOADER_H
#define KHOST_PLUGIN_LOADER_H

#include "config.h"

#include <khost/plugin.h>
#include <spawn.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct kh_plugin {
    char *path; /* the file as asked for */
    void *dl;   /* dlopen handle */
    const khost_plugin_descriptor *desc;
} kh_plugin;

/* Open `path` with RTLD_NOW | RTLD_LOCAL and validate its descriptor.
 * Returns 0, or -1 with one line in err ("PATH: reason (expected ...)"). */
int plugin_load(const char *path, kh_plugin *plugin, char *err, size_t errlen);

/* Call the plugin's init. Returns 0, or -1 with the plugin's own message
 * in err ("PATH: init failed: <plugin message>"). */
int plugin_init(kh_plugin *plugin, const khost_init_args *args, void **state,
                char *err, size_t errlen);

void plugin_unload(kh_plugin *plugin);

/* How long a probe child may take to load a plugin before it is killed. */
#define KH_PROBE_TIMEOUT_MS 10000
/* Probe children running at once; more plugins wait for a free slot. */
#define KH_PROBE_PARALLEL 8

/* One plugin to probe, and what the probe found. */
typedef struct kh_probe {
    const char *path; /* in: the plugin file */
    bool ok;          /* out: it loads and passes the ABI checks */
    char name[128];   /* out, when ok: the descriptor's name and version */
    char version[128];
    unsigned abi_major, abi_minor;
    char err[1024]; /* out, when not ok: one line, "PATH: reason" */
} kh_probe;

/* Load each probes[i].path in a `khost probe-plugin` child process (our
 * own executable, spawned as the supervisor spawns workers) and fill in
 * the result. A child still running after timeout_ms is SIGKILLed by its
 * pid and reported as "PATH: did not finish loading within N s"; one
 * killed by a signal as "PATH: plugin crashed while loading (SIGSEGV)".
 * Otherwise err is exactly plugin_load's message. Blocks for at most
 * about timeout_ms per KH_PROBE_PARALLEL plugins; reaps only its own
 * children, by pid. */
void plugin_probe_all(kh_probe *probes, size_t n, int timeout_ms);

/* Probe every pipeline's plugin of cfg, adding one
 * "FILE:LINE: plugin of [pipeline.NAME]: ..." error per plugin that cannot
 * be loaded. Used before starting (run) and before applying a reload. */
void plugin_check_all(const kh_config *cfg, kh_errors *errs);

/* `khost probe-plugin [--result-fd FD --host-pid PID] [--] PATH`, the
 * child plugin_probe_all runs (internal, usable by hand): plugin_load and
 * plugin_unload PATH, then one line, "NAME VERSION (ABI M.m)" and exit 0,
 * or plugin_load's error and exit 2. The line goes to FD when given (and
 * the process dies with PID), else to stdout or stderr. */
int plugin_probe_main(int argc, char **argv);

/* Copy `path` to a fresh file in `dir` and return its malloc'd path.
 * Workers load the copy, so an operator overwriting the original in place
 * (cp new.so plugin.so) never changes the bytes under a running worker
 * (glibc maps a .so by path and inode), and a restarted worker gets the
 * same version as its siblings. Returns NULL with err set on failure. */
char *plugin_snapshot(const char *path, const char *dir, char *err,
                      size_t errlen);

/* Names of the optional callbacks the plugin provides, space separated,
 * e.g. "handle_batch tick"; "none" when there are none. */
void plugin_describe_optional(const kh_plugin *plugin, char *buf, size_t len);

/* The path to exec the host's own binary from (workers, probes): pinned
 * by an fd opened once, see plugin_loader.c. */
const char *kh_self_exe(void);
/* posix_spawnattr_init, set so that the child starts with no signal
 * blocked and every handler at its default (the host blocks its signals
 * for sd-event): for workers and probes alike. */
void kh_spawnattr_init_clean(posix_spawnattr_t *attr);
/* The path to exec a worker from: the khost-worker executable next to
 * this binary (a build tree) or in ../libexec/khost (an install), pinned
 * the same way, or NULL when there is none: then workers are
 * `kh_self_exe() worker ...`. Looked for once. */
const char *kh_worker_exe(void);

#endif
