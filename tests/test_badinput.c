/*
 * badinput: odd messages, odd topics, broken plugins and broken config
 * files, end to end through the khost binary. Odd messages arrive byte
 * for byte; everything the host refuses gets one clear FILE:LINE error,
 * exit status 2 and no start; nothing crashes.
 */
#define _GNU_SOURCE
#include "harness.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define KHOST KHOST_BUILD_DIR "/khost"
#define FAULT KHOST_BUILD_DIR "/plugins/fault.so"
#define FIXTURE(name) KHOST_FIXTURE_DIR "/" name ".so"

/* The host of the current test, so that a failed assertion does not
 * leave a khost process behind (fini runs after a failure too; the test's
 * stack is gone by then, so keep a copy of the pid). */
static pid_t current_pid;

static void kill_leftovers(void) {
    if (current_pid > 0) {
        kill(current_pid, SIGKILL);
        waitpid(current_pid, NULL, 0);
    }
    current_pid = 0;
}

TestSuite(badinput, .fini = kill_leftovers);

/* th_host_stop reaps the host: forget its pid at once. */
static int stop_host(th_host *h, int sig, int timeout_ms) {
    int rc = th_host_stop(h, sig, timeout_ms);
    current_pid = 0;
    return rc;
}

/* ---------------------------------------------------------------------- */
/* A small JSON reader for the fault plugin's record lines               */

typedef enum { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ } jtype;

typedef struct jv {
    jtype t;
    long long num;
    char *s; /* J_STR: bytes (may hold NUL), NUL-terminated */
    size_t len;
    struct jv *items; /* J_ARR, J_OBJ values */
    char **keys;      /* J_OBJ */
    size_t n;
} jv;

typedef struct jp {
    const char *p, *end;
    int err;
} jp;

