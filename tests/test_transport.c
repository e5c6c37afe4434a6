/*
 * transport: the codec must round-trip every field exactly and must
 * survive anything a (possibly corrupted) peer sends; the connection
 * must reassemble frames split across reads and refuse bogus headers
 * before buffering them. Truncation tests copy each prefix into a buffer
 * of exactly that size so ASan flags any read past it.
 */
#define _GNU_SOURCE
#include "mock_cluster.h"
#include "testutil.h"
#include "transport.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static kh_reader reader_of(const kh_buf *b) {
    return (kh_reader){.p = b->data + b->off, .left = b->len - b->off};
}

Test(codec, scalars_round_trip_little_endian) {
    kh_buf b = {0};
    tr_put_u8(&b, 0xAB);
    tr_put_u32(&b, 0x01020304u);
    tr_put_i32(&b, -2);
    tr_put_u64(&b, 0x0102030405060708ull);
    tr_put_i64(&b, INT64_MIN);
    tr_put_u32(&b, UINT32_MAX);
    tr_put_u64(&b, UINT64_MAX);
    tr_put_i32(&b, INT32_MIN);
    cr_assert_eq(b.len, 1 + 4 + 4 + 8 + 8 + 4 + 8 + 4);
    const uint8_t want[] = {0xAB, 4, 3, 2, 1, 0xFE, 0xFF, 0xFF, 0xFF,
                            8,    7, 6, 5, 4, 3,    2,    1};
    cr_assert_arr_eq(b.data, want, sizeof want);

    kh_reader r = reader_of(&b);
    cr_assert_eq(tr_get_u8(&r), 0xAB);
    cr_assert_eq(tr_get_u32(&r), 0x01020304u);
    cr_assert_eq(tr_get_i32(&r), -2);
    cr_assert_eq(tr_get_u64(&r), 0x0102030405060708ull);
    cr_assert_eq(tr_get_i64(&r), INT64_MIN);
    cr_assert_eq(tr_get_u32(&r), UINT32_MAX);
    cr_assert_eq(tr_get_u64(&r), UINT64_MAX);
    cr_assert_eq(tr_get_i32(&r), INT32_MIN);
    cr_assert_eq(r.left, 0);
    cr_assert_eq(r.error, 0);
    /* Past the end: zero and a sticky error. */
    cr_assert_eq(tr_get_u8(&r), 0);
    cr_assert_eq(r.error, 1);
    buf_free(&b);
}

Test(codec, strings_and_blobs) {
    kh_buf b = {0};
    const uint8_t bin[] = {0, 1, 0xFF, 0, '\n'};
    tr_put_str(&b, "topic");
    tr_put_str(&b, NULL);
    tr_put_str(&b, "");
    tr_put_blob(&b, NULL, 123);
    tr_put_blob(&b, "", 0);
    tr_put_blob(&b, bin, sizeof bin);

    kh_reader r = reader_of(&b);
    size_t len;
    const uint8_t *p = tr_get_str(&r, &len);
    cr_assert_eq(len, 5);
    cr_assert(!memcmp(p, "topic", 5));
    tr_get_str(&r, &len);
    cr_assert_eq(len, 0);
    p = tr_get_str(&r, &len);
    cr_assert_eq(len, 0);
    cr_assert_not_null(p);
    p = tr_get_blob(&r, &len);
    cr_assert_null(p);
    cr_assert_eq(len, 0);
    p = tr_get_blob(&r, &len);
    cr_assert_not_null(p, "empty blob must not decode as null");
    cr_assert_eq(len, 0);
    p = tr_get_blob(&r, &len);
    cr_assert_eq(len, sizeof bin);
    cr_assert_arr_eq(p, bin, sizeof bin);
    cr_assert_eq(r.left, 0);
    cr_assert_eq(r.error, 0);
    buf_free(&b);
}

Test(codec, str_length_past_end_is_an_error) {
    kh_buf b = {0};
    tr_put_u32(&b, 0xFFFFFFFEu);
    tr_put_u32(&b, 0);
    kh_reader r = reader_of(&b);
    size_t len = 99;
    cr_assert_null(tr_get_str(&r, &len));
    cr_assert_eq(len, 0);
    cr_assert(r.error);
    r = reader_of(&b);
    cr_assert_null(tr_get_blob(&r, &len));
    cr_assert(r.error);
    buf_free(&b);
}

