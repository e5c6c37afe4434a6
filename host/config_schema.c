/*
 * config_schema: the config's data model. The key tables that drive
 * parsing, defaults, ranges and the docs; allocation (fatal when out of
 * memory: the input is capped); and freeing a kh_config.
 */
#define _GNU_SOURCE
#include "config_internal.h"

#include <ctype.h>
#include <errno.h>
#include <grp.h>
#include <ini.h>
#include <librdkafka/rdkafka.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---------------------------------------------------------------------- */
/* Allocation: config input is capped, so running out of memory here is
 * not something bad input can cause; treat it as fatal. */

__attribute__((noreturn)) void out_of_memory(void) {
    fputs("khost: out of memory while loading the config\n", stderr);
    abort();
}

void *xrealloc(void *ptr, size_t size) {
    void *p = realloc(ptr, size ? size : 1);
    if (!p)
        out_of_memory();
    return p;
}

void *xmalloc(size_t size) {
    void *p = malloc(size ? size : 1);
    if (!p)
        out_of_memory();
    return p;
}

char *xstrndup(const char *s, size_t n) {
    char *d = xmalloc(n + 1);
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

char *xstrdup(const char *s) {
    return xstrndup(s, strlen(s));
}

/* Append-only string builder, used for ${VAR} expansion and lists. */

void sb_add(sbuf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2;
        b->s = xrealloc(b->s, b->cap);
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

char *sb_take(sbuf *b) {
    if (!b->s)
        return xstrdup("");
    char *s = b->s;
    b->s = NULL;
    b->len = b->cap = 0;
    return s;
}
void errors_add(kh_errors *errs, const char *fmt, ...) {
    if (!errs)
        return;
    char *msg = NULL;
    va_list ap;
    va_start(ap, fmt);
    int n = vasprintf(&msg, fmt, ap);
    va_end(ap);
    if (n < 0)
        return; /* nothing sensible to report an allocation failure with */
    char **items = realloc(errs->items, (errs->count + 1) * sizeof *items);
    if (!items) {
        free(msg);
        return;
    }
    errs->items = items;
    errs->items[errs->count++] = msg;
}

void errors_free(kh_errors *errs) {
    if (!errs)
        return;
    for (size_t i = 0; i < errs->count; i++)
        free(errs->items[i]);
    free(errs->items);
    errs->items = NULL;
    errs->count = 0;
}

const char *config_kv_get(const kh_kv *kv, size_t n, const char *key) {
    if (!kv || !key)
        return NULL;
    for (size_t i = 0; i < n; i++)
        if (kv[i].key && strcmp(kv[i].key, key) == 0)
            return kv[i].value;
    return NULL;
}

static void kv_free(kh_kv *kv, size_t n) {
    for (size_t i = 0; i < n; i++) {
        free(kv[i].key);
        free(kv[i].value);
    }
    free(kv);
}

static void free_pipeline(kh_pipeline *pl) {
    free(pl->name);
    for (size_t i = 0; i < pl->n_topics; i++)
        free(pl->topics[i]);
    free(pl->topics);
    free(pl->group);
    free(pl->dlq_topic);
    free(pl->plugin);
    free(pl->plugin_path);
    free(pl->plugin_tried);
    free(pl->user);
    free(pl->user_group);
    kv_free(pl->config, pl->n_config);
    kv_free(pl->kafka, pl->n_kafka);
}

void config_free(kh_config *cfg) {
    if (!cfg)
        return;
    free(cfg->path);
    free(cfg->dir);
    free(cfg->brokers);
    free(cfg->control_socket);
    free(cfg->http_listen);
    free(cfg->http_addr);
    free(cfg->http_token);
    kv_free(cfg->kafka, cfg->n_kafka);
    for (size_t i = 0; i < cfg->n_pipelines; i++)
        free_pipeline(&cfg->pipelines[i]);
    free(cfg->pipelines);
    errors_free(&cfg->warnings);
    memset(cfg, 0, sizeof *cfg);
}

const struct pipeline_key_info pipeline_keys[PK_COUNT] = {
    [PK_TOPICS] = {"topics", true, NO_FIELD, 0, 0, 0},
    [PK_GROUP] = {"group", true, NO_FIELD, 0, 0, 0},
    [PK_PLUGIN] = {"plugin", true, NO_FIELD, 0, 0, 0},
    [PK_WORKERS] = {"workers", false, offsetof(kh_pipeline, workers), 1, 1,
                    256},
    [PK_MAX_RESTARTS] = {"max_restarts", false,
                         offsetof(kh_pipeline, max_restarts), 30, 0, 100000},
    [PK_MAX_SECONDS] = {"max_seconds", false,
                        offsetof(kh_pipeline, max_seconds), 5, 1, 86400},
    [PK_HANDLER_TIMEOUT_MS] = {"handler_timeout_ms", false,
                               offsetof(kh_pipeline, handler_timeout_ms), 30000,
                               0, 86400000},
    [PK_INIT_TIMEOUT_MS] = {"init_timeout_ms", false,
                            offsetof(kh_pipeline, init_timeout_ms), 30000, 0,
                            86400000},
    [PK_SHUTDOWN_TIMEOUT_MS] = {"shutdown_timeout_ms", false,
                                offsetof(kh_pipeline, shutdown_timeout_ms),
                                10000, 0, 3600000},
    [PK_RELOAD_STRATEGY] = {"reload_strategy", false, NO_FIELD, 0, 0, 0},
    [PK_ON_EXHAUSTED] = {"on_exhausted", false, NO_FIELD, 0, 0, 0},
    [PK_TICK_INTERVAL_MS] = {"tick_interval_ms", false,
                             offsetof(kh_pipeline, tick_interval_ms), 1000, 0,
                             3600000},
    [PK_DEFERRED_TIMEOUT_MS] = {"deferred_timeout_ms", false,
                                offsetof(kh_pipeline, deferred_timeout_ms),
                                300000, 0, 86400000},
    [PK_MAX_ATTEMPTS] = {"max_attempts", false,
                         offsetof(kh_pipeline, max_attempts), 5, 1, 1000000},
    [PK_RETRY_BACKOFF_MS] = {"retry_backoff_ms", false,
                             offsetof(kh_pipeline, retry_backoff_ms), 100, 0,
                             3600000},
    [PK_RETRY_BACKOFF_MAX_MS] = {"retry_backoff_max_ms", false,
                                 offsetof(kh_pipeline, retry_backoff_max_ms),
                                 10000, 0, 86400000},
    [PK_POISON_AFTER] = {"poison_after", false,
                         offsetof(kh_pipeline, poison_after), 3, 1, 1000},
    [PK_ON_FAILURE] = {"on_failure", false, NO_FIELD, 0, 0, 0},
    [PK_DLQ_TOPIC] = {"dlq_topic", false, NO_FIELD, 0, 0, 0},
    [PK_RELOAD_MAX_CRASHES] = {"reload_max_crashes", false,
                               offsetof(kh_pipeline, reload_max_crashes), 2, 0,
                               1000},
    [PK_RELOAD_PROBATION_MS] = {"reload_probation_ms", false,
                                offsetof(kh_pipeline, reload_probation_ms),
                                10000, 0, 3600000},
    /* Worker limits, 0 = none set by khost. 1 TiB, the kernel's default
     * nr_open and a year are far past anything meant on purpose. */
    [PK_RLIMIT_AS_MB] = {"rlimit_as_mb", false,
                         offsetof(kh_pipeline, rlimit_as_mb), 0, 0, 1048576},
    [PK_RLIMIT_NOFILE] = {"rlimit_nofile", false,
                          offsetof(kh_pipeline, rlimit_nofile), 0, 0, 1048576},
    [PK_RLIMIT_CPU_S] = {"rlimit_cpu_s", false,
                         offsetof(kh_pipeline, rlimit_cpu_s), 0, 0, 31536000},
    [PK_USER] = {"user", false, NO_FIELD, 0, 0, 0},
    [PK_USER_GROUP] = {"user_group", false, NO_FIELD, 0, 0, 0},
    [PK_SPARE_WORKERS] = {"spare_workers", false,
                          offsetof(kh_pipeline, spare_workers), 1, 0, 16},
};

/* [host] integer keys: the first two are used only with brokers = mock
 * (the embedded cluster creates and can seed the pipelines' topics). */
const struct host_int_key host_int_keys[N_HOST_INT_KEYS] = {
    {"mock_partitions", offsetof(kh_config, mock_partitions), 4, 1, 1024},
    {"mock_seed", offsetof(kh_config, mock_seed), 0, 0, 1000000},
    {"prefetch_budget_mb", offsetof(kh_config, prefetch_budget_mb), 32, 1,
     65536},
};
