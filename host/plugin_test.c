/*
 * plugin_test: `khost plugin-test PLUGIN.so < MESSAGES.jsonl` (see
 * plugin_test.h). It reads every input line first, then drives its
 * workers from one poll loop: at most one handler call per worker at a
 * time, so the message in hand when a worker dies or hangs is known
 * exactly, and messages of one partition are handed over in order.
 *
 * What it applies like the host (dispatch.c, failure.c, supervisor.c):
 * RETRY redelivers the message (attempt + 1) after retry_backoff_ms
 * doubling, and fails it on its max_attempts-th delivery; FAIL fails it
 * at once; a failed message goes to on_failure (dlq and skip resolve it,
 * pause holds the rest of its partition); a crash or hang counts an
 * attempt for every unresolved message of the worker's partitions and
 * redelivers them after a restart, and the message in hand fails after
 * poison_after crashes; a deferred message not acked within
 * deferred_timeout_ms is retried; more than max_restarts restarts within
 * max_seconds stop the run. At the end every partition is revoked
 * (on_revoke), then SHUTDOWN (tick, terminate): acks sent until the
 * worker exits count.
 *
 * Where it differs from the host: no Kafka, so "dead-lettered" means the
 * message would have been produced to the dead-letter topic; messages
 * are sent one per MESSAGES frame (handle_batch sees batches of one); a
 * rewind never redelivers a message already acked.
 */
#define _GNU_SOURCE
#include "plugin_test.h"
#include "config.h"
#include "log.h"
#include "plugin_output.h"
#include "transport.h"
#include "worker_proc.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PT_MAX_WORKERS 64

static const char usage_line[] =
    "usage: khost plugin-test PLUGIN.so [--config KEY=VALUE]... "
    "[--ini FILE --pipeline NAME]\n"
    "       [--workers N] [--retries N] [--retry-backoff-ms MS] "
    "[--timeout-ms MS]\n"
    "       [--deferred-timeout-ms MS] [--linger-ms MS] [--input FILE] "
    "[--expect FILE]\n"
    "       < MESSAGES.jsonl";

static void print_help(void) {
    printf(
        "%s\n"
        "\n"
        "Run a plugin against chosen messages, with no Kafka, in real khost\n"
        "worker processes (the same exec, channel, hardening and crash\n"
        "handling as `khost run`). Retries, crashes, hangs, deferred acks\n"
        "and on_failure are applied like the host applies them.\n"
        "\n"
        "Options:\n"
        "  --config KEY=VALUE    a key of the plugin's config (init), "
        "repeatable;\n"
        "                        overrides the ini's [pipeline.NAME.config]\n"
        "  --ini FILE --pipeline NAME\n"
        "                        take the pipeline's settings and plugin "
        "config\n"
        "                        from FILE (max_attempts, retry_backoff_ms,\n"
        "                        handler_timeout_ms, poison_after, "
        "on_failure,\n"
        "                        tick_interval_ms, deferred_timeout_ms, "
        "workers,\n"
        "                        limits, user); defaults otherwise\n"
        "  --workers N           worker processes (default: the pipeline's, "
        "1);\n"
        "                        partitions go to them in turn\n"
        "  --retries N           redeliveries after RETRY answers before the\n"
        "                        message fails (default max_attempts - 1 = "
        "4)\n"
        "  --retry-backoff-ms MS first redelivery delay, doubling (default\n"
        "                        retry_backoff_ms, 100)\n"
        "  --timeout-ms MS       a handler call longer than this is a hang:\n"
        "                        the worker is killed (default\n"
        "                        handler_timeout_ms, 30000; 0: never)\n"
        "  --deferred-timeout-ms MS\n"
        "                        a DEFERRED message not acked within MS is\n"
        "                        retried (default deferred_timeout_ms, "
        "300000)\n"
        "  --linger-ms MS        at the end of the input, wait this long for\n"
        "                        deferred acks before the revoke and shutdown\n"
        "                        (default tick_interval_ms, 1000)\n"
        "  --input FILE          read messages from FILE instead of stdin\n"
        "  --expect FILE         compare the results with FILE (see below)\n"
        "\n"
        "Input: one JSON object per line (blank lines are skipped):\n"
        "  topic (default \"test\"), partition (default 0), offset (default:\n"
        "  the partition's previous + 1, from 0; must grow per partition),\n"
        "  key or key_b64, value or value_b64 (text, or base64; null or\n"
        "  absent: null), headers ({\"NAME\": \"VALUE\"} or [{\"name\": N,\n"
        "  \"value\"|\"value_b64\": V}]), timestamp (ms, default now), "
        "attempt\n"
        "  (of the first delivery, default 1). A malformed line is reported\n"
        "  with its line number and left out; the others still run.\n"
        "\n"
        "Output, on stdout, one JSON object per line:\n"
        "  per message, when it is resolved: line, topic, partition, offset,\n"
        "    result (ack, dead-lettered, skipped, paused, unacked, not-run),\n"
        "    attempts, handle_ms (last call, measured in the worker),\n"
        "    deferred_ack_ms (DEFERRED answer to ack, or null), error (the\n"
        "    last set_error text, or null), reason (why it is not acked);\n"
        "  {\"line\": N, \"result\": \"invalid\", \"error\": TEXT} per "
        "malformed line;\n"
        "  {\"event\": \"crash\"|\"hang\"|\"restart\"|\"init_failed\", ...} as "
        "they happen\n"
        "    (a crash names worker, pid, how, signal and the message in "
        "hand);\n"
        "  last, {\"summary\": {messages, ack, dead_lettered, skipped, "
        "paused,\n"
        "    unacked, not_run, invalid_lines, retries, crashes, hangs,\n"
        "    restarts, exit}}.\n"
        "\n"
        "--expect FILE: JSON lines; {\"offset\": N, ...} (topic and "
        "partition as in\n"
        "the input) must match that message's result line in every field it\n"
        "gives; {\"summary\": {...}} must match the summary's given fields.\n"
        "\n"
        "The plugin's stdout and stderr are logged on stderr, tagged and\n"
        "rate-limited as by khost run; plugin-test's own lines go there too.\n"
        "\n"
        "Exit status: 0 every message was acked (with --expect: the results\n"
        "match); 1 a message was not acked; 2 bad usage, ini or plugin, or\n"
        "init failed; 3 malformed input lines (the rest ran); 4 --expect\n"
        "differs. When several apply: 2, then 3, then 4 or 1.\n",
        usage_line);
}

/* ---- messages ---- */

typedef enum pt_state {
    PT_PENDING = 0, /* waiting for its (next) delivery */
    PT_IN_CALL,     /* sent, no result yet */
    PT_DEFERRED,    /* answered DEFERRED, not acked yet */
    PT_DONE,
} pt_state;

typedef struct pt_blob {
    uint8_t *p;
    size_t len;
    bool null;
} pt_blob;

typedef struct pt_msg {
    int line;
    int part; /* index in pt.parts */
    int64_t offset;
    int64_t timestamp;
    pt_blob key, value;
    size_t n_headers;
    char **header_names;
    pt_blob *header_values;
    uint32_t next_attempt;
    uint32_t attempts; /* deliveries so far */
    uint64_t token;    /* of the latest delivery */
    int crashes;       /* crashes or hangs with it in hand */
    pt_state state;
    double deferred_at_ms;  /* now_ms() */
    double deferred_ack_ms; /* < 0: not deferred */
    double handle_ms;       /* < 0: no call finished */
    char *error;            /* last set_error text */
    const char *result;
    char reason[300];
} pt_msg;

typedef struct pt_part {
    char *topic;
    int32_t partition;
    int worker;
    size_t *msgs; /* indices into pt.msgs, by offset */
    size_t n, cap;
    size_t lo;             /* messages before lo are done */
    size_t hi;             /* messages from hi on were never sent */
    size_t pending;        /* messages PT_PENDING */
    int64_t backoff_until; /* retry backoff, kh_now_ms */
    bool held;             /* on_failure = pause */
    int64_t held_offset;
    bool assigned;       /* on the worker's current process */
    bool resume_owed;    /* the worker holds it after RETRY/FAIL */
    int64_t last_offset; /* input check */
} pt_part;

typedef enum pt_wstate { PT_W_DOWN = 0, PT_W_STARTING, PT_W_READY } pt_wstate;