Test(codec, frame_header_and_patch) {
    kh_buf b = {0};
    tr_put_u8(&b, 9); /* frames need not start at 0 */
    size_t start = tr_frame_begin(&b, KH_F_RESULTS);
    cr_assert_eq(start, 1);
    size_t count = b.len;
    tr_put_u32(&b, 0);
    tr_put_u64(&b, 77);
    tr_put_u8(&b, KH_RESULT_SKIPPED);
    tr_patch_u32(&b, count, 1);
    tr_frame_end(&b, start);
    const uint8_t want[] = {
        9, 13, 0, 0, 0, KH_F_RESULTS,     0, 0, 0, 1, 0, 0, 0, 77, 0, 0,
        0, 0,  0, 0, 0, KH_RESULT_SKIPPED};
    cr_assert_eq(b.len, sizeof want);
    cr_assert_arr_eq(b.data, want, sizeof want);
    buf_free(&b);
}

Test(codec, buffer_grows_and_compacts) {
    kh_buf b = {0};
    for (uint32_t i = 0; i < 100000; i++)
        tr_put_u32(&b, i);
    cr_assert_eq(b.len, 400000);
    cr_assert_geq(b.cap, b.len);
    b.off = 100;
    buf_compact(&b); /* a small dead prefix is not worth a move */
    cr_assert_eq(b.off, 100);
    b.off = 300000;
    buf_compact(&b);
    cr_assert_eq(b.off, 0);
    cr_assert_eq(b.len, 100000);
    kh_reader r = reader_of(&b);
    cr_assert_eq(tr_get_u32(&r), 75000);
    b.off = b.len;
    buf_compact(&b);
    cr_assert_eq(b.len, 0);
    cr_assert_eq(buf_pending(&b), 0);
    buf_free(&b);
    cr_assert_null(b.data);
}

/* ------------------------------------------------------------------ */
/* Messages                                                           */
/* ------------------------------------------------------------------ */

typedef struct hdr {
    const char *name;
    const void *value;
    size_t len;
} hdr;

static void put_message(kh_buf *b, uint64_t token, uint32_t attempt,
                        const char *topic, int32_t partition, int64_t offset,
                        int64_t ts, int32_t tstype, const void *key,
                        size_t key_len, const void *value, size_t value_len,
                        const hdr *h, uint32_t nh) {
    tr_put_u64(b, token);
    tr_put_u32(b, attempt);
    tr_put_str(b, topic);
    tr_put_i32(b, partition);
    tr_put_i64(b, offset);
    tr_put_i64(b, ts);
    tr_put_i32(b, tstype);
    tr_put_blob(b, key, key_len);
    tr_put_blob(b, value, value_len);
    tr_put_u32(b, nh);
    for (uint32_t i = 0; i < nh; i++) {
        tr_put_str(b, h[i].name);
        tr_put_blob(b, h[i].value, h[i].len);
    }
}

static const uint8_t binary[] = {'a', 0, 0xFF, 0x80, 0, 'z'};
static const hdr three_headers[] = {
    {"trace-id", "abc", 3},
    {"nothing", NULL, 0},
    {"bin", binary, sizeof binary},
};

/* The message every decode test starts from. */
static void put_sample(kh_buf *b) {
    put_message(b, 0x1122334455667788ull, 3, "orders", 7, 123456789012LL,
                1700000000123LL, KHOST_TIMESTAMP_LOG_APPEND_TIME, "", 0, binary,
                sizeof binary, three_headers, 3);
}

static void check_sample(const khost_message *m) {
    cr_assert_eq(m->struct_size, sizeof(khost_message));
    cr_assert_eq(m->ack_token, 0x1122334455667788ull);
    cr_assert_eq(m->attempt, 3);
    cr_assert_str_eq(m->topic, "orders");
    cr_assert_eq(m->partition, 7);
    cr_assert_eq(m->offset, 123456789012LL);
    cr_assert_eq(m->timestamp_ms, 1700000000123LL);
    cr_assert_eq(m->timestamp_type, KHOST_TIMESTAMP_LOG_APPEND_TIME);
    cr_assert_not_null(m->key, "empty key decoded as null");
    cr_assert_eq(m->key_len, 0);
    cr_assert_eq(m->value_len, sizeof binary);
    cr_assert_arr_eq(m->value, binary, sizeof binary);
    cr_assert_eq(m->header_count, 3);
    cr_assert_str_eq(m->headers[0].name, "trace-id");
    cr_assert_eq(m->headers[0].value_len, 3);
    cr_assert(!memcmp(m->headers[0].value, "abc", 3));
    cr_assert_str_eq(m->headers[1].name, "nothing");
    cr_assert_null(m->headers[1].value);
    cr_assert_eq(m->headers[1].value_len, 0);
    cr_assert_str_eq(m->headers[2].name, "bin");
    cr_assert_eq(m->headers[2].value_len, sizeof binary);
    cr_assert_arr_eq(m->headers[2].value, binary, sizeof binary);
}

