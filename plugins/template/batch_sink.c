/*
 * batch_sink: the template plugin (plugins/template/). It shows the parts
 * of the khost plugin ABI most handlers need, as a sink that writes
 * message values to a file in batches:
 *  - init reads its config ([pipeline.NAME.config]) and says why it
 *    cannot start in errbuf;
 *  - handle returns KHOST_DEFERRED and keeps the ack token: the message
 *    is committed only once it is written and flushed;
 *  - tick (and a full batch) flushes and acks what was written; on_revoke
 *    flushes the revoked partition's messages, its last chance to ack
 *    them; terminate flushes the rest;
 *  - a message the sink refuses (an empty value) gets a reason through
 *    khost_set_error and KHOST_FAIL, for the pipeline's on_failure.
 *
 * Config:
 *   output     = FILE  required: values are appended here, one per line
 *   batch_size = N     acks after this many messages at the latest
 *                      (default 100, 1..100000); the tick acks sooner
 */
#define _GNU_SOURCE
#include <khost/plugin.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef BATCH_SINK_VERSION
#define BATCH_SINK_VERSION "1.0.0"
#endif

typedef struct pending {
    uint64_t token;
    char *topic; /* whose partition: on_revoke flushes only its own */
    int32_t partition;
} pending;

typedef struct sink {
    const khost_host_api *api;
    khost_host *host;
    FILE *out;
    pending *batch;
    size_t n, cap;
} sink;

/* Write out what was buffered, then ack the messages of one partition
 * (topic NULL: of all). Only acked tokens leave the batch. */
static void flush(sink *s, const char *topic, int32_t partition) {
    if (fflush(s->out) != 0) {
        khost_logf(s->api, s->host, KHOST_LOG_ERROR,
                   "batch_sink: flush failed: %s; acks held back",
                   strerror(errno));
        return; /* not acked: redelivered after a restart, not lost */
    }
    size_t kept = 0;
    for (size_t i = 0; i < s->n; i++) {
        pending *p = &s->batch[i];
        if (topic && (p->partition != partition || strcmp(p->topic, topic))) {
            s->batch[kept++] = *p;
            continue;
        }
        s->api->ack(s->host, p->token);
        free(p->topic);
    }
    s->n = kept;
}

static int init(const khost_init_args *args, void **state) {
    const char *path = args->api->config_get(args->host, "output");
    if (!path || !*path) {
        snprintf(args->errbuf, args->errbuf_size,
                 "batch_sink: output = FILE is required");
        return -1;
    }
    const char *bs = args->api->config_get(args->host, "batch_size");
    char *end = NULL;
    long cap = bs ? strtol(bs, &end, 10) : 100;
    if (bs && (*end || cap < 1 || cap > 100000)) {
        snprintf(args->errbuf, args->errbuf_size,
                 "batch_sink: batch_size = %s: expected 1..100000", bs);
        return -1;
    }
    sink *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(args->errbuf, args->errbuf_size, "batch_sink: out of memory");
        return -1;
    }
    s->api = args->api;
    s->host = args->host;
    s->cap = (size_t)cap;
    s->batch = calloc(s->cap, sizeof *s->batch);
    s->out = fopen(path, "a");
    if (!s->batch || !s->out) {
        snprintf(args->errbuf, args->errbuf_size, "batch_sink: %s: %s", path,
                 strerror(errno));
        if (s->out)
            fclose(s->out);
        free(s->batch);
        free(s);
        return -1;
    }
    khost_logf(s->api, s->host, KHOST_LOG_INFO,
               "batch_sink: worker %d of pipeline %s writes to %s",
               (int)args->worker_index, args->pipeline, path);
    *state = s;
    return 0;
}

static khost_result handle(void *state, const khost_message *m) {
    sink *s = state;
    if (m->value_len == 0) {
        khost_set_error(s->api, s->host, m->ack_token,
                        "batch_sink: empty value");
        return KHOST_FAIL;
    }
    /* A full batch is flushed first: a token is acked only after handle
     * returned KHOST_DEFERRED for it, never inside its own call. */
    if (s->n == s->cap)
        flush(s, NULL, 0);
    if (fwrite(m->value, 1, m->value_len, s->out) != m->value_len ||
        fputc('\n', s->out) == EOF) {
        khost_set_error(s->api, s->host, m->ack_token,
                        "batch_sink: write failed");
        return KHOST_RETRY;
    }
    char *topic = strdup(m->topic);
    if (!topic || s->n == s->cap) {
        free(topic);
        return KHOST_RETRY; /* nowhere to keep the token */
    }
    s->batch[s->n++] = (pending){m->ack_token, topic, m->partition};
    return KHOST_DEFERRED;
}

static void tick(void *state, int64_t now_ms) {
    (void)now_ms;
    flush(state, NULL, 0);
}

static void on_revoke(void *state, const char *topic, int32_t partition) {
    flush(state, topic, partition);
}

static void terminate(void *state) {
    sink *s = state;
    flush(s, NULL, 0);
    for (size_t i = 0; i < s->n; i++)
        free(s->batch[i].topic);
    fclose(s->out);
    free(s->batch);
    free(s);
}

static const khost_plugin_descriptor descriptor = {
    .struct_size = sizeof(khost_plugin_descriptor),
    .abi_major = KHOST_ABI_MAJOR,
    .abi_minor = KHOST_ABI_MINOR,
    .name = "batch_sink",
    .version = BATCH_SINK_VERSION,
    .description = "the template: writes values to a file, acks in batches",
    .init = init,
    .handle = handle,
    .terminate = terminate,
    .on_revoke = on_revoke,
    .tick = tick,
};

KHOST_PLUGIN_EXPORT const khost_plugin_descriptor *khost_plugin_entry(void) {
    return &descriptor;
}