static void ws(jp *j) {
    while (j->p < j->end &&
           (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
        j->p++;
}

static void put_byte(char **s, size_t *len, size_t *cap, unsigned char c) {
    if (*len + 2 > *cap) {
        *cap = *cap ? *cap * 2 : 64;
        *s = realloc(*s, *cap);
    }
    (*s)[(*len)++] = (char)c;
    (*s)[*len] = '\0';
}

static void put_utf8(char **s, size_t *len, size_t *cap, unsigned cp) {
    if (cp < 0x80) {
        put_byte(s, len, cap, (unsigned char)cp);
    } else if (cp < 0x800) {
        put_byte(s, len, cap, (unsigned char)(0xC0 | cp >> 6));
        put_byte(s, len, cap, (unsigned char)(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
        put_byte(s, len, cap, (unsigned char)(0xE0 | cp >> 12));
        put_byte(s, len, cap, (unsigned char)(0x80 | ((cp >> 6) & 0x3F)));
        put_byte(s, len, cap, (unsigned char)(0x80 | (cp & 0x3F)));
    } else {
        put_byte(s, len, cap, (unsigned char)(0xF0 | cp >> 18));
        put_byte(s, len, cap, (unsigned char)(0x80 | ((cp >> 12) & 0x3F)));
        put_byte(s, len, cap, (unsigned char)(0x80 | ((cp >> 6) & 0x3F)));
        put_byte(s, len, cap, (unsigned char)(0x80 | (cp & 0x3F)));
    }
}

static unsigned hex4(jp *j) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = j->p < j->end ? *j->p++ : 0;
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned)(c - 'A' + 10);
        else
            j->err = 1;
    }
    return v;
}

static char *jstring(jp *j, size_t *out_len) {
    char *s = NULL;
    size_t len = 0, cap = 0;
    put_byte(&s, &len, &cap, 0);
    len = 0;
    if (j->p >= j->end || *j->p != '"') {
        j->err = 1;
        return s;
    }
    j->p++;
    while (j->p < j->end && *j->p != '"') {
        unsigned char c = (unsigned char)*j->p++;
        if (c < 0x20)
            j->err = 1; /* raw control bytes are not JSON */
        if (c != '\\') {
            put_byte(&s, &len, &cap, c);
            continue;
        }
        char e = j->p < j->end ? *j->p++ : 0;
        switch (e) {
        case '"':
        case '\\':
        case '/':
            put_byte(&s, &len, &cap, (unsigned char)e);
            break;
        case 'b':
            put_byte(&s, &len, &cap, '\b');
            break;
        case 'f':
            put_byte(&s, &len, &cap, '\f');
            break;
        case 'n':
            put_byte(&s, &len, &cap, '\n');
            break;
        case 'r':
            put_byte(&s, &len, &cap, '\r');
            break;
        case 't':
            put_byte(&s, &len, &cap, '\t');
            break;
        case 'u': {
            unsigned cp = hex4(j);
            if (cp >= 0xD800 && cp < 0xDC00 && j->p + 1 < j->end &&
                j->p[0] == '\\' && j->p[1] == 'u') {
                j->p += 2;
                unsigned lo = hex4(j);
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            put_utf8(&s, &len, &cap, cp);
            break;
        }
        default:
            j->err = 1;
        }
    }
    if (j->p >= j->end)
        j->err = 1;
    else
        j->p++;
    *out_len = len;
    return s;
}

static void jparse(jp *j, jv *v);

static void jfree(jv *v) {
    free(v->s);
    for (size_t i = 0; i < v->n; i++) {
        jfree(&v->items[i]);
        if (v->keys)
            free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
    memset(v, 0, sizeof *v);
}

static void jparse(jp *j, jv *v) {
    memset(v, 0, sizeof *v);
    ws(j);
    if (j->p >= j->end) {
        j->err = 1;
        return;
    }
    char c = *j->p;
    if (c == '"') {
        v->t = J_STR;
        v->s = jstring(j, &v->len);
    } else if (c == '{' || c == '[') {
        v->t = c == '{' ? J_OBJ : J_ARR;
        j->p++;
        ws(j);
        char close = c == '{' ? '}' : ']';
        if (j->p < j->end && *j->p == close) {
            j->p++;
            return;
        }
        for (;;) {
            v->items = realloc(v->items, (v->n + 1) * sizeof *v->items);
            if (v->t == J_OBJ) {
                v->keys = realloc(v->keys, (v->n + 1) * sizeof *v->keys);
                ws(j);
                size_t kl;
                v->keys[v->n] = jstring(j, &kl);
                ws(j);
                if (j->p >= j->end || *j->p++ != ':')
                    j->err = 1;
            }
            jparse(j, &v->items[v->n++]);
            ws(j);
            if (j->err || j->p >= j->end) {
                j->err = 1;
                return;
            }
            char d = *j->p++;
            if (d == close)
                return;
            if (d != ',') {
                j->err = 1;
                return;
            }
        }
    } else if (!strncmp(j->p, "null", 4)) {
        v->t = J_NULL;
        j->p += 4;
    } else if (!strncmp(j->p, "true", 4) || !strncmp(j->p, "false", 5)) {
        v->t = J_BOOL;
        v->num = *j->p == 't';
        j->p += v->num ? 4 : 5;
    } else if (c == '-' || (c >= '0' && c <= '9')) {
        v->t = J_NUM;
        char *e;
        v->num = strtoll(j->p, &e, 10);
        j->p = e;
    } else {
        j->err = 1;
    }
}

static const jv *jget(const jv *o, const char *key) {
    for (size_t i = 0; o->t == J_OBJ && i < o->n; i++)
        if (!strcmp(o->keys[i], key))
            return &o->items[i];
    return NULL;
}

static int b64val(char c) {
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* Standard base64 with '=' padding, strictly; returns -1 when malformed. */
static long b64decode(const char *in, size_t len, unsigned char *out) {
    if (len % 4)
        return -1;
    size_t o = 0;
    for (size_t i = 0; i < len; i += 4) {
        int v[4];
        int pad = 0;
        for (int k = 0; k < 4; k++) {
            if (in[i + k] == '=' && i + 4 == len && k >= 2) {
                v[k] = 0;
                pad++;
            } else if (pad || (v[k] = b64val(in[i + k])) < 0) {
                return -1;
            }
        }
        unsigned triple = (unsigned)v[0] << 18 | (unsigned)v[1] << 12 |
                          (unsigned)v[2] << 6 | (unsigned)v[3];
        out[o++] = (unsigned char)(triple >> 16);
        if (pad < 2)
            out[o++] = (unsigned char)(triple >> 8);
        if (pad < 1)
            out[o++] = (unsigned char)triple;
    }
    return (long)o;
}

/* How a byte field was written: null, a string, or {"base64": ...}. */
typedef enum { F_NULL, F_STRING, F_BASE64, F_BAD } form;

/* Decode a byte field into *bytes (malloc'd, NULL for null). */
static form field_bytes(const jv *v, unsigned char **bytes, size_t *len) {
    *bytes = NULL;
    *len = 0;
    if (!v || v->t == J_NULL)
        return v ? F_NULL : F_BAD;
    if (v->t == J_STR) {
        *bytes = malloc(v->len + 1);
        memcpy(*bytes, v->s, v->len);
        *len = v->len;
        return F_STRING;
    }
    const jv *b = jget(v, "base64");
    if (v->t != J_OBJ || v->n != 1 || !b || b->t != J_STR)
        return F_BAD;
    *bytes = malloc(b->len / 4 * 3 + 1);
    long n = b64decode(b->s, b->len, *bytes);
    if (n < 0) {
        free(*bytes);
        *bytes = NULL;
        return F_BAD;
    }
    *len = (size_t)n;
    return F_BASE64;
}

/* Strict UTF-8 as plugins/README.md defines it: no overlongs, no
 * surrogates, nothing above U+10FFFF. */
static bool valid_utf8(const unsigned char *s, size_t len) {
    for (size_t i = 0; i < len;) {
        unsigned char c = s[i];
        size_t n;
        unsigned cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            n = 1;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            n = 2;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 3;
            cp = c & 0x07;
        } else {
            return false;
        }
        for (size_t k = 1; k <= n; k++) {
            if (i + k >= len || (s[i + k] & 0xC0) != 0x80)
                return false;
            cp = cp << 6 | (s[i + k] & 0x3F);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) ||
            (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF)
            return false;
        i += n + 1;
    }
    return true;
}

/* ---------------------------------------------------------------------- */
/* Odd messages, byte for byte                                           */

#define MAX_HEADERS 128

typedef struct hdr {
    char name[16];
    unsigned char *value; /* NULL: a null header value */
    size_t len;
} hdr;

typedef struct odd {
    const char *what;
    unsigned char *key; /* NULL: null key */
    size_t key_len;
    unsigned char *value; /* NULL: null value */
    size_t value_len;
    hdr headers[MAX_HEADERS];
    size_t n_headers;
} odd;

static unsigned char *dup_bytes(const void *p, size_t len) {
    unsigned char *d = malloc(len ? len : 1);
    memcpy(d, p, len);
    return d;
}

static void set_key(odd *m, const void *p, size_t len) {
    m->key = p ? dup_bytes(p, len) : NULL;
    m->key_len = len;
}

static void set_value(odd *m, const void *p, size_t len) {
    m->value = p ? dup_bytes(p, len) : NULL;
    m->value_len = len;
}

static void add_header(odd *m, const char *name, const void *p, size_t len) {
    cr_assert_lt(m->n_headers, MAX_HEADERS);
    hdr *h = &m->headers[m->n_headers++];
    snprintf(h->name, sizeof h->name, "%s", name);
    h->value = p ? dup_bytes(p, len) : NULL;
    h->len = len;
}

static size_t make_odd(odd *ms) {
    size_t n = 0;
    unsigned char all[256];
    for (int i = 0; i < 256; i++)
        all[i] = (unsigned char)i;

    ms[n].what = "empty key";
    set_key(&ms[n], "", 0);
    set_value(&ms[n], "empty key", 9);
    n++;

    ms[n].what = "null key and null value (a tombstone)";
    n++;

    ms[n].what = "empty value";
    set_key(&ms[n], "k", 1);
    set_value(&ms[n], "", 0);
    n++;

    /* 1 MiB of UTF-8 text with every character JSON must escape. */
    static const char piece[] = "line \"quoted\" back\\slash\ttab\r\n"
                                "\x01\x1f\x7f caf\xc3\xa9 \xe2\x82\xac "
                                "\xf0\x9f\x98\x80 \b\f/ ";
    size_t big = 1u << 20, plen = sizeof piece - 1;
    unsigned char *text = malloc(big);
    for (size_t i = 0; i < big; i++)
        /* Whole pieces, then ASCII: no multibyte character is cut. */
        text[i] = i < big / plen * plen ? (unsigned char)piece[i % plen] : 'x';
    cr_assert(valid_utf8(text, big));
    ms[n].what = "1 MiB of text needing escapes";
    set_key(&ms[n], "big-text", 8);
    ms[n].value = text;
    ms[n].value_len = big;
    n++;

    /* 1 MiB of pseudo-random bytes: not UTF-8. */
    unsigned char *bin = malloc(1u << 20);
    unsigned x = 2463534242u;
    for (size_t i = 0; i < (1u << 20); i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        bin[i] = (unsigned char)x;
    }
    ms[n].what = "1 MiB of random bytes";
    set_key(&ms[n], "big-bin", 7);
    ms[n].value = bin;
    ms[n].value_len = 1u << 20;
    n++;

    ms[n].what = "100 headers";
    set_key(&ms[n], "headers", 7);
    set_value(&ms[n], "100 headers", 11);
    for (int i = 0; i < 100; i++) {
        char name[16], v[16];
        snprintf(name, sizeof name, "h%d", i);
        snprintf(v, sizeof v, "v%d", i);
        unsigned char b[3] = {0xFF, 0x00, (unsigned char)i};
        switch (i % 4) {
        case 0:
            add_header(&ms[n], name, NULL, 0);
            break;
        case 1:
            add_header(&ms[n], name, "", 0);
            break;
        case 2:
            add_header(&ms[n], name, v, strlen(v));
            break;
        default:
            add_header(&ms[n], name, b, sizeof b);
        }
    }
    add_header(&ms[n], "h2", "repeated name", 13);
    n++;

    ms[n].what = "all 256 byte values in key, value and a header";
    set_key(&ms[n], all, sizeof all);
    set_value(&ms[n], all, sizeof all);
    add_header(&ms[n], "bin", all, sizeof all);
    n++;

    ms[n].what = "NUL and control bytes in valid UTF-8";
    set_key(&ms[n], "nul\0key", 7);
    set_value(&ms[n], "a\0b\x01\x7f\"\\\n\0", 9);
    n++;

    ms[n].what = "the README example FF 00 FE 61";
    set_key(&ms[n], "readme", 6);
    set_value(&ms[n], "\xff\x00\xfe\x61", 4);
    n++;

    ms[n].what = "overlong NUL (C0 80): invalid UTF-8";
    set_key(&ms[n], "overlong", 8);
    set_value(&ms[n], "a\xc0\x80", 3);
    n++;

    ms[n].what = "UTF-16 surrogate (ED A0 80): invalid UTF-8";
    set_key(&ms[n], "surrogate", 9);
    set_value(&ms[n], "\xed\xa0\x80", 3);
    n++;

    ms[n].what = "above U+10FFFF (F4 90 80 80): invalid UTF-8";
    set_key(&ms[n], "too-high", 8);
    set_value(&ms[n], "\xf4\x90\x80\x80", 4);
    n++;

    ms[n].what = "truncated multibyte at the end";
    set_key(&ms[n], "truncated", 9);
    set_value(&ms[n], "ok \xe2\x82", 5);
    n++;
    return n;
}

static void free_odd(odd *ms, size_t n) {
    for (size_t i = 0; i < n; i++) {
        free(ms[i].key);
        free(ms[i].value);
        for (size_t h = 0; h < ms[i].n_headers; h++)
            free(ms[i].headers[h].value);
    }
}

static void produce_odd(th_cluster *c, const char *topic, const odd *ms,
                        size_t n) {
    char errstr[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", c->bootstraps, errstr,
                      sizeof errstr);
    cr_assert_eq(rd_kafka_conf_set(conf, "message.max.bytes", "4000000", errstr,
                                   sizeof errstr),
                 RD_KAFKA_CONF_OK, "%s", errstr);
    rd_kafka_t *rk =
        rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    cr_assert_not_null(rk, "%s", errstr);
    for (size_t i = 0; i < n; i++) {
        rd_kafka_headers_t *hs = rd_kafka_headers_new(ms[i].n_headers);
        for (size_t h = 0; h < ms[i].n_headers; h++)
            rd_kafka_header_add(hs, ms[i].headers[h].name, -1,
                                ms[i].headers[h].value,
                                (ssize_t)ms[i].headers[h].len);
        rd_kafka_resp_err_t e = rd_kafka_producev(
            rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(0),
            RD_KAFKA_V_KEY(ms[i].key, ms[i].key_len),
            RD_KAFKA_V_VALUE(ms[i].value, ms[i].value_len),
            RD_KAFKA_V_HEADERS(hs), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
            RD_KAFKA_V_END);
        cr_assert_eq(e, 0, "produce %s: %s", ms[i].what, rd_kafka_err2str(e));
        /* One at a time, so that offset i is message i. */
        cr_assert_eq(rd_kafka_flush(rk, 30000), 0, "flush timed out");
    }
    rd_kafka_destroy(rk);
}

/* A byte field of a record equals the bytes produced, in the form the
 * README prescribes for them. */
static void assert_field(const jv *rec, const char *name, const odd *m,
                         const unsigned char *want, size_t want_len,
                         bool want_null) {
    unsigned char *got;
    size_t got_len;
    form f = field_bytes(jget(rec, name), &got, &got_len);
    cr_assert_neq(f, F_BAD, "%s: %s is not null/string/base64", m->what, name);
    if (want_null) {
        cr_assert_eq(f, F_NULL, "%s: %s should be null", m->what, name);
        return;
    }
    cr_assert_neq(f, F_NULL, "%s: %s is null", m->what, name);
    form expected = valid_utf8(want, want_len) ? F_STRING : F_BASE64;
    cr_assert_eq(f, expected, "%s: %s written as %s", m->what, name,
                 f == F_STRING ? "a string" : "base64");
    cr_assert_eq(got_len, want_len, "%s: %s has %zu bytes, produced %zu",
                 m->what, name, got_len, want_len);
    cr_assert(!want_len || !memcmp(got, want, want_len),
              "%s: %s differs from what was produced", m->what, name);
    free(got);
}

static void assert_record(const jv *rec, const odd *m, const char *topic,
                          int offset) {
    const jv *t = jget(rec, "topic");
    cr_assert(t && t->t == J_STR && !strcmp(t->s, topic), "%s", m->what);
    const jv *p = jget(rec, "partition");
    cr_assert(p && p->t == J_NUM && p->num == 0);
    const jv *o = jget(rec, "offset");
    cr_assert(o && o->t == J_NUM && o->num == offset);
    const jv *a = jget(rec, "attempt");
    cr_assert(a && a->t == J_NUM && a->num == 1, "%s: attempt", m->what);
    const jv *ts = jget(rec, "timestamp");
    cr_assert(ts && ts->t == J_NUM && ts->num > 0, "%s: timestamp", m->what);
    const jv *tt = jget(rec, "timestamp_type");
    cr_assert(tt && tt->t == J_STR && !strcmp(tt->s, "create"));
    assert_field(rec, "key", m, m->key, m->key_len, m->key == NULL);
    assert_field(rec, "value", m, m->value, m->value_len, m->value == NULL);
    const jv *hs = jget(rec, "headers");
    cr_assert(hs && hs->t == J_ARR, "%s: headers", m->what);
    cr_assert_eq(hs->n, m->n_headers, "%s: %zu headers, produced %zu", m->what,
                 hs->n, m->n_headers);
    for (size_t i = 0; i < hs->n; i++) {
        const jv *h = &hs->items[i];
        const jv *name = jget(h, "name");
        cr_assert(name && name->t == J_STR &&
                      !strcmp(name->s, m->headers[i].name),
                  "%s: header %zu is named %s, produced %s", m->what, i,
                  name && name->t == J_STR ? name->s : "?", m->headers[i].name);
        odd hm = {.what = m->what};
        assert_field(h, "value", &hm, m->headers[i].value, m->headers[i].len,
                     m->headers[i].value == NULL);
    }
}

Test(badinput, odd_messages_arrive_byte_exact, .timeout = 60) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "odd", 1);
    static odd ms[16];
    memset(ms, 0, sizeof ms);
    size_t n = make_odd(ms);
    produce_odd(&c, "odd", ms, n);

    char *dir = tu_tmpdir();
    char *ini;
    cr_assert_neq(asprintf(&ini,
                           "[host]\nbrokers = %s\n"
                           "[kafka]\nsession.timeout.ms = 6000\n"
                           "heartbeat.interval.ms = 500\n"
                           "[pipeline.p]\ntopics = odd\ngroup = g\n"
                           "plugin = " FAULT "\nworkers = 2\n"
                           "[pipeline.p.config]\nrecord = %s/p.jsonl\n",
                           c.bootstraps, dir),
                  -1);
    th_host h;
    th_host_start(&h, dir, "host", ini);
    current_pid = h.pid;
    cr_assert(th_wait_committed(&c, "g", "odd", 1, (int64_t)n, 30000), "%s",
              th_log(&h));
    cr_assert_eq(stop_host(&h, SIGTERM, 20000), 0, "%s", th_log(&h));
    char *log = th_log(&h);
    cr_assert_eq(tu_count(log, "ERROR"), 0, "%s", log);
    cr_assert_eq(tu_count(log, "crashed"), 0, "%s", log);

    char *rec_path;
    cr_assert_neq(asprintf(&rec_path, "%s/p.jsonl", dir), -1);
    size_t len;
    char *text = tu_read_file(rec_path, &len);
    cr_assert_not_null(text);
    /* The README's own example, literally. */
    cr_assert_not_null(strstr(text, "\"value\":{\"base64\":\"/wD+YQ==\"}"));
    int seen[16] = {0};
    int lines = 0;
    for (char *line = text; line < text + len;) {
        char *nl = memchr(line, '\n', (size_t)(text + len - line));
        cr_assert_not_null(nl, "last record line is not terminated");
        jp j = {line, nl, 0};
        jv rec;
        jparse(&j, &rec);
        cr_assert(!j.err && j.p == nl, "line %d is not one JSON object",
                  lines + 1);
        const jv *o = jget(&rec, "offset");
        cr_assert(o && o->t == J_NUM && o->num >= 0 && (size_t)o->num < n);
        seen[o->num]++;
        assert_record(&rec, &ms[o->num], "odd", (int)o->num);
        jfree(&rec);
        lines++;
        line = nl + 1;
    }
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(seen[i], 1, "%s (offset %zu) recorded %d times",
                     ms[i].what, i, seen[i]);
    cr_assert_eq(th_committed(&c, "g", "odd", 0), (int64_t)n);
    free(text);
    free(rec_path);
    free(log);
    free(ini);
    free_odd(ms, n);
    th_host_free(&h);
    current_pid = 0;
    th_cluster_stop(&c);
    tu_rmdir(dir);
    free(dir);
}

/* ---------------------------------------------------------------------- */
/* Topics with nothing in them, or not there at all                       */

static char *simple_ini(th_cluster *c, const char *dir, const char *topic) {
    char *ini;
    cr_assert_neq(asprintf(&ini,
                           "[host]\nbrokers = %s\n"
                           "[kafka]\nsession.timeout.ms = 6000\n"
                           "heartbeat.interval.ms = 500\n"
                           "[pipeline.p]\ntopics = %s\ngroup = g\n"
                           "plugin = " FAULT "\nworkers = 2\n"
                           "[pipeline.p.config]\nrecord = %s/p.jsonl\n",
                           c->bootstraps, topic, dir),
                  -1);
    return ini;
}

Test(badinput, empty_topic_consumes_nothing_and_stops_cleanly, .timeout = 60) {
    th_cluster c;
    th_cluster_start(&c, 1);
    th_create_topic(&c, "empty", 2);
    char *dir = tu_tmpdir();
    char *ini = simple_ini(&c, dir, "empty");
    th_host h;
    th_host_start(&h, dir, "host", ini);
    current_pid = h.pid;
    cr_assert(th_wait_log(&h,
                          "pipeline=p rebalance #1: assigned 2 partition(s): "
                          "empty[0] empty[1]",
                          1, 20000),
              "%s", th_log(&h));
    th_sleep_ms(1500); /* a fetch round and a commit interval */
    cr_assert(th_host_alive(&h), "%s", th_log(&h));
    cr_assert_eq(stop_host(&h, SIGTERM, 20000), 0, "%s", th_log(&h));
    char *log = th_log(&h);
    cr_assert_eq(tu_count(log, "ERROR"), 0, "%s", log);
    cr_assert_eq(tu_count(log, "WARN"), 0, "%s", log);
    /* Two workers and the spare. */
    cr_assert_eq(tu_count(log, ": terminated"), 3, "%s", log);
    cr_assert_eq(tu_count(log, "pipeline=p stopped: handled=0 "), 1, "%s", log);
    cr_assert_eq(tu_count(log, "khost stopped (exit status 0)"), 1, "%s", log);
    char *rec;
    cr_assert_neq(asprintf(&rec, "%s/p.jsonl", dir), -1);
    size_t len = 0;
    char *text = tu_read_file(rec, &len);
    cr_assert_eq(len, 0, "something was handled: %s", text ? text : "");
    for (int p = 0; p < 2; p++)
        cr_assert_eq(th_committed(&c, "g", "empty", p), -1,
                     "an offset was committed for an empty partition");
    free(text);
    free(rec);
    free(log);
    free(ini);
    th_host_free(&h);
    current_pid = 0;
    th_cluster_stop(&c);
    tu_rmdir(dir);
    free(dir);
}

/*
 * A topic that does not exist when the host starts. Observed (and what
 * this test pins down): the mock cluster creates a subscribed topic on the
 * consumer's metadata request, with its default partition count, so the
 * host is assigned its partitions, runs without an error, and consumes
 * what is produced there later; it then stops cleanly. (A real broker does
 * the same with auto.create.topics.enable=true; with it off librdkafka
 * reports the topic as unknown and keeps the subscription waiting.)
 */
Test(badinput, missing_topic_is_created_and_consumed_later, .timeout = 60) {
    th_cluster c;
    th_cluster_start(&c, 1);
    char *dir = tu_tmpdir();
    char *ini = simple_ini(&c, dir, "absent");
    th_host h;
    th_host_start(&h, dir, "host", ini);
    current_pid = h.pid;
    cr_assert(th_wait_log(&h, "pipeline=p rebalance #1: assigned ", 1, 20000),
              "%s", th_log(&h));
    cr_assert(th_wait_log(&h, " absent[0]", 1, 1000), "%s", th_log(&h));
    cr_assert(th_host_alive(&h));
    /* It exists now; what arrives in it is consumed. */
    th_produce(&c, "absent", 1, 50, -1, -1, NULL);
    cr_assert(th_wait_committed(&c, "g", "absent", 1, 50, 20000), "%s",
              th_log(&h));
    cr_assert_eq(stop_host(&h, SIGTERM, 20000), 0, "%s", th_log(&h));
    char *log = th_log(&h);
    cr_assert_eq(tu_count(log, "ERROR"), 0, "%s", log);
    char *rec;
    cr_assert_neq(asprintf(&rec, "%s/p.jsonl", dir), -1);
    th_ledger l;
    th_ledger_init(&l, 1, 50);
    th_ledger_add_file(&l, rec);
    for (int o = 0; o < 50; o++)
        cr_assert_eq(l.seen[0][o], 1, "offset %d handled %d times", o,
                     l.seen[0][o]);
    cr_assert_eq(l.bad_lines, 0);
    th_ledger_free(&l);
    free(rec);
    free(log);
    free(ini);
    th_host_free(&h);
    current_pid = 0;
    th_cluster_stop(&c);
    tu_rmdir(dir);
    free(dir);
}

/* ---------------------------------------------------------------------- */
/* Broken plugins: refused before anything starts                        */

/* Lines of s (each without its newline); *n set. */
static char **split_lines(const char *s, size_t *n) {
    char **out = NULL;
    *n = 0;
    for (const char *p = s; *p;) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        out = realloc(out, (*n + 1) * sizeof *out);
        out[(*n)++] = strndup(p, len);
        p += len + (nl ? 1 : 0);
    }
    return out;
}

