/*
 * failure: what happens to a message that cannot be processed.
 *
 * A message fails when its handler answers FAIL, answers RETRY on its
 * max_attempts-th delivery, or crashes (or hangs) its worker poison_after
 * times in a row. Its partition is then rewound to it like for any other
 * redelivery, and the ledger marks the offset failed: when Kafka delivers
 * it again, the host does not dispatch it but applies on_failure with the
 * real message in hand:
 *
 *   dlq    produce key, value and headers to the dead-letter topic, plus
 *          khost-* headers saying why; the offset is acknowledged only on
 *          the broker's delivery report. A failed write pauses the
 *          partition and is retried with backoff: nothing is lost.
 *   skip   log everything and acknowledge.
 *   pause  hold the partition at the message; other partitions go on.
 */
#define _GNU_SOURCE
#include "failure.h"
#include "host.h"
#include "kafka_log.h"
#include "log.h"
#include "pipeline.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KH_DLQ_RETRY_BASE_MS 200
#define KH_DLQ_RETRY_MAX_MS 10000

/* One dead-letter write in flight or waiting for its retry. It keeps the
 * consumed message until the broker has confirmed the copy. */
typedef struct kh_dlq_job {
    kh_pipeline_rt *pl;
    kh_part *part;
    uint64_t seq; /* ledger entry that the delivery report acknowledges */
    rd_kafka_message_t *m;
    char *topic;
    char reason[512];
    uint32_t attempts;
    int tries;
    int64_t retry_at_ms;
    struct kh_dlq_job *next;      /* in pl->dlq_retry */
    struct kh_dlq_job *live_next; /* in pl->dlq_live */
} kh_dlq_job;

void failure_note(kh_part *part, int64_t offset, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(part->fail_reason, sizeof part->fail_reason, fmt, ap);
    va_end(ap);
    part->fail_offset = offset;
}

static const char *reason_of(kh_part *part, int64_t offset) {
    return part->fail_offset == offset && part->fail_reason[0]
               ? part->fail_reason
               : "failed (no reason recorded)";
}

static const char *policy_name(kh_on_failure p) {
    return p == KH_ON_FAILURE_DLQ    ? "dlq"
           : p == KH_ON_FAILURE_SKIP ? "skip"
                                     : "pause";
}

/* Connection and security settings apply to the dead-letter producer too;
 * consumer-only settings would only earn warnings from librdkafka. */
static bool producer_property(const char *key) {
    static const char *const prefixes[] = {
        "security.",  "sasl.",           "ssl.",        "socket.",
        "broker.",    "client.",         "metadata.",   "api.",
        "debug",      "reconnect.",      "retry.",      "message.",
        "enable.ssl", "topic.metadata.", "connections."};
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++)
        if (!strncmp(key, prefixes[i], strlen(prefixes[i])))
            return true;
    return false;
}

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *rm,
                        void *opaque);

/* Served by rd_kafka_poll in failure_poll, on the loop's thread. */
static void dlq_on_error(rd_kafka_t *rk, int err, const char *reason,
                         void *opaque) {
    kh_pipeline_rt *pl = opaque;
    char who[192];
    snprintf(who, sizeof who, "pipeline=%s dead-letter producer",
             pl->cfg->name);
    if (kafka_conn_error(rk, who, pl->host->bootstraps, err, reason,
                         kh_now_ms()))
        return;
    klog_warn("%s: %s: %s", who, rd_kafka_err2name((rd_kafka_resp_err_t)err),
              reason);
}

/* librdkafka's threads: the pipeline from the handle's name
 * ("khost-NAME-dlq#producer-2"), as in kafka.c. */
static void dlq_on_log(const rd_kafka_t *rk, int level, const char *fac,
                       const char *buf) {
    char name[160], who[200];
    kafka_log_pipeline(rk, "-dlq", name, sizeof name);
    snprintf(who, sizeof who, "pipeline=%s dead-letter producer", name);
    kafka_log_line(who, level, fac, buf);
}

