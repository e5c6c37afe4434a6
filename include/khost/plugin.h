/*
 * khost plugin ABI, version 1.
 *
 * This is the only header a handler plugin needs. It is self-contained
 * (C99, includable from C++), and a plugin built against it needs no
 * symbol from the host: every host service arrives as a function pointer
 * in khost_host_api, so plugins link with -Wl,--no-undefined and the host
 * loads them with RTLD_NOW | RTLD_LOCAL.
 *
 * Compatibility rule (see plugin-api/ABI.md for the full contract):
 *   - the host accepts a plugin when descriptor.abi_major equals the host's
 *     KHOST_ABI_MAJOR and descriptor.abi_minor <= the host's KHOST_ABI_MINOR;
 *   - structs only ever grow at the end; every struct that crosses the
 *     boundary starts with struct_size, and readers look only at fields
 *     that struct_size covers;
 *   - new features beyond that arrive as extensions, looked up by a
 *     versioned string id through get_extension.
 *
 * Threads: the host calls every callback from the worker process's single
 * main thread, one call at a time. Host API functions may be called only
 * from inside a callback, on that thread (see ABI.md for why).
 */
#ifndef KHOST_PLUGIN_H
#define KHOST_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KHOST_ABI_MAJOR 1
#define KHOST_ABI_MINOR 2

/* The one symbol the host looks up, with dlsym, in every plugin. */
#define KHOST_PLUGIN_ENTRY khost_plugin_entry
#define KHOST_PLUGIN_ENTRY_NAME "khost_plugin_entry"

#if defined(__GNUC__) || defined(__clang__)
#define KHOST_PLUGIN_EXPORT __attribute__((visibility("default")))
#else
#define KHOST_PLUGIN_EXPORT
#endif

/* ------------------------------------------------------------------ */
/* Results                                                            */
/* ------------------------------------------------------------------ */

/* What a handler answers for one message. A crash (signal, exit, hang)
 * is the plugin's worst answer; the host handles it like the others. */
typedef enum khost_result {
    KHOST_ACK = 0,      /* done: the offset may be committed */
    KHOST_RETRY = 1,    /* redeliver this message after a backoff */
    KHOST_FAIL = 2,     /* give the message to the pipeline's failure policy */
    KHOST_DEFERRED = 3, /* the plugin will call api->ack(ack_token) later */
} khost_result;

/* ------------------------------------------------------------------ */
/* Message view                                                       */
/* ------------------------------------------------------------------ */

typedef enum khost_timestamp_type {
    KHOST_TIMESTAMP_NONE = 0,
    KHOST_TIMESTAMP_CREATE_TIME = 1,
    KHOST_TIMESTAMP_LOG_APPEND_TIME = 2,
} khost_timestamp_type;

typedef struct khost_header {
    const char *name;  /* NUL-terminated */
    const void *value; /* NULL means a null header value */
    size_t value_len;
} khost_header;

/*
 * One Kafka message, borrowed: every pointer is valid only for the
 * duration of the callback that received it. Copy what you keep.
 * key == NULL is a null key; key != NULL with key_len == 0 is an empty key.
 * The same holds for value.
 */
typedef struct khost_message {
    uint32_t struct_size; /* sizeof(khost_message) as the host built it */
    const char *topic;
    int32_t partition;
    int64_t offset;
    const void *key;
    size_t key_len;
    const void *value;
    size_t value_len;
    int64_t timestamp_ms;   /* milliseconds since the epoch, -1 if none */
    int32_t timestamp_type; /* khost_timestamp_type */
    const khost_header *headers;
    size_t header_count;
    uint32_t attempt;   /* 1 on first delivery, 2 on the first retry, ... */
    uint64_t ack_token; /* pass to api->ack after returning KHOST_DEFERRED */
    /* ABI 1.0 ends here; later minors append fields. */
} khost_message;

/* ------------------------------------------------------------------ */
/* Host services                                                      */
/* ------------------------------------------------------------------ */

typedef enum khost_log_level {
    KHOST_LOG_ERROR = 3,
    KHOST_LOG_WARN = 4,
    KHOST_LOG_INFO = 6,
    KHOST_LOG_DEBUG = 7,
} khost_log_level;

/* Opaque handle the host passes back to its own API functions. */
typedef struct khost_host khost_host;

typedef struct khost_host_api {
    uint32_t struct_size;
    uint16_t abi_major;
    uint16_t abi_minor;

    /* Write one log line, tagged with pipeline and worker by the host. */
    void (*log)(khost_host *host, int level, const char *message);

    /* The value of `key` in [pipeline.NAME.config], or NULL when unset.
     * The string lives until terminate returns. */
    const char *(*config_get)(khost_host *host, const char *key);

    /* Iterate [pipeline.NAME.config]: returns 0 and sets *key and *value
     * for index < count, -1 past the end. Strings live until terminate. */
    int (*config_entry)(khost_host *host, size_t index, const char **key,
                        const char **value);

    /* Acknowledge a message for which handle returned KHOST_DEFERRED,
     * or one of the handle/handle_batch call in progress (the ack then
     * counts if the call answers KHOST_DEFERRED for it). Returns 0, or a
     * negative errno (-EINVAL: unknown or already acked token). Acks may
     * arrive in any order; the committed offset only advances over a
     * contiguous run of acked offsets. */
    int (*ack)(khost_host *host, uint64_t ack_token);

    /* ABI 1.1: attach a one-line reason to a message the handler answers
     * KHOST_RETRY or KHOST_FAIL (call it before returning). The reason
     * goes into the log and the dead-letter headers. Returns 0, or
     * -EINVAL for a token not being handled now. Check api->abi_minor >= 1
     * (or use khost_set_error below) before calling it. */
    int (*set_error)(khost_host *host, uint64_t ack_token, const char *text);

    /* Reserved for later minors (produce, metrics). NULL until then. */
    void (*reserved[5])(void);
} khost_host_api;

