/*
 * jsonl: turns a khost_message into one JSON line (format and byte rule
 * documented in jsonl.h) and writes lines to files without tearing them.
 *
 * The formatter reserves the worst case for each field before writing it
 * so that the inner loops need no bounds checks, and it rolls the buffer
 * back on failure so callers batching many lines never see half a line.
 */
#define _GNU_SOURCE
#include "jsonl.h"

#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void jsonl_buf_init(jsonl_buf *b) {
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

void jsonl_buf_free(jsonl_buf *b) {
    free(b->data);
    jsonl_buf_init(b);
}

int jsonl_buf_reserve(jsonl_buf *b, size_t extra) {
    if (b->cap - b->len >= extra)
        return 0;
    if (extra > SIZE_MAX - b->len)
        return -ENOMEM;
    size_t need = b->len + extra;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    char *data = realloc(b->data, cap);
    if (!data)
        return -ENOMEM;
    b->data = data;
    b->cap = cap;
    return 0;
}

/* Callers have reserved room already; these only copy. */
static void put(jsonl_buf *b, const char *s, size_t n) {
    memcpy(b->data + b->len, s, n);
    b->len += n;
}

static void put_c(jsonl_buf *b, char c) {
    b->data[b->len++] = c;
}

static int append_raw(jsonl_buf *b, const char *s, size_t n) {
    int rc = jsonl_buf_reserve(b, n);
    if (rc)
        return rc;
    put(b, s, n);
    return 0;
}

static int append_str(jsonl_buf *b, const char *s) {
    return append_raw(b, s, strlen(s));
}

/*
 * Strict UTF-8 following Unicode Table 3-7 (well-formed byte sequences):
 * overlong forms, UTF-16 surrogates and code points above U+10FFFF are
 * rejected, because a JSON string carrying them would not decode back to
 * the same bytes in common parsers.
 */
int jsonl_utf8_valid(const void *data, size_t len) {
    const unsigned char *p = data;
    size_t i = 0;
    while (i < len) {
        unsigned char c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t need;
        unsigned char lo = 0x80, hi = 0xBF; /* range of the 2nd byte */
        if (c >= 0xC2 && c <= 0xDF) {
            need = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            if (c == 0xE0)
                lo = 0xA0;
            else if (c == 0xED)
                hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            if (c == 0xF0)
                lo = 0x90;
            else if (c == 0xF4)
                hi = 0x8F;
        } else {
            return 0;
        }
        if (len - i - 1 < need)
            return 0;
        if (p[i + 1] < lo || p[i + 1] > hi)
            return 0;
        for (size_t k = 2; k <= need; k++)
            if (p[i + k] < 0x80 || p[i + k] > 0xBF)
                return 0;
        i += need + 1;
    }
    return 1;
}

static const char hex_digits[] = "0123456789abcdef";

static int append_json_string(jsonl_buf *b, const unsigned char *p, size_t n) {
    /* Worst case: every byte becomes \u00XX, plus the two quotes. */
    if (n > (SIZE_MAX - 2) / 6)
        return -ENOMEM;
    int rc = jsonl_buf_reserve(b, n * 6 + 2);
    if (rc)
        return rc;
    put_c(b, '"');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = p[i];
        switch (c) {
        case '"':
            put(b, "\\\"", 2);
            break;
        case '\\':
            put(b, "\\\\", 2);
            break;
        case '\n':
            put(b, "\\n", 2);
            break;
        case '\r':
            put(b, "\\r", 2);
            break;
        case '\t':
            put(b, "\\t", 2);
            break;
        case '\b':
            put(b, "\\b", 2);
            break;
        case '\f':
            put(b, "\\f", 2);
            break;
        default:
            if (c < 0x20 || c == 0x7f) {
                char esc[6] = {'\\',
                               'u',
                               '0',
                               '0',
                               hex_digits[c >> 4],
                               hex_digits[c & 0xf]};
                put(b, esc, sizeof esc);
            } else {
                put_c(b, (char)c);
            }
        }
    }
    put_c(b, '"');
    return 0;
}

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static int append_base64_object(jsonl_buf *b, const unsigned char *p,
                                size_t n) {
    static const char open[] = "{\"base64\":\"";
    static const char close[] = "\"}";
    size_t groups = n / 3 + (n % 3 != 0);
    if (groups > (SIZE_MAX - sizeof open - sizeof close) / 4)
        return -ENOMEM;
    int rc = jsonl_buf_reserve(b, groups * 4 + sizeof open + sizeof close);
    if (rc)
        return rc;
    put(b, open, sizeof open - 1);
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        put_c(b, b64_alphabet[v >> 18]);
        put_c(b, b64_alphabet[(v >> 12) & 63]);
        put_c(b, b64_alphabet[(v >> 6) & 63]);
        put_c(b, b64_alphabet[v & 63]);
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)p[i] << 16;
        put_c(b, b64_alphabet[v >> 18]);
        put_c(b, b64_alphabet[(v >> 12) & 63]);
        put(b, "==", 2);
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
        put_c(b, b64_alphabet[v >> 18]);
        put_c(b, b64_alphabet[(v >> 12) & 63]);
        put_c(b, b64_alphabet[(v >> 6) & 63]);
        put_c(b, '=');
    }
    put(b, close, sizeof close - 1);
    return 0;
}

