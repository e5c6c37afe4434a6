/*
 * fuzz_jsonl: the JSON-lines recorder of the shipped plugins
 * (plugins/common/jsonl.h) must turn any message into one line of valid
 * JSON from which every field decodes back to the original bytes.
 *
 * Input layout (missing bytes read as 0):
 *   u8  flags   bit 0 topic NULL, bit 1 key NULL, bit 2 value NULL,
 *               bits 3-4 header count (0..3), bit 5 headers pointer NULL
 *               with a nonzero count (a broken host: no headers written),
 *               bit 6 append after an existing line in the buffer
 *   i32 partition, i64 offset, i64 timestamp_ms, i32 timestamp_type,
 *   u32 attempt (little endian)
 *   u8 n + n bytes   topic (cut at its first NUL, as a C string is)
 *   u8 n + n bytes   key
 *   per header: u8 flags (bit 0: value NULL), u8 n + n bytes name,
 *               u8 n + n bytes value
 *   the rest         value
 * Each field is copied into a heap block of exactly its size, so ASan
 * sees any read past a field.
 *
 * The line is checked by a small strict parser written here, independent
 * of jsonl.c: the exact field order of jsonl.h, numbers as formatted
 * integers, strings with only the escapes jsonl.h lists, base64 that is
 * canonical RFC 4648, and for every byte field: null for NULL, a string
 * when the bytes are strict UTF-8 (own validator), base64 otherwise, and
 * the decoded bytes equal to the input. Any mismatch aborts.
 */
#define _GNU_SOURCE
#include "jsonl.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Diagnostics go to a copy of stderr taken before libFuzzer's
 * -close_fd_mask=2 points fd 2 at /dev/null (run.sh uses it to mute
 * khost's log); the sanitizers and libFuzzer keep their own copy. */
static FILE *diag;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv) {
    int fd = dup(STDERR_FILENO);
    diag = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (!diag)
        diag = stderr;
    setvbuf(diag, NULL, _IONBF, 0);
    return 0;
}

/* ---- input splitting ---- */

typedef struct cursor {
    const uint8_t *p;
    size_t left;
} cursor;

static uint64_t take_le(cursor *c, int bytes) {
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++) {
        uint64_t b = 0;
        if (c->left) {
            b = *c->p++;
            c->left--;
        }
        v |= b << (8 * i);
    }
    return v;
}

/* A heap copy of exactly n bytes (1 byte allocated for n == 0 so that an
 * empty field is a non-NULL pointer). */
static uint8_t *take_bytes(cursor *c, size_t n) {
    if (n > c->left)
        n = c->left;
    uint8_t *p = malloc(n ? n : 1);
    if (!p)
        abort();
    memcpy(p, c->p, n);
    c->p += n;
    c->left -= n;
    return p;
}

typedef struct field {
    uint8_t *data; /* NULL: a null field */
    size_t len;
} field;

static field take_field(cursor *c, bool null) {
    size_t n = (size_t)take_le(c, 1);
    if (n > c->left)
        n = c->left;
    uint8_t *p = take_bytes(c, n);
    if (null) {
        free(p);
        return (field){NULL, 0};
    }
    return (field){p, n};
}

/* ---- checking ---- */

static const char *line_start;

static void fail(const char *what, const char *at) {
    fprintf(diag, "fuzz_jsonl: %s at column %td\n", what,
            at ? at - line_start : (ptrdiff_t)-1);
    abort();
}

/* Strict UTF-8 by decoding code points (no overlongs, no surrogates,
 * nothing above U+10FFFF); deliberately not jsonl.c's algorithm. */
static bool utf8_ok(const uint8_t *p, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint8_t c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        uint32_t cp;
        if ((c & 0xE0) == 0xC0) {
            len = 2;
            cp = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            len = 3;
            cp = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            len = 4;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (n - i < len)
            return false;
        for (size_t k = 1; k < len; k++) {
            if ((p[i + k] & 0xC0) != 0x80)
                return false;
            cp = cp << 6 | (p[i + k] & 0x3F);
        }
        uint32_t min = len == 2 ? 0x80 : len == 3 ? 0x800 : 0x10000;
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += len;
    }
    return true;
}

typedef struct parser {
    const char *p, *end;
} parser;

static void expect(parser *ps, const char *lit) {
    size_t n = strlen(lit);
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, lit, n) != 0) {
        fprintf(diag, "fuzz_jsonl: expected '%s'\n", lit);
        fail("unexpected text", ps->p);
    }
    ps->p += n;
}

static bool peek(parser *ps, char c) {
    return ps->p < ps->end && *ps->p == c;
}

static void expect_int(parser *ps, int64_t want) {
    char num[32];
    int n = snprintf(num, sizeof num, "%" PRId64, want);
    const char *s = ps->p;
    if (peek(ps, '-'))
        ps->p++;
    const char *digits = ps->p;
    while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9')
        ps->p++;
    if (ps->p == digits || (ps->p - digits > 1 && *digits == '0'))
        fail("not a JSON integer", s);
    if (ps->p - s != n || memcmp(s, num, (size_t)n) != 0)
        fail("integer differs from the message", s);
}