Test(message, every_field_round_trips) {
    kh_buf b = {0}, strings = {0};
    put_sample(&b);
    put_message(&b, 1, 1, "", -1, -1, -1, KHOST_TIMESTAMP_NONE, NULL, 0, NULL,
                0, NULL, 0);
    put_message(&b, 2, 1, "t", 0, 0, 0, KHOST_TIMESTAMP_CREATE_TIME, "k", 1, "",
                0, NULL, 0);
    khost_header *headers = NULL;
    size_t cap = 0;
    khost_message m;
    kh_reader r = reader_of(&b);

    cr_assert_eq(tr_get_message(&r, &m, &strings, &headers, &cap), 0);
    check_sample(&m);

    cr_assert_eq(tr_get_message(&r, &m, &strings, &headers, &cap), 0);
    cr_assert_eq(m.ack_token, 1);
    cr_assert_str_eq(m.topic, "");
    cr_assert_eq(m.partition, -1);
    cr_assert_eq(m.timestamp_ms, -1);
    cr_assert_null(m.key);
    cr_assert_null(m.value);
    cr_assert_eq(m.value_len, 0);
    cr_assert_eq(m.header_count, 0);

    cr_assert_eq(tr_get_message(&r, &m, &strings, &headers, &cap), 0);
    cr_assert_eq(m.key_len, 1);
    cr_assert(!memcmp(m.key, "k", 1));
    cr_assert_not_null(m.value, "empty value decoded as null");
    cr_assert_eq(m.value_len, 0);
    cr_assert_eq(m.timestamp_type, KHOST_TIMESTAMP_CREATE_TIME);

    cr_assert_eq(r.left, 0);
    cr_assert_eq(r.error, 0);
    free(headers);
    buf_free(&strings);
    buf_free(&b);
}

Test(message, big_value_and_many_headers) {
    size_t big = 5u << 20;
    uint8_t *value = malloc(big);
    for (size_t i = 0; i < big; i++)
        value[i] = (uint8_t)(i * 31 + 7);
    enum { NH = 500 };
    hdr *h = calloc(NH, sizeof *h);
    char(*names)[32] = calloc(NH, 32);
    for (int i = 0; i < NH; i++) {
        snprintf(names[i], 32, "header-%d", i);
        h[i] = (hdr){names[i], names[i], strlen(names[i])};
    }
    kh_buf b = {0};
    put_message(&b, 5, 1, "big", 0, 0, 0, 0, NULL, 0, value, big, h, NH);

    /* A tiny, nearly full strings buffer forces it to move while the
     * message is decoded: no pointer may refer to the old block. */
    kh_buf strings = {0};
    tr_put_u8(&strings, 1);
    khost_header *headers = NULL;
    size_t cap = 0;
    khost_message m;
    kh_reader r = reader_of(&b);
    cr_assert_eq(tr_get_message(&r, &m, &strings, &headers, &cap), 0);
    cr_assert_eq(m.value_len, big);
    cr_assert_arr_eq(m.value, value, big);
    cr_assert_eq(m.header_count, NH);
    cr_assert_str_eq(m.topic, "big");
    for (int i = 0; i < NH; i++) {
        cr_assert_str_eq(m.headers[i].name, names[i]);
        cr_assert_eq(m.headers[i].value_len, strlen(names[i]));
        cr_assert(!memcmp(m.headers[i].value, names[i], strlen(names[i])));
    }
    cr_assert_geq(cap, NH);
    free(headers);
    buf_free(&strings);
    buf_free(&b);
    free(names);
    free(h);
    free(value);
}

