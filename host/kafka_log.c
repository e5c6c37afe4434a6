/*
 * kafka_log: librdkafka's log lines and errors through khost's logger.
 *
 * Every handle khost creates (each pipeline's consumer and dead-letter
 * producer, the mock seeding producer, the mock cluster's handle) sets a
 * log callback that ends in kafka_log_line, so no raw "%3|..." line
 * reaches stderr, and an error callback that passes connectivity errors
 * here.
 *
 * A broker that cannot be reached makes librdkafka retry, and report each
 * failed attempt both as a log line and as an error. Here a problem is
 * reported once per handle, when it starts; while it lasts, one summary
 * every 30 s counts the failures; it ends with one line, either at the
 * first sign that brokers answer after all of them were down (an
 * assignment, a message, a commit, a delivery report: kafka_conn_ok) or
 * after 75 s without a connection failure reported. librdkafka retries
 * at most reconnect.backoff.max.ms apart (10 s by default) but reports an
 * identical error again only after 30 s, with the count of those it
 * suppressed ("N identical error(s) suppressed"), which is added here.
 */
#define _GNU_SOURCE
#include "kafka_log.h"
#include "log.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void kafka_log_line(const char *who, int level, const char *fac,
                    const char *buf) {
    int kl = level <= 3 ? KLOG_ERROR : level <= 4 ? KLOG_WARN : KLOG_DEBUG;
    /* Reported by the error callback, once per problem. */
    if (!strcmp(fac, "FAIL"))
        kl = KLOG_DEBUG;
    klog(kl, "%s librdkafka %s: %s", who, fac, buf);
}

void kafka_log_pipeline(const rd_kafka_t *rk, const char *suffix, char *out,
                        size_t len) {
    const char *name = rd_kafka_name(rk);
    if (!strncmp(name, "khost-", 6))
        name += 6;
    size_t n = strcspn(name, "#");
    size_t sl = suffix ? strlen(suffix) : 0;
    if (sl && n >= sl && !strncmp(name + n - sl, suffix, sl))
        n -= sl;
    snprintf(out, len, "%.*s", (int)n, name);
}

typedef struct conn_state {
    const void *key;
    char who[192];
    int64_t since_ms, last_fail_ms, last_summary_ms;
    unsigned long long failures, failures_summarized;
    bool all_down;
    struct conn_state *next;
} conn_state;

static pthread_mutex_t conn_mu = PTHREAD_MUTEX_INITIALIZER;
static conn_state *conn_list;

static conn_state **conn_find(const void *key) {
    conn_state **link = &conn_list;
    while (*link && (*link)->key != key)
        link = &(*link)->next;
    return link;
}

/* end_ms: when the problem was last seen. */
static void conn_end(conn_state **link, int64_t end_ms, const char *why) {
    conn_state *st = *link;
    klog_info("%s: brokers reachable again after %lld s (%llu connection "
              "failure%s%s)",
              st->who, (long long)((end_ms - st->since_ms + 999) / 1000),
              st->failures, st->failures == 1 ? "" : "s", why);
    *link = st->next;
    free(st);
}

static bool connectivity(int err) {
    switch (err) {
    case RD_KAFKA_RESP_ERR__TRANSPORT:
    case RD_KAFKA_RESP_ERR__RESOLVE:
    case RD_KAFKA_RESP_ERR__AUTHENTICATION:
    case RD_KAFKA_RESP_ERR__SSL:
    case RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN:
        return true;
    default:
        return false;
    }
}

/* The attempts a report stands for: 1 plus the identical ones librdkafka
 * suppressed before it. */
static unsigned long long attempts_of(const char *reason) {
    const char *tail = strstr(reason, " identical error(s) suppressed");
    if (!tail)
        return 1;
    const char *d = tail;
    while (d > reason && d[-1] >= '0' && d[-1] <= '9')
        d--;
    return d < tail ? 1 + strtoull(d, NULL, 10) : 1;
}

bool kafka_conn_error(const void *key, const char *who, const char *brokers,
                      int err, const char *reason, int64_t now_ms) {
    if (!connectivity(err))
        return false;
    bool all_down = err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN;
    pthread_mutex_lock(&conn_mu);
    conn_state **link = conn_find(key);
    conn_state *st = *link;
    if (!st) {
        st = calloc(1, sizeof *st);
        if (!st)
            abort();
        st->key = key;
        snprintf(st->who, sizeof st->who, "%s", who);
        st->since_ms = st->last_summary_ms = now_ms;
        *link = st;
        klog_warn("%s: cannot connect to a broker (brokers=%s): %s; "
                  "repeats are counted, a summary every %d s",
                  who, brokers, reason, KH_CONN_SUMMARY_MS / 1000);
    }
    if (all_down)
        st->all_down = true;
    else
        st->failures += attempts_of(reason);
    st->last_fail_ms = now_ms;
    pthread_mutex_unlock(&conn_mu);
    return true;
}

void kafka_conn_ok(const void *key, int64_t now_ms) {
    pthread_mutex_lock(&conn_mu);
    conn_state **link = conn_find(key);
    if (*link && (*link)->all_down)
        conn_end(link, now_ms, "");
    pthread_mutex_unlock(&conn_mu);
}

void kafka_conn_tick(const void *key, int64_t now_ms) {
    pthread_mutex_lock(&conn_mu);
    conn_state **link = conn_find(key);
    conn_state *st = *link;
    if (st && now_ms - st->last_fail_ms >= KH_CONN_QUIET_MS) {
        conn_end(link, st->last_fail_ms, ", then none for 75 s");
    } else if (st && now_ms - st->last_summary_ms >= KH_CONN_SUMMARY_MS &&
               st->failures > st->failures_summarized) {
        /* Only with failures since the last one: "still" must be true. */
        st->last_summary_ms = now_ms;
        st->failures_summarized = st->failures;
        long long s = (now_ms - st->since_ms) / 1000;
        if (st->all_down)
            klog_warn("%s: still no broker reachable after %lld s (%llu "
                      "connection failure%s)",
                      st->who, s, st->failures, st->failures == 1 ? "" : "s");
        else
            klog_warn("%s: broker connections still failing after %lld s "
                      "(%llu connection failure%s)",
                      st->who, s, st->failures, st->failures == 1 ? "" : "s");
    }
    pthread_mutex_unlock(&conn_mu);
}

void kafka_conn_forget(const void *key) {
    pthread_mutex_lock(&conn_mu);
    conn_state **link = conn_find(key);
    if (*link) {
        conn_state *st = *link;
        *link = st->next;
        free(st);
    }
    pthread_mutex_unlock(&conn_mu);
}
