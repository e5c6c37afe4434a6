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

#endif
