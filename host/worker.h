/*
 * worker: the process that runs a plugin.
 *
 * The host spawns `khost worker ...` (exec, never a bare fork, because
 * librdkafka's threads do not survive fork) with the channel socket on
 * fd 3 and the status page memfd on fd 4. The worker loads the plugin
 * once, calls init, then handles MESSAGES frames until SHUTDOWN, when it
 * calls terminate. It dies with the host (PR_SET_PDEATHSIG). With
 * `--output-fd 5` its stdout and stderr (the plugin's) go into that pipe
 * and its own log lines keep the stderr it was started with.
 */
#ifndef KHOST_WORKER_H
#define KHOST_WORKER_H

#define KH_WORKER_CHANNEL_FD 3
#define KH_WORKER_STATUS_FD 4
/* The write end of the plugin output pipe (`--output-fd 5`): the worker
 * makes it its stdout and stderr, and the host logs what comes through,
 * tagged and rate-limited (plugin_output.c). */
#define KH_WORKER_OUTPUT_FD 5

/* `khost worker --host-pid PID`: internal, started by the supervisor. */
int worker_main(int argc, char **argv);

#endif
