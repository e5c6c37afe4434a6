/*
 * fault: a plugin that misbehaves on request, for demos and for testing
 * how the host survives crashing, hanging, failing and slow handlers.
 *
 * Config (every key optional):
 *   record    = FILE   append each message as a JSON line (jsonl.h format);
 *                      empty: record nothing (the default)
 *   crash_on  = TEXT   raise SIGSEGV
 *   exit_on   = TEXT   _exit(3)
 *   hang_on   = TEXT   never return (sleeps forever)
 *   fail_on   = TEXT   return KHOST_FAIL
 *   retry_on  = TEXT   return KHOST_RETRY
 *   defer_on  = TEXT   return KHOST_DEFERRED and never ack
 *   selfack_on = TEXT  ack the message's own token inside handle, then
 *                      return KHOST_DEFERRED (legal: the ack counts)
 *   slow_ms   = N      sleep N ms in every handle call (default 0)
 *   misbehave_attempts = N  markers act only on delivery attempts 1..N
 *                      (default 0: every attempt). With 1, a message
 *                      crashes its worker once and succeeds when the host
 *                      redelivers it: the demo's "crash once, resume".
 *   defer_all = true|false  (default false) return KHOST_DEFERRED for every
 *                      message no marker matched, and ack them all at the
 *                      next tick
 *                      (or on_revoke of their partition)
 *   ack_on_revoke = true|false  (default true) with defer_all, false keeps
 *                      on_revoke from acking: acks then come only at tick,
 *                      after the host has released the partition (tests
 *                      use it to show such late acks are dropped)
 *   no_headers = true|false  (default false) set KHOST_PLUGIN_NO_HEADERS
 *                      in the descriptor from init: the host then passes
 *                      no headers (records show "headers":[]); tests use
 *                      it to show that, and that a dead letter still
 *                      carries the original headers
 *   fail_init_index = N  init fails in the worker process given
 *                      worker_index N (default: none); tests use it for a
 *                      spare worker that cannot start
 * A marker triggers when the message value contains TEXT anywhere, as
 * bytes: values may be binary and contain NUL. When several markers
 * match, the first in the order listed above wins.
 *
 * Order within one handle call, which tests rely on: the message is
 * recorded first (one write(), no fsync: the page cache survives a
 * process crash), then slow_ms is slept, then the marker takes effect.
 * So the record file always shows the message that crashed, hung or
 * killed the worker. Crash, exit and hang are logged through api->log
 * before they happen, so the host log says why the worker died.
 */
#define _GNU_SOURCE
#include "jsonl.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <khost/plugin.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifndef KHOST_VERSION
#define KHOST_VERSION "0.0.0"
#endif

#define SLOW_MS_MAX 86400000L /* a day: anything longer is a typo */

typedef struct deferred {
    uint64_t token;
    int32_t partition;
    char *topic;
} deferred;

/* Markers in the order they are checked. */
enum marker {
    M_CRASH,
    M_EXIT,
    M_HANG,
    M_FAIL,
    M_RETRY,
    M_DEFER,
    M_SELFACK,
    M_COUNT
};

static const char *const marker_keys[M_COUNT] = {
    "crash_on", "exit_on",  "hang_on",    "fail_on",
    "retry_on", "defer_on", "selfack_on",
};

typedef struct fault {
    const khost_host_api *api;
    khost_host *host;
    int record_fd; /* -1 when not recording */
    char *record_path;
    jsonl_buf buf;
    /* Point into the host's config strings, which live until terminate
     * returns (plugin.h), so there is nothing to copy or free. */
    const char *marker[M_COUNT];
    size_t marker_len[M_COUNT];
    long slow_ms;
    long misbehave_attempts;
    int defer_all;
    int keep_on_revoke; /* ack_on_revoke = false */
    deferred *pending;  /* defer_all: tokens not acked yet, in arrival order */
    size_t npending, cap_pending;
} fault;

static void set_err(const khost_init_args *args, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void set_err(const khost_init_args *args, const char *fmt, ...) {
    if (!args->errbuf || !args->errbuf_size)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args->errbuf, args->errbuf_size, fmt, ap);
    va_end(ap);
}