/* What init receives. */
typedef struct khost_init_args {
    uint32_t struct_size;
    const khost_host_api *api;
    khost_host *host;
    const char *pipeline; /* the [pipeline.NAME] this worker serves */
    /* 0 .. workers + spare_workers - 1, distinct among the pipeline's
     * live worker processes. A spare (spare_workers) that takes over a
     * dead worker keeps the index it was given here. */
    int32_t worker_index;
    char *errbuf; /* on failure, write one line explaining why */
    size_t errbuf_size;
} khost_init_args;

/* ------------------------------------------------------------------ */
/* Descriptor                                                         */
/* ------------------------------------------------------------------ */

typedef struct khost_plugin_descriptor {
    uint32_t struct_size; /* sizeof(khost_plugin_descriptor) at build time */
    uint16_t abi_major;   /* KHOST_ABI_MAJOR at build time */
    uint16_t abi_minor;   /* KHOST_ABI_MINOR at build time */
    const char *name;     /* short identifier, e.g. "file_sink" */
    const char *version;  /* free-form, e.g. "1.2.0" */
    const char *description;

    /* Required. Called once per worker process before any message.
     * Return 0 on success. On failure write the reason into
     * args->errbuf and return non-zero; the worker then exits and the
     * host reports the reason. *state is handed to every later call. */
    int (*init)(const khost_init_args *args, void **state);

    /* Required. Called for each message, in offset order per partition. */
    khost_result (*handle)(void *state, const khost_message *message);

    /* Required. Called once on orderly shutdown; free everything. Not
     * called when the worker is killed. */
    void (*terminate)(void *state);

    /* ---- optional callbacks: NULL when not implemented ---- */

    /* Handle `count` messages at once; write one result per message into
     * results[]. When present the host prefers it over handle. */
    void (*handle_batch)(void *state, const khost_message *const *messages,
                         size_t count, khost_result *results);

    /* This worker now owns / no longer owns a partition. on_revoke is the
     * last chance to ack deferred messages of that partition. */
    void (*on_assign)(void *state, const char *topic, int32_t partition);
    void (*on_revoke)(void *state, const char *topic, int32_t partition);

    /* Called about every tick_interval_ms (config, default 1000) and before
     * shutdown, so batching sinks can flush and ack deferred messages. */
    void (*tick)(void *state, int64_t now_ms);

    /* Look up an extension by versioned string id, e.g.
     * "khost.ext.example/1". Returns NULL when unsupported. */
    const void *(*get_extension)(const char *id);

    /* ABI 1.0 ends here; later minors append fields. */

    /* ABI 1.2. KHOST_PLUGIN_* bits below; 0 when the plugin sets none.
     * A host older than 1.2 does not look at it. */
    uint64_t flags;
} khost_plugin_descriptor;

/* descriptor.flags (ABI 1.2). Unknown bits are ignored. */

/* The plugin never reads message->headers. The host then does not parse
 * a message's headers to pass them on, and every message reaches the
 * plugin with header_count 0, whatever it carried. Parsing
 * costs the host about 1,100 instructions per message with librdkafka
 * 2.0.2, even for messages without headers. The dead-letter topic still
 * gets the original headers. */
#define KHOST_PLUGIN_NO_HEADERS ((uint64_t)1 << 0)

/* The size of the 1.0 descriptor up to and including the last required
 * field. A descriptor smaller than this cannot be a valid plugin. */
#define KHOST_DESCRIPTOR_MIN_SIZE                                              \
    (offsetof(khost_plugin_descriptor, terminate) +                            \
     sizeof(((khost_plugin_descriptor *)0)->terminate))

/* Does a descriptor of this struct_size carry `field`? */
#define KHOST_DESCRIPTOR_HAS(desc, field)                                      \
    ((desc)->struct_size >=                                                    \
     offsetof(khost_plugin_descriptor, field) + sizeof((desc)->field))

/* The entry point every plugin exports:
 *
 *   KHOST_PLUGIN_EXPORT const khost_plugin_descriptor *
 *   khost_plugin_entry(void) { return &my_descriptor; }
 *
 * It must be cheap and side-effect free: `khost plugin-info` and
 * `khost check-config` call it without calling init. */
typedef const khost_plugin_descriptor *(*khost_plugin_entry_fn)(void);

/* ------------------------------------------------------------------ */
/* Convenience for plugin authors (header-only, no host symbol)       */
/* ------------------------------------------------------------------ */

#include <stdarg.h>
#include <stdio.h>

#if defined(__GNUC__) || defined(__clang__)
__attribute__((format(printf, 4, 5)))
#endif
/* printf-style wrapper around api->log; keep api and host from init_args. */
static inline void
khost_logf(const khost_host_api *api, khost_host *host, int level,
           const char *fmt, ...) {
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    api->log(host, level, line);
}

/* set_error if the host has it (ABI >= 1.1), else nothing. */
static inline int khost_set_error(const khost_host_api *api, khost_host *host,
                                  uint64_t ack_token, const char *text) {
    if (api->abi_minor < 1 || !api->set_error)
        return -1;
    return api->set_error(host, ack_token, text);
}

#ifdef __cplusplus
}
#endif

#endif /* KHOST_PLUGIN_H */