typedef struct pt_worker {
    int index;
    pt_wstate state;
    kh_worker_proc proc;
    kh_conn conn;
    int64_t started_ms;
    size_t call; /* message in the call in progress, or SIZE_MAX */
    uint64_t call_sum_ns;
    unsigned rr;
    bool hung;               /* killed by us for a hang */
    char lie[160];           /* killed by us for another reason */
    char init_error[512];    /* its INIT_FAILED text */
    kh_plugin_output output; /* the plugin's stdout and stderr */
    char out_tag[96];
    uint64_t plugin_flags; /* from READY: the descriptor's flags */
} pt_worker;

typedef struct pt {
    kh_config cfg;
    const kh_pipeline *pl;
    kh_pipeline pl_copy; /* with the command line's overrides */
    char *plugin;        /* absolute path */
    int max_attempts, retry_backoff_ms, timeout_ms, deferred_timeout_ms;
    int linger_ms, n_workers;
    pt_msg *msgs;
    size_t n_msgs, cap_msgs;
    pt_part *parts;
    size_t n_parts, cap_parts;
    size_t *tokens; /* token - 1 -> message */
    size_t n_tokens, cap_tokens;
    pt_worker workers[PT_MAX_WORKERS];
    size_t n_state[4]; /* messages per pt_state */
    int64_t *restart_times;
    size_t n_restart_times;
    json_t *results; /* object "topic/partition/offset" -> result line */
    int invalid_lines, retries, crashes, hangs, restarts;
    char **owned; /* --config strings */
    size_t n_owned, cap_owned;
    kh_kv *own_config; /* the config array with them, or NULL */
    bool finishing;    /* revokes and SHUTDOWN sent: no restarts */
    bool fatal;        /* init failed, or the restart limit: stop */
    int fatal_code;
} pt;

/* CLOCK_MONOTONIC in ms, to the microsecond (kh_now_ms is whole ms). */
static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) {
        fprintf(stderr, "khost plugin-test: out of memory\n");
        exit(KH_PT_SETUP);
    }
    return q;
}

#define GROW(arr, n, cap)                                                      \
    do {                                                                       \
        if ((n) == (cap)) {                                                    \
            (cap) = (cap) ? 2 * (cap) : 16;                                    \
            (arr) = xrealloc((arr), (cap) * sizeof *(arr));                    \
        }                                                                      \
    } while (0)

static char *xstrdup(const char *s) {
    char *d = strdup(s);
    if (!d)
        xrealloc(NULL, SIZE_MAX / 2);
    return d;
}

/* Every change of a message's state goes through here: the counts keep
 * the main loop's questions (work left? anything deferred?) from
 * scanning every message. */
static void set_state(pt *t, pt_msg *m, pt_state s) {
    t->n_state[m->state]--;
    if (m->state == PT_PENDING)
        t->parts[m->part].pending--;
    m->state = s;
    t->n_state[s]++;
    if (s == PT_PENDING)
        t->parts[m->part].pending++;
}

/* ---- input ---- */

static int b64_value(int c) {
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+' || c == '-')
        return 62;
    if (c == '/' || c == '_')
        return 63;
    return -1;
}

/* Standard or URL-safe base64, padding optional. Returns -1 on a bad
 * character or length. */
static int b64_decode(const char *s, pt_blob *out) {
    size_t n = strlen(s);
    while (n && s[n - 1] == '=')
        n--;
    if (n % 4 == 1)
        return -1;
    out->p = xrealloc(NULL, n * 3 / 4 + 1);
    out->len = 0;
    out->null = false;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b64_value((unsigned char)s[i]);
        if (v < 0) {
            free(out->p);
            out->p = NULL;
            return -1;
        }
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out->p[out->len++] = (uint8_t)(acc >> bits);
        }
    }
    return 0;
}

/* A text or base64 field pair (NAME, NAME_b64) of o into out. */
static int get_blob(json_t *o, const char *name, pt_blob *out, char *err,
                    size_t len) {
    char b64name[64];
    snprintf(b64name, sizeof b64name, "%s_b64", name);
    json_t *t = json_object_get(o, name), *b = json_object_get(o, b64name);
    memset(out, 0, sizeof *out);
    out->null = true;
    if (t && b && !json_is_null(t) && !json_is_null(b)) {
        snprintf(err, len, "give %s or %s, not both", name, b64name);
        return -1;
    }
    if (t && !json_is_null(t)) {
        if (!json_is_string(t)) {
            snprintf(err, len, "%s must be a string or null", name);
            return -1;
        }
        out->len = json_string_length(t);
        out->p = xrealloc(NULL, out->len);
        memcpy(out->p, json_string_value(t), out->len);
        out->null = false;
    } else if (b && !json_is_null(b)) {
        if (!json_is_string(b) || b64_decode(json_string_value(b), out) != 0) {
            snprintf(err, len, "%s is not valid base64", b64name);
            return -1;
        }
    }
    return 0;
}

static void blob_free(pt_blob *b) {
    free(b->p);
    b->p = NULL;
}

static void msg_free(pt_msg *m) {
    blob_free(&m->key);
    blob_free(&m->value);
    for (size_t i = 0; i < m->n_headers; i++) {
        free(m->header_names[i]);
        blob_free(&m->header_values[i]);
    }
    free(m->header_names);
    free(m->header_values);
    free(m->error);
}

static int add_header(pt_msg *m, const char *name, json_t *v, json_t *v64,
                      char *err, size_t len) {
    size_t i = m->n_headers++;
    m->header_names =
        xrealloc(m->header_names, m->n_headers * sizeof *m->header_names);
    m->header_values =
        xrealloc(m->header_values, m->n_headers * sizeof *m->header_values);
    m->header_names[i] = xstrdup(name);
    pt_blob *b = &m->header_values[i];
    memset(b, 0, sizeof *b);
    b->null = true;
    if (v && v64 && !json_is_null(v) && !json_is_null(v64)) {
        snprintf(err, len, "header \"%s\": give value or value_b64, not both",
                 name);
        return -1;
    }
    if (v && !json_is_null(v)) {
        if (!json_is_string(v)) {
            snprintf(err, len, "header \"%s\": its value must be a string",
                     name);
            return -1;
        }
        b->len = json_string_length(v);
        b->p = xrealloc(NULL, b->len);
        memcpy(b->p, json_string_value(v), b->len);
        b->null = false;
    } else if (v64 && !json_is_null(v64)) {
        if (!json_is_string(v64) || b64_decode(json_string_value(v64), b)) {
            snprintf(err, len, "header \"%s\": value_b64 is not valid base64",
                     name);
            return -1;
        }
    }
    return 0;
}

static int get_headers(json_t *h, pt_msg *m, char *err, size_t len) {
    if (!h || json_is_null(h))
        return 0;
    if (json_is_object(h)) {
        const char *k;
        json_t *v;
        json_object_foreach(h, k, v) {
            if (add_header(m, k, v, NULL, err, len) != 0)
                return -1;
        }
        return 0;
    }
    if (!json_is_array(h)) {
        snprintf(err, len, "headers must be an object or an array");
        return -1;
    }
    size_t i;
    json_t *e;
    json_array_foreach(h, i, e) {
        json_t *name = json_object_get(e, "name");
        if (!json_is_object(e) || !json_is_string(name)) {
            snprintf(err, len, "headers[%zu] needs a string \"name\"", i);
            return -1;
        }
        const char *k;
        json_t *v;
        json_object_foreach(e, k, v) {
            if (strcmp(k, "name") && strcmp(k, "value") &&
                strcmp(k, "value_b64")) {
                snprintf(err, len, "headers[%zu]: unknown field \"%s\"", i, k);
                return -1;
            }
        }
        if (add_header(m, json_string_value(name), json_object_get(e, "value"),
                       json_object_get(e, "value_b64"), err, len) != 0)
            return -1;
    }
    return 0;
}

static int find_part(pt *t, const char *topic, int32_t partition) {
    for (size_t i = 0; i < t->n_parts; i++)
        if (t->parts[i].partition == partition &&
            !strcmp(t->parts[i].topic, topic))
            return (int)i;
    return -1;
}

static bool get_int(json_t *o, const char *name, json_int_t min, json_int_t max,
                    json_int_t *out, bool *given, char *err, size_t len) {
    json_t *v = json_object_get(o, name);
    *given = v && !json_is_null(v);
    if (!*given)
        return true;
    if (!json_is_integer(v) || json_integer_value(v) < min ||
        json_integer_value(v) > max) {
        snprintf(err, len, "%s must be an integer from %lld to %lld", name,
                 (long long)min, (long long)max);
        return false;
    }
    *out = json_integer_value(v);
    return true;
}

