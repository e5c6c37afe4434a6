/*
 * config_internal: what the parts of the config loader share (not for
 * other modules). config.c reads the file and drives the load;
 * config_schema.c holds the key tables, allocation and freeing;
 * config_parse.c the parser (lines, sections, keys, ${VAR});
 * config_check.c the whole-file checks; config_diag.c the problem lists,
 * their order and the spelling suggestions.
 */
#ifndef KHOST_CONFIG_INTERNAL_H
#define KHOST_CONFIG_INTERNAL_H

#include "config.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* A config file is a page of text; anything bigger is a mistake (a log or
 * a binary given by accident) and would only waste memory. */
#define CONFIG_MAX_BYTES (16 * 1024 * 1024)

/* Long enough for a sentence around a key and a value, short enough that a
 * megabyte-long value does not end up in the terminal. */
#define DIAG_MAX_CHARS 400

/* Every problem of a real config fits easily; past this it is not a
 * config at all (a binary, a log) and more lines would only bury the
 * first ones. */
#define CONFIG_MAX_ERRORS 100

#define MOCK_MAX_BROKERS 16

/* ---- schema (config_schema.c) ---- */

/* ---------------------------------------------------------------------- */
/* Keys of [pipeline.NAME]. Integer keys map straight onto int fields so
 * that one table drives parsing, defaults, ranges and the docs. */

enum pipeline_key {
    PK_TOPICS,
    PK_GROUP,
    PK_PLUGIN,
    PK_WORKERS,
    PK_MAX_RESTARTS,
    PK_MAX_SECONDS,
    PK_HANDLER_TIMEOUT_MS,
    PK_INIT_TIMEOUT_MS,
    PK_SHUTDOWN_TIMEOUT_MS,
    PK_ON_EXHAUSTED,
    PK_TICK_INTERVAL_MS,
    PK_DEFERRED_TIMEOUT_MS,
    PK_MAX_ATTEMPTS,
    PK_RETRY_BACKOFF_MS,
    PK_RETRY_BACKOFF_MAX_MS,
    PK_POISON_AFTER,
    PK_ON_FAILURE,
    PK_DLQ_TOPIC,
    PK_RELOAD_MAX_CRASHES,
    PK_RELOAD_PROBATION_MS,
    PK_RELOAD_STRATEGY,
    PK_RLIMIT_AS_MB,
    PK_RLIMIT_NOFILE,
    PK_RLIMIT_CPU_S,
    PK_USER,
    PK_USER_GROUP,
    PK_SPARE_WORKERS,
    PK_COUNT
};

#define NO_FIELD ((size_t)-1)

struct pipeline_key_info {
    const char *name;
    bool required;
    size_t field; /* offset of the int field, or NO_FIELD */
    int def, min, max;
};
extern const struct pipeline_key_info pipeline_keys[PK_COUNT];

/* [host] integer keys (config_schema.c). */
struct host_int_key {
    const char *name;
    size_t field;
    int def, min, max;
};
#define N_HOST_INT_KEYS 3
extern const struct host_int_key host_int_keys[N_HOST_INT_KEYS];

/* Allocation: config input is capped, so running out of memory here is
 * not something bad input can cause; it is fatal. */
__attribute__((noreturn)) void out_of_memory(void);
void *xrealloc(void *ptr, size_t size);
void *xmalloc(size_t size);
char *xstrndup(const char *s, size_t n);
char *xstrdup(const char *s);
typedef struct sbuf {
    char *s;
    size_t len, cap;
} sbuf;
void sb_add(sbuf *b, const char *s, size_t n);
char *sb_take(sbuf *b);

/* ---- the parser's state (config_parse.c) ---- */

/* ---------------------------------------------------------------------- */
/* Parser state */

typedef enum section_kind {
    SEC_NONE,   /* before the first header */
    SEC_IGNORE, /* bad or duplicate header, already reported */
    SEC_HOST,
    SEC_KAFKA,
    SEC_HTTP,
    SEC_PIPELINE,
    SEC_PIPELINE_CONFIG,
    SEC_PIPELINE_KAFKA,
} section_kind;

/* What we remember about a pipeline beyond kh_pipeline itself. */
typedef struct pipeline_state {
    int key_line[PK_COUNT]; /* 0 = not set */
    int config_line;        /* line of [pipeline.NAME.config], 0 = none */
    int kafka_line;         /* line of [pipeline.NAME.kafka], 0 = none */
    long user_gid;          /* primary group of user =, -1 = none */
} pipeline_state;

typedef struct diag {
    int line;
    size_t seq; /* keeps the order of same-line problems stable */
    char *msg;
} diag;

typedef struct parser {
    const char *path;
    kh_config *cfg;

    /* input, fed to inih one line at a time */
    const char *text;
    size_t len, pos;
    const char *feed; /* what inih gets for the current line */
    size_t feed_len, feed_pos;
    int lineno;
    char *scratch; /* NUL-terminated copy of the current line */
    size_t scratch_cap;

    /* current section */
    section_kind kind;
    char *section; /* its name, for messages */
    size_t pipe;   /* index into cfg->pipelines for SEC_PIPELINE* */

    int host_line, kafka_line, brokers_line, http_line;
    int log_level_line, log_format_line; /* 0 when unset */
    int host_int_line[N_HOST_INT_KEYS];  /* lines, 0 when unset */
    pipeline_state *ps;                  /* parallel to cfg->pipelines */

    diag *diags;
    size_t n_diags;
    diag *warns; /* become cfg->warnings; never fail the load */
    size_t n_warns;
    mode_t file_mode; /* of the config file, for the secrets check */
} parser;

/* Feed the file to inih line by line (config_parse.c). */
int with_ini_settings(parser *p, size_t longest);

/* ---- whole-file checks (config_check.c) ---- */
void check_complete(parser *p);

/* ---- diagnostics (config_diag.c) ---- */
__attribute__((format(printf, 4, 0))) void
add_diag(diag **list, size_t *count, int line, const char *fmt, va_list ap);
__attribute__((format(printf, 3, 4))) void report(parser *p, int line,
                                                  const char *fmt, ...);
/* A warning: shown to the operator, but the file is still valid. */
__attribute__((format(printf, 3, 4))) void report_warning(parser *p, int line,
                                                          const char *fmt, ...);
int diag_cmp(const void *a, const void *b);
/* Edit distance between two words. */
size_t levenshtein(const char *a, const char *b);
/* The candidate closest to `word` by edit distance, or NULL when none is
 * close enough to be a likely typo. */
const char *closest(const char *word, const char *const *cands, size_t n);

#endif
