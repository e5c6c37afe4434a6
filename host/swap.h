/*
 * swap: the API of swap.c, a pipeline's plugin swap.
 */
#ifndef KHOST_SWAP_H
#define KHOST_SWAP_H

#include "pipeline.h"

#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>

/* Begin a swap of pl's workers to cfg's plugin (a reload), or back to a
 * previous one (a rollback: its snapshot given). */
void swap_begin(kh_pipeline_rt *pl, const kh_pipeline *cfg, char *snapshot,
                const struct stat *st, bool is_rollback);
void swap_worker_ready(kh_worker *w);
/* A worker of pl died: a new-generation one's death abandons the swap
 * (and frees w); a crash during probation may roll the swap back. */
void swap_worker_died(kh_worker *w, const char *how);
/* Time-driven steps; true when configurations may have been released. */
bool swap_tick(kh_pipeline_rt *pl, int64_t now_ms);
void swap_abort(kh_pipeline_rt *pl, const char *why);
/* End a probation early (a newer reload replaces it). */
void swap_end_probation(kh_pipeline_rt *pl);
void swap_free(kh_pipeline_rt *pl);
/* A stopping pipeline (its workers of both generations stopped already):
 * drop the swap and the new generation without moving anything back. */
void swap_discard(kh_pipeline_rt *pl);
/* Does pl's swap point into the pipelines [lo, hi) of a configuration? */
bool swap_references(const kh_pipeline_rt *pl, const kh_pipeline *lo,
                     const kh_pipeline *hi);

#endif
