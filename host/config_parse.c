/*
 * config_parse: the parser. inih splits "key = value" lines and strips
 * comments; everything else is ours: we hand inih one line at a time
 * through ini_parse_stream's reader, which gives us the line number of
 * every pair, section headers as events (even for sections without keys),
 * and one report per malformed line instead of only the first. Sections,
 * keys, ${VAR} and ${VAR:-default} expansion and secrets checks live
 * here.
 */
#define _GNU_SOURCE
#include "config_internal.h"
#include "log.h"

#include <arpa/inet.h>
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
#include <sys/un.h>
#include <unistd.h>

static const char *const host_keys[] = {
    "brokers",         "control_socket", "log_format",         "log_level",
    "mock_partitions", "mock_seed",      "prefetch_budget_mb", "watch"};
static const char *const http_keys[] = {"listen", "token"};

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

/* Expands every ${VAR} and ${VAR:-default}. Reports each problem and
 * returns NULL if any. */
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
        /* ${VAR:-default}: the default (literal, up to the first '}')
         * when VAR is unset or empty, as in the shell. */
        const char *def = NULL;
        const char *sep = memmem(name, n, ":-", 2);
        if (sep) {
            def = sep + 2;
            n = (size_t)(sep - name);
        }
        if (!is_env_name(name, n)) {
            report(p, p->lineno,
                   "invalid environment variable name '%.*s' in value of "
                   "'%s'",
                   (int)n, name, key);
            ok = false;
        } else {
            char *var = xstrndup(name, n);
            const char *env = getenv(var);
            if (def && (!env || !*env)) {
                sb_add(&out, def, (size_t)(close - def));
            } else if (!env) {
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
    static const char *const tops[] = {"host", "kafka", "http"};
    const char *top = closest(name, tops, 3);
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
               "unknown section [%s] (expected [host], [kafka], [http], "
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
    if (strcmp(name, "http") == 0) {
        if (claim(p, &p->http_line))
            p->kind = SEC_HTTP;
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

/* True when a value takes something from the environment and writes no
 * default of its own: ${VAR} or ${VAR:-}, not ${VAR:-hunter2}. */
static bool from_env_only(const char *raw) {
    const char *s = strstr(raw, "${");
    if (!s)
        return false;
    for (; s; s = strstr(s + 2, "${")) {
        const char *close = strchr(s, '}');
        const char *sep = strstr(s, ":-");
        if (sep && (!close || sep < close) && sep[2] != '}' && sep[2])
            return false;
    }
    return true;
}

/* A credential written into a file that others may read is a leak
 * waiting to happen: warn, but leave the file valid. A value with a
 * ${VAR} in it counts as coming from the environment, unless it also
 * writes out a default (${VAR:-value}). */
static void check_secret(parser *p, const char *key, const char *raw) {
    if (!(p->file_mode & (S_IRGRP | S_IROTH)) || !*raw || from_env_only(raw) ||
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

/* control_socket = PATH: relative to the config file's folder, and short
 * enough for sockaddr_un's sun_path (the kernel's limit, 107 bytes). */
static void on_control_socket(parser *p, const char *raw) {
    kh_config *cfg = p->cfg;
    if (cfg->control_socket_line) {
        report(p, p->lineno,
               "duplicate key 'control_socket' in [host] (first at line %d)",
               cfg->control_socket_line);
        return;
    }
    cfg->control_socket_line = p->lineno;
    char *value = expand_env(p, "control_socket", raw);
    if (!value)
        return;
    char *path = NULL;
    if (!*value || value[strlen(value) - 1] == '/') {
        report(p, p->lineno,
               "bad value '%s' for 'control_socket' in [host]: expected the "
               "path of a socket file",
               value);
        free(value);
        return;
    }
    if (value[0] == '/') {
        path = xstrdup(value);
    } else {
        const char *dir = cfg->dir;
        size_t dl = strlen(dir);
        bool slash = dl > 0 && dir[dl - 1] == '/';
        if (asprintf(&path, "%s%s%s", dir, slash ? "" : "/", value) < 0)
            out_of_memory();
    }
    size_t max = sizeof(((struct sockaddr_un *)0)->sun_path) - 1;
    if (strlen(path) > max) {
        report(p, p->lineno,
               "bad value '%s' for 'control_socket' in [host]: %s is %zu "
               "bytes, a unix socket path holds at most %zu",
               value, path, strlen(path), max);
        free(path);
    } else {
        free(cfg->control_socket);
        cfg->control_socket = path;
    }
    free(value);
}

/* log_level = error|warn|info|debug, log_format = text|json. */
static void on_host_log_key(parser *p, const char *key, const char *raw) {
    bool level = strcmp(key, "log_level") == 0;
    int *line = level ? &p->log_level_line : &p->log_format_line;
    if (*line) {
        report(p, p->lineno, "duplicate key '%s' in [host] (first at line %d)",
               key, *line);
        return;
    }
    *line = p->lineno;
    char *value = expand_env(p, key, raw);
    if (!value)
        return;
    if (level) {
        int l = klog_level_parse(value);
        if (l < 0)
            report(p, p->lineno,
                   "bad value '%s' for 'log_level' in [host]: expected "
                   "error, warn, info or debug",
                   value);
        else
            p->cfg->log_level = l;
    } else if (strcmp(value, "text") == 0) {
        p->cfg->log_format = KLOG_TEXT;
    } else if (strcmp(value, "json") == 0) {
        p->cfg->log_format = KLOG_JSON;
    } else {
        report(p, p->lineno,
               "bad value '%s' for 'log_format' in [host]: expected text or "
               "json",
               value);
    }
    free(value);
}

/* [http] listen = HOST:PORT, HOST an IPv4 literal or localhost; and
 * token = SECRET. Whether a token is needed is decided once the whole
 * section is read (check_complete). */
static void on_http_listen(parser *p, const char *raw) {
    kh_config *cfg = p->cfg;
    char *value = expand_env(p, "listen", raw);
    if (!value)
        return;
    const char *colon = strrchr(value, ':');
    long long port = 0;
    char host[64] = "";
    struct in_addr a;
    size_t hl = colon ? (size_t)(colon - value) : 0;
    if (!colon || hl == 0 || hl >= sizeof host) {
        report(p, p->lineno,
               "bad value '%s' for 'listen' in [http]: expected HOST:PORT, "
               "e.g. 127.0.0.1:9464",
               value);
        free(value);
        return;
    }
    memcpy(host, value, hl);
    host[hl] = '\0';
    if (!isdigit((unsigned char)colon[1]) || !parse_ll(colon + 1, &port) ||
        port < 1 || port > 65535) {
        report(p, p->lineno,
               "bad value '%s' for 'listen' in [http]: port must be in "
               "1..65535",
               value);
        free(value);
        return;
    }
    const char *lit = strcmp(host, "localhost") == 0 ? "127.0.0.1" : host;
    if (inet_pton(AF_INET, lit, &a) != 1) {
        report(p, p->lineno,
               "bad value '%s' for 'listen' in [http]: '%s' is not an IPv4 "
               "address or localhost",
               value, host);
        free(value);
        return;
    }
    free(cfg->http_listen);
    free(cfg->http_addr);
    cfg->http_listen = value;
    cfg->http_addr = xstrdup(lit);
    cfg->http_port = (int)port;
    cfg->http_loopback = (ntohl(a.s_addr) >> 24) == 127;
}

static void on_http_key(parser *p, const char *key, const char *raw) {
    kh_config *cfg = p->cfg;
    bool listen = strcmp(key, "listen") == 0;
    if (!listen && strcmp(key, "token") != 0) {
        const char *hint =
            closest(key, http_keys, sizeof http_keys / sizeof http_keys[0]);
        if (hint)
            report(p, p->lineno,
                   "unknown key '%s' in [http] (did you mean '%s'?)", key,
                   hint);
        else
            report(p, p->lineno,
                   "unknown key '%s' in [http] (expected listen or token)",
                   key);
        return;
    }
    int *line = listen ? &cfg->http_listen_line : &cfg->http_token_line;
    if (*line) {
        report(p, p->lineno, "duplicate key '%s' in [http] (first at line %d)",
               key, *line);
        return;
    }
    *line = p->lineno;
    if (listen) {
        on_http_listen(p, raw);
        return;
    }
    char *value = expand_env(p, key, raw);
    if (!value)
        return;
    if (!*value) {
        report(p, p->lineno,
               "empty value for 'token' in [http] (is its variable set?)");
        free(value);
        return;
    }
    free(cfg->http_token);
    cfg->http_token = value;
    check_secret(p, key, raw);
}

static void on_host_key(parser *p, const char *key, const char *raw) {
    if (strcmp(key, "control_socket") == 0) {
        on_control_socket(p, raw);
        return;
    }
    if (strcmp(key, "log_level") == 0 || strcmp(key, "log_format") == 0) {
        on_host_log_key(p, key, raw);
        return;
    }
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

#ifndef KHOST_PLUGIN_DIR
#error "KHOST_PLUGIN_DIR (the installed plugin folder) is set by CMake"
#endif
const char *config_plugin_dir = KHOST_PLUGIN_DIR;

static char *path_in(const char *dir, const char *name) {
    size_t dl = strlen(dir);
    bool slash = dl > 0 && dir[dl - 1] == '/';
    char *s = NULL;
    if (asprintf(&s, "%s%s%s", dir, slash ? "" : "/", name) < 0)
        out_of_memory();
    return s;
}

/* A relative plugin: next to the config file, else in the installed
 * plugin folder, the first that exists. Existence is all that is checked
 * here; whether it loads is the loader's business. */
static void set_plugin(parser *p, kh_pipeline *pl, char *value) {
    pl->plugin = value;
    pl->plugin_line = p->lineno;
    if (value[0] == '/') {
        pl->plugin_path = xstrdup(value);
        return;
    }
    struct stat st;
    pl->plugin_path = path_in(p->cfg->dir, value);
    if (stat(pl->plugin_path, &st) == 0 || !*config_plugin_dir)
        return;
    char *installed = path_in(config_plugin_dir, value);
    if (stat(installed, &st) == 0) {
        free(pl->plugin_path);
        pl->plugin_path = installed;
    } else {
        pl->plugin_tried = installed;
    }
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
    case SEC_HTTP:
        on_http_key(p, name, value);
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
int with_ini_settings(parser *p, size_t longest) {
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
