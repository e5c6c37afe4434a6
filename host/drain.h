/*
 * drain: the API of drain.c, the host's one bounded wait.
 */
#ifndef KHOST_DRAIN_H
#define KHOST_DRAIN_H

#include "pipeline.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Both waits serve pl's workers of both generations, dead-letter reports
 * and hang checks, and end early when the host's should_stop hook says
 * so. */
/* Wait for the answers to what `parts` have in flight (with results_only,
 * not for deferred acks: shutdown collects those from the workers' tick
 * and terminate), and for their dead-letter writes; the owners are asked
 * to skip what they have not started. Stores the offsets after. */
void drain_parts(kh_pipeline_rt *pl, kh_part **parts, size_t n,
                 int64_t deadline_ms, bool results_only);
/* Clear the skip request drain_parts raised on the pipeline's workers. */
void drain_end(kh_pipeline_rt *pl);
/* SHUTDOWN ws[0..n) and wait for their exits, reading every ack and result
 * they send on the way out; at the deadline the rest are killed. */
void drain_stop_workers(kh_pipeline_rt *pl, kh_worker *ws, int n,
                        int64_t deadline_ms);
/* The same for every worker of both generations at once (the shutdown:
 * a canary's new workers run tick and terminate too, and their acks
 * count). */
void drain_stop_pipeline(kh_pipeline_rt *pl, int64_t deadline_ms);

#endif