static void free_lines(char **l, size_t n) {
    for (size_t i = 0; i < n; i++)
        free(l[i]);
    free(l);
}

Test(badinput, malformed_plugins_refused_by_run_with_one_line, .timeout = 60) {
    char *dir = tu_tmpdir();
    char *text_so = tu_write_file(dir, "text.so", "this is not a plugin\n");
    char *missing_so;
    cr_assert_neq(asprintf(&missing_so, "%s/missing.so", dir), -1);
    const struct {
        const char *path;
        const char *problem;
    } cases[] = {
        {FIXTURE("fx_abi_major"), ": plugin ABI major 2 is not supported"},
        {FIXTURE("fx_abi_minor"), ": plugin ABI 1.3 is newer than this host's"},
        {FIXTURE("fx_no_entry"), ": no entry point 'khost_plugin_entry'"},
        {FIXTURE("fx_no_handle"), ": required callback 'handle' is NULL"},
        {FIXTURE("fx_small_struct"), ": descriptor too small"},
        {FIXTURE("fx_null_descriptor"), ": khost_plugin_entry() returned NULL"},
        {text_so, ": not a shared object: no ELF header"},
        {missing_so, ": No such file or directory"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *ini;
        /* The plugin key is on line 6. The brokers are never contacted. */
        cr_assert_neq(asprintf(&ini,
                               "[host]\nbrokers = 127.0.0.1:9\n"
                               "[pipeline.p]\ntopics = t\ngroup = g\n"
                               "plugin = %s\nworkers = 1\n",
                               cases[i].path),
                      -1);
        char *cfg = tu_write_file(dir, "bad.ini", ini);
        const char *cmds[] = {"run", "check-config"};
        for (size_t k = 0; k < 2; k++) {
            tu_result r = tu_run(
                (char *[]){KHOST, (char *)cmds[k], "-c", cfg, NULL}, 10000);
            cr_assert_eq(r.exit_code, 2, "%s %s: exit %d\n%s", cmds[k],
                         cases[i].path, r.exit_code, r.err);
            cr_assert_str_eq(r.out, "", "%s printed: %s", cmds[k], r.out);
            size_t n;
            char **lines = split_lines(r.err, &n);
            cr_assert_eq(n, 2, "%s %s: expected the error and a summary:\n%s",
                         cmds[k], cases[i].path, r.err);
            char want[512];
            snprintf(want, sizeof want, "%s:6: plugin of [pipeline.p]: %s%s",
                     cfg, cases[i].path, cases[i].problem);
            cr_assert_eq(strncmp(lines[0], want, strlen(want)), 0,
                         "%s: got\n  %s\nwanted it to start with\n  %s",
                         cmds[k], lines[0], want);
            snprintf(want, sizeof want, "%s: invalid, 1 error%s", cfg,
                     k == 0 ? "; not starting" : "");
            cr_assert_str_eq(lines[1], want);
            free_lines(lines, n);
            tu_result_free(&r);
        }
        free(cfg);
        free(ini);
    }
    free(text_so);
    free(missing_so);
    tu_rmdir(dir);
    free(dir);
}

/* ---------------------------------------------------------------------- */
/* Broken config files                                                    */

/* Run check-config and run on `path`: both exit 2 without a signal,
 * print nothing on stdout, and every stderr line is "PATH:LINE: ..."
 * except the final summary. Returns check-config's stderr (malloc'd). */
static char *assert_refused(const char *path) {
    char *check_err = NULL;
    const char *cmds[] = {"check-config", "run"};
    for (size_t k = 0; k < 2; k++) {
        tu_result r =
            tu_run((char *[]){KHOST, (char *)cmds[k], "-c", (char *)path, NULL},
                   30000);
        cr_assert_eq(r.exit_code, 2, "%s on %s: exit %d\n%.2000s", cmds[k],
                     path, r.exit_code, r.err);
        cr_assert_str_eq(r.out, "", "%s printed on stdout", cmds[k]);
        size_t n;
        char **lines = split_lines(r.err, &n);
        cr_assert_geq(n, 2, "%s: %s", cmds[k], r.err);
        size_t plen = strlen(path);
        for (size_t i = 0; i + 1 < n; i++) {
            const char *l = lines[i];
            cr_assert(!strncmp(l, path, plen) && l[plen] == ':',
                      "%s: line without the file name: %.300s", cmds[k], l);
            const char *d = l + plen + 1;
            const char *e = d;
            while (*e >= '0' && *e <= '9')
                e++;
            cr_assert(e > d && e[0] == ':' && e[1] == ' ',
                      "%s: line without FILE:LINE: %.300s", cmds[k], l);
            cr_assert_lt(strlen(l), 1000, "%s: a huge error line", cmds[k]);
            for (const char *c = l; *c; c++)
                cr_assert_geq((unsigned char)*c, 0x20,
                              "%s: control byte in an error line", cmds[k]);
        }
        char want[512];
        snprintf(want, sizeof want, "%s: invalid, ", path);
        cr_assert_eq(strncmp(lines[n - 1], want, strlen(want)), 0,
                     "%s: no summary line: %.300s", cmds[k], lines[n - 1]);
        if (k == 1)
            cr_assert(strstr(lines[n - 1], "; not starting"), "%s",
                      lines[n - 1]);
        free_lines(lines, n);
        if (k == 0)
            check_err = strdup(r.err);
        tu_result_free(&r);
    }
    return check_err;
}

static char *write_bytes(const char *dir, const char *name, const void *p,
                         size_t len) {
    char *path;
    cr_assert_neq(asprintf(&path, "%s/%s", dir, name), -1);
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(p, 1, len, f), len);
    cr_assert_eq(fclose(f), 0);
    return path;
}

