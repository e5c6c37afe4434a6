/*
 * harness: end-to-end test helpers. A librdkafka mock cluster runs inside
 * the test process (real Kafka protocol over TCP), khost runs as real
 * processes against it, and handlers record what they saw through the
 * fault plugin, which the ledger functions read back.
 */
#ifndef KHOST_HARNESS_H
#define KHOST_HARNESS_H

#include "mock_cluster.h"

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct th_cluster {
    kh_mock mock;
    const char *bootstraps;
} th_cluster;

void th_cluster_start(th_cluster *c, int brokers);
void th_cluster_stop(th_cluster *c);
void th_create_topic(th_cluster *c, const char *topic, int partitions);

/* Produce `per_partition` messages to each of `partitions` partitions.
 * Message i of partition p: key "k<p>-<i>", value "v <p> <i>" (plus
 * `marker` when (p, i) == (marker_part, marker_index)), header
 * "idx" = "<i>". Returns the produce time in ms (CreateTime). */
int64_t th_produce(th_cluster *c, const char *topic, int partitions,
                   int per_partition, int marker_part, int marker_index,
                   const char *marker);

/* Committed offset of a group's partition, -1 when none. */
int64_t th_committed(th_cluster *c, const char *group, const char *topic,
                     int partition);

/* Wait until every partition 0..parts-1 of the group committed `end`. */
bool th_wait_committed(th_cluster *c, const char *group, const char *topic,
                       int parts, int64_t end, int timeout_ms);

/* A message read back from a topic, copied out of librdkafka. */
typedef struct th_msg {
    char *key;     /* NUL-terminated copy, NULL for a null key */
    char *value;   /* NUL-terminated copy, NULL for a null value */
    char *headers; /* "name=value\n" per header, in order */
} th_msg;

/* Every message of a topic, from the beginning of each partition (no
 * group). Returns NULL with *n = 0 when the topic does not exist. */
th_msg *th_consume_topic(th_cluster *c, const char *topic, size_t *n,
                         int timeout_ms);
void th_msgs_free(th_msg *msgs, size_t n);
/* The last value of header `name`, in a static buffer, or NULL. */
const char *th_header(const th_msg *m, const char *name);

typedef struct th_host {
    pid_t pid;
    char *dir;
    char *log_path;
    char *cfg_path;
} th_host;

/* Write `ini` to dir/name.ini and start `khost run` with its output in
 * dir/name.log. */
void th_host_start(th_host *h, const char *dir, const char *name,
                   const char *ini);
/* A host (or other child) started another way, ended like th_host_start's
 * when the test process exits, if it is still running. */
void th_register_pid(pid_t pid);
/* The same with more arguments after `run -c FILE` (NULL-terminated, at
 * most 11), e.g. {"--socket", path, NULL}. The host inherits the test's
 * environment (setenv before, to give it RUNTIME_DIRECTORY). */
void th_host_start_args(th_host *h, const char *dir, const char *name,
                        const char *ini, const char *const *extra);
/* Send sig and wait up to timeout_ms; returns exit status (128+signal
 * when killed), -1 when it did not exit (then it is SIGKILLed). */
int th_host_stop(th_host *h, int sig, int timeout_ms);
bool th_host_alive(th_host *h);
/* Wait until the log holds `needle` at least `count` times. */
bool th_wait_log(th_host *h, const char *needle, int count, int timeout_ms);
int th_log_count(th_host *h, const char *needle);
char *th_log(th_host *h); /* malloc'd copy */
/* pid of worker N as logged by the host ("worker=N pid=P ready"), the
 * latest one. */
pid_t th_worker_pid(th_host *h, int worker);
void th_host_free(th_host *h);

/* A ledger: how often each (partition, offset) was handled. */
#define TH_MAX_PARTS 16
typedef struct th_ledger {
    int parts;
    int per_part;
    int *seen[TH_MAX_PARTS];    /* count per offset */
    int *attempt[TH_MAX_PARTS]; /* highest attempt seen per offset */
    int first[TH_MAX_PARTS];    /* first offset recorded, -1 none */
    int lines;
    int bad_lines;
} th_ledger;

void th_ledger_init(th_ledger *l, int parts, int per_part);
/* Add what a record file holds (may be called for several files). */
void th_ledger_add_file(th_ledger *l, const char *path);
int th_ledger_distinct(const th_ledger *l);
int th_ledger_duplicates(const th_ledger *l);
void th_ledger_free(th_ledger *l);
/* Wait until the record files hold `distinct` distinct messages. */
bool th_wait_distinct(const char *const *paths, int n_paths, int parts,
                      int per_part, int distinct, int timeout_ms);

void th_sleep_ms(int ms);
int64_t th_now_ms(void); /* CLOCK_MONOTONIC */
/* Is pid a live process (not gone, not a zombie awaiting its reaper)? */
bool th_pid_running(pid_t pid);

#endif