static int known_key(const char *key) {
    static const char *const others[] = {
        "record",        "slow_ms",    "defer_all",      "misbehave_attempts",
        "ack_on_revoke", "no_headers", "fail_init_index"};
    for (size_t i = 0; i < M_COUNT; i++)
        if (!strcmp(key, marker_keys[i]))
            return 1;
    for (size_t i = 0; i < sizeof others / sizeof *others; i++)
        if (!strcmp(key, others[i]))
            return 1;
    return 0;
}

static void fault_free(fault *f) {
    if (f->record_fd >= 0)
        close(f->record_fd);
    for (size_t i = 0; i < f->npending; i++)
        free(f->pending[i].topic);
    free(f->pending);
    jsonl_buf_free(&f->buf);
    free(f->record_path);
    free(f);
}

static khost_plugin_descriptor descriptor; /* defined at the end */

static int fault_init(const khost_init_args *args, void **state) {
    const khost_host_api *api = args->api;
    khost_host *host = args->host;
    fault *f = calloc(1, sizeof *f);
    if (!f) {
        set_err(args, "fault: out of memory");
        return -1;
    }
    f->api = api;
    f->host = host;
    f->record_fd = -1;
    jsonl_buf_init(&f->buf);

    for (size_t i = 0; i < M_COUNT; i++) {
        const char *v = api->config_get(host, marker_keys[i]);
        if (v && !*v) {
            /* An empty marker would match every message, which is almost
             * certainly not what `crash_on =` was meant to say. */
            set_err(args,
                    "fault: %s must not be empty (remove the key to "
                    "disable it)",
                    marker_keys[i]);
            goto fail;
        }
        f->marker[i] = v;
        f->marker_len[i] = v ? strlen(v) : 0;
    }

    const char *slow = api->config_get(host, "slow_ms");
    if (slow) {
        char *end;
        errno = 0;
        long ms = strtol(slow, &end, 10);
        if (errno || end == slow || *end || ms < 0 || ms > SLOW_MS_MAX) {
            set_err(args,
                    "fault: slow_ms must be a whole number of milliseconds "
                    "from 0 to %ld, got '%s'",
                    SLOW_MS_MAX, slow);
            goto fail;
        }
        f->slow_ms = ms;
    }

    const char *attempts = api->config_get(host, "misbehave_attempts");
    if (attempts) {
        char *end;
        errno = 0;
        long n = strtol(attempts, &end, 10);
        if (errno || end == attempts || *end || n < 0 || n > 1000000) {
            set_err(args,
                    "fault: misbehave_attempts must be a whole number from 0 "
                    "to 1000000, got '%s'",
                    attempts);
            goto fail;
        }
        f->misbehave_attempts = n;
    }

    const char *on_revoke = api->config_get(host, "ack_on_revoke");
    if (on_revoke) {
        if (!strcmp(on_revoke, "false")) {
            f->keep_on_revoke = 1;
        } else if (strcmp(on_revoke, "true")) {
            set_err(args,
                    "fault: invalid ack_on_revoke '%s' (allowed: true, false)",
                    on_revoke);
            goto fail;
        }
    }

    const char *defer_all = api->config_get(host, "defer_all");
    if (defer_all) {
        if (!strcmp(defer_all, "true")) {
            f->defer_all = 1;
        } else if (strcmp(defer_all, "false")) {
            set_err(args,
                    "fault: invalid defer_all '%s' (allowed: true, false)",
                    defer_all);
            goto fail;
        }
    }

    const char *no_headers = api->config_get(host, "no_headers");
    if (no_headers) {
        if (!strcmp(no_headers, "true")) {
            descriptor.flags |= KHOST_PLUGIN_NO_HEADERS;
        } else if (strcmp(no_headers, "false")) {
            set_err(args,
                    "fault: invalid no_headers '%s' (allowed: true, false)",
                    no_headers);
            goto fail;
        }
    }

    const char *fail_index = api->config_get(host, "fail_init_index");
    if (fail_index && *fail_index && atoi(fail_index) == args->worker_index) {
        set_err(args, "fault: fail_init_index = %s: failing init on purpose",
                fail_index);
        goto fail;
    }

    if (api->config_entry) {
        const char *key, *value;
        for (size_t i = 0; api->config_entry(host, i, &key, &value) == 0; i++)
            if (!known_key(key))
                khost_logf(api, host, KHOST_LOG_WARN,
                           "fault: ignoring unknown config key '%s'", key);
    }

    /* An empty record (record = ${VAR:-} with VAR unset) records nothing,
     * so one file serves runs with and without a record. */
    const char *record = api->config_get(host, "record");
    if (record && *record) {
        if (!(f->record_path = strdup(record))) {
            set_err(args, "fault: out of memory");
            goto fail;
        }
        f->record_fd =
            open(record, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
        if (f->record_fd < 0) {
            set_err(args, "fault: cannot open record file '%s' for append: %s",
                    record, strerror(errno));
            goto fail;
        }
    }

    *state = f;
    return 0;
fail:
    fault_free(f);
    return -1;
}

static void record(fault *f, const khost_message *m) {
    if (f->record_fd < 0)
        return;
    int rc = jsonl_write_message_fd(f->record_fd, m, &f->buf);
    if (rc)
        khost_logf(f->api, f->host, KHOST_LOG_ERROR,
                   "fault: cannot record to %s: %s", f->record_path,
                   strerror(-rc));
}

static void sleep_ms(long ms) {
    struct timespec ts = {.tv_sec = ms / 1000,
                          .tv_nsec = (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static int has_marker(const fault *f, enum marker which,
                      const khost_message *m) {
    if (!f->marker[which] || !m->value)
        return 0;
    if (f->misbehave_attempts > 0 && m->attempt > f->misbehave_attempts)
        return 0;
    return memmem(m->value, m->value_len, f->marker[which],
                  f->marker_len[which]) != NULL;
}

static void crash(void) {
    /* Whatever handler is installed (a sanitizer's, a crash reporter's)
     * must not turn this into something other than death by SIGSEGV. */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, NULL);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGSEGV);
    sigprocmask(SIG_UNBLOCK, &set, NULL);
    raise(SIGSEGV);
    abort(); /* not reached */
}

static int remember(fault *f, const khost_message *m) {
    if (f->npending == f->cap_pending) {
        size_t cap = f->cap_pending ? f->cap_pending * 2 : 64;
        deferred *p = realloc(f->pending, cap * sizeof *p);
        if (!p)
            return -ENOMEM;
        f->pending = p;
        f->cap_pending = cap;
    }
    char *topic = strdup(m->topic ? m->topic : "");
    if (!topic)
        return -ENOMEM;
    f->pending[f->npending++] = (deferred){
        .token = m->ack_token, .partition = m->partition, .topic = topic};
    return 0;
}

static khost_result fault_handle(void *state, const khost_message *m) {
    fault *f = state;
    const char *topic = m->topic ? m->topic : "(null)";

    record(f, m);
    if (f->slow_ms > 0)
        sleep_ms(f->slow_ms);

    if (has_marker(f, M_CRASH, m)) {
        khost_logf(f->api, f->host, KHOST_LOG_ERROR,
                   "fault: crash_on marker found at topic %s partition %" PRId32
                   " offset %" PRId64 ", raising SIGSEGV",
                   topic, m->partition, m->offset);
        crash();
    }
    if (has_marker(f, M_EXIT, m)) {
        khost_logf(f->api, f->host, KHOST_LOG_ERROR,
                   "fault: exit_on marker found at topic %s partition %" PRId32
                   " offset %" PRId64 ", calling _exit(3)",
                   topic, m->partition, m->offset);
        _exit(3);
    }
    if (has_marker(f, M_HANG, m)) {
        khost_logf(f->api, f->host, KHOST_LOG_ERROR,
                   "fault: hang_on marker found at topic %s partition %" PRId32
                   " offset %" PRId64 ", hanging forever",
                   topic, m->partition, m->offset);
        for (;;)
            pause();
    }
    if (has_marker(f, M_FAIL, m)) {
        khost_logf(f->api, f->host, KHOST_LOG_INFO,
                   "fault: fail_on marker found at topic %s partition %" PRId32
                   " offset %" PRId64 ", returning FAIL",
                   topic, m->partition, m->offset);
        khost_set_error(f->api, f->host, m->ack_token,
                        "fault: fail_on marker found");
        return KHOST_FAIL;
    }
    if (has_marker(f, M_RETRY, m)) {
        khost_logf(f->api, f->host, KHOST_LOG_INFO,
                   "fault: retry_on marker found at topic %s partition %" PRId32
                   " offset %" PRId64 ", returning RETRY",
                   topic, m->partition, m->offset);
        khost_set_error(f->api, f->host, m->ack_token,
                        "fault: retry_on marker found");
        return KHOST_RETRY;
    }
    if (has_marker(f, M_DEFER, m)) {
        khost_logf(f->api, f->host, KHOST_LOG_INFO,
                   "fault: defer_on marker found at topic %s partition %" PRId32
                   " offset %" PRId64 ", deferring without ever acking",
                   topic, m->partition, m->offset);
        return KHOST_DEFERRED;
    }
    if (has_marker(f, M_SELFACK, m)) {
        int rc = f->api->ack(f->host, m->ack_token);
        khost_logf(
            f->api, f->host, KHOST_LOG_INFO,
            "fault: selfack_on marker found at topic %s partition %" PRId32
            " offset %" PRId64 ", acked it inside handle (%d), "
            "returning DEFERRED",
            topic, m->partition, m->offset, rc);
        return KHOST_DEFERRED;
    }
    if (f->defer_all) {
        if (remember(f, m)) {
            khost_logf(f->api, f->host, KHOST_LOG_ERROR,
                       "fault: out of memory remembering an ack token");
            return KHOST_RETRY;
        }
        return KHOST_DEFERRED;
    }
    return KHOST_ACK;
}

static void ack_one(fault *f, const deferred *d) {
    int rc = f->api->ack(f->host, d->token);
    if (rc < 0)
        khost_logf(f->api, f->host, KHOST_LOG_WARN,
                   "fault: ack of token %" PRIu64 " (%s partition %" PRId32
                   ") failed: %s",
                   d->token, d->topic, d->partition, strerror(-rc));
}

static void fault_tick(void *state, int64_t now_ms) {
    fault *f = state;
    for (size_t i = 0; i < f->npending; i++) {
        ack_one(f, &f->pending[i]);
        free(f->pending[i].topic);
    }
    f->npending = 0;
}

/* plugin.h: on_revoke is the last chance to ack the partition's deferred
 * messages, so they must not wait for the next tick. */
static void fault_on_revoke(void *state, const char *topic, int32_t partition) {
    fault *f = state;
    if (f->keep_on_revoke)
        return;
    size_t keep = 0;
    for (size_t i = 0; i < f->npending; i++) {
        deferred *d = &f->pending[i];
        if (d->partition == partition && topic && !strcmp(d->topic, topic)) {
            ack_one(f, d);
            free(d->topic);
        } else {
            f->pending[keep++] = *d;
        }
    }
    f->npending = keep;
}

static void fault_terminate(void *state) {
    if (state)
        fault_free(state);
}

/* Not const: init sets KHOST_PLUGIN_NO_HEADERS from `no_headers`. The
 * host reads flags once init has returned (plugin-api/ABI.md). */
static khost_plugin_descriptor descriptor = {
    .struct_size = sizeof(khost_plugin_descriptor),
    .abi_major = KHOST_ABI_MAJOR,
    .abi_minor = KHOST_ABI_MINOR,
    .name = "fault",
    .version = KHOST_VERSION,
    .description = "misbehaves on marker values (crash, hang, exit, fail, "
                   "retry, defer, slow) for demos and tests",
    .init = fault_init,
    .handle = fault_handle,
    .terminate = fault_terminate,
    .on_revoke = fault_on_revoke,
    .tick = fault_tick,
};

KHOST_PLUGIN_EXPORT const khost_plugin_descriptor *khost_plugin_entry(void) {
    return &descriptor;
}
