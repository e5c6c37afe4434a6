/*
 * parts: pipeline_part (kafka.c), the lookup that maps every polled
 * message to its partition. It finds partitions through an index by
 * topic and partition id, so it is checked here against what a scan of
 * pl->parts would answer: several topics, ids far apart and out of
 * order, an id past the index, and lookups of what was never created.
 * No Kafka, no processes.
 */
#define _GNU_SOURCE
#include "config.h"
#include "kafka.h"
#include "partition.h"
#include "pipeline.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

/* The partition a scan of pl->parts finds: the answer before the index. */
static kh_part *scan(const kh_pipeline_rt *pl, const char *topic, int32_t p) {
    for (size_t i = 0; i < pl->n_parts; i++)
        if (pl->parts[i]->partition == p && !strcmp(pl->parts[i]->topic, topic))
            return pl->parts[i];
    return NULL;
}

Test(parts, every_lookup_agrees_with_a_scan_of_the_partitions) {
    kh_pipeline cfg = {.name = "p"};
    kh_pipeline_rt pl = {.cfg = &cfg};
    const char *topics[] = {"orders", "orders.dlq", "o", "payments"};
    /* 2000000000: past the index (KH_INDEX_MAX), found by a scan. */
    const int32_t ids[] = {0, 1, 999, 7, 64, 3, 1000, 2, 511, 16, 2000000000};
    /* Created in an order that grows the index several times. */
    for (size_t t = 0; t < 4; t++)
        for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
            if ((t + i) % 3 == 0)
                continue; /* some ids exist in some topics only */
            kh_part *made = pipeline_part(&pl, topics[t], ids[i], true);
            cr_assert_not_null(made);
            cr_assert_str_eq(made->topic, topics[t]);
            cr_assert_eq(made->partition, ids[i]);
            /* Asked again, with create or without: the same one. */
            cr_assert_eq(pipeline_part(&pl, topics[t], ids[i], true), made);
            cr_assert_eq(pipeline_part(&pl, topics[t], ids[i], false), made);
        }
    size_t made = pl.n_parts;
    for (size_t t = 0; t < 4; t++)
        for (int32_t p = -2; p <= 1030; p++)
            cr_assert_eq(pipeline_part(&pl, topics[t], p, false),
                         scan(&pl, topics[t], p), "topic %s partition %d",
                         topics[t], p);
    cr_assert_null(pipeline_part(&pl, "order", 0, false));
    cr_assert_null(pipeline_part(&pl, "", 0, false));
    cr_assert_null(pipeline_part(&pl, "orders", 1 << 30, false));
    for (size_t t = 0; t < 4; t++)
        cr_assert_eq(pipeline_part(&pl, topics[t], 2000000000, false),
                     scan(&pl, topics[t], 2000000000));
    cr_assert_null(pipeline_part(&pl, "orders", -1, true));
    cr_assert_eq(pl.n_parts, made, "a lookup created a partition");
    for (size_t i = 0; i < pl.n_parts; i++)
        part_free(pl.parts[i]);
    free(pl.parts);
    kafka_index_free(&pl);
    cr_assert_eq(pl.n_tix, 0);
}
