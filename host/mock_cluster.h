/*
 * mock_cluster: librdkafka's built-in mock Kafka cluster, hosted by khost.
 *
 * It serves the real Kafka protocol over TCP on 127.0.0.1, so `brokers =
 * mock` needs no external Kafka, and `khost mock-cluster` gives other
 * processes (tests, a second host, kcat) a cluster to share.
 */
#ifndef KHOST_MOCK_CLUSTER_H
#define KHOST_MOCK_CLUSTER_H

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <stddef.h>

typedef struct kh_mock {
    rd_kafka_t *rk; /* bookkeeping handle the mock cluster hangs off */
    rd_kafka_mock_cluster_t *cluster;
} kh_mock;

/* Start `brokers` mock brokers on random loopback ports. */
int mock_cluster_start(kh_mock *mock, int brokers, char *err, size_t errlen);
const char *mock_cluster_bootstraps(const kh_mock *mock);
/* Create a topic with `partitions` partitions (replication factor 1). */
int mock_cluster_create_topic(kh_mock *mock, const char *topic, int partitions,
                              char *err, size_t errlen);
void mock_cluster_stop(kh_mock *mock);

/* `khost mock-cluster ...`: runs until SIGTERM or SIGINT. */
int mock_cluster_main(int argc, char **argv);

#endif
