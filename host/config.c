/*
 * config: turns a khost INI file into a validated kh_config.
 *
 * inih splits "key = value" lines and strips comments; everything else is
 * ours. We read the file ourselves and hand it to inih one line at a time
 * through ini_parse_stream's reader, which gives us three things inih's
 * Debian build cannot: the line number of every pair, section headers as
 * events (even for sections without keys), and one report per malformed
 * line instead of only the first. Problems are gathered as (line, message)
 * and emitted sorted by line once the whole file has been seen.
 *
 * See config.md for the grammar and every key.
 */
#define _GNU_SOURCE
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <grp.h>
#include <ini.h>
#include <librdkafka/rdkafka.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

/* ---------------------------------------------------------------------- */
/* Allocation: config input is capped, so running out of memory here is
 * not something bad input can cause; treat it as fatal. */

__attribute__((noreturn)) static void out_of_memory(void) {
    fputs("khost: out of memory while loading the config\n", stderr);
    abort();
}

static void *xrealloc(void *ptr, size_t size) {
    void *p = realloc(ptr, size ? size : 1);
    if (!p)
        out_of_memory();
    return p;
}

static void *xmalloc(size_t size) {
    void *p = malloc(size ? size : 1);
    if (!p)
        out_of_memory();
    return p;
}

static char *xstrndup(const char *s, size_t n) {
    char *d = xmalloc(n + 1);
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

static char *xstrdup(const char *s) {
    return xstrndup(s, strlen(s));
}

/* Append-only string builder, used for ${VAR} expansion and lists. */
typedef struct sbuf {
    char *s;
    size_t len, cap;
} sbuf;

static void sb_add(sbuf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2;
        b->s = xrealloc(b->s, b->cap);
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

static char *sb_take(sbuf *b) {
    if (!b->s)
        return xstrdup("");
    char *s = b->s;
    b->s = NULL;
    b->len = b->cap = 0;
    return s;
}

/* ---------------------------------------------------------------------- */
/* Public helpers */

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

static void pipeline_free(kh_pipeline *pl) {
    free(pl->name);
    for (size_t i = 0; i < pl->n_topics; i++)
        free(pl->topics[i]);
    free(pl->topics);
    free(pl->group);
    free(pl->dlq_topic);
    free(pl->plugin);
    free(pl->plugin_path);
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
    kv_free(cfg->kafka, cfg->n_kafka);
    for (size_t i = 0; i < cfg->n_pipelines; i++)
        pipeline_free(&cfg->pipelines[i]);
    free(cfg->pipelines);
    errors_free(&cfg->warnings);
    memset(cfg, 0, sizeof *cfg);
}

void config_print_warnings(const kh_config *cfg, FILE *out) {
    if (!cfg || !out)
        return;
    for (size_t i = 0; i < cfg->warnings.count; i++)
        fprintf(out, "warning: %s\n", cfg->warnings.items[i]);
    fflush(out);
}

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
    PK_COUNT
};

#define NO_FIELD ((size_t)-1)

static const struct pipeline_key_info {
    const char *name;
    bool required;
    size_t field; /* offset of the int field, or NO_FIELD */
    int def, min, max;
} pipeline_keys[PK_COUNT] = {
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
};

/* [host] keys besides brokers: integers, used only with brokers = mock
 * (the embedded cluster creates and can seed the pipelines' topics). */
static const struct host_int_key {
    const char *name;
    size_t field;
    int def, min, max;
} host_int_keys[] = {
    {"mock_partitions", offsetof(kh_config, mock_partitions), 4, 1, 1024},
    {"mock_seed", offsetof(kh_config, mock_seed), 0, 0, 1000000},
};
#define N_HOST_INT_KEYS (sizeof host_int_keys / sizeof host_int_keys[0])

static const char *const host_keys[] = {"brokers", "mock_partitions",
                                        "mock_seed", "watch"};

/* librdkafka properties whose value khost decides; a user setting them
 * would silently break offset handling or pipeline isolation. */
static const struct {
    const char *name;
    const char *why;
} forbidden_props[] = {
    {"group.id", "use group = in [pipeline.NAME]"},
    {"bootstrap.servers", "use brokers = in [host]"},
    {"metadata.broker.list", "use brokers = in [host]"},
    {"enable.auto.offset.store", "khost stores offsets itself"},
};

/* ---------------------------------------------------------------------- */
/* Parser state */

typedef enum section_kind {
    SEC_NONE,   /* before the first header */
    SEC_IGNORE, /* bad or duplicate header, already reported */
    SEC_HOST,
    SEC_KAFKA,
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

    int host_line, kafka_line, brokers_line;
    int host_int_line[2]; /* lines of host_int_keys, 0 when unset */
    pipeline_state *ps;   /* parallel to cfg->pipelines */

    diag *diags;
    size_t n_diags;
    diag *warns; /* become cfg->warnings; never fail the load */
    size_t n_warns;
    mode_t file_mode; /* of the config file, for the secrets check */
} parser;

__attribute__((format(printf, 4, 0))) static void
add_diag(diag **list, size_t *count, int line, const char *fmt, va_list ap) {
    char *msg = NULL;
    int n = vasprintf(&msg, fmt, ap);
    if (n < 0)
        out_of_memory();
    if (n > DIAG_MAX_CHARS)
        strcpy(msg + DIAG_MAX_CHARS - 3, "...");
    /* Garbage in the file must not become terminal escape sequences. */
    for (char *c = msg; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f)
            *c = '?';
    *list = xrealloc(*list, (*count + 1) * sizeof **list);
    (*list)[*count] = (diag){line, *count, msg};
    (*count)++;
}

__attribute__((format(printf, 3, 4))) static void report(parser *p, int line,
                                                         const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    add_diag(&p->diags, &p->n_diags, line, fmt, ap);
    va_end(ap);
}

/* A warning: shown to the operator, but the file is still valid. */
__attribute__((format(printf, 3, 4))) static void
report_warning(parser *p, int line, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    add_diag(&p->warns, &p->n_warns, line, fmt, ap);
    va_end(ap);
}

static int diag_cmp(const void *a, const void *b) {
    const diag *x = a, *y = b;
    if (x->line != y->line)
        return x->line < y->line ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* ---------------------------------------------------------------------- */
/* Small text helpers */

static size_t levenshtein(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    /* Only distances up to 2 matter; skip the work for hopeless pairs. */
    if ((la > lb ? la - lb : lb - la) > 2)
        return 3;
    size_t *row = xmalloc((lb + 1) * sizeof *row);
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag_prev = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
            size_t best = diag_prev + cost;
            if (up + 1 < best)
                best = up + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag_prev = up;
        }
    }
    size_t d = row[lb];
    free(row);
    return d;
}