static const char *const known_fields[] = {
    "topic",     "partition", "offset",    "key",     "key_b64", "value",
    "value_b64", "headers",   "timestamp", "attempt", NULL};

/* Parse one input line into a message; -1 with err[] set. */
static int parse_line(pt *t, const char *text, int line, char *err,
                      size_t len) {
    json_error_t je;
    json_t *o = json_loads(text, JSON_REJECT_DUPLICATES, &je);
    if (!o) {
        snprintf(err, len, "not JSON: %s (column %d)", je.text, je.column);
        return -1;
    }
    int rc = -1;
    pt_msg m = {.line = line,
                .next_attempt = 1,
                .handle_ms = -1,
                .deferred_ack_ms = -1};
    if (!json_is_object(o)) {
        snprintf(err, len, "a message must be a JSON object");
        goto out;
    }
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v) {
        bool known = false;
        for (int i = 0; known_fields[i]; i++)
            known = known || !strcmp(k, known_fields[i]);
        if (!known) {
            snprintf(err, len, "unknown field \"%s\"", k);
            goto out;
        }
    }
    json_t *topic = json_object_get(o, "topic");
    if (topic && !json_is_string(topic)) {
        snprintf(err, len, "topic must be a string");
        goto out;
    }
    const char *tname = topic ? json_string_value(topic) : "test";
    if (!*tname || strlen(tname) > 249) {
        snprintf(err, len, "topic must have 1 to 249 characters");
        goto out;
    }
    json_int_t partition = 0, offset = 0, ts = 0, attempt = 1;
    bool has_p, has_o, has_ts, has_a;
    if (!get_int(o, "partition", 0, INT32_MAX, &partition, &has_p, err, len) ||
        !get_int(o, "offset", 0, INT64_MAX, &offset, &has_o, err, len) ||
        !get_int(o, "timestamp", -1, INT64_MAX, &ts, &has_ts, err, len) ||
        !get_int(o, "attempt", 1, UINT32_MAX / 2, &attempt, &has_a, err, len))
        goto out;
    if (get_blob(o, "key", &m.key, err, len) != 0 ||
        get_blob(o, "value", &m.value, err, len) != 0 ||
        get_headers(json_object_get(o, "headers"), &m, err, len) != 0)
        goto out;
    int pi = find_part(t, tname, (int32_t)partition);
    int64_t prev = pi >= 0 ? t->parts[pi].last_offset : -1;
    if (!has_o)
        offset = prev + 1;
    else if (offset <= prev) {
        snprintf(err, len,
                 "offset %lld of %s partition %lld does not come after %lld "
                 "(offsets must grow within a partition)",
                 (long long)offset, tname, (long long)partition,
                 (long long)prev);
        goto out;
    }
    if (!has_ts) {
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        ts = (json_int_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
    }
    if (pi < 0) {
        GROW(t->parts, t->n_parts, t->cap_parts);
        pi = (int)t->n_parts++;
        pt_part *p = &t->parts[pi];
        memset(p, 0, sizeof *p);
        p->topic = xstrdup(tname);
        p->partition = (int32_t)partition;
    }
    pt_part *p = &t->parts[pi];
    p->last_offset = offset;
    m.part = pi;
    m.offset = offset;
    m.timestamp = ts;
    m.next_attempt = (uint32_t)attempt;
    GROW(t->msgs, t->n_msgs, t->cap_msgs);
    GROW(p->msgs, p->n, p->cap);
    p->msgs[p->n++] = t->n_msgs;
    p->pending++;
    t->n_state[PT_PENDING]++;
    t->msgs[t->n_msgs++] = m;
    rc = 0;
out:
    if (rc != 0)
        msg_free(&m);
    json_decref(o);
    return rc;
}

static void emit(json_t *o) {
    char *s = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII |
                                JSON_REAL_PRECISION(6));
    if (s) {
        puts(s);
        fflush(stdout);
        free(s);
    }
    json_decref(o);
}

static void read_input(pt *t, FILE *in, const char *name) {
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int no = 0;
    while ((n = getline(&line, &cap, in)) >= 0) {
        no++;
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = '\0';
        size_t sp = strspn(line, " \t");
        if (!line[sp])
            continue;
        char err[400];
        if (parse_line(t, line, no, err, sizeof err) != 0) {
            fprintf(stderr, "khost plugin-test: %s:%d: %s\n", name, no, err);
            emit(json_pack("{s:i,s:s,s:s}", "line", no, "result", "invalid",
                           "error", err));
            t->invalid_lines++;
        }
    }
    free(line);
}

/* ---- results ---- */

static json_t *msg_json(const pt *t, const pt_msg *m) {
    const pt_part *p = &t->parts[m->part];
    json_t *o = json_pack("{s:i,s:s,s:i,s:I,s:s,s:i}", "line", m->line, "topic",
                          p->topic, "partition", (int)p->partition, "offset",
                          (json_int_t)m->offset, "result", m->result,
                          "attempts", (int)m->attempts);
    json_object_set_new(o, "handle_ms",
                        m->handle_ms >= 0 ? json_real(m->handle_ms)
                                          : json_null());
    json_object_set_new(o, "deferred_ack_ms",
                        m->deferred_ack_ms >= 0 ? json_real(m->deferred_ack_ms)
                                                : json_null());
    json_object_set_new(o, "error",
                        m->error ? json_string(m->error) : json_null());
    json_object_set_new(o, "reason",
                        m->reason[0] ? json_string(m->reason) : json_null());
    return o;
}

static char *result_key(const char *topic, int32_t partition, int64_t off) {
    char *k;
    if (asprintf(&k, "%s/%" PRId32 "/%" PRId64, topic, partition, off) < 0)
        xrealloc(NULL, SIZE_MAX / 2);
    return k;
}

static void resolve(pt *t, pt_msg *m, const char *result, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void resolve(pt *t, pt_msg *m, const char *result, const char *fmt,
                    ...) {
    set_state(t, m, PT_DONE);
    m->result = result;
    m->reason[0] = '\0';
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(m->reason, sizeof m->reason, fmt, ap);
        va_end(ap);
    }
    json_t *o = msg_json(t, m);
    char *k = result_key(t->parts[m->part].topic, t->parts[m->part].partition,
                         m->offset);
    json_object_set(t->results, k, o);
    free(k);
    emit(o);
    pt_part *p = &t->parts[m->part];
    while (p->lo < p->n && t->msgs[p->msgs[p->lo]].state == PT_DONE)
        p->lo++;
}

static const char *policy_name(kh_on_failure f) {
    return f == KH_ON_FAILURE_SKIP    ? "skip"
           : f == KH_ON_FAILURE_PAUSE ? "pause"
                                      : "dlq";
}

/* m failed (fail answer, retries used up, poison): on_failure. */
static void fail_msg(pt *t, pt_msg *m, const char *why) {
    pt_part *p = &t->parts[m->part];
    switch (t->pl->on_failure) {
    case KH_ON_FAILURE_SKIP:
        resolve(t, m, "skipped", "%s; on_failure=skip", why);
        break;
    case KH_ON_FAILURE_PAUSE:
        p->held = true;
        p->held_offset = m->offset;
        resolve(t, m, "paused", "%s; on_failure=pause holds the partition",
                why);
        break;
    default:
        resolve(t, m, "dead-lettered", "%s; on_failure=dlq", why);
    }
    klog_warn("pipeline=%s topic=%s partition=%d offset=%lld: %s (on_failure="
              "%s)",
              t->pl->name, p->topic, p->partition, (long long)m->offset, why,
              policy_name(t->pl->on_failure));
}

static int64_t retry_delay(const pt *t, uint32_t attempt) {
    int64_t d = t->retry_backoff_ms;
    for (uint32_t i = 1; i < attempt && d < t->pl->retry_backoff_max_ms; i++)
        d *= 2;
    return d < t->pl->retry_backoff_max_ms ? d : t->pl->retry_backoff_max_ms;
}

/* m (delivered attempt m->attempts... ) is to be retried: again, or
 * failed on its max_attempts-th delivery. */