Test(message, every_truncation_is_an_error) {
    kh_buf b = {0};
    put_sample(&b);
    kh_buf strings = {0};
    khost_header *headers = NULL;
    size_t cap = 0;
    for (size_t cut = 0; cut < b.len; cut++) {
        uint8_t *copy = malloc(cut ? cut : 1);
        memcpy(copy, b.data, cut);
        kh_reader r = {.p = copy, .left = cut};
        khost_message m;
        strings.len = 0;
        cr_assert_eq(tr_get_message(&r, &m, &strings, &headers, &cap), -1,
                     "cut at %zu of %zu decoded", cut, b.len);
        cr_assert(r.error);
        free(copy);
    }
    /* The whole thing still decodes. */
    uint8_t *copy = malloc(b.len);
    memcpy(copy, b.data, b.len);
    kh_reader r = {.p = copy, .left = b.len};
    khost_message m;
    strings.len = 0;
    cr_assert_eq(tr_get_message(&r, &m, &strings, &headers, &cap), 0);
    check_sample(&m);
    free(copy);
    free(headers);
    buf_free(&strings);
    buf_free(&b);
}

Test(message, hostile_header_count_allocates_nothing_big) {
    kh_buf b = {0};
    put_message(&b, 1, 1, "t", 0, 0, 0, 0, NULL, 0, NULL, 0, NULL, 0);
    /* Patch n_headers (the last u32) to 4 billion, with 64 bytes left. */
    tr_patch_u32(&b, b.len - 4, 0xFFFFFFF0u);
    for (int i = 0; i < 16; i++)
        tr_put_u32(&b, 0);
    kh_buf strings = {0};
    khost_header *headers = NULL;
    size_t cap = 0;
    khost_message m;
    kh_reader r = reader_of(&b);
    cr_assert_eq(tr_get_message(&r, &m, &strings, &headers, &cap), -1);
    cr_assert(r.error);
    cr_assert_eq(cap, 0);
    cr_assert_null(headers);

    /* Exactly as many minimal headers as fit is fine. */
    tr_patch_u32(&b, b.len - 64 - 4, 8);
    r = reader_of(&b);
    cr_assert_eq(tr_get_message(&r, &m, &strings, &headers, &cap), 0);
    cr_assert_eq(m.header_count, 8);
    cr_assert_str_eq(m.headers[7].name, "");
    cr_assert_not_null(m.headers[7].value);
    free(headers);
    buf_free(&strings);
    buf_free(&b);
}

/* ------------------------------------------------------------------ */
/* A real librdkafka message                                          */
/* ------------------------------------------------------------------ */

