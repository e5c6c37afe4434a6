/*
 * fuzz_messages: the worker's decoder of MESSAGES payloads.
 *
 * The input is taken as a run of encoded messages (the part of a
 * MESSAGES payload after its u32 count; see transport.h) and decoded
 * with tr_get_message until it fails or the input ends. A copy of the
 * input of exactly its size is decoded, so ASan catches a read one byte
 * past it.
 *
 * Every decoded message is checked: borrowed fields (key, value, header
 * values) lie inside the input, topic and header names are NUL-terminated
 * inside the strings buffer, and encoding the message again gives the
 * very bytes it was decoded from (when its topic and header names hold
 * no NUL, which a C string cannot carry). The strings buffer is reset
 * before every other message, like a worker reusing a slot, so growing a
 * non-empty buffer is covered too.
 */
#define _GNU_SOURCE
#include "transport.h"

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

static void fail(const char *what, size_t index) {
    fprintf(diag, "fuzz_messages: message %zu: %s\n", index, what);
    abort();
}

static bool inside(const void *p, size_t len, const uint8_t *base,
                   size_t size) {
    const uint8_t *q = p;
    return q >= base && q <= base + size && len <= (size_t)(base + size - q);
}

static bool in_strings(const char *s, const kh_buf *strings) {
    const uint8_t *q = (const uint8_t *)s;
    if (q < strings->data || q >= strings->data + strings->len)
        return false;
    return memchr(q, '\0', (size_t)(strings->data + strings->len - q)) != NULL;
}

/* Re-encode m the way the host does (tr_put_kafka_message's layout). */
static void encode(kh_buf *b, const khost_message *m) {
    tr_put_u64(b, m->ack_token);
    tr_put_u32(b, m->attempt);
    tr_put_str(b, m->topic);
    tr_put_i32(b, m->partition);
    tr_put_i64(b, m->offset);
    tr_put_i64(b, m->timestamp_ms);
    tr_put_i32(b, m->timestamp_type);
    tr_put_blob(b, m->key, m->key_len);
    tr_put_blob(b, m->value, m->value_len);
    tr_put_u32(b, (uint32_t)m->header_count);
    for (size_t i = 0; i < m->header_count; i++) {
        tr_put_str(b, m->headers[i].name);
        tr_put_blob(b, m->headers[i].value, m->headers[i].value_len);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy)
        abort();
    memcpy(copy, data, size);

    kh_reader r = {.p = copy, .left = size};
    kh_buf strings = {0}, again = {0};
    khost_header *headers = NULL;
    size_t headers_cap = 0;
    for (size_t i = 0; r.left > 0; i++) {
        if (i % 2 == 0)
            strings.len = strings.off = 0;
        const uint8_t *start = r.p;
        khost_message m;
        if (tr_get_message(&r, &m, &strings, &headers, &headers_cap) != 0) {
            if (!r.error)
                fail("failed without setting the reader's error", i);
            break;
        }
        if (r.error)
            fail("succeeded with the reader's error set", i);
        size_t used = (size_t)(r.p - start);
        if (m.struct_size != sizeof m)
            fail("struct_size", i);
        if (!m.topic || !in_strings(m.topic, &strings))
            fail("topic not a string in the strings buffer", i);
        if ((m.key && !inside(m.key, m.key_len, start, used)) ||
            (!m.key && m.key_len))
            fail("key outside the message", i);
        if ((m.value && !inside(m.value, m.value_len, start, used)) ||
            (!m.value && m.value_len))
            fail("value outside the message", i);
        if (m.header_count > headers_cap ||
            (m.header_count && m.headers != headers) ||
            (!m.header_count && m.headers))
            fail("headers array", i);
        for (size_t h = 0; h < m.header_count; h++) {
            const khost_header *hd = &m.headers[h];
            if (!hd->name || !in_strings(hd->name, &strings))
                fail("header name not in the strings buffer", i);
            if ((hd->value && !inside(hd->value, hd->value_len, start, used)) ||
                (!hd->value && hd->value_len))
                fail("header value outside the message", i);
        }
        /* Round trip: same bytes, unless a NUL hid part of a name. */
        again.len = again.off = 0;
        encode(&again, &m);
        if (again.len > used)
            fail("re-encoding is longer than the input", i);
        if (again.len == used && memcmp(again.data, start, used))
            fail("re-encoding differs from the input", i);
    }
    buf_free(&strings);
    buf_free(&again);
    free(headers);
    free(copy);
    return 0;
}
