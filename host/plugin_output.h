/*
 * plugin_output: what a plugin writes to stdout or stderr, into the log.
 *
 * A worker's stdout and stderr are one pipe to the host (worker.c,
 * `--output-fd`). Its reader (supervisor.c in khost run, plugin_test.c in
 * plugin-test) hands what arrives to plugin_output_read, which logs each
 * line at INFO as "TAG plugin output: LINE", TAG naming the pipeline,
 * worker and pid. Lines over KH_PLUGIN_OUTPUT_LINE_MAX bytes are split;
 * control bytes are escaped by the logger. At most
 * KH_PLUGIN_OUTPUT_LINES_PER_S lines a second per worker are logged; the
 * rest are counted and reported in one WARN per second (and at the end),
 * so a plugin printing in a loop cannot flood the host's log or stall
 * it: the pipe is always read, whatever is dropped.
 */
#ifndef KHOST_PLUGIN_OUTPUT_H
#define KHOST_PLUGIN_OUTPUT_H

#include <stddef.h>
#include <stdint.h>

#define KH_PLUGIN_OUTPUT_LINE_MAX 1024
#define KH_PLUGIN_OUTPUT_LINES_PER_S 100

typedef struct kh_plugin_output {
    char line[KH_PLUGIN_OUTPUT_LINE_MAX];
    size_t len;             /* bytes of an unfinished line */
    int64_t window_ms;      /* start of the current second */
    unsigned logged;        /* lines logged in it */
    uint64_t dropped;       /* lines dropped since the last report */
    uint64_t dropped_total; /* and over the worker's life */
    uint64_t lines_total;   /* lines seen */
} kh_plugin_output;

/* Read what fd (nonblocking) holds and log its whole lines, tagged with
 * tag. Returns 1 while the pipe is open, 0 at its end (the writer is
 * gone), -1 on an error other than EAGAIN. */
int plugin_output_read(kh_plugin_output *o, int fd, const char *tag);
/* Called now and then: report lines dropped in a second that is over,
 * even when no line came after them. */
void plugin_output_tick(kh_plugin_output *o, const char *tag);
/* The pipe's end: log an unfinished last line and what was dropped, then
 * reset o for the next process. */
void plugin_output_finish(kh_plugin_output *o, const char *tag);

#endif