Test(message, kafka_message_round_trips, .timeout = 30) {
    kh_mock mock;
    char err[512];
    cr_assert_eq(mock_cluster_start(&mock, 1, err, sizeof err), 0, "%s", err);
    cr_assert_eq(mock_cluster_create_topic(&mock, "rt", 1, err, sizeof err), 0,
                 "%s", err);

    char errstr[512];
    rd_kafka_conf_t *pc = rd_kafka_conf_new();
    rd_kafka_conf_set(pc, "bootstrap.servers", mock_cluster_bootstraps(&mock),
                      errstr, sizeof errstr);
    rd_kafka_t *prod =
        rd_kafka_new(RD_KAFKA_PRODUCER, pc, errstr, sizeof errstr);
    cr_assert_not_null(prod, "%s", errstr);

    rd_kafka_headers_t *hs = rd_kafka_headers_new(3);
    rd_kafka_header_add(hs, "h1", -1, "v1", 2);
    rd_kafka_header_add(hs, "hnull", -1, NULL, 0);
    rd_kafka_header_add(hs, "hbin", -1, binary, sizeof binary);
    rd_kafka_resp_err_t e =
        rd_kafka_producev(prod, RD_KAFKA_V_TOPIC("rt"), RD_KAFKA_V_PARTITION(0),
                          RD_KAFKA_V_KEY("key", 3),
                          RD_KAFKA_V_VALUE((void *)binary, sizeof binary),
                          RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                          RD_KAFKA_V_TIMESTAMP(1600000000042LL),
                          RD_KAFKA_V_HEADERS(hs), RD_KAFKA_V_END);
    cr_assert_eq(e, 0, "%s", rd_kafka_err2str(e));
    e = rd_kafka_producev(prod, RD_KAFKA_V_TOPIC("rt"), RD_KAFKA_V_PARTITION(0),
                          RD_KAFKA_V_VALUE("v2", 2),
                          RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                          RD_KAFKA_V_END);
    cr_assert_eq(e, 0, "%s", rd_kafka_err2str(e));
    cr_assert_eq(rd_kafka_flush(prod, 10000), 0);
    rd_kafka_destroy(prod);

    rd_kafka_conf_t *cc = rd_kafka_conf_new();
    rd_kafka_conf_set(cc, "bootstrap.servers", mock_cluster_bootstraps(&mock),
                      errstr, sizeof errstr);
    rd_kafka_conf_set(cc, "group.id", "transport-test", errstr, sizeof errstr);
    rd_kafka_conf_set(cc, "enable.auto.commit", "false", errstr, sizeof errstr);
    rd_kafka_t *cons =
        rd_kafka_new(RD_KAFKA_CONSUMER, cc, errstr, sizeof errstr);
    cr_assert_not_null(cons, "%s", errstr);
    rd_kafka_topic_partition_list_t *tp = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(tp, "rt", 0)->offset =
        RD_KAFKA_OFFSET_BEGINNING;
    cr_assert_eq(rd_kafka_assign(cons, tp), 0);
    rd_kafka_topic_partition_list_destroy(tp);

    kh_buf b = {0},
           bare = {0}; /* bare: as for a KHOST_PLUGIN_NO_HEADERS plugin */
    size_t count_pos = b.len;
    tr_put_u32(&b, 0);
    tr_put_u32(&bare, 2);
    uint32_t got = 0;
    int64_t deadline = kh_now_ms() + 15000;
    while (got < 2 && kh_now_ms() < deadline) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(cons, 100);
        if (!m)
            continue;
        if (!m->err) {
            /* The ring's fit check (dispatch) relies on the exact size:
             * with headers, without, a null key and headers. */
            size_t at = b.len, at_bare = bare.len;
            tr_put_kafka_message(&b, 1000 + got, got + 1, m, true);
            tr_put_kafka_message(&bare, 1000 + got, got + 1, m, false);
            cr_assert_eq(tr_kafka_message_size(m, true), b.len - at);
            cr_assert_eq(tr_kafka_message_size(m, false), bare.len - at_bare);
            got++;
        }
        rd_kafka_message_destroy(m);
    }
    cr_assert_eq(got, 2, "consumed %u messages", got);
    tr_patch_u32(&b, count_pos, got);

    kh_reader r = reader_of(&b);
    cr_assert_eq(tr_get_u32(&r), 2);
    kh_buf strings = {0};
    khost_header *headers = NULL;
    size_t cap = 0;
    khost_message m;
    cr_assert_eq(tr_get_message(&r, &m, &strings, &headers, &cap), 0);
    cr_assert_eq(m.ack_token, 1000);
    cr_assert_eq(m.attempt, 1);
    cr_assert_str_eq(m.topic, "rt");
    cr_assert_eq(m.partition, 0);
    cr_assert_eq(m.offset, 0);
    cr_assert_eq(m.timestamp_ms, 1600000000042LL);
    cr_assert_eq(m.timestamp_type, KHOST_TIMESTAMP_CREATE_TIME);
    cr_assert_eq(m.key_len, 3);
    cr_assert(!memcmp(m.key, "key", 3));
    cr_assert_eq(m.value_len, sizeof binary);
    cr_assert_arr_eq(m.value, binary, sizeof binary);
    cr_assert_eq(m.header_count, 3);
    cr_assert_str_eq(m.headers[0].name, "h1");
    cr_assert_eq(m.headers[0].value_len, 2);
    cr_assert(!memcmp(m.headers[0].value, "v1", 2));
    cr_assert_str_eq(m.headers[1].name, "hnull");
    cr_assert_null(m.headers[1].value);
    cr_assert_str_eq(m.headers[2].name, "hbin");
    cr_assert_arr_eq(m.headers[2].value, binary, sizeof binary);

    cr_assert_eq(tr_get_message(&r, &m, &strings, &headers, &cap), 0);
    cr_assert_eq(m.ack_token, 1001);
    cr_assert_eq(m.attempt, 2);
    cr_assert_eq(m.offset, 1);
    cr_assert_null(m.key);
    cr_assert_eq(m.value_len, 2);
    cr_assert_eq(m.header_count, 0);
    cr_assert_eq(m.timestamp_type, KHOST_TIMESTAMP_CREATE_TIME);
    cr_assert_gt(m.timestamp_ms, 0);
    cr_assert_eq(r.left, 0);

    /* Without headers: the same message, header_count 0. */
    r = reader_of(&bare);
    cr_assert_eq(tr_get_u32(&r), 2);
    cr_assert_eq(tr_get_message(&r, &m, &strings, &headers, &cap), 0);
    cr_assert_eq(m.ack_token, 1000);
    cr_assert_eq(m.offset, 0);
    cr_assert_eq(m.key_len, 3);
    cr_assert_arr_eq(m.value, binary, sizeof binary);
    cr_assert_eq(m.header_count, 0);
    cr_assert_eq(tr_get_message(&r, &m, &strings, &headers, &cap), 0);
    cr_assert_eq(m.offset, 1);
    cr_assert_eq(m.header_count, 0);
    cr_assert_eq(r.left, 0);
    buf_free(&bare);

    free(headers);
    buf_free(&strings);
    buf_free(&b);
    rd_kafka_consumer_close(cons);
    rd_kafka_destroy(cons);
    mock_cluster_stop(&mock);
}

