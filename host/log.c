/*
 * log: one line per event on stderr, as text or as JSON.
 *
 * One write() per line so lines from the host and its workers, which
 * share stderr, never interleave mid-line. Lines are built on the stack
 * and the settings are atomics: klog runs on librdkafka's threads too.
 *
 *   text     2026-12-02T18:51:02.123Z INFO  khost: message   (UTC)
 *   json     {"ts":"2026-12-02T18:51:02.123Z","level":"info","tag":"khost",
 *             "msg":"message","pipeline":"orders","partition":3,...}
 *
 * Under journald (JOURNAL_STREAM names our stderr) a line starts with the
 * sd-daemon priority prefix "<N>", which journald strips and turns into
 * the entry's PRIORITY; text lines then carry no timestamp (journald has
 * its own), JSON lines keep "ts". Control characters never end a line
 * early: text escapes them (\n, \xHH), JSON escapes them as JSON does and
 * replaces invalid UTF-8 with U+FFFD, so every line is one valid object.
 */
#define _GNU_SOURCE
#include "log.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define KLOG_MSG_MAX 2048
#define KLOG_LINE_MAX (KLOG_MSG_MAX * 6 + 1024)

static atomic_int log_conf_level = KLOG_INFO;
static atomic_bool log_verbose;
static atomic_int log_fmt = KLOG_TEXT;
static atomic_bool log_journald;
static char log_tag[128] = "khost";
static pthread_once_t log_once = PTHREAD_ONCE_INIT;

bool klog_journal_stream_matches(const char *js, int fd) {
    if (!js || !*js)
        return false;
    char *end;
    errno = 0;
    unsigned long long dev = strtoull(js, &end, 10);
    if (errno || end == js || *end != ':')
        return false;
    const char *ino_s = end + 1;
    unsigned long long ino = strtoull(ino_s, &end, 10);
    if (errno || end == ino_s || *end)
        return false;
    struct stat st;
    if (fstat(fd, &st) != 0)
        return false;
    return (unsigned long long)st.st_dev == dev &&
           (unsigned long long)st.st_ino == ino;
}

/* Once per process, before the first line or setting: journald, and what
 * the host passed down to its workers. */
static void log_init(void) {
    atomic_store(&log_journald, klog_journal_stream_matches(
                                    getenv("JOURNAL_STREAM"), STDERR_FILENO));
    const char *f = getenv("KHOST_LOG_FORMAT");
    if (f && !strcmp(f, "json"))
        atomic_store(&log_fmt, KLOG_JSON);
    int l = klog_level_parse(getenv("KHOST_LOG_LEVEL"));
    if (l > 0)
        atomic_store(&log_conf_level, l);
}

static void ensure_init(void) {
    pthread_once(&log_once, log_init);
}

static atomic_int log_fd = STDERR_FILENO;

void klog_set_fd(int fd) {
    ensure_init();
    atomic_store(&log_fd, fd);
}

bool klog_journald(void) {
    ensure_init();
    return atomic_load(&log_journald);
}

void klog_set_level(int level) {
    ensure_init();
    atomic_store(&log_conf_level, level);
}

void klog_set_verbose(bool on) {
    ensure_init();
    atomic_store(&log_verbose, on);
}

bool klog_verbose(void) {
    ensure_init();
    return atomic_load(&log_verbose);
}

int klog_level(void) {
    ensure_init();
    return atomic_load(&log_verbose) ? KLOG_DEBUG
                                     : atomic_load(&log_conf_level);
}

void klog_set_format(int format) {
    ensure_init();
    atomic_store(&log_fmt, format == KLOG_JSON ? KLOG_JSON : KLOG_TEXT);
}

int klog_format(void) {
    ensure_init();
    return atomic_load(&log_fmt);
}

int klog_level_parse(const char *name) {
    if (!name)
        return -1;
    if (!strcmp(name, "error"))
        return KLOG_ERROR;
    if (!strcmp(name, "warn"))
        return KLOG_WARN;
    if (!strcmp(name, "info"))
        return KLOG_INFO;
    if (!strcmp(name, "debug"))
        return KLOG_DEBUG;
    return -1;
}

const char *klog_level_str(int level) {
    switch (level) {
    case KLOG_ERROR:
        return "error";
    case KLOG_WARN:
        return "warn";
    case KLOG_INFO:
        return "info";
    case KLOG_DEBUG:
        return "debug";
    default:
        return "?";
    }
}