static void assert_has(const char *err, const char *path, const char *what) {
    char want[512];
    snprintf(want, sizeof want, "%s%s", path, what);
    cr_assert_not_null(strstr(err, want), "no '%s' in:\n%.3000s", want, err);
}

Test(badinput, empty_config_file_is_refused) {
    char *dir = tu_tmpdir();
    char *path = write_bytes(dir, "empty.ini", "", 0);
    char *err = assert_refused(path);
    assert_has(err, path, ":1: missing required key 'brokers' in [host]\n");
    assert_has(err, path, ":1: no [pipeline.NAME] section\n");
    assert_has(err, path, ": invalid, 2 errors\n");
    free(err);
    free(path);
    tu_rmdir(dir);
    free(dir);
}

Test(badinput, binary_garbage_config_is_refused) {
    char *dir = tu_tmpdir();
    /* A NUL on line 1, then every byte value, then 64 KiB of noise. */
    size_t len = 65536;
    unsigned char *bytes = malloc(len);
    memcpy(bytes, "ab\0cd\n", 6);
    for (int i = 0; i < 256; i++)
        bytes[6 + i] = (unsigned char)i;
    unsigned x = 12345;
    for (size_t i = 262; i < len; i++) {
        x = x * 1103515245u + 12345u;
        bytes[i] = (unsigned char)(x >> 16);
    }
    char *path = write_bytes(dir, "garbage.ini", bytes, len);
    char *err = assert_refused(path);
    assert_has(err, path, ":1: syntax error: line contains a NUL byte\n");
    /* Capped: 100 errors and a line saying how many more there are. */
    size_t n;
    char **lines = split_lines(err, &n);
    cr_assert_leq(n, 102, "errors are not capped: %zu lines", n);
    free_lines(lines, n);
    free(err);
    free(path);
    free(bytes);
    tu_rmdir(dir);
    free(dir);
}

