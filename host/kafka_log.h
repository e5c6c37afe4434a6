/*
 * kafka_log: librdkafka's log lines and errors through khost's logger, and
 * broker-connectivity problems reported once per handle, with a summary
 * while they last. See host/README.md.
 */
#ifndef KHOST_KAFKA_LOG_H
#define KHOST_KAFKA_LOG_H

#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <stdint.h>

/* A summary every this often while a problem lasts. */
#define KH_CONN_SUMMARY_MS 30000
/* A problem with no connection failure reported for this long is over.
 * librdkafka reports an identical error again only after 30 s (counting
 * the ones it suppressed in between), so this must be well past 30 s. */
#define KH_CONN_QUIET_MS 75000

/* One librdkafka log line as a klog line "WHO librdkafka FAC: text".
 * Runs on librdkafka's threads: uses only klog. Connection failures
 * (facility FAIL) go to debug: the error callback reports them, through
 * kafka_conn_error. */
void kafka_log_line(const char *who, int level, const char *fac,
                    const char *buf);
/* The pipeline a handle belongs to, from its client.id "khost-NAME" plus
 * suffix (e.g. "-dlq") and librdkafka's "#consumer-1". */
void kafka_log_pipeline(const rd_kafka_t *rk, const char *suffix, char *out,
                        size_t len);

/* The connectivity state of one handle (key: its rd_kafka_t), kept here
 * from its first problem until kafka_conn_forget. Called on the event
 * loop's thread (error callbacks and polls), and locked all the same.
 *
 * kafka_conn_error: an error callback's error. Returns false when it is
 * not about connectivity (the caller logs it); otherwise logs the first
 * one of a problem, "WHO: cannot connect to a broker (brokers=B):
 * REASON", and counts the rest. */
bool kafka_conn_error(const void *key, const char *who, const char *brokers,
                      int err, const char *reason, int64_t now_ms);
/* Proof that brokers answer (an assignment, a message, a commit, a
 * delivery report): ends a problem in which all brokers were down. */
void kafka_conn_ok(const void *key, int64_t now_ms);
/* From each poll: the summary every KH_CONN_SUMMARY_MS, and the end of a
 * problem after KH_CONN_QUIET_MS without a connection failure. */
void kafka_conn_tick(const void *key, int64_t now_ms);
void kafka_conn_forget(const void *key);

#endif
