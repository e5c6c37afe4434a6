/*
 * failure: the API of failure.c, the failure policy, poison counting and
 * the dead-letter producer. See host/README.md.
 */
#ifndef KHOST_FAILURE_H
#define KHOST_FAILURE_H

#include "partition.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

int failure_pipeline_start(kh_pipeline_rt *pl, char *err, size_t errlen);
void failure_pipeline_stop(kh_pipeline_rt *pl, int timeout_ms);
/* Remember why the message at `offset` failed (for log and headers). */
void failure_note(kh_part *part, int64_t offset, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The message at the head of part's queue failed: apply on_failure.
 * Returns true when the message was taken (dlq, skip), false when the
 * partition is now held at it (pause) and it stays queued. */
bool failure_apply(kh_part *part);
/* Serve dead-letter delivery reports and retry failed writes. */
void failure_poll(kh_pipeline_rt *pl);
/* A worker crashed with `count` messages in its call, the first at
 * `offset` of `part` (after the rewind): count it towards poison_after,
 * and fail the message when it crashed its worker that often in a row. */
void failure_count_crash(kh_pipeline_rt *pl, kh_part *part, int64_t offset,
                         uint32_t count, const char *how);

#endif
