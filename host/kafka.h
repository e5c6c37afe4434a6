/*
 * kafka: the API of kafka.c, the consumer of each pipeline, and the events
 * it emits (kh_consumer_events). See host/README.md.
 */
#ifndef KHOST_KAFKA_H
#define KHOST_KAFKA_H

#include "partition.h"

#include <stddef.h>
#include <stdint.h>

/* What the consumer (kafka.c) tells its pipeline; pipeline.c handles it.
 * Calls go down, these events go up. */
typedef struct kh_consumer_events {
    /* Newly assigned and fetching (part_assign done): owners wanted. */
    void (*assigned)(kh_pipeline_rt *pl, kh_part **parts, size_t n);
    /* About to be revoked: drain and commit now; the consumer releases
     * them (part_release) when this returns. */
    void (*revoking)(kh_pipeline_rt *pl, kh_part **parts, size_t n);
    /* A poll queued what Kafka delivered: time to dispatch. */
    void (*polled)(kh_pipeline_rt *pl);
} kh_consumer_events;

int kafka_pipeline_start(kh_pipeline_rt *pl, char *err, size_t errlen);
/* Point pl->consumer, the port its partitions use, at pl->rk (done by
 * kafka_pipeline_start; the fuzz harness, which makes its own rk, calls
 * it directly). */
void kafka_port_init(kh_pipeline_rt *pl);
void kafka_poll(kh_pipeline_rt *pl);
/* Commit the given parts' watermarks (all when NULL) and wait at most
 * timeout_ms for the broker's answer. */
void kafka_commit_sync(kh_pipeline_rt *pl, kh_part **parts, size_t n,
                       int timeout_ms);
/* Leave the group (bounded by timeout_ms) and free the consumer. */
void kafka_pipeline_close(kh_pipeline_rt *pl, int timeout_ms);
/* Free pipeline_part's index (pipeline_free, with the partitions). */
void kafka_index_free(kh_pipeline_rt *pl);
/* Consumers whose destroy was given up on and still runs in the
 * background; the host must then leave with _exit. */
int kafka_abandoned(void);
kh_part *pipeline_part(kh_pipeline_rt *pl, const char *topic, int32_t p,
                       bool create);

#endif
