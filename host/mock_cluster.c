/*
 * mock_cluster: start and serve librdkafka's mock cluster.
 */
#define _GNU_SOURCE
#include "mock_cluster.h"

#include "log.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The handle's own lines (librdkafka's threads) through klog. */
static void mock_on_log(const rd_kafka_t *rk, int level, const char *fac,
                        const char *buf) {
    (void)rk;
    klog(level <= 3   ? KLOG_ERROR
         : level <= 4 ? KLOG_WARN
                      : KLOG_DEBUG,
         "mock cluster: librdkafka %s: %s", fac, buf);
}

int mock_cluster_start(kh_mock *mock, int brokers, char *err, size_t errlen) {
    memset(mock, 0, sizeof *mock);
    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    /* The handle only does bookkeeping for the mock; keep it quiet. */
    rd_kafka_conf_set(conf, "log_level", "3", errstr, sizeof errstr);
    rd_kafka_conf_set_log_cb(conf, mock_on_log);
    mock->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (!mock->rk) {
        snprintf(err, errlen, "cannot create mock cluster handle: %s", errstr);
        return -1;
    }
    mock->cluster = rd_kafka_mock_cluster_new(mock->rk, brokers);
    if (!mock->cluster) {
        snprintf(err, errlen, "cannot start a mock cluster of %d brokers",
                 brokers);
        rd_kafka_destroy(mock->rk);
        mock->rk = NULL;
        return -1;
    }
    return 0;
}

const char *mock_cluster_bootstraps(const kh_mock *mock) {
    return rd_kafka_mock_cluster_bootstraps(mock->cluster);
}

int mock_cluster_create_topic(kh_mock *mock, const char *topic, int partitions,
                              char *err, size_t errlen) {
    rd_kafka_resp_err_t e =
        rd_kafka_mock_topic_create(mock->cluster, topic, partitions, 1);
    if (e) {
        snprintf(err, errlen, "cannot create topic %s with %d partitions: %s",
                 topic, partitions, rd_kafka_err2str(e));
        return -1;
    }
    return 0;
}

void mock_cluster_stop(kh_mock *mock) {
    if (mock->cluster)
        rd_kafka_mock_cluster_destroy(mock->cluster);
    if (mock->rk)
        rd_kafka_destroy(mock->rk);
    memset(mock, 0, sizeof *mock);
}

static void mock_usage(FILE *out) {
    fputs("usage: khost mock-cluster [--brokers N] [--topic NAME:PARTITIONS]..."
          " [--bootstrap-file PATH]\n"
          "\n"
          "Run librdkafka's built-in mock Kafka cluster on 127.0.0.1 until\n"
          "SIGTERM or SIGINT. Prints the bootstrap list on stdout as one line\n"
          "and, with --bootstrap-file, also writes it to PATH (atomically, so\n"
          "a reader never sees half of it). Topics not created here are\n"
          "auto-created on first use.\n"
          "\n"
          "  --brokers N              number of brokers, 1..16 (default 1)\n"
          "  --topic NAME:PARTITIONS  create a topic; repeatable\n"
          "  --bootstrap-file PATH    also write the bootstrap list to PATH\n"
          "  -h, --help               show this help\n"
          "\n"
          "Exit status: 0 after a signal, 2 for bad arguments, 1 if the\n"
          "cluster could not start.\n",
          out);
}

static int write_atomically(const char *path, const char *text) {
    char *tmp = NULL;
    if (asprintf(&tmp, "%s.tmp.%d", path, (int)getpid()) < 0)
        return -1;
    FILE *f = fopen(tmp, "w");
    if (!f) {
        free(tmp);
        return -1;
    }
    int ok = fprintf(f, "%s\n", text) > 0;
    ok = (fclose(f) == 0) && ok;
    if (ok)
        ok = rename(tmp, path) == 0;
    if (!ok)
        unlink(tmp);
    free(tmp);
    return ok ? 0 : -1;
}

/* Parse "NAME:PARTS" into name (malloc'd) and parts. */
static int parse_topic_arg(const char *arg, char **name, int *parts) {
    const char *colon = strrchr(arg, ':');
    if (!colon || colon == arg)
        return -1;
    char *end;
    errno = 0;
    long n = strtol(colon + 1, &end, 10);
    if (errno || *end || end == colon + 1 || n < 1 || n > 10000)
        return -1;
    *name = strndup(arg, (size_t)(colon - arg));
    *parts = (int)n;
    return 0;
}

int mock_cluster_main(int argc, char **argv) {
    static const struct option opts[] = {
        {"brokers", required_argument, NULL, 'b'},
        {"topic", required_argument, NULL, 't'},
        {"bootstrap-file", required_argument, NULL, 'f'},
        {"help", no_argument, NULL, 'h'},
        {0, 0, 0, 0},
    };
    int brokers = 1;
    const char *bootstrap_file = NULL;
    char **topics = calloc((size_t)argc, sizeof *topics);
    int n_topics = 0;
    int status = 2;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "b:t:f:h", opts, NULL)) != -1) {
        switch (c) {
        case 'b': {
            char *end;
            long n = strtol(optarg, &end, 10);
            if (*end || end == optarg || n < 1 || n > 16) {
                fprintf(stderr,
                        "khost mock-cluster: --brokers takes a number from 1 "
                        "to 16, not '%s'\n",
                        optarg);
                goto out;
            }
            brokers = (int)n;
            break;
        }
        case 't': {
            char *name;
            int parts;
            if (parse_topic_arg(optarg, &name, &parts) != 0) {
                fprintf(stderr,
                        "khost mock-cluster: --topic takes NAME:PARTITIONS "
                        "with 1..10000 partitions, not '%s'\n",
                        optarg);
                goto out;
            }
            free(name);
            topics[n_topics++] = optarg;
            break;
        }
        case 'f':
            bootstrap_file = optarg;
            break;
        case 'h':
            mock_usage(stdout);
            status = 0;
            goto out;
        default:
            mock_usage(stderr);
            goto out;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "khost mock-cluster: unexpected argument '%s'\n",
                argv[optind]);
        goto out;
    }

    /* Block the signals before librdkafka starts its threads so that they
     * inherit the mask and only sigwait below receives them. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);

    kh_mock mock;
    char err[512];
    status = 1;
    if (mock_cluster_start(&mock, brokers, err, sizeof err) != 0) {
        fprintf(stderr, "khost mock-cluster: %s\n", err);
        goto out;
    }
    for (int i = 0; i < n_topics; i++) {
        char *name;
        int parts;
        parse_topic_arg(topics[i], &name, &parts);
        int rc = mock_cluster_create_topic(&mock, name, parts, err, sizeof err);
        free(name);
        if (rc != 0) {
            fprintf(stderr, "khost mock-cluster: %s\n", err);
            mock_cluster_stop(&mock);
            goto out;
        }
    }
    const char *bootstraps = mock_cluster_bootstraps(&mock);
    printf("%s\n", bootstraps);
    fflush(stdout);
    if (bootstrap_file && write_atomically(bootstrap_file, bootstraps) != 0) {
        fprintf(stderr, "khost mock-cluster: cannot write %s: %s\n",
                bootstrap_file, strerror(errno));
        mock_cluster_stop(&mock);
        goto out;
    }
    klog_info("mock cluster with %d broker(s) listening at %s", brokers,
              bootstraps);
    int sig = 0;
    sigwait(&stop, &sig);
    klog_info("mock cluster stopping on %s", strsignal(sig));
    mock_cluster_stop(&mock);
    if (bootstrap_file)
        unlink(bootstrap_file);
    status = 0;
out:
    free(topics);
    return status;
}
