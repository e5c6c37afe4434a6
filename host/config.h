/*
 * config: reads and validates a khost INI file into a kh_config.
 *
 * Every problem is reported as "FILE:LINE: message" and all of them are
 * collected in one pass, so an operator fixes a file in one go instead of
 * one error per run. Nothing here connects to Kafka or loads a plugin.
 */
#ifndef KHOST_CONFIG_H
#define KHOST_CONFIG_H

#include <stddef.h>
#include <stdio.h>

/* One key = value pair, remembering where it came from for error lines. */
typedef struct kh_kv {
    char *key;
    char *value; /* after ${VAR} expansion */
    int line;
} kh_kv;

typedef enum kh_on_exhausted {
    KH_ON_EXHAUSTED_PAUSE = 0, /* pipeline marked failed, partitions paused */
    KH_ON_EXHAUSTED_EXIT = 1,  /* the whole host exits non-zero */
} kh_on_exhausted;

typedef enum kh_on_failure {
    KH_ON_FAILURE_DLQ = 0,   /* produce to the dead-letter topic, then ack */
    KH_ON_FAILURE_SKIP = 1,  /* log and ack */
    KH_ON_FAILURE_PAUSE = 2, /* hold the partition at the message */
} kh_on_failure;

typedef struct kh_pipeline {
    char *name; /* NAME of [pipeline.NAME] */
    int line;   /* line of the section header */
    char **topics;
    size_t n_topics;
    char *group;
    char *plugin; /* as written in the file */
    /* Resolved: as written when absolute; a relative one against the
     * config file's folder, else against config_plugin_dir, the first
     * that exists. Found in neither: the config folder's, and
     * plugin_tried names the other path, for the loader's error. */
    char *plugin_path;
    char *plugin_tried; /* NULL unless the plugin was found nowhere */
    int plugin_line;
    int workers;            /* default 1, 1..256 */
    int spare_workers;      /* default 1, 0..16: idle, past init */
    int max_restarts;       /* default 30 */
    int max_seconds;        /* default 5 */
    int handler_timeout_ms; /* default 30000; 0 disables the hang check */
    /* default 300000: a message answered KHOST_DEFERRED and not acked
     * within it is treated as a RETRY (dispatch.c); 0: never */
    int deferred_timeout_ms;
    int init_timeout_ms;      /* default 30000; 0 lets init run forever */
    int shutdown_timeout_ms;  /* default 10000 */
    int tick_interval_ms;     /* default 1000; plugin tick, 0 disables */
    int max_attempts;         /* default 5: retry answers before failing */
    int retry_backoff_ms;     /* default 100: first retry delay */
    int retry_backoff_max_ms; /* default 10000: retry delay cap */
    int poison_after;         /* default 3: crashes at one offset = failed */
    kh_on_failure on_failure; /* default dlq */
    char *dlq_topic;          /* NULL: "<topic>.dlq" per consumed topic */
    int reload_max_crashes;   /* default 2: crashes tolerated on probation */
    int reload_probation_ms;  /* default 10000; 0: no probation */
    int reload_canary;        /* reload_strategy = canary (default all) */
    int dlq_topic_line;
    kh_on_exhausted on_exhausted; /* default pause */
    /* Worker hardening (hardening.h); applied at each worker start. */
    int rlimit_as_mb;  /* default 0: no limit set; else RLIMIT_AS in MiB */
    int rlimit_nofile; /* default 0: inherited; else RLIMIT_NOFILE */
    int rlimit_cpu_s;  /* default 0: no limit set; else RLIMIT_CPU in s */
    char *user;        /* user = NAME, NULL: khost's own user */
    char *user_group;  /* user_group = NAME, NULL: the user's group */
    long run_as_uid;   /* resolved uid of user, -1 when unset */
    long run_as_gid;   /* gid of user_group, else of user; -1 unset */
    int user_line, user_group_line;
    kh_kv *config; /* [pipeline.NAME.config], for the plugin's init */
    size_t n_config;
    kh_kv *kafka; /* [pipeline.NAME.kafka], overrides [kafka] */
    size_t n_kafka;
} kh_pipeline;

/* A growing list of "FILE:LINE: message" strings. */
typedef struct kh_errors {
    char **items;
    size_t count;
} kh_errors;

typedef struct kh_config {
    char *path;          /* the file as given */
    char *dir;           /* its folder, for resolving relative paths */
    char *brokers;       /* "mock", "mock:N" or a bootstrap list */
    int mock_brokers;    /* > 0 when brokers is mock / mock:N, else 0 */
    int mock_partitions; /* mock only: partitions per topic, default 4 */
    int mock_seed;       /* mock only: messages seeded per topic, default 0 */
    /* What all partitions may queue polled but undispatched, in MiB
     * (partition.h's budget), default 32. Applies in place on reload. */
    int prefetch_budget_mb;
    int watch;      /* 1: reload when the config or a plugin file changes */
    int log_level;  /* KLOG_ERROR..KLOG_DEBUG (log.h); 0: not set (info) */
    int log_format; /* KLOG_TEXT (0, the default) or KLOG_JSON */
    /* [host] control_socket, resolved against dir; NULL: the default
     * list of admin.h. Read at start only (a reload does not move the
     * socket). `run --socket PATH` overrides it with line 0. */
    char *control_socket;
    int control_socket_line;
    /* [http]: the HTTP server (http.c). http_listen as written, NULL when
     * off; http_addr the resolved IPv4 literal ("localhost" becomes
     * 127.0.0.1) and http_port its port. http_token: NULL when unset. Read
     * at start only; a reload that changes [http] is refused. */
    char *http_listen;
    char *http_addr;
    int http_port;
    int http_loopback; /* 1 when http_addr is in 127.0.0.0/8 */
    int http_listen_line;
    char *http_token;
    int http_token_line;
    kh_kv *kafka; /* [kafka]: librdkafka properties for every consumer */
    size_t n_kafka;
    kh_pipeline *pipelines;
    size_t n_pipelines;
    /* Problems that do not make the file invalid, "FILE:LINE: message",
     * sorted by line; config_load fills it even when it returns 0 (e.g.
     * a password written in a file others can read). Freed by
     * config_free. Print them with config_print_warnings. */
    kh_errors warnings;
} kh_config;

/* The installed plugin folder, where a relative `plugin =` not found
 * next to the config file is looked for: KHOST_PLUGIN_DIR, i.e.
 * ${CMAKE_INSTALL_PREFIX}/lib/khost/plugins, fixed at build time. Only
 * tests point it elsewhere. */
extern const char *config_plugin_dir;

/* Parse and validate `path`. Returns 0 when valid; otherwise a negative
 * value, with every problem appended to errs (cfg is then still safe to
 * free but not to use). Validates librdkafka properties by asking
 * rd_kafka_conf_set on a scratch conf. */
int config_load(const char *path, kh_config *cfg, kh_errors *errs);

void config_free(kh_config *cfg);

/* Write each of cfg->warnings as "warning: FILE:LINE: message" to out. */
void config_print_warnings(const kh_config *cfg, FILE *out);

/* Look up a key in a kv list; NULL when absent. */
const char *config_kv_get(const kh_kv *kv, size_t n, const char *key);

void errors_add(kh_errors *errs, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void errors_free(kh_errors *errs);

#endif
