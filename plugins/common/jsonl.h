/*
 * jsonl: the JSON-lines recorder shared by the shipped plugins (file_sink,
 * fault) and, later, a fuzz target.
 *
 * One khost_message becomes one JSON object followed by '\n':
 *
 *   {"topic":T,"partition":P,"offset":O,"key":K,"value":V,
 *    "timestamp":MS,"timestamp_type":"create"|"log_append"|"none",
 *    "headers":[{"name":N,"value":HV},...],"attempt":A}
 *
 * Every byte field (topic, key, value, header name, header value) is
 * encoded by one rule, so any bytes survive a round trip:
 *   - NULL                 -> null
 *   - valid UTF-8 (strict: no overlongs, no surrogates, <= U+10FFFF),
 *     including empty     -> a JSON string; '"' '\\' '\n' '\r' '\t' '\b'
 *                            '\f' use the short escapes, other bytes
 *                            < 0x20 and 0x7f become \u00XX, everything
 *                            else (including multibyte UTF-8) is copied
 *   - anything else        -> {"base64":"..."} (RFC 4648 alphabet, padded)
 * timestamp is timestamp_ms as given (-1 when the message has none);
 * timestamp_type values other than create/log_append are written "none".
 *
 * Everything here is a pure function of its arguments: no global state,
 * no locale dependence. Symbols are hidden so that a plugin exports only
 * its entry point even when built without -fvisibility=hidden.
 */
#ifndef KHOST_JSONL_H
#define KHOST_JSONL_H

#include <khost/plugin.h>
#include <stddef.h>
#include <stdio.h>

#if defined(__GNUC__) || defined(__clang__)
#define JSONL_API __attribute__((visibility("hidden")))
#else
#define JSONL_API
#endif

/* A growable byte buffer. Zero-initialise it ({0}) or use jsonl_buf_init.
 * data is not NUL-terminated; len bytes are valid. */
typedef struct jsonl_buf {
    char *data;
    size_t len;
    size_t cap;
} jsonl_buf;

JSONL_API void jsonl_buf_init(jsonl_buf *b);
/* Releases the memory; the buffer is then empty and reusable. */
JSONL_API void jsonl_buf_free(jsonl_buf *b);
/* Make room for `extra` more bytes. Returns 0 or -ENOMEM. */
JSONL_API int jsonl_buf_reserve(jsonl_buf *b, size_t extra);

/* Append one line (the JSON object and '\n') for `m` to `b`. Returns 0,
 * or a negative errno (-ENOMEM, -EINVAL for m == NULL); on failure b is
 * left exactly as it was, so a batch in b always holds whole lines. */
JSONL_API int jsonl_append_message(jsonl_buf *b, const khost_message *m);

/* Append one byte field by the rule above (null, string or base64
 * object). data may be NULL (then len is ignored). Returns 0 or -ENOMEM;
 * on failure b is unchanged. */
JSONL_API int jsonl_append_bytes(jsonl_buf *b, const void *data, size_t len);

/* 1 when the len bytes are well-formed UTF-8, else 0. */
JSONL_API int jsonl_utf8_valid(const void *data, size_t len);

/* write() all of data to fd, retrying on EINTR and after short writes.
 * Returns 0, or a negative errno; *written (if not NULL) receives the
 * number of bytes that did reach the file either way. */
JSONL_API int jsonl_write_all(int fd, const void *data, size_t len,
                              size_t *written);

/* Format m and append it to fd. With O_APPEND the line normally goes out
 * in a single write(), so concurrent writers never interleave inside it.
 * scratch is reused between calls to avoid a malloc per message; NULL
 * means use a temporary one. Returns 0 or a negative errno. */
JSONL_API int jsonl_write_message_fd(int fd, const khost_message *m,
                                     jsonl_buf *scratch);

/* Same for a stdio stream: one fwrite() of the whole line; the caller
 * decides when to fflush. Returns 0 or a negative errno. */
JSONL_API int jsonl_write_message_file(FILE *f, const khost_message *m,
                                       jsonl_buf *scratch);

#endif /* KHOST_JSONL_H */