static void retry_msg(pt *t, pt_msg *m, const char *why) {
    uint32_t attempt = m->next_attempt - 1;
    if (attempt >= (uint32_t)t->max_attempts) {
        char reason[200];
        snprintf(reason, sizeof reason,
                 "%s on all %u attempts (max_attempts="
                 "%d)",
                 why, attempt, t->max_attempts);
        fail_msg(t, m, reason);
        return;
    }
    t->retries++;
    set_state(t, m, PT_PENDING);
    pt_part *p = &t->parts[m->part];
    int64_t until = kh_now_ms() + retry_delay(t, attempt);
    if (until > p->backoff_until)
        p->backoff_until = until;
}

/* ---- workers ---- */

static void put_partition_frame(pt_worker *w, kh_frame_type type,
                                const pt_part *p) {
    size_t start = tr_frame_begin(&w->conn.out, type);
    tr_put_str(&w->conn.out, p->topic);
    tr_put_i32(&w->conn.out, p->partition);
    tr_frame_end(&w->conn.out, start);
}

static int spawn_worker(pt *t, pt_worker *w) {
    bool permanent;
    char err[512];
    if (worker_proc_spawn(t->pl, w->index, t->plugin, &w->proc, &permanent, err,
                          sizeof err) != 0) {
        fprintf(stderr, "khost plugin-test: cannot start worker %d: %s\n",
                w->index, err);
        return -1;
    }
    conn_init(&w->conn, w->proc.fd, KH_FRAME_MAX_FROM_WORKER);
    snprintf(w->out_tag, sizeof w->out_tag, "pipeline=%s worker=%d pid=%d",
             t->pl->name, w->index, (int)w->proc.pid);
    worker_proc_put_init(&w->conn.out, t->pl, w->index, t->plugin);
    w->state = PT_W_STARTING;
    w->started_ms = kh_now_ms();
    w->call = SIZE_MAX;
    w->hung = false;
    w->lie[0] = '\0';
    w->init_error[0] = '\0';
    for (size_t i = 0; i < t->n_parts; i++)
        if (t->parts[i].worker == w->index) {
            t->parts[i].assigned = false;
            t->parts[i].resume_owed = false;
        }
    return 0;
}

/* Reap w's process (it is dead or dying: its channel closed, or we
 * killed it); a process that lingers for 2 s is killed. */