static int hexval(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
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

/* A JSON string with only jsonl.h's escapes; decoded into out. */
static void parse_string(parser *ps, uint8_t *out, size_t *out_len) {
    const char *s = ps->p;
    expect(ps, "\"");
    size_t n = 0;
    for (;;) {
        if (ps->p >= ps->end)
            fail("unterminated string", s);
        uint8_t c = (uint8_t)*ps->p++;
        if (c == '"')
            break;
        if (c < 0x20 || c == 0x7f)
            fail("raw control byte in a string", ps->p - 1);
        if (c != '\\') {
            out[n++] = c;
            continue;
        }
        if (ps->p >= ps->end)
            fail("dangling backslash", s);
        char e = *ps->p++;
        switch (e) {
        case '"':
        case '\\':
            out[n++] = (uint8_t)e;
            break;
        case 'n':
            out[n++] = '\n';
            break;
        case 'r':
            out[n++] = '\r';
            break;
        case 't':
            out[n++] = '\t';
            break;
        case 'b':
            out[n++] = '\b';
            break;
        case 'f':
            out[n++] = '\f';
            break;
        case 'u': {
            if (ps->end - ps->p < 4)
                fail("short \\u escape", ps->p);
            int v = 0;
            for (int i = 0; i < 4; i++) {
                int h = hexval(ps->p[i]);
                if (h < 0 || (ps->p[i] >= 'A' && ps->p[i] <= 'F'))
                    fail("bad \\u escape (jsonl writes lowercase hex)", ps->p);
                v = v << 4 | h;
            }
            /* jsonl.h: \u00XX only for controls without a short escape
             * and for 0x7f. */
            if (!((v < 0x20 && v != '\n' && v != '\r' && v != '\t' &&
                   v != '\b' && v != '\f') ||
                  v == 0x7f))
                fail("\\u escape jsonl.h does not use", ps->p);
            out[n++] = (uint8_t)v;
            ps->p += 4;
            break;
        }
        default:
            fail("escape jsonl.h does not use", ps->p - 1);
        }
    }
    *out_len = n;
}

/* {"base64":"..."}, canonical: padded, zero trailing bits. */
static void parse_base64(parser *ps, uint8_t *out, size_t *out_len) {
    expect(ps, "{\"base64\":\"");
    const char *s = ps->p;
    while (ps->p < ps->end && *ps->p != '"')
        ps->p++;
    size_t len = (size_t)(ps->p - s);
    expect(ps, "\"}");
    if (len % 4)
        fail("base64 length not a multiple of 4", s);
    size_t n = 0;
    for (size_t i = 0; i < len; i += 4) {
        const char *q = s + i;
        bool last = i + 4 == len;
        int v[4];
        int pad = 0;
        for (int k = 0; k < 4; k++) {
            if (q[k] == '=' && last && k >= 2) {
                pad++;
                v[k] = 0;
                continue;
            }
            if (pad)
                fail("base64 data after padding", q + k);
            v[k] = b64val(q[k]);
            if (v[k] < 0)
                fail("not a base64 character", q + k);
        }
        uint32_t x = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 |
                     (uint32_t)v[2] << 6 | (uint32_t)v[3];
        if ((pad == 1 && (x & 0xFF)) || (pad == 2 && (x & 0xFFFF)))
            fail("base64 with nonzero unused bits", q);
        out[n++] = (uint8_t)(x >> 16);
        if (pad < 2)
            out[n++] = (uint8_t)(x >> 8);
        if (pad < 1)
            out[n++] = (uint8_t)x;
    }
    *out_len = n;
}

/* One byte field; want NULL means the field must be null. */
static void expect_bytes(parser *ps, const uint8_t *want, size_t want_len) {
    const char *s = ps->p;
    if (!want) {
        expect(ps, "null");
        return;
    }
    /* Decoding never yields more bytes than the text it reads. */
    uint8_t *got = malloc((size_t)(ps->end - ps->p) + 1);
    if (!got)
        abort();
    size_t got_len = 0;
    bool text = utf8_ok(want, want_len);
    if (peek(ps, '"')) {
        if (!text)
            fail("invalid UTF-8 written as a string", s);
        parse_string(ps, got, &got_len);
    } else if (peek(ps, '{')) {
        if (text)
            fail("valid UTF-8 written as base64", s);
        parse_base64(ps, got, &got_len);
    } else {
        fail("byte field is neither null, a string nor base64", s);
    }
    if (got_len != want_len || memcmp(got, want, want_len) != 0)
        fail("field does not decode to the original bytes", s);
    free(got);
}

static const char *ts_name(int32_t type) {
    return type == KHOST_TIMESTAMP_CREATE_TIME       ? "create"
           : type == KHOST_TIMESTAMP_LOG_APPEND_TIME ? "log_append"
                                                     : "none";
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    cursor c = {data, size};
    uint8_t flags = (uint8_t)take_le(&c, 1);
    khost_message m = {.struct_size = sizeof m};
    m.partition = (int32_t)take_le(&c, 4);
    m.offset = (int64_t)take_le(&c, 8);
    m.timestamp_ms = (int64_t)take_le(&c, 8);
    m.timestamp_type = (int32_t)take_le(&c, 4);
    m.attempt = (uint32_t)take_le(&c, 4);

    field topic = take_field(&c, flags & 1);
    char *topic_str = NULL;
    if (topic.data) {
        topic_str = malloc(topic.len + 1);
        if (!topic_str)
            abort();
        memcpy(topic_str, topic.data, topic.len);
        topic_str[topic.len] = '\0';
    }
    field key = take_field(&c, flags & 2);
    size_t n_headers = (flags >> 3) & 3;
    khost_header headers[3];
    char *names[3] = {0};
    field hvals[3] = {{0}};
    for (size_t i = 0; i < n_headers; i++) {
        uint8_t hflags = (uint8_t)take_le(&c, 1);
        field name = take_field(&c, false);
        names[i] = malloc(name.len + 1);
        if (!names[i])
            abort();
        memcpy(names[i], name.data, name.len);
        names[i][name.len] = '\0';
        free(name.data);
        hvals[i] = take_field(&c, hflags & 1);
        headers[i] = (khost_header){.name = names[i],
                                    .value = hvals[i].data,
                                    .value_len = hvals[i].len};
    }
    field value = {NULL, 0};
    size_t rest_len = c.left;
    uint8_t *rest = take_bytes(&c, rest_len);
    if (flags & 4)
        free(rest);
    else
        value = (field){rest, rest_len};

    m.topic = topic_str;
    m.key = key.data;
    m.key_len = key.len;
    m.value = value.data;
    m.value_len = value.len;
    m.header_count = n_headers;
    m.headers = n_headers ? headers : NULL;
    bool broken_headers = (flags & 32) && n_headers;
    if (broken_headers)
        m.headers = NULL;

    jsonl_buf b = {0};
    static const char previous[] = "{\"previous\":\"line\"}\n";
    size_t prefix = 0;
    if (flags & 64) {
        if (jsonl_buf_reserve(&b, sizeof previous) != 0)
            abort();
        memcpy(b.data, previous, sizeof previous - 1);
        b.len = prefix = sizeof previous - 1;
    }
    if (jsonl_append_message(&b, &m) != 0)
        fail("jsonl_append_message failed", NULL);
    if (prefix && memcmp(b.data, previous, prefix) != 0)
        fail("the line before was changed", NULL);

    const char *line = b.data + prefix;
    size_t line_len = b.len - prefix;
    line_start = line;
    if (!utf8_ok((const uint8_t *)line, line_len))
        fail("line is not valid UTF-8", NULL);
    if (memchr(line, '\n', line_len) != line + line_len - 1)
        fail("newline inside the line", NULL);

    parser ps = {line, line + line_len};
    expect(&ps, "{\"topic\":");
    expect_bytes(&ps, (const uint8_t *)topic_str,
                 topic_str ? strlen(topic_str) : 0);
    expect(&ps, ",\"partition\":");
    expect_int(&ps, m.partition);
    expect(&ps, ",\"offset\":");
    expect_int(&ps, m.offset);
    expect(&ps, ",\"key\":");
    expect_bytes(&ps, key.data, key.len);
    expect(&ps, ",\"value\":");
    expect_bytes(&ps, value.data, value.len);
    expect(&ps, ",\"timestamp\":");
    expect_int(&ps, m.timestamp_ms);
    expect(&ps, ",\"timestamp_type\":\"");
    expect(&ps, ts_name(m.timestamp_type));
    expect(&ps, "\",\"headers\":[");
    for (size_t i = 0; i < (broken_headers ? 0 : n_headers); i++) {
        expect(&ps, i ? ",{\"name\":" : "{\"name\":");
        expect_bytes(&ps, (const uint8_t *)names[i], strlen(names[i]));
        expect(&ps, ",\"value\":");
        expect_bytes(&ps, hvals[i].data, hvals[i].len);
        expect(&ps, "}");
    }
    expect(&ps, "],\"attempt\":");
    expect_int(&ps, m.attempt);
    expect(&ps, "}\n");
    if (ps.p != ps.end)
        fail("bytes after the line", ps.p);

    jsonl_buf_free(&b);
    for (size_t i = 0; i < n_headers; i++) {
        free(names[i]);
        free(hvals[i].data);
    }
    free(value.data);
    free(key.data);
    free(topic.data);
    free(topic_str);
    return 0;
}
