/*
 * file_sink: the reference sink plugin. Appends every message as one JSON
 * line (format in plugins/common/jsonl.h) to the file named by `path`.
 *
 * Config:
 *   path  = FILE                   required; opened O_APPEND|O_CREAT
 *   fsync = always | batch | never default batch
 *
 * Several workers of one pipeline may append to the same file: each line,
 * or each batch of whole lines, goes out in a single write() on an
 * O_APPEND descriptor, which the kernel appends atomically for regular
 * files. Only a short write (disk full, signal) continues with a second
 * write, which another worker could then precede; that is logged.
 *
 * Durability per fsync mode, i.e. when an ACK may let the host commit:
 *   always  fsync after each message, before answering ACK;
 *   batch   handle_batch fsyncs once before answering the whole batch;
 *           a message arriving through plain handle is acked after the
 *           write and fsynced by the next tick (or terminate);
 *   never   leave it to the kernel.
 * tick and terminate fsync whatever was written since the last fsync
 * (except with `never`); terminate then closes the file.
 * A file that cannot be fsynced at all (a pipe, a tty, /dev/stdout) is
 * reported once and then written without fsync rather than failing every
 * message forever.
 */
#define _GNU_SOURCE
#include "jsonl.h"

#include <errno.h>
#include <fcntl.h>
#include <khost/plugin.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef KHOST_VERSION
#define KHOST_VERSION "0.0.0"
#endif

enum fsync_mode { FSYNC_ALWAYS, FSYNC_BATCH, FSYNC_NEVER };

typedef struct sink {
    const khost_host_api *api;
    khost_host *host;
    char *path;
    int fd;
    enum fsync_mode mode;
    int dirty;       /* written since the last successful fsync */
    int fsync_unsup; /* the file does not support fsync (pipe, tty, ...) */
    jsonl_buf buf;   /* reused for every line or batch */
    size_t *ends;    /* handle_batch: end offset of each message's line */
    size_t ends_cap;
} sink;

static void set_err(const khost_init_args *args, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void set_err(const khost_init_args *args, const char *fmt, ...) {
    if (!args->errbuf || !args->errbuf_size)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args->errbuf, args->errbuf_size, fmt, ap);
    va_end(ap);
}

/* Returns 0 when the data is durable (or durability is not asked for). */
static int sink_fsync(sink *s) {
    if (s->mode == FSYNC_NEVER || s->fsync_unsup) {
        s->dirty = 0;
        return 0;
    }
    if (fsync(s->fd) == 0) {
        s->dirty = 0;
        return 0;
    }
    int err = errno;
    if (err == EINVAL || err == EROFS) {
        /* fsync(2): the descriptor is a special file that does not
         * support synchronization; retrying would never succeed. */
        s->fsync_unsup = 1;
        s->dirty = 0;
        khost_logf(s->api, s->host, KHOST_LOG_WARN,
                   "file_sink: %s does not support fsync (%s); writing "
                   "without fsync",
                   s->path, strerror(err));
        return 0;
    }
    khost_logf(s->api, s->host, KHOST_LOG_ERROR,
               "file_sink: fsync %s failed: %s", s->path, strerror(err));
    return -err;
}

/* Writes s->buf; returns bytes that reached the file, logs failures. */
static size_t sink_write_buf(sink *s, int *failed) {
    size_t written = 0;
    int rc = jsonl_write_all(s->fd, s->buf.data, s->buf.len, &written);
    if (written)
        s->dirty = 1;
    *failed = rc != 0;
    if (rc) {
        khost_logf(s->api, s->host, KHOST_LOG_ERROR,
                   "file_sink: write to %s failed after %zu of %zu bytes: %s",
                   s->path, written, s->buf.len, strerror(-rc));
        if (written) {
            /* The file now ends in a partial line; the next line will
             * follow it on the same line. Say so, as readers will see it. */
            khost_logf(s->api, s->host, KHOST_LOG_ERROR,
                       "file_sink: %s now contains a torn line", s->path);
        }
    }
    return written;
}

