/*
 * metrics: the Prometheus text exposition (format 0.0.4) of a running
 * host, written into a memory buffer. Pure reading: it walks the host's
 * pipelines, partitions and workers and writes what it sees; it changes
 * nothing and sends nothing. Called by http.c for GET /metrics, on the
 * host's loop thread. Label sets stay bounded: per pipeline, per
 * partition only for partition metrics, per worker index.
 */
#ifndef KHOST_METRICS_H
#define KHOST_METRICS_H

#include <stddef.h>
#include <stdio.h>

typedef struct kh_host kh_host;

/* The exposition of `host`, NUL-terminated, in a malloc'd buffer the
 * caller frees (*len gets its length); NULL when out of memory.
 * start_time_s is the host's start, in seconds since the epoch. */
char *metrics_render(kh_host *host, double start_time_s, size_t *len);

/* Write `v` as a label value, escaped per the format: backslash, double
 * quote and newline become \\, \" and \n. The quotes are not written. */
void metrics_label_value(FILE *out, const char *v);

#endif