int jsonl_append_bytes(jsonl_buf *b, const void *data, size_t len) {
    size_t start = b->len;
    int rc;
    if (!data)
        rc = append_raw(b, "null", 4);
    else if (jsonl_utf8_valid(data, len))
        rc = append_json_string(b, data, len);
    else
        rc = append_base64_object(b, data, len);
    if (rc)
        b->len = start;
    return rc;
}

static int append_cstr(jsonl_buf *b, const char *s) {
    return jsonl_append_bytes(b, s, s ? strlen(s) : 0);
}

static const char *timestamp_type_name(int32_t type) {
    switch (type) {
    case KHOST_TIMESTAMP_CREATE_TIME:
        return "create";
    case KHOST_TIMESTAMP_LOG_APPEND_TIME:
        return "log_append";
    default:
        return "none";
    }
}

static int append_fmt_i64(jsonl_buf *b, const char *prefix, int64_t v) {
    char num[32];
    int rc = append_str(b, prefix);
    if (rc)
        return rc;
    int n = snprintf(num, sizeof num, "%" PRId64, v);
    return append_raw(b, num, (size_t)n);
}

static int append_message_fields(jsonl_buf *b, const khost_message *m) {
    int rc;
    if ((rc = append_str(b, "{\"topic\":")) || (rc = append_cstr(b, m->topic)))
        return rc;
    if ((rc = append_fmt_i64(b, ",\"partition\":", m->partition)) ||
        (rc = append_fmt_i64(b, ",\"offset\":", m->offset)))
        return rc;
    if ((rc = append_str(b, ",\"key\":")) ||
        (rc = jsonl_append_bytes(b, m->key, m->key_len)))
        return rc;
    if ((rc = append_str(b, ",\"value\":")) ||
        (rc = jsonl_append_bytes(b, m->value, m->value_len)))
        return rc;
    if ((rc = append_fmt_i64(b, ",\"timestamp\":", m->timestamp_ms)) ||
        (rc = append_str(b, ",\"timestamp_type\":\"")) ||
        (rc = append_str(b, timestamp_type_name(m->timestamp_type))) ||
        (rc = append_str(b, "\",\"headers\":[")))
        return rc;
    /* A host passing header_count without headers is broken; writing no
     * headers beats dereferencing NULL. */
    size_t count = m->headers ? m->header_count : 0;
    for (size_t i = 0; i < count; i++) {
        const khost_header *h = &m->headers[i];
        if ((rc = append_str(b, i ? ",{\"name\":" : "{\"name\":")) ||
            (rc = append_cstr(b, h->name)) ||
            (rc = append_str(b, ",\"value\":")) ||
            (rc = jsonl_append_bytes(b, h->value, h->value_len)) ||
            (rc = append_str(b, "}")))
            return rc;
    }
    if ((rc = append_fmt_i64(b, "],\"attempt\":", m->attempt)) ||
        (rc = append_str(b, "}\n")))
        return rc;
    return 0;
}

int jsonl_append_message(jsonl_buf *b, const khost_message *m) {
    if (!b || !m)
        return -EINVAL;
    size_t start = b->len;
    int rc = append_message_fields(b, m);
    if (rc)
        b->len = start;
    return rc;
}

int jsonl_write_all(int fd, const void *data, size_t len, size_t *written) {
    const char *p = data;
    size_t done = 0;
    int rc = 0;
    while (done < len) {
        ssize_t n = write(fd, p + done, len - done);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            rc = -errno;
            break;
        }
        if (n == 0) {
            /* Not expected for files; stop rather than spin. */
            rc = -EIO;
            break;
        }
        done += (size_t)n;
    }
    if (written)
        *written = done;
    return rc;
}

int jsonl_write_message_fd(int fd, const khost_message *m, jsonl_buf *scratch) {
    jsonl_buf tmp = {0};
    jsonl_buf *b = scratch ? scratch : &tmp;
    b->len = 0;
    int rc = jsonl_append_message(b, m);
    if (!rc)
        rc = jsonl_write_all(fd, b->data, b->len, NULL);
    if (!scratch)
        jsonl_buf_free(&tmp);
    return rc;
}

int jsonl_write_message_file(FILE *f, const khost_message *m,
                             jsonl_buf *scratch) {
    jsonl_buf tmp = {0};
    jsonl_buf *b = scratch ? scratch : &tmp;
    b->len = 0;
    int rc = jsonl_append_message(b, m);
    errno = 0;
    if (!rc && fwrite(b->data, 1, b->len, f) != b->len)
        rc = errno ? -errno : -EIO;
    if (!scratch)
        jsonl_buf_free(&tmp);
    return rc;
}
