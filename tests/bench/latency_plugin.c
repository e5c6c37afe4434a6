/*
 * latency_plugin: the khost side of the latency benchmark (issue 14,
 * tests/bench/latency.sh). Each value starts with its send time in
 * microseconds since the epoch (CLOCK_REALTIME), ASCII decimal, as
 * bench_produce_rate writes it. On every handle call the plugin takes
 * now_us - sent_us and keeps the pair; at terminate it writes one line
 * per message, "SENT_US DELAY_US", to the file named by its config key
 * `out` with ".w<worker_index>" appended (each worker writes its own).
 * bench_latency_ref does exactly the same per message, so the two are
 * compared like for like; the warm-up cut and the percentiles are the
 * script's. A value with no stamp counts as `unstamped` (last line).
 */
#include <khost/plugin.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef KHOST_VERSION
#define KHOST_VERSION "0.0.0"
#endif

#define MAX_SAMPLES (64u << 20) /* 1 GiB of pairs at most */

typedef struct sample {
    int64_t sent_us, delay_us;
} sample;

typedef struct lat_state {
    char path[4096];
    sample *s;
    size_t n, cap;
    uint64_t unstamped, dropped;
} lat_state;

static int64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* The leading decimal digits of the value, or -1 when there are none. */
static int64_t stamp_of(const void *value, size_t len) {
    const unsigned char *p = value;
    int64_t v = 0;
    size_t i = 0;
    if (!p)
        return -1;
    for (; i < len && i < 19 && p[i] >= '0' && p[i] <= '9'; i++)
        v = v * 10 + (p[i] - '0');
    return i ? v : -1;
}

static int lat_init(const khost_init_args *args, void **state) {
    const char *out = args->api->config_get(args->host, "out");
    if (!out || !*out) {
        snprintf(args->errbuf, args->errbuf_size,
                 "latency_plugin needs config key `out` (a file path)");
        return 1;
    }
    lat_state *st = calloc(1, sizeof *st);
    if (!st) {
        snprintf(args->errbuf, args->errbuf_size, "out of memory");
        return 1;
    }
    snprintf(st->path, sizeof st->path, "%s.w%d", out, (int)args->worker_index);
    /* Fail now, not at the end, when the file cannot be written. */
    FILE *f = fopen(st->path, "w");
    if (!f) {
        snprintf(args->errbuf, args->errbuf_size, "cannot write %s", st->path);
        free(st);
        return 1;
    }
    fclose(f);
    *state = st;
    return 0;
}

static khost_result lat_handle(void *state, const khost_message *m) {
    int64_t now = now_us();
    lat_state *st = state;
    int64_t sent = stamp_of(m->value, m->value_len);
    if (sent < 0) {
        st->unstamped++;
        return KHOST_ACK;
    }
    if (st->n == st->cap) {
        size_t cap = st->cap ? st->cap * 2 : 65536;
        sample *s = cap <= MAX_SAMPLES ? realloc(st->s, cap * sizeof *s) : NULL;
        if (!s) {
            st->dropped++;
            return KHOST_ACK;
        }
        st->s = s;
        st->cap = cap;
    }
    st->s[st->n].sent_us = sent;
    st->s[st->n].delay_us = now - sent;
    st->n++;
    return KHOST_ACK;
}

static void lat_terminate(void *state) {
    lat_state *st = state;
    FILE *f = fopen(st->path, "w");
    if (f) {
        for (size_t i = 0; i < st->n; i++)
            fprintf(f, "%lld %lld\n", (long long)st->s[i].sent_us,
                    (long long)st->s[i].delay_us);
        fprintf(f, "# samples=%zu unstamped=%llu dropped=%llu\n", st->n,
                (unsigned long long)st->unstamped,
                (unsigned long long)st->dropped);
        fclose(f);
    }
    free(st->s);
    free(st);
}

static const khost_plugin_descriptor descriptor = {
    .struct_size = sizeof(khost_plugin_descriptor),
    .abi_major = KHOST_ABI_MAJOR,
    .abi_minor = KHOST_ABI_MINOR,
    .name = "latency",
    .version = KHOST_VERSION,
    .description = "records send-to-handle delay of time-stamped values",
    .init = lat_init,
    .handle = lat_handle,
    .terminate = lat_terminate,
};

KHOST_PLUGIN_EXPORT const khost_plugin_descriptor *khost_plugin_entry(void) {
    return &descriptor;
}
