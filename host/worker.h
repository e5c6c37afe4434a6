/*
 * worker: the process that runs a plugin.
 *
 * The host spawns `khost worker ...` (exec, never a bare fork, because
 * librdkafka's threads do not survive fork) with the channel socket on
 * fd 3 and the status page memfd on fd 4. The worker loads the plugin
 * once, calls init, then handles MESSAGES frames until SHUTDOWN, when it
 * calls terminate. It dies with the host (PR_SET_PDEATHSIG).
 */
#ifndef KHOST_WORKER_H
#define KHOST_WORKER_H

#define KH_WORKER_CHANNEL_FD 3
#define KH_WORKER_STATUS_FD 4

/* `khost worker --host-pid PID`: internal, started by the supervisor. */
int worker_main(int argc, char **argv);

#endif