/* ------------------------------------------------------------------ */
/* Connection                                                         */
/* ------------------------------------------------------------------ */

static void pair(int sv[2]) {
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
}

static void write_all(int fd, const void *p, size_t n) {
    while (n) {
        ssize_t w = write(fd, p, n);
        cr_assert_gt(w, 0);
        p = (const uint8_t *)p + w;
        n -= (size_t)w;
    }
}

Test(conn, frames_split_byte_by_byte) {
    int sv[2];
    pair(sv);
    kh_conn c;
    conn_init(&c, sv[0], 1024);
    cr_assert(fcntl(sv[0], F_GETFL) & O_NONBLOCK);

    kh_buf b = {0};
    size_t s = tr_frame_begin(&b, KH_F_ASSIGN);
    tr_put_str(&b, "topic");
    tr_put_i32(&b, 3);
    tr_frame_end(&b, s);
    s = tr_frame_begin(&b, KH_F_SHUTDOWN);
    tr_frame_end(&b, s);
    size_t first = 8 + 4 + 5 + 4;

    uint16_t type;
    kh_reader r;
    cr_assert_eq(conn_fill(&c), -EAGAIN);
    for (size_t i = 0; i < b.len; i++) {
        write_all(sv[1], b.data + i, 1);
        cr_assert_eq(conn_fill(&c), 1);
        int rc = conn_next_frame(&c, &type, &r);
        if (i + 1 == first) {
            cr_assert_eq(rc, 1, "frame incomplete after %zu bytes", i + 1);
            cr_assert_eq(type, KH_F_ASSIGN);
            size_t len;
            const uint8_t *t = tr_get_str(&r, &len);
            cr_assert_eq(len, 5);
            cr_assert(!memcmp(t, "topic", 5));
            cr_assert_eq(tr_get_i32(&r), 3);
            cr_assert_eq(r.left, 0);
            cr_assert_eq(conn_next_frame(&c, &type, &r), 0);
        } else if (i + 1 == b.len) {
            cr_assert_eq(rc, 1);
            cr_assert_eq(type, KH_F_SHUTDOWN);
            cr_assert_eq(r.left, 0);
        } else {
            cr_assert_eq(rc, 0, "frame complete after %zu bytes", i + 1);
        }
    }
    cr_assert_eq(conn_next_frame(&c, &type, &r), 0);
    close(sv[1]);
    cr_assert_eq(conn_fill(&c), 0, "EOF");
    buf_free(&b);
    conn_close(&c);
    cr_assert_eq(c.fd, -1);
}

Test(conn, many_frames_in_one_read) {
    int sv[2];
    pair(sv);
    kh_conn c;
    conn_init(&c, sv[0], 1024);
    kh_buf b = {0};
    for (uint32_t i = 0; i < 1000; i++) {
        size_t s = tr_frame_begin(&b, KH_F_ACKS);
        tr_put_u32(&b, 1);
        tr_put_u64(&b, i);
        tr_frame_end(&b, s);
    }
    write_all(sv[1], b.data, b.len);
    uint32_t seen = 0;
    while (seen < 1000) {
        uint16_t type;
        kh_reader r;
        int rc = conn_next_frame(&c, &type, &r);
        if (rc == 0) {
            cr_assert_gt(conn_fill(&c), 0);
            continue;
        }
        cr_assert_eq(rc, 1);
        cr_assert_eq(type, KH_F_ACKS);
        cr_assert_eq(tr_get_u32(&r), 1);
        cr_assert_eq(tr_get_u64(&r), seen);
        seen++;
    }
    buf_free(&b);
    close(sv[1]);
    conn_close(&c);
}