int failure_pipeline_start(kh_pipeline_rt *pl, char *err, size_t errlen) {
    const kh_pipeline *cfg = pl->cfg;
    if (cfg->on_failure != KH_ON_FAILURE_DLQ)
        return 0;
    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char client_id[160];
    snprintf(client_id, sizeof client_id, "khost-%s-dlq", cfg->name);
    const kh_config *hc = pl->root;
    const kh_kv *lists[2] = {hc->kafka, cfg->kafka};
    size_t counts[2] = {hc->n_kafka, cfg->n_kafka};
    if (rd_kafka_conf_set(conf, "bootstrap.servers", pl->host->bootstraps,
                          errstr, sizeof errstr) ||
        rd_kafka_conf_set(conf, "client.id", client_id, errstr,
                          sizeof errstr) ||
        /* Every copy confirmed by all in-sync replicas. Not idempotent:
         * an injected or real permanent error would make an idempotent
         * producer fatal, and at-least-once needs no more than acks. */
        rd_kafka_conf_set(conf, "acks", "all", errstr, sizeof errstr) ||
        rd_kafka_conf_set(conf, "linger.ms", "5", errstr, sizeof errstr))
        goto error;
    for (int l = 0; l < 2; l++)
        for (size_t i = 0; i < counts[l]; i++)
            if (producer_property(lists[l][i].key) &&
                rd_kafka_conf_set(conf, lists[l][i].key, lists[l][i].value,
                                  errstr, sizeof errstr))
                goto error;
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rd_kafka_conf_set_error_cb(conf, dlq_on_error);
    rd_kafka_conf_set_log_cb(conf, dlq_on_log);
    rd_kafka_conf_set_opaque(conf, pl);
    pl->dlq = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (!pl->dlq) {
        snprintf(err, errlen, "cannot create the dead-letter producer: %s",
                 errstr);
        return -1;
    }
    return 0;
error:
    snprintf(err, errlen, "dead-letter producer: %s", errstr);
    rd_kafka_conf_destroy(conf);
    return -1;
}

static void job_free(kh_dlq_job *job) {
    kh_dlq_job **link = &job->pl->dlq_live;
    while (*link && *link != job)
        link = &(*link)->live_next;
    if (*link)
        *link = job->live_next;
    rd_kafka_message_destroy(job->m);
    free(job->topic);
    free(job);
}