/* The closest candidate within distance 2, or NULL. */
static const char *closest(const char *word, const char *const *cands,
                           size_t n) {
    const char *best = NULL;
    size_t best_d = 3;
    for (size_t i = 0; i < n; i++) {
        size_t d = levenshtein(word, cands[i]);
        if (d < best_d) {
            best_d = d;
            best = cands[i];
        }
    }
    return best;
}

static char *trim(char *s) {
    while (isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n > 0 && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
    return s;
}

static bool has_space(const char *s) {
    for (; *s; s++)
        if (isspace((unsigned char)*s))
            return true;
    return false;
}

/* Strict decimal: optional sign, digits, nothing else. */
static bool parse_ll(const char *s, long long *out) {
    const char *d = (*s == '-' || *s == '+') ? s + 1 : s;
    if (!isdigit((unsigned char)*d))
        return false;
    errno = 0;
    char *end = NULL;
    long long v = strtoll(s, &end, 10);
    if (errno || *end)
        return false;
    *out = v;
    return true;
}

static bool is_env_name(const char *s, size_t n) {
    if (n == 0 || !(isalpha((unsigned char)s[0]) || s[0] == '_'))
        return false;
    for (size_t i = 1; i < n; i++)
        if (!(isalnum((unsigned char)s[i]) || s[i] == '_'))
            return false;
    return true;
}

/* Expands every ${VAR}. Reports each problem and returns NULL if any. */
static char *expand_env(parser *p, const char *key, const char *value) {
    sbuf out = {0};
    bool ok = true;
    const char *s = value;
    while (*s) {
        const char *dollar = strstr(s, "${");
        if (!dollar) {
            sb_add(&out, s, strlen(s));
            break;
        }
        sb_add(&out, s, (size_t)(dollar - s));
        const char *name = dollar + 2;
        const char *close = strchr(name, '}');
        if (!close) {
            report(p, p->lineno, "unterminated '${' in value of '%s'", key);
            ok = false;
            break;
        }
        size_t n = (size_t)(close - name);
        if (!is_env_name(name, n)) {
            report(p, p->lineno,
                   "invalid environment variable name '%.*s' in value of "
                   "'%s'",
                   (int)n, name, key);
            ok = false;
        } else {
            char *var = xstrndup(name, n);
            const char *env = getenv(var);
            if (!env) {
                report(p, p->lineno, "environment variable %s is not set", var);
                ok = false;
            } else {
                sb_add(&out, env, strlen(env));
            }
            free(var);
        }
        s = close + 1;
    }
    if (!ok) {
        free(out.s);
        return NULL;
    }
    return sb_take(&out);
}

/* ---------------------------------------------------------------------- */
/* Sections */

static size_t find_or_add_pipeline(parser *p, const char *name) {
    kh_config *cfg = p->cfg;
    for (size_t i = 0; i < cfg->n_pipelines; i++)
        if (strcmp(cfg->pipelines[i].name, name) == 0)
            return i;
    size_t n = cfg->n_pipelines + 1;
    cfg->pipelines = xrealloc(cfg->pipelines, n * sizeof *cfg->pipelines);
    p->ps = xrealloc(p->ps, n * sizeof *p->ps);
    kh_pipeline *pl = &cfg->pipelines[n - 1];
    memset(pl, 0, sizeof *pl);
    memset(&p->ps[n - 1], 0, sizeof p->ps[n - 1]);
    pl->name = xstrdup(name);
    for (int k = 0; k < PK_COUNT; k++)
        if (pipeline_keys[k].field != NO_FIELD)
            *(int *)((char *)pl + pipeline_keys[k].field) =
                pipeline_keys[k].def;
    pl->on_exhausted = KH_ON_EXHAUSTED_PAUSE;
    pl->on_failure = KH_ON_FAILURE_DLQ;
    pl->run_as_uid = -1;
    pl->run_as_gid = -1;
    p->ps[n - 1].user_gid = -1;
    cfg->n_pipelines = n;
    return n - 1;
}

static bool valid_pipeline_char(char c) {
    return isalnum((unsigned char)c) || c == '_' || c == '-';
}

static void suggest_section(parser *p, const char *name) {
    static const char *const tops[] = {"host", "kafka"};
    const char *top = closest(name, tops, 2);
    if (top) {
        report(p, p->lineno, "unknown section [%s] (did you mean [%s]?)", name,
               top);
        return;
    }
    const char *dot = strchr(name, '.');
    char *head = xstrndup(name, dot ? (size_t)(dot - name) : strlen(name));
    bool pipeline_like = levenshtein(head, "pipeline") <= 2;
    free(head);
    if (pipeline_like && dot)
        report(p, p->lineno,
               "unknown section [%s] (did you mean [pipeline%s]?)", name, dot);
    else if (pipeline_like)
        report(p, p->lineno,
               "unknown section [%s] (did you mean [pipeline.NAME]?)", name);
    else
        report(p, p->lineno,
               "unknown section [%s] (expected [host], [kafka], "
               "[pipeline.NAME], [pipeline.NAME.config] or "
               "[pipeline.NAME.kafka])",
               name);
}

/* Checks NAME of [pipeline.NAME...]; reports and returns false if bad. */
static bool check_pipeline_name(parser *p, const char *section,
                                const char *name) {
    if (!*name) {
        report(p, p->lineno,
               "empty pipeline name in [%s] (use [pipeline.NAME])", section);
        return false;
    }
    const char *last_dot = strrchr(name, '.');
    if (last_dot) {
        static const char *const subs[] = {"config", "kafka"};
        const char *sub = closest(last_dot + 1, subs, 2);
        if (sub)
            report(p, p->lineno,
                   "unknown section [%s] (did you mean [pipeline.%.*s.%s]?)",
                   section, (int)(last_dot - name), name, sub);
        else
            report(p, p->lineno,
                   "pipeline name '%s' in [%s] must not contain '.' (the "
                   "only subsections are .config and .kafka)",
                   name, section);
        return false;
    }
    for (const char *c = name; *c; c++) {
        if (!valid_pipeline_char(*c)) {
            report(p, p->lineno,
                   "invalid pipeline name '%s' in [%s]: use letters, "
                   "digits, '_' and '-'",
                   name, section);
            return false;
        }
    }
    return true;
}

/* Claims a once-only header; a repeat is reported and its keys ignored. */
static bool claim(parser *p, int *first_line) {
    if (*first_line) {
        report(p, p->lineno, "duplicate section [%s] (first at line %d)",
               p->section, *first_line);
        p->kind = SEC_IGNORE;
        return false;
    }
    *first_line = p->lineno;
    return true;
}

static void section_start(parser *p, const char *name) {
    free(p->section);
    p->section = xstrdup(name);
    p->kind = SEC_IGNORE;

    if (strcmp(name, "host") == 0) {
        if (claim(p, &p->host_line))
            p->kind = SEC_HOST;
        return;
    }
    if (strcmp(name, "kafka") == 0) {
        if (claim(p, &p->kafka_line))
            p->kind = SEC_KAFKA;
        return;
    }
    if (strcmp(name, "pipeline") == 0) {
        report(p, p->lineno, "[pipeline] needs a name: use [pipeline.NAME]");
        return;
    }
    if (strncmp(name, "pipeline.", 9) != 0) {
        suggest_section(p, name);
        return;
    }

    const char *rest = name + 9;
    size_t n = strlen(rest);
    section_kind kind = SEC_PIPELINE;
    if (n >= 7 && strcmp(rest + n - 7, ".config") == 0) {
        kind = SEC_PIPELINE_CONFIG;
        n -= 7;
    } else if (n >= 6 && strcmp(rest + n - 6, ".kafka") == 0) {
        kind = SEC_PIPELINE_KAFKA;
        n -= 6;
    }
    char *pname = xstrndup(rest, n);
    if (check_pipeline_name(p, name, pname)) {
        size_t i = find_or_add_pipeline(p, pname);
        int *line = kind == SEC_PIPELINE          ? &p->cfg->pipelines[i].line
                    : kind == SEC_PIPELINE_CONFIG ? &p->ps[i].config_line
                                                  : &p->ps[i].kafka_line;
        if (claim(p, line)) {
            p->kind = kind;
            p->pipe = i;
        }
    }
    free(pname);
}

/* ---------------------------------------------------------------------- */
/* Keys */

static void kv_add(kh_kv **kv, size_t *n, const char *key, char *value,
                   int line) {
    *kv = xrealloc(*kv, (*n + 1) * sizeof **kv);
    (*kv)[*n] = (kh_kv){xstrdup(key), value, line};
    (*n)++;
}

static const kh_kv *kv_find(const kh_kv *kv, size_t n, const char *key) {
    for (size_t i = 0; i < n; i++)
        if (strcmp(kv[i].key, key) == 0)
            return &kv[i];
    return NULL;
}

/* Words that make a key's value a credential, matched case-insensitively
 * anywhere in the key, so librdkafka's sasl.password, ssl.key.password and
 * sasl.oauthbearer.client.secret count as well as a plugin's db_password
 * or api_token. ssl.key.pem is a private key given inline. */
static const char *const secret_words[] = {
    "password", "passwd",  "secret",      "credential",
    "token",    "api_key", "private_key", "ssl.key.pem",
};

static bool is_secret_key(const char *key) {
    size_t n = strlen(key);
    /* sasl.oauthbearer.token.endpoint.url and the like: an address. */
    if (n >= 4 &&
        (!strcasecmp(key + n - 4, ".url") || !strcasecmp(key + n - 4, "_url")))
        return false;
    for (size_t i = 0; i < sizeof secret_words / sizeof *secret_words; i++)
        if (strcasestr(key, secret_words[i]))
            return true;
    return false;
}

/* A credential written into a file that others may read is a leak
 * waiting to happen: warn, but leave the file valid. A value with a
 * ${VAR} in it counts as coming from the environment. */
static void check_secret(parser *p, const char *key, const char *raw) {
    if (!(p->file_mode & (S_IRGRP | S_IROTH)) || !*raw || strstr(raw, "${") ||
        !is_secret_key(key))
        return;
    report_warning(
        p, p->lineno,
        "'%s' is written in a file readable by %s (mode %04o); use ${VAR} "
        "or chmod 600",
        key, p->file_mode & S_IROTH ? "others" : "its group",
        (unsigned)(p->file_mode & 07777));
}

static void on_free_kv(parser *p, kh_kv **kv, size_t *n, const char *key,
                       const char *raw) {
    const kh_kv *dup = kv_find(*kv, *n, key);
    if (dup) {
        report(p, p->lineno, "duplicate key '%s' in [%s] (first at line %d)",
               key, p->section, dup->line);
        return;
    }
    char *value = expand_env(p, key, raw);
    if (!value)
        return;
    kv_add(kv, n, key, value, p->lineno);
    check_secret(p, key, raw);
}

static void on_kafka_prop(parser *p, kh_kv **kv, size_t *n, const char *key,
                          const char *raw) {
    for (size_t i = 0; i < sizeof forbidden_props / sizeof *forbidden_props;
         i++) {
        if (strcmp(key, forbidden_props[i].name) == 0) {
            report(p, p->lineno, "'%s' is not allowed in [%s]: %s", key,
                   p->section, forbidden_props[i].why);
            return;
        }
    }
    const kh_kv *dup = kv_find(*kv, *n, key);
    if (dup) {
        report(p, p->lineno, "duplicate key '%s' in [%s] (first at line %d)",
               key, p->section, dup->line);
        return;
    }
    char *value = expand_env(p, key, raw);
    if (!value)
        return;
    /* librdkafka is the authority on its own properties; a scratch conf
     * per property keeps one bad value from masking the next. */
    char errstr[512] = "";
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_res_t res =
        rd_kafka_conf_set(conf, key, value, errstr, sizeof errstr);
    rd_kafka_conf_destroy(conf);
    if (res != RD_KAFKA_CONF_OK) {
        report(p, p->lineno, "invalid librdkafka property '%s' in [%s]: %s",
               key, p->section,
               *errstr ? errstr : "rejected by rd_kafka_conf_set");
        free(value);
        return;
    }
    kv_add(kv, n, key, value, p->lineno);
    check_secret(p, key, raw);
}

/* Broker address list: entries are trimmed and joined back without
 * spaces; a port, when given, must be a real one. */
static char *check_broker_list(parser *p, const char *value) {
    char *copy = xstrdup(value);
    sbuf out = {0};
    bool ok = true;
    char *s = copy;
    for (;;) {
        char *comma = strchr(s, ',');
        if (comma)
            *comma = '\0';
        char *entry = trim(s);
        if (!*entry) {
            report(p, p->lineno,
                   "bad value '%s' for 'brokers' in [host]: empty broker "
                   "address",
                   value);
            ok = false;
        } else if (has_space(entry)) {
            report(p, p->lineno,
                   "bad value '%s' for 'brokers' in [host]: '%s' contains "
                   "whitespace (separate brokers with ',')",
                   value, entry);
            ok = false;
        } else {
            const char *hostport = strstr(entry, "://");
            hostport = hostport ? hostport + 3 : entry;
            const char *colon = NULL;
            if (*hostport == '[') {
                const char *rb = strchr(hostport, ']');
                colon = rb && rb[1] == ':' ? rb + 1 : NULL;
            } else if (strchr(hostport, ':') == strrchr(hostport, ':')) {
                colon = strchr(hostport, ':');
            }
            long long port = 0;
            if (colon &&
                (!isdigit((unsigned char)colon[1]) ||
                 !parse_ll(colon + 1, &port) || port < 1 || port > 65535)) {
                report(p, p->lineno,
                       "bad value '%s' for 'brokers' in [host]: port of "
                       "'%s' must be in 1..65535",
                       value, entry);
                ok = false;
            }
            if (out.len)
                sb_add(&out, ",", 1);
            sb_add(&out, entry, strlen(entry));
        }
        if (!comma)
            break;
        s = comma + 1;
    }
    free(copy);
    if (!ok) {
        free(out.s);
        return NULL;
    }
    return sb_take(&out);
}

static void on_host_int_key(parser *p, const struct host_int_key *info,
                            const char *raw) {
    int *line = &p->host_int_line[info - host_int_keys];
    if (*line) {
        report(p, p->lineno, "duplicate key '%s' in [host] (first at line %d)",
               info->name, *line);
        return;
    }
    *line = p->lineno;
    char *value = expand_env(p, info->name, raw);
    if (!value)
        return;
    long long v = 0;
    if (!parse_ll(value, &v) || v < info->min || v > info->max)
        report(p, p->lineno,
               "bad value '%s' for '%s' in [host]: expected an integer in "
               "%d..%d",
               value, info->name, info->min, info->max);
    else
        *(int *)((char *)p->cfg + info->field) = (int)v;
    free(value);
}

static void on_host_key(parser *p, const char *key, const char *raw) {
    if (strcmp(key, "watch") == 0) {
        char *value = expand_env(p, key, raw);
        if (!value)
            return;
        if (strcmp(value, "true") == 0)
            p->cfg->watch = 1;
        else if (strcmp(value, "false") == 0)
            p->cfg->watch = 0;
        else
            report(p, p->lineno,
                   "bad value '%s' for 'watch' in [host]: expected true or "
                   "false",
                   value);
        free(value);
        return;
    }
    for (size_t i = 0; i < N_HOST_INT_KEYS; i++) {
        if (strcmp(key, host_int_keys[i].name) == 0) {
            on_host_int_key(p, &host_int_keys[i], raw);
            return;
        }
    }
    if (strcmp(key, "brokers") != 0) {
        const char *hint =
            closest(key, host_keys, sizeof host_keys / sizeof host_keys[0]);
        if (hint)
            report(p, p->lineno,
                   "unknown key '%s' in [host] (did you mean '%s'?)", key,
                   hint);
        else
            report(p, p->lineno, "unknown key '%s' in [host]", key);
        return;
    }
    if (p->brokers_line) {
        report(p, p->lineno,
               "duplicate key 'brokers' in [host] (first at line %d)",
               p->brokers_line);
        return;
    }
    p->brokers_line = p->lineno;
    char *value = expand_env(p, key, raw);
    if (!value)
        return;
    if (!*value) {
        report(p, p->lineno, "empty value for 'brokers' in [host]");
        free(value);
        return;
    }
    if (strcmp(value, "mock") == 0) {
        p->cfg->brokers = value;
        p->cfg->mock_brokers = 1;
        return;
    }
    if (strncmp(value, "mock:", 5) == 0) {
        const char *num = value + 5;
        long long n = 0;
        if (!isdigit((unsigned char)*num) || !parse_ll(num, &n) || n < 1 ||
            n > MOCK_MAX_BROKERS) {
            report(p, p->lineno,
                   "bad value '%s' for 'brokers' in [host]: mock:N needs N "
                   "in 1..%d",
                   value, MOCK_MAX_BROKERS);
            free(value);
            return;
        }
        p->cfg->brokers = value;
        p->cfg->mock_brokers = (int)n;
        return;
    }
    p->cfg->brokers = check_broker_list(p, value);
    free(value);
}

static void set_topics(parser *p, kh_pipeline *pl, const char *value) {
    char *copy = xstrdup(value);
    char **topics = NULL;
    size_t n = 0;
    bool ok = true, saw_empty = false;
    char *s = copy;
    for (;;) {
        char *comma = strchr(s, ',');
        if (comma)
            *comma = '\0';
        char *t = trim(s);
        bool dup = false;
        for (size_t i = 0; i < n && !dup; i++)
            dup = strcmp(topics[i], t) == 0;
        if (!*t) {
            if (!saw_empty)
                report(p, p->lineno,
                       "empty topic name in 'topics' of [%s] (value '%s')",
                       p->section, value);
            saw_empty = true;
            ok = false;
        } else if (has_space(t)) {
            report(p, p->lineno,
                   "topic '%s' in [%s] contains whitespace (separate topics "
                   "with ',')",
                   t, p->section);
            ok = false;
        } else if (dup) {
            report(p, p->lineno, "topic '%s' is listed twice in [%s]", t,
                   p->section);
            ok = false;
        } else {
            topics = xrealloc(topics, (n + 1) * sizeof *topics);
            topics[n++] = xstrdup(t);
        }
        if (!comma)
            break;
        s = comma + 1;
    }
    free(copy);
    if (!ok) {
        for (size_t i = 0; i < n; i++)
            free(topics[i]);
        free(topics);
        return;
    }
    pl->topics = topics;
    pl->n_topics = n;
}

static void set_plugin(parser *p, kh_pipeline *pl, char *value) {
    pl->plugin = value;
    pl->plugin_line = p->lineno;
    if (value[0] == '/') {
        pl->plugin_path = xstrdup(value);
        return;
    }
    const char *dir = p->cfg->dir;
    size_t dl = strlen(dir);
    bool slash = dl > 0 && dir[dl - 1] == '/';
    if (asprintf(&pl->plugin_path, "%s%s%s", dir, slash ? "" : "/", value) < 0)
        out_of_memory();
}

static void on_pipeline_key(parser *p, const char *key, const char *raw) {
    int k = 0;
    while (k < PK_COUNT && strcmp(pipeline_keys[k].name, key) != 0)
        k++;
    if (k == PK_COUNT) {
        const char *names[PK_COUNT];
        for (int i = 0; i < PK_COUNT; i++)
            names[i] = pipeline_keys[i].name;
        const char *hint = closest(key, names, PK_COUNT);
        if (hint)
            report(p, p->lineno,
                   "unknown key '%s' in [%s] (did you mean '%s'?)", key,
                   p->section, hint);
        else
            report(p, p->lineno, "unknown key '%s' in [%s]", key, p->section);
        return;
    }
    pipeline_state *ps = &p->ps[p->pipe];
    if (ps->key_line[k]) {
        report(p, p->lineno, "duplicate key '%s' in [%s] (first at line %d)",
               key, p->section, ps->key_line[k]);
        return;
    }
    /* Seen even if the value turns out bad, so no "missing" noise later. */
    ps->key_line[k] = p->lineno;

    char *value = expand_env(p, key, raw);
    if (!value)
        return;
    kh_pipeline *pl = &p->cfg->pipelines[p->pipe];
    const struct pipeline_key_info *info = &pipeline_keys[k];
    if (!*value && info->required) {
        report(p, p->lineno, "empty value for '%s' in [%s]", key, p->section);
        free(value);
        return;
    }
    switch ((enum pipeline_key)k) {
    case PK_TOPICS:
        set_topics(p, pl, value);
        break;
    case PK_GROUP:
        pl->group = value;
        return;
    case PK_PLUGIN:
        set_plugin(p, pl, value);
        return;
    case PK_ON_FAILURE:
        if (strcmp(value, "dlq") == 0)
            pl->on_failure = KH_ON_FAILURE_DLQ;
        else if (strcmp(value, "skip") == 0)
            pl->on_failure = KH_ON_FAILURE_SKIP;
        else if (strcmp(value, "pause") == 0)
            pl->on_failure = KH_ON_FAILURE_PAUSE;
        else
            report(p, p->lineno,
                   "bad value '%s' for 'on_failure' in [%s]: expected dlq, "
                   "skip or pause",
                   value, p->section);
        break;
    case PK_RELOAD_STRATEGY:
        if (strcmp(value, "all") == 0)
            pl->reload_canary = 0;
        else if (strcmp(value, "canary") == 0)
            pl->reload_canary = 1;
        else
            report(p, p->lineno,
                   "bad value '%s' for 'reload_strategy' in [%s]: expected "
                   "all or canary",
                   value, p->section);
        break;
    case PK_USER: {
        /* Resolved now, so a typo fails the load and not the worker; the
         * numbers are what the worker switches to. */
        if (!*value) {
            report(p, p->lineno, "empty value for 'user' in [%s]", p->section);
            break;
        }
        struct passwd *pw = getpwnam(value);
        if (!pw) {
            report(p, p->lineno, "unknown user '%s' in [%s]", value,
                   p->section);
            break;
        }
        pl->run_as_uid = (long)pw->pw_uid;
        p->ps[p->pipe].user_gid = (long)pw->pw_gid;
        pl->user = value;
        pl->user_line = p->lineno;
        return;
    }
    case PK_USER_GROUP: {
        if (!*value) {
            report(p, p->lineno, "empty value for 'user_group' in [%s]",
                   p->section);
            break;
        }
        struct group *gr = getgrnam(value);
        if (!gr) {
            report(p, p->lineno, "unknown group '%s' in [%s]", value,
                   p->section);
            break;
        }
        pl->run_as_gid = (long)gr->gr_gid;
        pl->user_group = value;
        pl->user_group_line = p->lineno;
        return;
    }
    case PK_DLQ_TOPIC:
        if (!*value || has_space(value)) {
            report(p, p->lineno,
                   "bad value '%s' for 'dlq_topic' in [%s]: expected one "
                   "topic name",
                   value, p->section);
            break;
        }
        pl->dlq_topic = value;
        pl->dlq_topic_line = p->lineno;
        return;
    case PK_ON_EXHAUSTED:
        if (strcmp(value, "pause") == 0)
            pl->on_exhausted = KH_ON_EXHAUSTED_PAUSE;
        else if (strcmp(value, "exit") == 0)
            pl->on_exhausted = KH_ON_EXHAUSTED_EXIT;
        else
            report(p, p->lineno,
                   "bad value '%s' for 'on_exhausted' in [%s]: expected "
                   "pause or exit",
                   value, p->section);
        break;
    default: {
        long long v = 0;
        if (!parse_ll(value, &v) || v < info->min || v > info->max)
            report(p, p->lineno,
                   "bad value '%s' for '%s' in [%s]: expected an integer in "
                   "%d..%d",
                   value, key, p->section, info->min, info->max);
        else
            *(int *)((char *)pl + info->field) = (int)v;
        break;
    }
    }
    free(value);
}

static int on_pair(void *user, const char *section, const char *name,
                   const char *value) {
    (void)section; /* ours is exact; inih truncates long names */
    parser *p = user;
    kh_config *cfg = p->cfg;
    switch (p->kind) {
    case SEC_NONE:
        report(p, p->lineno, "key '%s' is outside any section", name);
        break;
    case SEC_IGNORE:
        break;
    case SEC_HOST:
        on_host_key(p, name, value);
        break;
    case SEC_KAFKA:
        on_kafka_prop(p, &cfg->kafka, &cfg->n_kafka, name, value);
        break;
    case SEC_PIPELINE:
        on_pipeline_key(p, name, value);
        break;
    case SEC_PIPELINE_CONFIG: {
        kh_pipeline *pl = &cfg->pipelines[p->pipe];
        on_free_kv(p, &pl->config, &pl->n_config, name, value);
        break;
    }
    case SEC_PIPELINE_KAFKA: {
        kh_pipeline *pl = &cfg->pipelines[p->pipe];
        on_kafka_prop(p, &pl->kafka, &pl->n_kafka, name, value);
        break;
    }
    }
    return 1; /* we keep our own error list; never make inih record one */
}

/* ---------------------------------------------------------------------- */
/* Lines. These mirror inih's own scanning (same whitespace, comment and
 * inline-comment rules as the settings applied in with_ini_settings), so a
 * line we pass on is one inih parses the way we expect. */

static char *rstrip(char *s) {
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = '\0';
    return s;
}

static char *lskip(char *s) {
    while (*s && isspace((unsigned char)*s))
        s++;
    return s;
}

/* First char in `chars`, or an inline ';' comment preceded by whitespace,
 * or the terminating NUL. */
static char *find_chars_or_comment(char *s, const char *chars) {
    bool was_space = false;
    while (*s && (!chars || !strchr(chars, *s)) && !(was_space && *s == ';')) {
        was_space = isspace((unsigned char)*s);
        s++;
    }
    return s;
}

/* Looks at one raw line and decides what inih gets to see: the line itself
 * when it is a pair or a header, an empty line when it is blank, a comment
 * or broken (broken ones are reported here, each at its own line). */
static bool classify_line(parser *p, const char *raw, size_t n) {
    if (memchr(raw, '\0', n)) {
        report(p, p->lineno, "syntax error: line contains a NUL byte");
        return false;
    }
    if (n + 1 > p->scratch_cap) {
        p->scratch_cap = n + 1;
        p->scratch = xrealloc(p->scratch, p->scratch_cap);
    }
    memcpy(p->scratch, raw, n);
    p->scratch[n] = '\0';
    char *s = p->scratch;
    if (p->lineno == 1 && n >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0)
        s += 3;
    s = lskip(rstrip(s));
    if (*s == '\0' || *s == ';' || *s == '#')
        return false;
    if (*s == '[') {
        char *end = find_chars_or_comment(s + 1, "]");
        if (*end != ']') {
            report(p, p->lineno, "syntax error: '[' without closing ']'");
            return false;
        }
        *end = '\0';
        char *after = lskip(end + 1);
        if (*after && *after != ';' && *after != '#')
            report(p, p->lineno, "syntax error: unexpected text after ']'");
        section_start(p, s + 1);
        return true;
    }
    char *end = find_chars_or_comment(s, "=:");
    if (*end != '=' && *end != ':') {
        report(p, p->lineno,
               "syntax error: expected 'key = value', '[section]' or a "
               "comment");
        return false;
    }
    if (end == s) {
        report(p, p->lineno, "syntax error: missing key before '%c'", *end);
        return false;
    }
    return true;
}

/* ini_reader: hands inih the file line by line, possibly in chunks when
 * its buffer is smaller than the line. */
static char *feed_line(char *str, int num, void *stream) {
    parser *p = stream;
    if (num < 2)
        return NULL;
    if (p->feed_pos >= p->feed_len) {
        if (p->pos >= p->len)
            return NULL;
        const char *start = p->text + p->pos;
        const char *nl = memchr(start, '\n', p->len - p->pos);
        size_t n = nl ? (size_t)(nl - start) : p->len - p->pos;
        p->pos += nl ? n + 1 : n;
        p->lineno++;
        if (classify_line(p, start, n)) {
            p->feed = start;
            p->feed_len = nl ? n + 1 : n;
        } else {
            p->feed = "\n";
            p->feed_len = 1;
        }
        p->feed_pos = 0;
    }
    size_t n = p->feed_len - p->feed_pos;
    if (n > (size_t)num - 1)
        n = (size_t)num - 1;
    memcpy(str, p->feed + p->feed_pos, n);
    str[n] = '\0';
    p->feed_pos += n;
    return str;
}

/* inih's Debian build reads its options from globals. Set exactly the
 * dialect classify_line mirrors, and a heap line buffer big enough for the
 * longest line (the default 200 bytes would split long values), then put
 * everything back for whoever else uses inih in this process. */
static int with_ini_settings(parser *p, size_t longest) {
    bool multiline = ini_allow_multiline, bom = ini_allow_bom,
         inline_comments = ini_allow_inline_comments, use_stack = ini_use_stack,
         allow_realloc = ini_allow_realloc,
         stop_first = ini_stop_on_first_error, no_value = ini_allow_no_value;
    char *start_prefixes = ini_start_comment_prefixes,
         *inline_prefixes = ini_inline_comment_prefixes;
    int max_line = ini_max_line, initial_alloc = ini_initial_alloc;

    ini_allow_multiline = false; /* an indented key is a key, not a value */
    ini_allow_bom = true;
    ini_allow_inline_comments = true;
    ini_start_comment_prefixes = (char *)";#";
    ini_inline_comment_prefixes = (char *)";";
    ini_use_stack = false;
    ini_allow_realloc = true;
    ini_initial_alloc = 256;
    ini_max_line = (int)longest + 3 > 256 ? (int)longest + 3 : 256;
    ini_stop_on_first_error = false;
    ini_allow_no_value = false;

    int rc = ini_parse_stream(feed_line, p, on_pair, p);

    ini_allow_multiline = multiline;
    ini_allow_bom = bom;
    ini_allow_inline_comments = inline_comments;
    ini_start_comment_prefixes = start_prefixes;
    ini_inline_comment_prefixes = inline_prefixes;
    ini_use_stack = use_stack;
    ini_allow_realloc = allow_realloc;
    ini_initial_alloc = initial_alloc;
    ini_max_line = max_line;
    ini_stop_on_first_error = stop_first;
    ini_allow_no_value = no_value;
    return rc;
}

/* ---------------------------------------------------------------------- */
/* Whole-file checks, once every section has been seen */

/* user = without user_group = runs as the user's primary group. Switching
 * identity needs root; without it the pipeline will not start, which
 * check-config (maybe run by someone else than the service) only warns
 * about. */
static void check_identity(parser *p, kh_pipeline *pl, pipeline_state *ps) {
    if (pl->user && !pl->user_group)
        pl->run_as_gid = ps->user_gid;
    uid_t euid = geteuid();
    if (euid == 0)
        return;
    if (pl->user && (uid_t)pl->run_as_uid != euid)
        report_warning(
            p, pl->user_line,
            "user '%s' of [pipeline.%s] needs khost to run as root (this "
            "process runs as uid %u); such a pipeline does not start",
            pl->user, pl->name, (unsigned)euid);
    else if (pl->run_as_gid >= 0 && (gid_t)pl->run_as_gid != getegid())
        report_warning(
            p, pl->user_group ? pl->user_group_line : pl->user_line,
            "user_group of [pipeline.%s] (gid %ld) needs khost to run as "
            "root (this process runs as gid %u); such a pipeline does not "
            "start",
            pl->name, pl->run_as_gid, (unsigned)getegid());
}

static void check_complete(parser *p) {
    kh_config *cfg = p->cfg;
    if (!p->brokers_line)
        report(p, p->host_line ? p->host_line : 1,
               "missing required key 'brokers' in [host]");

    size_t real = 0;
    for (size_t i = 0; i < cfg->n_pipelines; i++) {
        kh_pipeline *pl = &cfg->pipelines[i];
        pipeline_state *ps = &p->ps[i];
        if (!pl->line) {
            if (ps->config_line)
                report(p, ps->config_line,
                       "[pipeline.%s.config] has no matching [pipeline.%s] "
                       "section",
                       pl->name, pl->name);
            if (ps->kafka_line)
                report(p, ps->kafka_line,
                       "[pipeline.%s.kafka] has no matching [pipeline.%s] "
                       "section",
                       pl->name, pl->name);
            continue;
        }
        real++;
        for (int k = 0; k < PK_COUNT; k++)
            if (pipeline_keys[k].required && !ps->key_line[k])
                report(p, pl->line,
                       "[pipeline.%s] is missing required key '%s'", pl->name,
                       pipeline_keys[k].name);
        check_identity(p, pl, ps);
        if (pl->retry_backoff_max_ms < pl->retry_backoff_ms)
            report(p,
                   ps->key_line[PK_RETRY_BACKOFF_MAX_MS]
                       ? ps->key_line[PK_RETRY_BACKOFF_MAX_MS]
                       : ps->key_line[PK_RETRY_BACKOFF_MS],
                   "retry_backoff_max_ms (%d) of [pipeline.%s] is below "
                   "retry_backoff_ms (%d)",
                   pl->retry_backoff_max_ms, pl->name, pl->retry_backoff_ms);
        /* A dead-letter topic that is also consumed would feed failed
         * messages straight back into a handler. */
        for (size_t j = 0; j < cfg->n_pipelines; j++) {
            kh_pipeline *other = &cfg->pipelines[j];
            for (size_t t = 0; other->line && t < other->n_topics; t++) {
                const char *consumed = other->topics[t];
                if (pl->dlq_topic && !strcmp(pl->dlq_topic, consumed))
                    report(p, pl->dlq_topic_line,
                           "dlq_topic '%s' of [pipeline.%s] is consumed by "
                           "[pipeline.%s]; failed messages would loop back",
                           pl->dlq_topic, pl->name, other->name);
                for (size_t u = 0;
                     !pl->dlq_topic && pl->on_failure == KH_ON_FAILURE_DLQ &&
                     u < pl->n_topics;
                     u++) {
                    size_t n = strlen(pl->topics[u]);
                    if (!strncmp(consumed, pl->topics[u], n) &&
                        !strcmp(consumed + n, ".dlq"))
                        report(p, ps->key_line[PK_TOPICS],
                               "the default dead-letter topic '%s' of "
                               "[pipeline.%s] is consumed by [pipeline.%s]; "
                               "set dlq_topic",
                               consumed, pl->name, other->name);
                }
            }
        }
        /* Two pipelines in one group would rebalance each other's
         * partitions away; each pipeline is meant to be its own group. */
        for (size_t j = 0; j < i && pl->group; j++) {
            kh_pipeline *other = &cfg->pipelines[j];
            if (other->line && other->group &&
                strcmp(other->group, pl->group) == 0) {
                report(p, ps->key_line[PK_GROUP],
                       "group '%s' of [pipeline.%s] is already used by "
                       "[pipeline.%s] (line %d); each pipeline needs its "
                       "own consumer group",
                       pl->group, pl->name, other->name,
                       p->ps[j].key_line[PK_GROUP]);
                break;
            }
        }
    }
    if (!real)
        report(p, 1, "no [pipeline.NAME] section");
}

/* ---------------------------------------------------------------------- */

static char *read_file(const char *path, size_t *len, int *err, mode_t *mode) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        *err = errno;
        return NULL;
    }
    struct stat st;
    *mode = fstat(fileno(f), &st) == 0 ? st.st_mode : 0;
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n == cap) {
            if (cap >= CONFIG_MAX_BYTES + 1) {
                *err = EFBIG;
                break;
            }
            cap = cap ? cap * 2 : 4096;
            buf = xrealloc(buf, cap);
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) {
            if (ferror(f))
                *err = errno ? errno : EIO;
            break;
        }
    }
    fclose(f);
    if (*err == 0 && n > CONFIG_MAX_BYTES)
        *err = EFBIG;
    if (*err) {
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

static char *dir_of(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash)
        return xstrdup(".");
    if (slash == path)
        return xstrdup("/");
    return xstrndup(path, (size_t)(slash - path));
}