Test(conn, oversize_frame_rejected_before_payload) {
    int sv[2];
    pair(sv);
    kh_conn c;
    conn_init(&c, sv[0], 1024);
    /* Only the header is sent: the verdict must not wait for 1025 bytes. */
    const uint8_t h[8] = {0x01, 0x04, 0, 0, KH_F_RESULTS, 0, 0, 0};
    write_all(sv[1], h, sizeof h);
    cr_assert_eq(conn_fill(&c), 8);
    uint16_t type;
    kh_reader r;
    cr_assert_eq(conn_next_frame(&c, &type, &r), -EPROTO);
    cr_assert_lt(c.in.cap, 1u << 20, "buffered for a bogus length");

    /* A frame of exactly max_frame is fine. */
    kh_conn c2;
    int sv2[2];
    pair(sv2);
    conn_init(&c2, sv2[0], 1024);
    uint8_t *f = calloc(1, 8 + 1024);
    f[1] = 0x04;
    f[4] = KH_F_ACKS;
    write_all(sv2[1], f, 8 + 1024);
    while (conn_next_frame(&c2, &type, &r) == 0)
        cr_assert_gt(conn_fill(&c2), 0);
    cr_assert_eq(r.left, 1024);
    free(f);
    close(sv[1]);
    close(sv2[1]);
    conn_close(&c);
    conn_close(&c2);
}

Test(conn, huge_length_header_never_sizes_a_buffer) {
    int sv[2];
    pair(sv);
    kh_conn c;
    conn_init(&c, sv[0], KH_FRAME_MAX_FROM_WORKER);
    const uint8_t h[8] = {0xFF, 0xFF, 0xFF, 0xFF, KH_F_ACKS, 0, 0, 0};
    write_all(sv[1], h, 4); /* half a header first */
    cr_assert_eq(conn_fill(&c), 4);
    uint16_t type;
    kh_reader r;
    cr_assert_eq(conn_next_frame(&c, &type, &r), 0);
    write_all(sv[1], h + 4, 4);
    cr_assert_eq(conn_fill(&c), 4);
    cr_assert_eq(conn_next_frame(&c, &type, &r), -EPROTO);
    cr_assert_lt(c.in.cap, 1u << 20);
    close(sv[1]);
    conn_close(&c);
}

Test(conn, nonzero_reserved_rejected) {
    int sv[2];
    pair(sv);
    kh_conn c;
    conn_init(&c, sv[0], 1024);
    const uint8_t h[8] = {0, 0, 0, 0, KH_F_SHUTDOWN, 0, 0, 1};
    write_all(sv[1], h, sizeof h);
    cr_assert_eq(conn_fill(&c), 8);
    uint16_t type;
    kh_reader r;
    cr_assert_eq(conn_next_frame(&c, &type, &r), -EPROTO);
    close(sv[1]);
    conn_close(&c);
}

typedef struct drain {
    int fd;
    size_t want;
    uint8_t *got;
} drain;

static void *drain_thread(void *arg) {
    drain *d = arg;
    size_t have = 0;
    while (have < d->want) {
        /* Slow small reads so the writer really sees a full socket. */
        ssize_t n = read(d->fd, d->got + have,
                         d->want - have < 3000 ? d->want - have : 3000);
        if (n <= 0)
            break;
        have += (size_t)n;
    }
    d->want = have;
    return NULL;
}

Test(conn, flush_large_buffer_to_slow_reader) {
    int sv[2];
    pair(sv);
    kh_conn c;
    conn_init(&c, sv[0], 1024);
    size_t total = 8u << 20;
    for (size_t i = 0; i < total / 8; i++)
        tr_put_u64(&c.out, i * 0x9E3779B97F4A7C15ull);
    uint8_t *expect = malloc(total);
    memcpy(expect, c.out.data, total);

    drain d = {.fd = sv[1], .want = total, .got = malloc(total)};
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, drain_thread, &d), 0);
    int partial = 0;
    for (;;) {
        int rc = conn_flush(&c);
        cr_assert_geq(rc, 0, "conn_flush: %s", strerror(-rc));
        if (rc == 0)
            break;
        partial++;
        cr_assert_gt(buf_pending(&c.out), 0);
        struct pollfd p = {.fd = sv[0], .events = POLLOUT};
        poll(&p, 1, 1000);
    }
    pthread_join(t, NULL);
    cr_assert_gt(partial, 0, "the socket never filled up");
    cr_assert_eq(buf_pending(&c.out), 0);
    cr_assert_eq(d.want, total);
    cr_assert(!memcmp(d.got, expect, total));
    free(d.got);
    free(expect);
    close(sv[1]);
    conn_close(&c);
}

