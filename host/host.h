/*
 * host: the daemon's event loop (sd-event). Owns the pipelines, signals
 * and, for `brokers = mock`, the embedded mock cluster.
 */
#ifndef KHOST_HOST_H
#define KHOST_HOST_H

#include "config.h"

/* Run until SIGTERM/SIGINT. Takes ownership of cfg (a reload replaces
 * it). Returns the process exit code. */
int host_run(kh_config *cfg);

#endif