static void reap(pt_worker *w, siginfo_t *si) {
    memset(si, 0, sizeof *si);
    for (int i = 0; i < 200; i++) {
        if (waitid(P_PID, (id_t)w->proc.pid, si, WEXITED | WNOHANG) == 0 &&
            si->si_pid == w->proc.pid)
            return;
        if (i == 199)
            break;
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    kill(w->proc.pid, SIGKILL);
    waitid(P_PID, (id_t)w->proc.pid, si, WEXITED);
}

static void close_output(pt_worker *w) {
    if (w->proc.out_fd < 0)
        return;
    plugin_output_read(&w->output, w->proc.out_fd, w->out_tag);
    plugin_output_finish(&w->output, w->out_tag);
    close(w->proc.out_fd);
    w->proc.out_fd = -1;
}

static void release(pt_worker *w) {
    close_output(w);
    conn_close(&w->conn);
    worker_proc_unmap(w->proc.status);
    w->proc.status = NULL;
    w->proc.pid = 0;
    w->state = PT_W_DOWN;
}

static bool restart_limit(pt *t) {
    int64_t now = kh_now_ms();
    size_t cap = (size_t)t->pl->max_restarts + 1;
    if (t->n_restart_times == cap) {
        memmove(t->restart_times, t->restart_times + 1,
                (cap - 1) * sizeof *t->restart_times);
        t->n_restart_times--;
    }
    t->restart_times[t->n_restart_times++] = now;
    return t->n_restart_times == cap &&
           now - t->restart_times[0] <= t->pl->max_seconds * 1000LL;
}

static void stop_all(pt *t, const char *reason) {
    for (size_t i = 0; i < t->n_msgs; i++)
        if (t->msgs[i].state != PT_DONE)
            resolve(t, &t->msgs[i], "not-run", "%s", reason);
}

/* w's process is gone (si says how). A worker that never got READY is an
 * init failure; otherwise a crash: every unresolved message of its
 * partitions counts an attempt and is redelivered after a restart. */
static void worker_died(pt *t, pt_worker *w, const siginfo_t *si,
                        bool planned) {
    char how[200];
    worker_proc_describe_exit(si, how, sizeof how);
    if (w->hung)
        snprintf(how, sizeof how, "killed after --timeout-ms=%d (hang)",
                 t->timeout_ms);
    else if (w->lie[0])
        snprintf(how, sizeof how, "killed: %s", w->lie);
    uint64_t token = 0;
    uint32_t count = 0;
    int64_t started = 0;
    if (w->proc.status)
        status_read(w->proc.status, &token, &count, &started);
    pid_t pid = w->proc.pid;
    bool was_ready = w->state == PT_W_READY;
    size_t suspect = SIZE_MAX;
    if (started && count > 0 && token >= 1 && token <= t->n_tokens) {
        size_t mi = t->tokens[token - 1];
        if (mi == w->call)
            suspect = mi;
    }
    release(w);
    if (planned && si->si_code == CLD_EXITED && si->si_status == 0)
        return;
    if (!was_ready) {
        json_t *e = json_pack("{s:s,s:i,s:i,s:s}", "event", "init_failed",
                              "worker", w->index, "pid", (int)pid, "how", how);
        json_object_set_new(e, "error",
                            w->init_error[0] ? json_string(w->init_error)
                                             : json_null());
        emit(e);
        fprintf(stderr,
                "khost plugin-test: worker %d pid=%d: the plugin did "
                "not start: %s%s%s\n",
                w->index, (int)pid, w->init_error[0] ? w->init_error : how,
                w->init_error[0] ? "; " : "", w->init_error[0] ? how : "");
        t->fatal = true;
        t->fatal_code = KH_PT_SETUP;
        stop_all(t, "the plugin did not start");
        return;
    }
    bool hang = w->hung;
    if (hang)
        t->hangs++;
    else
        t->crashes++;
    json_t *e = json_pack("{s:s,s:i,s:i,s:s}", "event", hang ? "hang" : "crash",
                          "worker", w->index, "pid", (int)pid, "how", how);
    if (si->si_code != CLD_EXITED && sigabbrev_np(si->si_status)) {
        char sig[32];
        snprintf(sig, sizeof sig, "SIG%s", sigabbrev_np(si->si_status));
        json_object_set_new(e, "signal", json_string(sig));
    } else
        json_object_set_new(e, "signal", json_null());
    if (suspect != SIZE_MAX) {
        pt_msg *m = &t->msgs[suspect];
        pt_part *p = &t->parts[m->part];
        json_object_set_new(e, "line", json_integer(m->line));
        json_object_set_new(e, "topic", json_string(p->topic));
        json_object_set_new(e, "partition", json_integer(p->partition));
        json_object_set_new(e, "offset", json_integer(m->offset));
        klog_error("pipeline=%s worker=%d pid=%d crashed: %s while handling "
                   "%s partition=%d offset=%lld",
                   t->pl->name, w->index, (int)pid, how, p->topic, p->partition,
                   (long long)m->offset);
    } else
        klog_error("pipeline=%s worker=%d pid=%d crashed: %s between messages",
                   t->pl->name, w->index, (int)pid, how);
    emit(e);
    w->call = SIZE_MAX;
    if (t->finishing)
        return; /* what is unresolved stays so: unacked */
    /* Every unresolved message of its partitions was in flight: each
     * counts as attempted (next_attempt already counts the delivery). */
    for (size_t i = 0; i < t->n_parts; i++) {
        pt_part *p = &t->parts[i];
        if (p->worker != w->index)
            continue;
        for (size_t j = p->lo; j < p->n; j++) {
            pt_msg *m = &t->msgs[p->msgs[j]];
            if (m->state == PT_IN_CALL || m->state == PT_DEFERRED)
                set_state(t, m, PT_PENDING);
        }
    }
    w->call = SIZE_MAX;
    if (suspect != SIZE_MAX) {
        pt_msg *m = &t->msgs[suspect];
        if (++m->crashes >= t->pl->poison_after) {
            char why[160];
            snprintf(why, sizeof why,
                     "%s with it in hand %d times "
                     "(poison_after=%d)",
                     hang ? "its worker hung" : "its worker crashed",
                     m->crashes, t->pl->poison_after);
            fail_msg(t, m, why);
        }
    }
    if (restart_limit(t)) {
        fprintf(stderr,
                "khost plugin-test: more than max_restarts=%d "
                "restarts within max_seconds=%d; stopping\n",
                t->pl->max_restarts, t->pl->max_seconds);
        t->fatal = true;
        t->fatal_code = KH_PT_NOT_ACKED;
        stop_all(t, "the restart limit was exceeded");
        return;
    }
    t->restarts++;
    if (spawn_worker(t, w) != 0) {
        t->fatal = true;
        t->fatal_code = KH_PT_SETUP;
        stop_all(t, "a worker could not be restarted");
        return;
    }
    emit(json_pack("{s:s,s:i,s:i}", "event", "restart", "worker", w->index,
                   "pid", (int)w->proc.pid));
}

static void kill_worker(pt_worker *w) {
    if (w->proc.pid > 0)
        kill(w->proc.pid, SIGKILL);
}

/* A result or ack token from w: the message, or SIZE_MAX when it is not
 * one w may answer for (then w lies, and is killed). */
static size_t token_msg(pt *t, pt_worker *w, uint64_t token) {
    if (token < 1 || token > t->n_tokens)
        return SIZE_MAX;
    size_t mi = t->tokens[token - 1];
    if (t->parts[t->msgs[mi].part].worker != w->index)
        return SIZE_MAX;
    return mi;
}

static void on_result(pt *t, pt_worker *w, uint64_t token, uint8_t result) {
    size_t mi = token_msg(t, w, token);
    if (mi == SIZE_MAX || mi != w->call) {
        snprintf(w->lie, sizeof w->lie,
                 "answered for token %" PRIu64 ", not the message in hand",
                 token);
        kill_worker(w);
        return;
    }
    pt_msg *m = &t->msgs[mi];
    pt_part *p = &t->parts[m->part];
    uint64_t sum =
        __atomic_load_n(&w->proc.status->handle_sum_ns, __ATOMIC_RELAXED);
    m->handle_ms =
        sum >= w->call_sum_ns ? (double)(sum - w->call_sum_ns) / 1e6 : 0;
    w->call = SIZE_MAX;
    switch (result) {
    case KHOST_ACK:
        resolve(t, m, "ack", NULL);
        break;
    case KHOST_DEFERRED:
        set_state(t, m, PT_DEFERRED);
        m->deferred_at_ms = now_ms();
        break;
    case KHOST_RETRY:
        p->resume_owed = true;
        retry_msg(t, m, "handler asked for a retry");
        break;
    case KHOST_FAIL:
        p->resume_owed = true;
        fail_msg(t, m, "handler answered FAIL");
        break;
    case KH_RESULT_SKIPPED:
        /* It held the partition (we owe it a RESUME): hand it again. */
        p->resume_owed = true;
        set_state(t, m, PT_PENDING);
        m->next_attempt--;
        m->attempts--;
        break;
    default:
        snprintf(w->lie, sizeof w->lie, "answered an unknown result %u",
                 (unsigned)result);
        kill_worker(w);
    }
}

static void on_ack(pt *t, pt_worker *w, uint64_t token) {
    size_t mi = token_msg(t, w, token);
    if (mi == SIZE_MAX)
        return; /* an ack of what it never had: ignored, as by the host */
    pt_msg *m = &t->msgs[mi];
    /* Only the latest delivery's token counts (a late ack of a delivery
     * that timed out is stale, as in the host). */
    if (m->state != PT_DEFERRED || token != m->token)
        return;
    m->deferred_ack_ms = now_ms() - m->deferred_at_ms;
    resolve(t, m, "ack", NULL);
}

static char *str_dup(const uint8_t *p, size_t len) {
    char *s = xrealloc(NULL, len + 1);
    memcpy(s, p, len);
    s[len] = '\0';
    return s;
}

/* Handle what w sent. Returns -1 when its channel is gone (or it broke
 * the protocol: then it is killed). */
static int read_worker(pt *t, pt_worker *w) {
    long n = conn_fill(&w->conn);
    bool eof = n == 0 || (n < 0 && n != -EAGAIN);
    for (;;) {
        uint16_t type;
        kh_reader r;
        int rc = conn_next_frame(&w->conn, &type, &r);
        if (rc == 0)
            break;
        if (rc < 0) {
            snprintf(w->lie, sizeof w->lie, "sent a malformed frame");
            kill_worker(w);
            return -1;
        }
        size_t len, len2;
        const uint8_t *a, *b;
        switch (type) {
        case KH_F_READY:
            a = tr_get_str(&r, &len);
            b = tr_get_str(&r, &len2);
            w->plugin_flags = tr_get_u64(&r);
            if (!r.error && w->state == PT_W_STARTING) {
                char *name = str_dup(a, len), *version = str_dup(b, len2);
                klog_debug("pipeline=%s worker=%d pid=%d ready: plugin %s %s",
                           t->pl->name, w->index, (int)w->proc.pid, name,
                           version);
                free(name);
                free(version);
                w->state = PT_W_READY;
            }
            break;
        case KH_F_INIT_FAILED:
            a = tr_get_str(&r, &len);
            if (!r.error)
                snprintf(w->init_error, sizeof w->init_error, "%.*s", (int)len,
                         (const char *)a);
            break;
        case KH_F_RESULTS: {
            uint32_t k = tr_get_u32(&r);
            for (uint32_t i = 0; i < k && !r.error; i++) {
                uint64_t token = tr_get_u64(&r);
                uint8_t res = tr_get_u8(&r);
                if (!r.error)
                    on_result(t, w, token, res);
            }
            break;
        }
        case KH_F_ACKS: {
            uint32_t k = tr_get_u32(&r);
            for (uint32_t i = 0; i < k && !r.error; i++) {
                uint64_t token = tr_get_u64(&r);
                if (!r.error)
                    on_ack(t, w, token);
            }
            break;
        }
        case KH_F_ERROR: {
            uint64_t token = tr_get_u64(&r);
            a = tr_get_str(&r, &len);
            size_t mi = token_msg(t, w, token);
            if (!r.error && mi != SIZE_MAX) {
                free(t->msgs[mi].error);
                t->msgs[mi].error = str_dup(a, len);
            }
            break;
        }
        default:
            r.error = 1;
        }
        if (r.error) {
            snprintf(w->lie, sizeof w->lie, "sent a malformed frame (type %u)",
                     (unsigned)type);
            kill_worker(w);
            return -1;
        }
    }
    return eof ? -1 : 0;
}

/* Hand w its next message, if one of its partitions has one ready. */
static void dispatch(pt *t, pt_worker *w, int64_t now) {
    if (w->state != PT_W_READY || w->call != SIZE_MAX || t->finishing)
        return;
    size_t np = t->n_parts;
    for (size_t k = 0; k < np; k++) {
        pt_part *p = &t->parts[(w->rr + k) % np];
        if (p->worker != w->index || p->held || now < p->backoff_until)
            continue;
        size_t j = p->lo;
        while (j < p->n && t->msgs[p->msgs[j]].state != PT_PENDING)
            j++;
        if (j == p->n)
            continue;
        w->rr = (unsigned)((w->rr + k + 1) % np);
        if (!p->assigned) {
            put_partition_frame(w, KH_F_ASSIGN, p);
            p->assigned = true;
        }
        if (p->resume_owed) {
            put_partition_frame(w, KH_F_RESUME, p);
            p->resume_owed = false;
        }
        size_t mi = p->msgs[j];
        pt_msg *m = &t->msgs[mi];
        GROW(t->tokens, t->n_tokens, t->cap_tokens);
        t->tokens[t->n_tokens++] = mi;
        m->token = t->n_tokens;
        m->attempts++;
        uint32_t attempt = m->next_attempt++;
        set_state(t, m, PT_IN_CALL);
        if (j + 1 > p->hi)
            p->hi = j + 1;
        w->call = mi;
        w->call_sum_ns =
            __atomic_load_n(&w->proc.status->handle_sum_ns, __ATOMIC_RELAXED);
        kh_buf *b = &w->conn.out;
        size_t start = tr_frame_begin(b, KH_F_MESSAGES);
        tr_put_u32(b, 1);
        tr_put_u64(b, m->token);
        tr_put_u32(b, attempt);
        tr_put_str(b, p->topic);
        tr_put_i32(b, p->partition);
        tr_put_i64(b, m->offset);
        tr_put_i64(b, m->timestamp);
        tr_put_i32(b, RD_KAFKA_TIMESTAMP_CREATE_TIME);
        tr_put_blob(b, m->key.null ? NULL : m->key.p, m->key.len);
        tr_put_blob(b, m->value.null ? NULL : m->value.p, m->value.len);
        /* As in `khost run`: a plugin that said it never reads headers
         * gets none. */
        size_t n_headers =
            w->plugin_flags & KHOST_PLUGIN_NO_HEADERS ? 0 : m->n_headers;
        tr_put_u32(b, (uint32_t)n_headers);
        for (size_t h = 0; h < n_headers; h++) {
            tr_put_str(b, m->header_names[h]);
            tr_put_blob(b,
                        m->header_values[h].null ? NULL : m->header_values[h].p,
                        m->header_values[h].len);
        }
        tr_frame_end(b, start);
        return;
    }
}

/* Timers: hangs, init timeouts, deferred timeouts. Returns the ms until
 * the next one is due (capped). */
static int64_t check_timers(pt *t, int64_t now) {
    int64_t next = now + 100;
    for (int i = 0; i < t->n_workers; i++) {
        pt_worker *w = &t->workers[i];
        if (w->proc.out_fd >= 0)
            plugin_output_tick(&w->output, w->out_tag);
        if (w->state == PT_W_STARTING && t->pl->init_timeout_ms > 0 &&
            !w->lie[0]) {
            int64_t due = w->started_ms + t->pl->init_timeout_ms;
            if (now >= due) {
                snprintf(w->lie, sizeof w->lie,
                         "init did not finish within init_timeout_ms=%d",
                         t->pl->init_timeout_ms);
                kill_worker(w);
            } else if (due < next)
                next = due;
        }
        if (w->state != PT_W_READY || t->timeout_ms <= 0 || w->hung)
            continue;
        uint64_t token;
        uint32_t count;
        int64_t started;
        status_read(w->proc.status, &token, &count, &started);
        if (!started)
            continue;
        int64_t due = started + t->timeout_ms;
        if (now >= due) {
            w->hung = true;
            kill_worker(w);
        } else if (due < next)
            next = due;
    }
    /* Deferred messages lie between a partition's lo and hi. */
    for (size_t pi = 0; t->deferred_timeout_ms > 0 && !t->finishing &&
                        t->n_state[PT_DEFERRED] && pi < t->n_parts;
         pi++)
        for (size_t j = t->parts[pi].lo; j < t->parts[pi].hi; j++) {
            pt_msg *m = &t->msgs[t->parts[pi].msgs[j]];
            if (m->state != PT_DEFERRED)
                continue;
            int64_t due = (int64_t)m->deferred_at_ms + t->deferred_timeout_ms;
            if (now >= due) {
                pt_part *p = &t->parts[m->part];
                klog_warn("pipeline=%s topic=%s partition=%d offset=%lld: "
                          "deferred and not acked within "
                          "deferred_timeout_ms=%d; retrying it",
                          t->pl->name, p->topic, p->partition,
                          (long long)m->offset, t->deferred_timeout_ms);
                char why[96];
                snprintf(why, sizeof why,
                         "deferred and not acked within "
                         "deferred_timeout_ms=%d",
                         t->deferred_timeout_ms);
                retry_msg(t, m, why);
            } else if (due < next)
                next = due;
        }
    for (size_t i = 0; i < t->n_parts; i++) {
        int64_t b = t->parts[i].backoff_until;
        if (b > now && b < next)
            next = b;
    }
    return next - now;
}

/* Anything left to hand to a worker or to wait for a result of? */
static bool work_left(const pt *t, bool *deferred) {
    *deferred = t->n_state[PT_DEFERRED] > 0;
    if (t->n_state[PT_IN_CALL])
        return true;
    for (size_t i = 0; i < t->n_parts; i++)
        if (t->parts[i].pending && !t->parts[i].held)
            return true;
    return false;
}

/* One round of I/O: flush, poll up to wait_ms, read the channels and
 * the plugins' output; handle deaths (after the revokes and SHUTDOWN, an
 * exit we did not force is the planned one). */
static void io_round(pt *t, int64_t wait_ms) {
    struct pollfd fds[2 * PT_MAX_WORKERS];
    int idx[2 * PT_MAX_WORKERS], n = 0;
    for (int i = 0; i < t->n_workers; i++) {
        pt_worker *w = &t->workers[i];
        if (w->state == PT_W_DOWN)
            continue;
        int rc = conn_flush(&w->conn);
        fds[n] = (struct pollfd){.fd = w->conn.fd,
                                 .events = POLLIN | (rc == 1 ? POLLOUT : 0)};
        idx[n++] = i;
        if (w->proc.out_fd >= 0) {
            fds[n] = (struct pollfd){.fd = w->proc.out_fd, .events = POLLIN};
            idx[n++] = -1 - i;
        }
    }
    if (wait_ms < 0)
        wait_ms = 0;
    if (n == 0) {
        struct timespec ts = {wait_ms / 1000, (wait_ms % 1000) * 1000000};
        nanosleep(&ts, NULL);
        return;
    }
    if (poll(fds, (nfds_t)n, (int)wait_ms) < 0 && errno != EINTR)
        return;
    /* Output first: a dying worker's last lines come before its crash. */
    for (int k = 0; k < n; k++) {
        if (idx[k] >= 0 || !fds[k].revents)
            continue;
        pt_worker *w = &t->workers[-1 - idx[k]];
        if (w->proc.out_fd >= 0 &&
            plugin_output_read(&w->output, w->proc.out_fd, w->out_tag) <= 0)
            close_output(w);
    }
    for (int k = 0; k < n; k++) {
        if (idx[k] < 0 || !fds[k].revents)
            continue;
        pt_worker *w = &t->workers[idx[k]];
        if (w->state == PT_W_DOWN)
            continue;
        if (fds[k].revents & POLLOUT)
            conn_flush(&w->conn);
        if (read_worker(t, w) < 0) {
            siginfo_t si;
            reap(w, &si);
            worker_died(t, w, &si, t->finishing && !w->lie[0] && !w->hung);
        }
    }
}

static void run(pt *t) {
    int64_t linger_until = -1;
    while (!t->fatal) {
        int64_t now = kh_now_ms();
        int64_t wait = check_timers(t, now);
        for (int i = 0; i < t->n_workers; i++)
            dispatch(t, &t->workers[i], now);
        bool deferred;
        if (!work_left(t, &deferred)) {
            if (!deferred)
                break;
            if (linger_until < 0)
                linger_until = now + t->linger_ms;
            if (now >= linger_until)
                break;
            if (linger_until - now < wait)
                wait = linger_until - now;
        } else
            linger_until = -1;
        io_round(t, wait);
    }
    if (t->fatal) {
        for (int i = 0; i < t->n_workers; i++)
            if (t->workers[i].state != PT_W_DOWN) {
                siginfo_t si;
                kill_worker(&t->workers[i]);
                reap(&t->workers[i], &si);
                release(&t->workers[i]);
            }
        return;
    }
    /* The end, as at the host's shutdown: every owned partition is
     * revoked (on_revoke), then SHUTDOWN (tick, terminate). Acks sent
     * until the worker exits count. */
    t->finishing = true;
    for (int i = 0; i < t->n_workers; i++) {
        pt_worker *w = &t->workers[i];
        if (w->state != PT_W_READY)
            continue;
        for (size_t j = 0; j < t->n_parts; j++)
            if (t->parts[j].worker == w->index && t->parts[j].assigned)
                put_partition_frame(w, KH_F_REVOKE, &t->parts[j]);
        size_t start = tr_frame_begin(&w->conn.out, KH_F_SHUTDOWN);
        tr_frame_end(&w->conn.out, start);
    }
    int64_t deadline = kh_now_ms() + t->pl->shutdown_timeout_ms;
    for (;;) {
        bool up = false;
        for (int i = 0; i < t->n_workers; i++)
            up = up || t->workers[i].state != PT_W_DOWN;
        if (!up)
            break;
        int64_t now = kh_now_ms();
        if (now >= deadline) {
            for (int i = 0; i < t->n_workers; i++) {
                pt_worker *w = &t->workers[i];
                if (w->state == PT_W_DOWN)
                    continue;
                fprintf(stderr,
                        "khost plugin-test: worker %d did not exit "
                        "within shutdown_timeout_ms=%d; killing it\n",
                        w->index, t->pl->shutdown_timeout_ms);
                snprintf(w->lie, sizeof w->lie,
                         "still running after shutdown_timeout_ms=%d",
                         t->pl->shutdown_timeout_ms);
                kill_worker(w);
            }
            deadline = now + 5000;
        }
        /* A planned exit is not a crash. */
        io_round(t, 100);
    }
    for (size_t i = 0; i < t->n_msgs; i++) {
        pt_msg *m = &t->msgs[i];
        const pt_part *p = &t->parts[m->part];
        if (m->state == PT_DEFERRED)
            resolve(t, m, "unacked",
                    "answered DEFERRED and never acked (not in tick, "
                    "on_revoke or terminate either)");
        else if (m->state != PT_DONE && p->held)
            resolve(t, m, "not-run",
                    "its partition is held by on_failure=pause at offset "
                    "%lld",
                    (long long)p->held_offset);
        else if (m->state != PT_DONE)
            resolve(t, m, "not-run", "its worker stopped before it was run");
    }
}

/* ---- setup ---- */

static int load_config(pt *t, const char *ini, const char *pipeline,
                       const char *plugin_arg) {
    char tmp[] = "/tmp/khost-plugin-test-XXXXXX.ini";
    const char *path = ini;
    if (!ini) {
        int fd = mkstemps(tmp, 4);
        if (fd < 0) {
            fprintf(stderr, "khost plugin-test: cannot write a config: %s\n",
                    strerror(errno));
            return -1;
        }
        FILE *f = fdopen(fd, "w");
        fprintf(f,
                "[host]\nbrokers = mock\n\n[pipeline.plugin-test]\n"
                "topics = test\ngroup = plugin-test\nplugin = %s\n",
                plugin_arg);
        fclose(f);
        path = tmp;
        pipeline = "plugin-test";
    }
    kh_errors errs = {0};
    int rc = config_load(path, &t->cfg, &errs);
    if (!ini)
        unlink(tmp);
    if (rc != 0) {
        for (size_t i = 0; i < errs.count; i++)
            fprintf(stderr, "khost plugin-test: %s\n", errs.items[i]);
        errors_free(&errs);
        return -1;
    }
    errors_free(&errs);
    if (ini)
        config_print_warnings(&t->cfg, stderr);
    if (!pipeline && t->cfg.n_pipelines == 1)
        pipeline = t->cfg.pipelines[0].name;
    for (size_t i = 0; i < t->cfg.n_pipelines && pipeline; i++)
        if (!strcmp(t->cfg.pipelines[i].name, pipeline))
            t->pl = &t->cfg.pipelines[i];
    if (!t->pl) {
        if (pipeline)
            fprintf(stderr, "khost plugin-test: %s has no [pipeline.%s]\n", ini,
                    pipeline);
        else
            fprintf(stderr,
                    "khost plugin-test: %s has %zu pipelines; name "
                    "one with --pipeline NAME\n",
                    ini, t->cfg.n_pipelines);
        return -1;
    }
    return 0;
}

/* --config KEY=VALUE over the pipeline's plugin config. The new array
 * and strings are owned by t (the file's stay cfg's). */
static int add_config(pt *t, kh_pipeline *pl, const char *arg) {
    const char *eq = strchr(arg, '=');
    if (!eq || eq == arg) {
        fprintf(stderr,
                "khost plugin-test: --config wants KEY=VALUE, not "
                "'%s'\n",
                arg);
        return -1;
    }
    char *key = strndup(arg, (size_t)(eq - arg));
    char *value = xstrdup(eq + 1);
    GROW(t->owned, t->n_owned, t->cap_owned);
    t->owned[t->n_owned++] = value;
    GROW(t->owned, t->n_owned, t->cap_owned);
    t->owned[t->n_owned++] = key;
    /* A copy of the array (its strings stay the file's): cfg frees its
     * own array and strings, untouched. */
    kh_kv *kv = xrealloc(NULL, (pl->n_config + 1) * sizeof *kv);
    if (pl->n_config)
        memcpy(kv, pl->config, pl->n_config * sizeof *kv);
    free(t->own_config);
    t->own_config = kv;
    pl->config = kv;
    for (size_t i = 0; i < pl->n_config; i++)
        if (!strcmp(kv[i].key, key)) {
            kv[i].value = value;
            return 0;
        }
    kv[pl->n_config++] = (kh_kv){.key = key, .value = value};
    return 0;
}

static bool parse_int(const char *opt, const char *s, int min, int max,
                      int *out) {
    char *end;
    errno = 0;
    long v = s ? strtol(s, &end, 10) : 0;
    if (!s || errno || end == s || *end || v < min || v > max) {
        fprintf(stderr,
                "khost plugin-test: %s wants a number from %d to %d%s"
                "%s%s\n",
                opt, min, max, s ? ", not '" : "", s ? s : "", s ? "'" : "");
        return false;
    }
    *out = (int)v;
    return true;
}

/* ---- --expect ---- */

static int check_expect(pt *t, const char *path, json_t *summary) {
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "khost plugin-test: --expect %s: %s\n", path,
                strerror(errno));
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    int no = 0, bad = 0;
    while (getline(&line, &cap, f) >= 0) {
        no++;
        if (!line[strspn(line, " \t\r\n")])
            continue;
        json_error_t je;
        json_t *e = json_loads(line, 0, &je);
        json_t *want = NULL, *got = NULL;
        char what[400] = "";
        if (!json_is_object(e)) {
            fprintf(stderr, "khost plugin-test: %s:%d: not a JSON object%s%s\n",
                    path, no, e ? "" : ": ", e ? "" : je.text);
            bad++;
            json_decref(e);
            continue;
        }
        if (json_object_get(e, "summary")) {
            want = json_object_get(e, "summary");
            got = summary;
            snprintf(what, sizeof what, "summary");
        } else {
            json_t *topic = json_object_get(e, "topic");
            json_t *part = json_object_get(e, "partition");
            json_t *off = json_object_get(e, "offset");
            if (!json_is_integer(off) || (topic && !json_is_string(topic)) ||
                (part && !json_is_integer(part))) {
                fprintf(stderr,
                        "khost plugin-test: %s:%d: an expectation "
                        "needs an integer offset (and a string "
                        "topic, an integer partition when given) or "
                        "a summary\n",
                        path, no);
                bad++;
                json_decref(e);
                continue;
            }
            const char *tn = topic ? json_string_value(topic) : "test";
            int32_t pn = part ? (int32_t)json_integer_value(part) : 0;
            char *k = result_key(tn, pn, json_integer_value(off));
            want = e;
            got = json_object_get(t->results, k);
            snprintf(what, sizeof what, "%s partition %d offset %lld", tn,
                     (int)pn, (long long)json_integer_value(off));
            free(k);
            if (!got) {
                fprintf(stderr,
                        "khost plugin-test: %s:%d: %s: no such "
                        "message in the input\n",
                        path, no, what);
                bad++;
                json_decref(e);
                continue;
            }
        }
        const char *k;
        json_t *v;
        json_object_foreach(want, k, v) {
            if (want == e && (!strcmp(k, "topic") || !strcmp(k, "partition") ||
                              !strcmp(k, "offset")))
                continue;
            json_t *g = json_object_get(got, k);
            if (g && json_equal(g, v))
                continue;
            char *gs = g ? json_dumps(g, JSON_ENCODE_ANY) : NULL;
            char *ws = json_dumps(v, JSON_ENCODE_ANY);
            fprintf(stderr,
                    "khost plugin-test: %s:%d: %s: %s is %s, "
                    "expected %s\n",
                    path, no, what, k, gs ? gs : "(absent)", ws ? ws : "?");
            free(gs);
            free(ws);
            bad++;
        }
        json_decref(e);
    }
    free(line);
    fclose(f);
    return bad;
}