int config_load(const char *path, kh_config *cfg, kh_errors *errs) {
    if (!cfg || !errs)
        return -1;
    memset(cfg, 0, sizeof *cfg);
    if (!path || !*path) {
        errors_add(errs, "(none):0: no config file given");
        return -1;
    }
    cfg->path = xstrdup(path);
    cfg->dir = dir_of(path);
    for (size_t i = 0; i < N_HOST_INT_KEYS; i++)
        *(int *)((char *)cfg + host_int_keys[i].field) = host_int_keys[i].def;

    size_t len = 0;
    int err = 0;
    mode_t mode = 0;
    char *text = read_file(path, &len, &err, &mode);
    if (!text) {
        if (err == EFBIG)
            errors_add(errs, "%s:0: cannot read: larger than %d bytes", path,
                       CONFIG_MAX_BYTES);
        else
            errors_add(errs, "%s:0: cannot read: %s", path, strerror(err));
        return -1;
    }

    size_t longest = 0;
    for (size_t i = 0; i < len;) {
        const char *nl = memchr(text + i, '\n', len - i);
        size_t n = nl ? (size_t)(nl - (text + i)) + 1 : len - i;
        if (n > longest)
            longest = n;
        i += n;
    }

    parser p = {
        .path = path, .cfg = cfg, .text = text, .len = len, .file_mode = mode};
    int rc = with_ini_settings(&p, longest);
    if (rc == -2)
        report(&p, 0, "out of memory while parsing");
    else if (rc > 0) {
        /* classify_line should have caught it; report it anyway rather
         * than accept a line we did not understand. */
        bool known = false;
        for (size_t i = 0; i < p.n_diags && !known; i++)
            known = p.diags[i].line == rc;
        if (!known)
            report(&p, rc, "syntax error");
    }
    check_complete(&p);

    if (p.n_diags)
        qsort(p.diags, p.n_diags, sizeof *p.diags, diag_cmp);
    for (size_t i = 0; i < p.n_diags; i++) {
        if (i < CONFIG_MAX_ERRORS)
            errors_add(errs, "%s:%d: %s", path, p.diags[i].line,
                       p.diags[i].msg);
        else if (i == CONFIG_MAX_ERRORS)
            errors_add(errs, "%s:%d: %zu more errors not shown", path,
                       p.diags[i].line, p.n_diags - CONFIG_MAX_ERRORS);
        free(p.diags[i].msg);
    }
    size_t n_errors = p.n_diags;
    free(p.diags);
    if (p.n_warns)
        qsort(p.warns, p.n_warns, sizeof *p.warns, diag_cmp);
    for (size_t i = 0; i < p.n_warns; i++) {
        if (i < CONFIG_MAX_ERRORS)
            errors_add(&cfg->warnings, "%s:%d: %s", path, p.warns[i].line,
                       p.warns[i].msg);
        free(p.warns[i].msg);
    }
    free(p.warns);
    free(p.ps);
    free(p.section);
    free(p.scratch);
    free(text);
    return n_errors ? -1 : 0;
}