/* The host calls this on its main thread, at start and on a reload that
 * changes the level; both variables exist after the first call, so later
 * calls only replace values (glibc never frees the environment array
 * then, which keeps a getenv on another thread safe). */
void klog_export(void) {
    setenv("KHOST_LOG_FORMAT", klog_format() == KLOG_JSON ? "json" : "text", 1);
    setenv("KHOST_LOG_LEVEL", klog_level_str(klog_level()), 1);
}

void klog_set_tag(const char *tag) {
    ensure_init();
    snprintf(log_tag, sizeof log_tag, "%s", tag);
}

static const char *level_word(int level) {
    switch (level) {
    case KLOG_ERROR:
        return "ERROR";
    case KLOG_WARN:
        return "WARN ";
    case KLOG_INFO:
        return "INFO ";
    default:
        return "DEBUG";
    }
}

/* ---- building a line ---- */

typedef struct out {
    char *b;
    size_t cap; /* what the body may use; the tail has its own room */
    size_t n;
} out;

static bool put(out *o, const char *s, size_t len) {
    if (o->n + len > o->cap)
        return false;
    memcpy(o->b + o->n, s, len);
    o->n += len;
    return true;
}

static bool puts_(out *o, const char *s) {
    return put(o, s, strlen(s));
}

/* JSON structure that must be written whatever the body used: it goes
 * into the room kept for the tail (at most 16 bytes of it in all). */
static void force(out *o, const char *s) {
    size_t len = strlen(s);
    memcpy(o->b + o->n, s, len);
    o->n += len;
}

/* Length of the valid UTF-8 sequence at s (at most len bytes), 0 when it
 * is not one: overlong forms, surrogates and values past U+10FFFF are
 * invalid. */
static size_t utf8_len(const unsigned char *s, size_t len) {
    unsigned char c = s[0];
    size_t n;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        n = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else
        return 0;
    if (len < n || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if (s[i] < 0x80 || s[i] > 0xBF)
            return 0;
    return n;
}

/* A JSON string's contents, escaped; stops (whole characters only) when
 * the body is full. */
static void put_json_str(out *o, const char *s, size_t len) {
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < len;) {
        unsigned char c = p[i];
        char esc[8];
        bool ok;
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            ok = put(o, esc, 2);
            i++;
        } else if (c < 0x20 || c == 0x7f) {
            const char *named = c == '\n'   ? "\\n"
                                : c == '\r' ? "\\r"
                                : c == '\t' ? "\\t"
                                : c == '\b' ? "\\b"
                                : c == '\f' ? "\\f"
                                            : NULL;
            if (named)
                ok = puts_(o, named);
            else {
                snprintf(esc, sizeof esc, "\\u%04x", c);
                ok = puts_(o, esc);
            }
            i++;
        } else {
            size_t n = utf8_len(p + i, len - i);
            if (n == 0) {
                ok = puts_(o, "\\ufffd");
                i++;
            } else {
                ok = put(o, s + i, n);
                i += n;
            }
        }
        if (!ok)
            return;
    }
}

/* Text: one physical line whatever the message holds. */
static void put_text(out *o, const char *s) {
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[8];
        bool ok;
        if (*p == '\n')
            ok = puts_(o, "\\n");
        else if (*p == '\r')
            ok = puts_(o, "\\r");
        else if ((*p < 0x20 && *p != '\t') || *p == 0x7f) {
            snprintf(esc, sizeof esc, "\\x%02x", *p);
            ok = puts_(o, esc);
        } else
            ok = put(o, (const char *)p, 1);
        if (!ok)
            return;
    }
}

/* The first "key=value" in s whose key starts a word; the value runs to
 * a space or punctuation that ends a field. Numeric keys take only a
 * whole integer. */
static bool find_field(const char *s, const char *key, bool numeric,
                       const char **val, size_t *vlen) {
    size_t klen = strlen(key);
    for (const char *p = s; (p = strstr(p, key)) != NULL; p += klen) {
        if (p > s && !strchr(" ([{,;", p[-1]))
            continue;
        if (p[klen] != '=')
            continue;
        const char *v = p + klen + 1;
        size_t n = strcspn(v, " \t\n,;:)]}\"'");
        if (n == 0)
            continue;
        if (numeric) {
            size_t d = v[0] == '-' ? 1 : 0;
            if (d == n || n - d > 18)
                continue;
            bool digits = true;
            for (size_t i = d; i < n; i++)
                digits = digits && isdigit((unsigned char)v[i]);
            if (!digits)
                continue;
        }
        *val = v;
        *vlen = n;
        return true;
    }
    return false;
}