static int sink_init(const khost_init_args *args, void **state) {
    const khost_host_api *api = args->api;
    const char *path = api->config_get(args->host, "path");
    const char *mode_str = api->config_get(args->host, "fsync");
    enum fsync_mode mode = FSYNC_BATCH;

    if (!path || !*path) {
        set_err(args, "file_sink: config key 'path' is required (the file "
                      "to append JSON lines to)");
        return -1;
    }
    if (mode_str) {
        if (!strcmp(mode_str, "always"))
            mode = FSYNC_ALWAYS;
        else if (!strcmp(mode_str, "batch"))
            mode = FSYNC_BATCH;
        else if (!strcmp(mode_str, "never"))
            mode = FSYNC_NEVER;
        else {
            set_err(args,
                    "file_sink: invalid fsync '%s' (allowed: always, batch, "
                    "never)",
                    mode_str);
            return -1;
        }
    }
    if (api->config_entry) {
        const char *key, *value;
        for (size_t i = 0; api->config_entry(args->host, i, &key, &value) == 0;
             i++)
            if (strcmp(key, "path") && strcmp(key, "fsync"))
                khost_logf(api, args->host, KHOST_LOG_WARN,
                           "file_sink: ignoring unknown config key '%s'", key);
    }

    sink *s = calloc(1, sizeof *s);
    if (!s || !(s->path = strdup(path))) {
        free(s);
        set_err(args, "file_sink: out of memory");
        return -1;
    }
    s->fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (s->fd < 0) {
        set_err(args, "file_sink: cannot open '%s' for append: %s", path,
                strerror(errno));
        free(s->path);
        free(s);
        return -1;
    }
    s->api = api;
    s->host = args->host;
    s->mode = mode;
    jsonl_buf_init(&s->buf);
    *state = s;
    return 0;
}

static khost_result sink_handle(void *state, const khost_message *m) {
    sink *s = state;
    s->buf.len = 0;
    int rc = jsonl_append_message(&s->buf, m);
    if (rc) {
        khost_logf(s->api, s->host, KHOST_LOG_ERROR,
                   "file_sink: cannot format message: %s", strerror(-rc));
        return KHOST_RETRY;
    }
    int failed;
    sink_write_buf(s, &failed);
    if (failed)
        return KHOST_RETRY;
    if (s->mode == FSYNC_ALWAYS && sink_fsync(s))
        return KHOST_RETRY;
    return KHOST_ACK;
}

static void sink_handle_batch(void *state, const khost_message *const *msgs,
                              size_t count, khost_result *results) {
    sink *s = state;
    if (count > s->ends_cap) {
        size_t *ends = realloc(s->ends, count * sizeof *ends);
        if (!ends) {
            khost_logf(s->api, s->host, KHOST_LOG_ERROR,
                       "file_sink: out of memory for a batch of %zu", count);
            for (size_t i = 0; i < count; i++)
                results[i] = KHOST_RETRY;
            return;
        }
        s->ends = ends;
        s->ends_cap = count;
    }

    /* A message that cannot be formatted is retried alone; the others
     * still go out, in order. */
    s->buf.len = 0;
    for (size_t i = 0; i < count; i++) {
        int rc = jsonl_append_message(&s->buf, msgs[i]);
        if (rc) {
            khost_logf(s->api, s->host, KHOST_LOG_ERROR,
                       "file_sink: cannot format message: %s", strerror(-rc));
            results[i] = KHOST_RETRY;
            s->ends[i] = 0;
        } else {
            results[i] = KHOST_ACK;
            s->ends[i] = s->buf.len;
        }
    }
    if (s->buf.len == 0)
        return;

    int failed;
    size_t written = sink_write_buf(s, &failed);
    /* On a failed write, the lines that did reach the file completely are
     * acked (after the fsync below); the rest are retried. */
    if (failed)
        for (size_t i = 0; i < count; i++)
            if (results[i] == KHOST_ACK && s->ends[i] > written)
                results[i] = KHOST_RETRY;
    if (written && s->mode != FSYNC_NEVER && sink_fsync(s))
        for (size_t i = 0; i < count; i++)
            results[i] = KHOST_RETRY;
}

static void sink_tick(void *state, int64_t now_ms) {
    sink *s = state;
    if (s->dirty)
        sink_fsync(s);
}

static void sink_terminate(void *state) {
    sink *s = state;
    if (!s)
        return;
    if (s->dirty)
        sink_fsync(s);
    if (close(s->fd) != 0)
        khost_logf(s->api, s->host, KHOST_LOG_ERROR,
                   "file_sink: close %s failed: %s", s->path, strerror(errno));
    jsonl_buf_free(&s->buf);
    free(s->ends);
    free(s->path);
    free(s);
}

static const khost_plugin_descriptor descriptor = {
    .struct_size = sizeof(khost_plugin_descriptor),
    .abi_major = KHOST_ABI_MAJOR,
    .abi_minor = KHOST_ABI_MINOR,
    .name = "file_sink",
    .version = KHOST_VERSION,
    .description = "appends each message as one JSON line to a file",
    .init = sink_init,
    .handle = sink_handle,
    .terminate = sink_terminate,
    .handle_batch = sink_handle_batch,
    .tick = sink_tick,
};

KHOST_PLUGIN_EXPORT const khost_plugin_descriptor *khost_plugin_entry(void) {
    return &descriptor;
}