Test(conn, flush_to_closed_peer_is_epipe_not_sigpipe) {
    int sv[2];
    pair(sv);
    close(sv[1]);
    kh_conn c;
    conn_init(&c, sv[0], 1024);
    tr_put_u64(&c.out, 1);
    cr_assert_eq(conn_flush(&c), -EPIPE);
    conn_close(&c);
}

/* ------------------------------------------------------------------ */
/* Status page                                                        */
/* ------------------------------------------------------------------ */

Test(status, enter_leave_read) {
    kh_worker_status s = {0};
    uint64_t token;
    uint32_t count;
    int64_t started;
    status_read(&s, &token, &count, &started);
    cr_assert_eq(started, 0);
    int64_t now = kh_now_ms();
    cr_assert_gt(now, 0);
    status_enter_call(&s, 42, 7, now);
    status_read(&s, &token, &count, &started);
    cr_assert_eq(token, 42);
    cr_assert_eq(count, 7);
    cr_assert_eq(started, now);
    cr_assert_eq(s.calls, 1);
    status_leave_call(&s);
    status_read(&s, &token, &count, &started);
    cr_assert_eq(started, 0);
    cr_assert_eq(token, 42, "the last token stays for post-mortems");
    status_enter_call(&s, 43, 1, now + 5);
    cr_assert_eq(s.calls, 2);
}

Test(status, now_is_monotonic_ms) {
    int64_t a = kh_now_ms();
    usleep(20000);
    int64_t b = kh_now_ms();
    cr_assert_geq(b - a, 19);
    cr_assert_lt(b - a, 2000);
}

/* ---- message ring placement ---- */

Test(ring, place_fixed_cases) {
    const size_t S = KH_RING_BYTES, F = KH_RING_FRAME_MAX;
    size_t skip;
    /* Empty, anywhere: a whole frame, skipping a short end. */
    cr_assert_eq(tr_ring_place(0, 0, &skip), F);
    cr_assert_eq(skip, 0);
    cr_assert_eq(tr_ring_place(S - 100, S - 100, &skip), F);
    cr_assert_eq(skip, 100);
    cr_assert_eq(tr_ring_place(3 * S + 5, 3 * S + 5, &skip), F);
    cr_assert_eq(skip, 0);
    /* Full: nothing. */
    cr_assert_eq(tr_ring_place(S, 0, &skip), 0);
    cr_assert_eq(tr_ring_place(2 * S + 7, S + 7, &skip), 0);
    /* Short end, and the front is not freed yet: what is left there. */
    cr_assert_eq(tr_ring_place(S - 100, 50, &skip), 100);
    cr_assert_eq(skip, 0);
    /* Short end, front freed further: skip to it. */
    cr_assert_eq(tr_ring_place(S - 100, S - 1000, &skip), F);
    cr_assert_eq(skip, 100);
    cr_assert_eq(tr_ring_place(S - 100, S - 300, &skip), F);
    cr_assert_eq(skip, 100);
}

/* Random frames and random frees: a placed frame never wraps, never goes
 * past what the worker freed, and positions only grow. */
Test(ring, place_never_overlaps_unfreed_bytes) {
    const size_t S = KH_RING_BYTES;
    uint64_t head = 0, tail = 0;
    uint64_t live_end[64]; /* ends of frames not yet freed, in order */
    size_t n_live = 0;
    unsigned seed = 12345;
    for (int step = 0; step < 200000; step++) {
        seed = seed * 1103515245u + 12345u;
        if ((seed >> 16) % 3 == 0 && n_live) {
            tail = live_end[0]; /* the worker frees the oldest frame */
            memmove(live_end, live_end + 1, --n_live * sizeof *live_end);
            continue;
        }
        size_t skip;
        size_t room = tr_ring_place(head, tail, &skip);
        size_t want = 12 + (seed >> 8) % (KH_RING_FRAME_MAX - 12);
        if (room < want || n_live == 64)
            continue;
        uint64_t pos = head + skip;
        cr_assert_geq(pos, head);
        cr_assert_leq(pos % S + want, S, "frame wraps at step %d", step);
        cr_assert_leq(pos + want, tail + S, "overwrites unfreed bytes");
        head = pos + want;
        live_end[n_live++] = head;
    }
    cr_assert_gt(head, 20 * (uint64_t)S,
                 "the ring went round only %" PRIu64 " times", head / S);
}