void failure_pipeline_stop(kh_pipeline_rt *pl, int timeout_ms) {
    if (!pl->dlq)
        return;
    if (rd_kafka_flush(pl->dlq, timeout_ms))
        klog_warn("pipeline=%s dead-letter writes still unconfirmed at "
                  "shutdown; their offsets were not committed and will be "
                  "redelivered",
                  pl->cfg->name);
    /* Unconfirmed or waiting writes: their offsets were not committed. */
    while (pl->dlq_retry) {
        kh_dlq_job *job = pl->dlq_retry;
        pl->dlq_retry = job->next;
        job_free(job);
    }
    rd_kafka_purge(pl->dlq, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    rd_kafka_poll(pl->dlq, 0); /* delivery reports free their jobs */
    rd_kafka_destroy(pl->dlq);
    kafka_conn_forget(pl->dlq);
    pl->dlq = NULL;
    /* Writes whose report never came: their offsets were not committed. */
    while (pl->dlq_live)
        job_free(pl->dlq_live);
}

static void add_header(rd_kafka_headers_t *h, const char *name, const char *fmt,
                       ...) __attribute__((format(printf, 3, 4)));

static void add_header(rd_kafka_headers_t *h, const char *name, const char *fmt,
                       ...) {
    char value[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(value, sizeof value, fmt, ap);
    va_end(ap);
    rd_kafka_header_add(h, name, -1, value, -1);
}

static void produce(kh_dlq_job *job) {
    kh_pipeline_rt *pl = job->pl;
    rd_kafka_message_t *m = job->m;
    rd_kafka_headers_t *orig = NULL;
    rd_kafka_headers_t *h = rd_kafka_message_headers(m, &orig) == 0
                                ? rd_kafka_headers_copy(orig)
                                : rd_kafka_headers_new(10);
    rd_kafka_timestamp_type_t tstype;
    int64_t ts = rd_kafka_message_timestamp(m, &tstype);
    add_header(h, "khost-error", "%s", job->reason);
    add_header(h, "khost-attempts", "%u", job->attempts);
    add_header(h, "khost-plugin", "%s", pl->plugin_name);
    add_header(h, "khost-plugin-version", "%s", pl->plugin_version);
    add_header(h, "khost-pipeline", "%s", pl->cfg->name);
    add_header(h, "khost-original-topic", "%s", job->part->topic);
    add_header(h, "khost-original-partition", "%d", job->part->partition);
    add_header(h, "khost-original-offset", "%lld", (long long)m->offset);
    add_header(h, "khost-original-timestamp", "%lld", (long long)ts);
    job->tries++;
    rd_kafka_resp_err_t e = rd_kafka_producev(
        pl->dlq, RD_KAFKA_V_TOPIC(job->topic),
        RD_KAFKA_V_KEY(m->key, m->key_len),
        RD_KAFKA_V_VALUE(m->payload, m->len),
        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(h),
        RD_KAFKA_V_OPAQUE(job), RD_KAFKA_V_END);
    if (!e)
        return; /* the delivery report takes it from here */
    rd_kafka_headers_destroy(h);
    rd_kafka_message_t fake = {.err = e, ._private = job};
    on_delivery(pl->dlq, &fake, pl);
}

static void release_part_if_clear(kh_part *part) {
    if (part->dlq_pending == 0)
        part_pause(part, KH_PAUSE_DLQ, false);
}

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *rm,
                        void *opaque) {
    kh_pipeline_rt *pl = opaque;
    kh_dlq_job *job = rm->_private;
    if (!rm->err && rk)
        kafka_conn_ok(rk, kh_now_ms());
    kh_part *part = job->part;
    /* A pipeline stopping (shutdown, or removed by a reload) retries
     * nothing: the job goes, its offset uncommitted. */
    if (rm->err && !pl->host->shutting_down && !pl->stopping) {
        pl->dlq_errors++;
        int shift = job->tries < 6 ? job->tries - 1 : 5;
        int64_t delay = (int64_t)KH_DLQ_RETRY_BASE_MS
                        << (shift > 0 ? shift : 0);
        if (delay > KH_DLQ_RETRY_MAX_MS)
            delay = KH_DLQ_RETRY_MAX_MS;
        job->retry_at_ms = kh_now_ms() + delay;
        klog_warn("pipeline=%s topic=%s partition=%d offset=%lld: "
                  "dead-letter write to %s failed (try %d): %s; partition "
                  "paused, retrying in %lld ms",
                  pl->cfg->name, part->topic, part->partition,
                  (long long)job->m->offset, job->topic, job->tries,
                  rd_kafka_err2str(rm->err), (long long)delay);
        part_pause(part, KH_PAUSE_DLQ, true);
        job->next = pl->dlq_retry;
        pl->dlq_retry = job;
        return;
    }
    part->dlq_pending--;
    /* Written: its entry is acked now, or, when a rewind dropped the entry
     * while the copy was on its way, its redelivery is acked without being
     * handled or written again. */
    const char *when = NULL;
    bool later = false;
    if (!rm->err && part_dlq_done(part, job->seq, job->m->offset, &later))
        when = later ? " when Kafka delivers it again" : "";
    if (when) {
        pl->dlq_written++;
        klog_info("pipeline=%s topic=%s partition=%d offset=%lld: written "
                  "to dead-letter topic %s (partition %d offset %lld); "
                  "acknowledged%s",
                  pl->cfg->name, part->topic, part->partition,
                  (long long)job->m->offset, job->topic, rm->partition,
                  (long long)rm->offset, when);
        parts_store(pl->parts, pl->n_parts);
    }
    release_part_if_clear(part);
    job_free(job);
}

void failure_poll(kh_pipeline_rt *pl) {
    if (!pl->dlq)
        return;
    rd_kafka_poll(pl->dlq, 0);
    int64_t now = kh_now_ms();
    kafka_conn_tick(pl->dlq, now);
    kh_dlq_job **link = &pl->dlq_retry;
    while (*link) {
        kh_dlq_job *job = *link;
        if (job->retry_at_ms > now) {
            link = &job->next;
            continue;
        }
        *link = job->next;
        kh_entry *e;
        if (!job->part->assigned ||
            part_find(job->part, job->seq, &e) != KH_LOOKUP_OK) {
            /* Revoked since: the next owner meets the message again. */
            job->part->dlq_pending--;
            release_part_if_clear(job->part);
            job_free(job);
            continue;
        }
        produce(job);
    }
}

bool failure_apply(kh_part *part) {
    kh_pipeline_rt *pl = part->pl;
    rd_kafka_message_t *m = part_head(part);
    const char *reason = reason_of(part, m->offset);
    const char *policy = policy_name(pl->cfg->on_failure);
    pl->failures++;

    if (pl->cfg->on_failure == KH_ON_FAILURE_PAUSE) {
        part_hold(part);
        klog_error("pipeline=%s topic=%s partition=%d offset=%lld: failed "
                   "message (%s); on_failure=%s: the partition is held at "
                   "this offset until an operator resumes it (khost resume "
                   "PIPELINE TOPIC PARTITION) or the pipeline restarts; other "
                   "partitions go on",
                   pl->cfg->name, part->topic, part->partition,
                   (long long)m->offset, reason, policy);
        return false;
    }

    /* Take it off the queue; the ledger gets its entry here. */
    uint32_t attempts;
    m = part_take_failed(part, &attempts);
    if (pl->cfg->on_failure == KH_ON_FAILURE_SKIP) {
        part_skip(part, m->offset);
        pl->skipped++;
        klog_warn("pipeline=%s topic=%s partition=%d offset=%lld: failed "
                  "message skipped after %u attempt(s) (%s); on_failure=%s: "
                  "acknowledged without a dead-letter copy",
                  pl->cfg->name, part->topic, part->partition,
                  (long long)m->offset, attempts, reason, policy);
        rd_kafka_message_destroy(m);
        return true;
    }

    /* Its copy may still be on its way from before a rewind: the write
     * then answers for this delivery too, and nothing is written twice. */
    for (kh_dlq_job *live = pl->dlq_live; live; live = live->live_next) {
        if (live->part != part || live->m->offset != m->offset)
            continue;
        live->seq = part_track_dlq(part, m->offset, attempts);
        klog_info("pipeline=%s topic=%s partition=%d offset=%lld: failed "
                  "message delivered again while its dead-letter write is "
                  "on its way; waiting for that write",
                  pl->cfg->name, part->topic, part->partition,
                  (long long)m->offset);
        rd_kafka_message_destroy(m);
        return true;
    }
    kh_dlq_job *job = calloc(1, sizeof *job);
    if (!job)
        abort();
    job->live_next = pl->dlq_live;
    pl->dlq_live = job;
    job->pl = pl;
    job->part = part;
    job->m = m;
    job->attempts = attempts;
    snprintf(job->reason, sizeof job->reason, "%s", reason);
    if (pl->cfg->dlq_topic)
        job->topic = strdup(pl->cfg->dlq_topic);
    else if (asprintf(&job->topic, "%s.dlq", part->topic) < 0)
        job->topic = NULL;
    if (!job->topic)
        abort();
    /* Held in the ledger like a deferred message until the broker has the
     * dead-letter copy: the watermark cannot pass it before that. */
    job->seq = part_track_dlq(part, m->offset, attempts);
    part->dlq_pending++;
    klog_error("pipeline=%s topic=%s partition=%d offset=%lld: failed "
               "message after %u attempt(s) (%s); on_failure=%s: writing it "
               "to %s",
               pl->cfg->name, part->topic, part->partition,
               (long long)m->offset, attempts, reason, policy, job->topic);
    produce(job);
    return true;
}

/* Crashes per suspect offset; at poison_after the message fails instead
 * of crashing the partition's worker forever. */
void failure_count_crash(kh_pipeline_rt *pl, kh_part *part, int64_t offset,
                         uint32_t count, const char *how) {
    if (count > 1) {
        /* A batch call: the suspect is only the first of the batch. The
         * crashed range goes one message per frame to find the culprit. */
        return;
    }
    if (part->crash_offset == offset) {
        part->crash_count++;
    } else {
        part->crash_offset = offset;
        part->crash_count = 1;
    }
    if (part->crash_count < pl->cfg->poison_after)
        return;
    pl->poison++;
    klog_error("pipeline=%s topic=%s partition=%d offset=%lld: poison "
               "message: it crashed its worker %d times in a row (last: %s)",
               pl->cfg->name, part->topic, part->partition, (long long)offset,
               part->crash_count, how);
    failure_note(part, offset, "crashed its worker %d times (last: %s)",
                 part->crash_count, how);
    part_mark_failed(part, offset);
    part->crash_count = 0;
    part->crash_offset = -1;
}