/* The fields a worker's tag gives, "worker orders/1 pid=42". */
static bool tag_field(const char *tag, const char *key, const char **val,
                      size_t *vlen) {
    if (strncmp(tag, "worker ", 7))
        return false;
    const char *name = tag + 7;
    const char *slash = strchr(name, '/');
    if (!slash)
        return false;
    if (!strcmp(key, "pipeline")) {
        *val = name;
        *vlen = (size_t)(slash - name);
        return *vlen > 0;
    }
    if (!strcmp(key, "worker")) {
        *val = slash + 1;
        *vlen = strspn(slash + 1, "0123456789");
        return *vlen > 0;
    }
    if (!strcmp(key, "pid"))
        return find_field(tag, "pid", true, val, vlen);
    return false;
}

static const struct {
    const char *key;
    bool numeric;
} json_fields[] = {
    {"pipeline", false}, {"worker", true},    {"pid", true},
    {"topic", false},    {"partition", true}, {"offset", true},
};

size_t klog_format_line(char *buf, size_t cap, int format, bool journald,
                        const struct timeval *tv, int level, const char *tag,
                        const char *msg) {
    /* 64 bytes stay free for the tail: closing quote or brace, '\n'. */
    out o = {.b = buf, .cap = cap - 64, .n = 0};
    char ts[48] = "";
    struct tm tm;
    time_t sec = tv->tv_sec;
    gmtime_r(&sec, &tm);
    size_t tn = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + tn, sizeof ts - tn, ".%03ldZ", (long)(tv->tv_usec / 1000));
    if (journald) {
        char prio[8];
        snprintf(prio, sizeof prio, "<%d>", level);
        puts_(&o, prio);
    }
    if (format != KLOG_JSON) {
        if (!journald) {
            puts_(&o, ts);
            puts_(&o, " ");
            puts_(&o, level_word(level));
            puts_(&o, " ");
        }
        puts_(&o, tag);
        puts_(&o, ": ");
        put_text(&o, msg);
        buf[o.n++] = '\n';
        return o.n;
    }
    puts_(&o, "{\"ts\":\"");
    puts_(&o, ts);
    puts_(&o, "\",\"level\":\"");
    puts_(&o, klog_level_str(level));
    puts_(&o, "\",\"tag\":\"");
    put_json_str(&o, tag, strlen(tag));
    force(&o, "\"");
    /* The fields first, short as they are: a long message is what gets
     * truncated. 40 bytes per field of room is kept for its name. */
    for (size_t i = 0; i < sizeof json_fields / sizeof json_fields[0]; i++) {
        const char *v;
        size_t vl;
        if (!find_field(msg, json_fields[i].key, json_fields[i].numeric, &v,
                        &vl) &&
            !tag_field(tag, json_fields[i].key, &v, &vl))
            continue;
        if (vl > 256 || o.n + vl * 6 + 40 > o.cap)
            continue;
        puts_(&o, ",\"");
        puts_(&o, json_fields[i].key);
        puts_(&o, "\":");
        if (json_fields[i].numeric) {
            put(&o, v, vl);
        } else {
            puts_(&o, "\"");
            put_json_str(&o, v, vl);
            puts_(&o, "\"");
        }
    }
    force(&o, ",\"msg\":\"");
    put_json_str(&o, msg, strlen(msg));
    force(&o, "\"}\n");
    return o.n;
}

void klog(int level, const char *fmt, ...) {
    if (level > klog_level())
        return;
    char msg[KLOG_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (m < 0)
        msg[0] = '\0';
    struct timeval tv;
    gettimeofday(&tv, NULL);
    char line[KLOG_LINE_MAX];
    size_t len =
        klog_format_line(line, sizeof line, klog_format(),
                         atomic_load(&log_journald), &tv, level, log_tag, msg);
    ssize_t ignored = write(atomic_load(&log_fd), line, len);
    (void)ignored;
}
