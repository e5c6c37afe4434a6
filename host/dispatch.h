/*
 * dispatch: the API of dispatch.c, the router between partitions and
 * workers. See host/README.md.
 */
#ifndef KHOST_DISPATCH_H
#define KHOST_DISPATCH_H

#include "partition.h"
#include "transport.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

void dispatch_pump(kh_pipeline_rt *pl);
/* Read and handle what a worker sent. Returns -1 when the channel is
 * closed or the worker misbehaved (it has then been killed). */
int dispatch_read(kh_worker *w);
/* ASSIGN, REVOKE or RESUME to the partition's owner, if it is up. */
void dispatch_send_partition_event(kh_part *part, kh_frame_type type);
/* From the host's tick: deferred messages not acked within the
 * pipeline's deferred_timeout_ms are retried (one per partition a tick). */
void dispatch_expire_deferred(kh_pipeline_rt *pl, int64_t now_ms);
kh_worker *dispatch_owner(kh_part *part);

#endif