/* A valid config followed by `pad` bytes of comment lines. */
static char *padded_config(const char *dir, const char *name, size_t total) {
    char *head;
    cr_assert_neq(asprintf(&head, "[host]\nbrokers = 127.0.0.1:9\n"
                                  "[pipeline.p]\ntopics = t\ngroup = g\n"
                                  "plugin = " FAULT "\n"),
                  -1);
    size_t hl = strlen(head);
    cr_assert_gt(total, hl + 2);
    char *buf = malloc(total);
    memcpy(buf, head, hl);
    static const char line[] =
        "# padding padding padding padding padding pad\n";
    size_t ll = sizeof line - 1;
    size_t pos = hl;
    while (total - pos > ll) {
        memcpy(buf + pos, line, ll);
        pos += ll;
    }
    memset(buf + pos, '#', total - pos - 1);
    buf[total - 1] = '\n';
    char *path = write_bytes(dir, name, buf, total);
    free(buf);
    free(head);
    return path;
}

Test(badinput, huge_config_file_is_refused_by_size, .timeout = 60) {
    char *dir = tu_tmpdir();
    /* 20 MB: over the documented 16 MiB cap, refused before parsing. */
    char *path = padded_config(dir, "huge.ini", 20u * 1000 * 1000);
    char *err = assert_refused(path);
    assert_has(err, path, ":0: cannot read: larger than 16777216 bytes\n");
    assert_has(err, path, ": invalid, 1 error\n");
    free(err);
    free(path);

    /* Exactly at the cap it is still read, parsed and valid. */
    path = padded_config(dir, "cap.ini", 16u << 20);
    tu_result r =
        tu_run((char *[]){KHOST, "check-config", "-c", path, NULL}, 30000);
    cr_assert_eq(r.exit_code, 0, "%s", r.err);
    cr_assert(strstr(r.out, ": OK, 1 pipeline"), "%s", r.out);
    tu_result_free(&r);
    free(path);
    tu_rmdir(dir);
    free(dir);
}

Test(badinput, unterminated_section_header_is_refused) {
    char *dir = tu_tmpdir();
    /* In the middle: its keys then belong to no section. */
    char *mid = tu_write_file(dir, "mid.ini",
                              "[host]\nbrokers = 127.0.0.1:9\n"
                              "[pipeline.p\ntopics = t\ngroup = g\n"
                              "plugin = " FAULT "\n");
    char *err = assert_refused(mid);
    assert_has(err, mid, ":3: syntax error: '[' without closing ']'\n");
    free(err);
    /* As the last line, without a newline. */
    char *end = tu_write_file(dir, "end.ini",
                              "[host]\nbrokers = 127.0.0.1:9\n"
                              "[pipeline.p]\ntopics = t\ngroup = g\n"
                              "plugin = " FAULT "\n[pipeline.q");
    err = assert_refused(end);
    assert_has(err, end, ":7: syntax error: '[' without closing ']'\n");
    assert_has(err, end, ": invalid, 1 error\n");
    free(err);
    free(mid);
    free(end);
    tu_rmdir(dir);
    free(dir);
}