int plugin_test_main(int argc, char **argv) {
    static const struct {
        const char *name;
        bool arg;
    } opts[] = {{"--config", true},     {"--ini", true},
                {"--pipeline", true},   {"--workers", true},
                {"--retries", true},    {"--retry-backoff-ms", true},
                {"--timeout-ms", true}, {"--deferred-timeout-ms", true},
                {"--linger-ms", true},  {"--input", true},
                {"--expect", true}};
    const char *plugin = NULL, *ini = NULL, *pipeline = NULL, *input = NULL,
               *expect = NULL;
    const char *configs[256];
    int n_configs = 0;
    int workers = -1, retries = -1, backoff = -1, timeout = -1, dtimeout = -1,
        linger = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            print_help();
            return KH_PT_OK;
        }
        if (a[0] != '-') {
            if (plugin) {
                fprintf(stderr,
                        "khost plugin-test: one plugin only ('%s' "
                        "and '%s')\n%s\n",
                        plugin, a, usage_line);
                return KH_PT_SETUP;
            }
            plugin = a;
            continue;
        }
        size_t o = 0;
        while (o < sizeof opts / sizeof opts[0] && strcmp(a, opts[o].name))
            o++;
        if (o == sizeof opts / sizeof opts[0]) {
            fprintf(stderr, "khost plugin-test: unknown option '%s'\n%s\n", a,
                    usage_line);
            return KH_PT_SETUP;
        }
        const char *v = i + 1 < argc ? argv[++i] : NULL;
        if (!v) {
            fprintf(stderr, "khost plugin-test: %s needs a value\n%s\n", a,
                    usage_line);
            return KH_PT_SETUP;
        }
        bool ok = true;
        if (!strcmp(a, "--config")) {
            if (n_configs == 256) {
                fprintf(stderr, "khost plugin-test: at most 256 --config\n");
                return KH_PT_SETUP;
            }
            configs[n_configs++] = v;
        } else if (!strcmp(a, "--ini"))
            ini = v;
        else if (!strcmp(a, "--pipeline"))
            pipeline = v;
        else if (!strcmp(a, "--input"))
            input = v;
        else if (!strcmp(a, "--expect"))
            expect = v;
        else if (!strcmp(a, "--workers"))
            ok = parse_int(a, v, 1, PT_MAX_WORKERS, &workers);
        else if (!strcmp(a, "--retries"))
            ok = parse_int(a, v, 0, 1000000, &retries);
        else if (!strcmp(a, "--retry-backoff-ms"))
            ok = parse_int(a, v, 0, 3600000, &backoff);
        else if (!strcmp(a, "--timeout-ms"))
            ok = parse_int(a, v, 0, INT_MAX, &timeout);
        else if (!strcmp(a, "--deferred-timeout-ms"))
            ok = parse_int(a, v, 0, INT_MAX, &dtimeout);
        else if (!strcmp(a, "--linger-ms"))
            ok = parse_int(a, v, 0, 3600000, &linger);
        if (!ok)
            return KH_PT_SETUP;
    }
    if (!plugin && !ini) {
        fprintf(stderr,
                "khost plugin-test: name a plugin (or --ini FILE)\n"
                "%s\n",
                usage_line);
        return KH_PT_SETUP;
    }
    if (pipeline && !ini) {
        fprintf(stderr, "khost plugin-test: --pipeline needs --ini FILE\n");
        return KH_PT_SETUP;
    }
    if (expect && access(expect, R_OK) != 0) {
        fprintf(stderr, "khost plugin-test: --expect %s: %s\n", expect,
                strerror(errno));
        return KH_PT_SETUP;
    }
    FILE *in = stdin;
    if (input && !(in = fopen(input, "r"))) {
        fprintf(stderr, "khost plugin-test: %s: %s\n", input, strerror(errno));
        return KH_PT_SETUP;
    }
    pt t = {0};
    char abs_plugin[PATH_MAX];
    if (plugin && !realpath(plugin, abs_plugin)) {
        fprintf(stderr, "khost plugin-test: %s: %s\n", plugin, strerror(errno));
        return KH_PT_SETUP;
    }
    if (load_config(&t, ini, pipeline, plugin ? abs_plugin : NULL) != 0) {
        if (in != stdin)
            fclose(in);
        config_free(&t.cfg);
        return KH_PT_SETUP;
    }
    t.pl_copy = *t.pl;
    t.pl = &t.pl_copy;
    kh_pipeline *pl = &t.pl_copy;
    for (int i = 0; i < n_configs; i++)
        if (add_config(&t, pl, configs[i]) != 0) {
            if (in != stdin)
                fclose(in);
            config_free(&t.cfg);
            return KH_PT_SETUP;
        }
    t.plugin = xstrdup(plugin ? abs_plugin : pl->plugin_path);
    t.n_workers = workers > 0                    ? workers
                  : pl->workers > PT_MAX_WORKERS ? PT_MAX_WORKERS
                                                 : pl->workers;
    t.max_attempts = retries >= 0 ? retries + 1 : pl->max_attempts;
    t.retry_backoff_ms = backoff >= 0 ? backoff : pl->retry_backoff_ms;
    t.timeout_ms = timeout >= 0 ? timeout : pl->handler_timeout_ms;
    t.deferred_timeout_ms = dtimeout >= 0 ? dtimeout : pl->deferred_timeout_ms;
    t.linger_ms = linger >= 0 ? linger : pl->tick_interval_ms;
    t.results = json_object();
    t.restart_times =
        xrealloc(NULL, ((size_t)pl->max_restarts + 1) * sizeof(int64_t));

    if (in == stdin && isatty(STDIN_FILENO))
        fprintf(stderr, "khost plugin-test: reading JSON lines from the "
                        "terminal; end with Ctrl-D\n");
    read_input(&t, in, input ? input : "stdin");
    if (in != stdin)
        fclose(in);
    /* Partitions go to the workers in turn, by first appearance. */
    for (size_t i = 0; i < t.n_parts; i++)
        t.parts[i].worker = (int)(i % (size_t)t.n_workers);
    klog_info("pipeline=%s: %zu messages on %zu partitions, %d worker%s, "
              "plugin %s",
              pl->name, t.n_msgs, t.n_parts, t.n_workers,
              t.n_workers == 1 ? "" : "s", t.plugin);
    for (int i = 0; i < t.n_workers; i++) {
        t.workers[i].index = i;
        t.workers[i].call = SIZE_MAX;
        t.workers[i].proc.out_fd = -1;
        if (spawn_worker(&t, &t.workers[i]) != 0) {
            t.fatal = true;
            t.fatal_code = KH_PT_SETUP;
            stop_all(&t, "a worker could not be started");
            break;
        }
    }
    if (!t.fatal) {
        /* Wait for every worker's READY before the first message, so an
         * init failure is reported as such. */
        for (;;) {
            bool starting = false;
            for (int i = 0; i < t.n_workers; i++)
                starting = starting || t.workers[i].state == PT_W_STARTING;
            if (!starting || t.fatal)
                break;
            io_round(&t, check_timers(&t, kh_now_ms()));
        }
    }
    run(&t);

    int counts[6] = {0};
    static const char *const names[] = {"ack",    "dead-lettered", "skipped",
                                        "paused", "unacked",       "not-run"};
    for (size_t i = 0; i < t.n_msgs; i++)
        for (int k = 0; k < 6; k++)
            if (t.msgs[i].result && !strcmp(t.msgs[i].result, names[k]))
                counts[k]++;
    int code = KH_PT_OK;
    if (counts[0] != (int)t.n_msgs)
        code = KH_PT_NOT_ACKED;
    json_t *summary = json_pack(
        "{s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i}", "messages",
        (int)t.n_msgs, "ack", counts[0], "dead_lettered", counts[1], "skipped",
        counts[2], "paused", counts[3], "unacked", counts[4], "not_run",
        counts[5], "invalid_lines", t.invalid_lines, "retries", t.retries,
        "crashes", t.crashes, "hangs", t.hangs, "restarts", t.restarts);
    if (expect) {
        int bad = check_expect(&t, expect, summary);
        code = bad == 0 ? KH_PT_OK : KH_PT_EXPECT;
        if (bad > 0)
            fprintf(stderr, "khost plugin-test: %d difference%s from %s\n", bad,
                    bad == 1 ? "" : "s", expect);
    }
    if (t.invalid_lines)
        code = KH_PT_INPUT;
    if (t.fatal && t.fatal_code == KH_PT_SETUP)
        code = KH_PT_SETUP;
    json_object_set_new(summary, "exit", json_integer(code));
    emit(json_pack("{s:o}", "summary", summary));

    for (size_t i = 0; i < t.n_msgs; i++)
        msg_free(&t.msgs[i]);
    free(t.msgs);
    for (size_t i = 0; i < t.n_parts; i++) {
        free(t.parts[i].topic);
        free(t.parts[i].msgs);
    }
    free(t.parts);
    free(t.tokens);
    free(t.restart_times);
    free(t.plugin);
    json_decref(t.results);
    for (size_t i = 0; i < t.n_owned; i++)
        free(t.owned[i]);
    free(t.owned);
    free(t.own_config);
    config_free(&t.cfg);
    return code;
}
