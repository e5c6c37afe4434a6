/*
 * bench_wait_committed BOOTSTRAP TOPIC PARTITIONS GROUP [TIMEOUT_S [PID]]
 *
 * Time a consumer from the outside through its group's committed offsets.
 * Reads the high watermark of every partition once, then asks the group
 * coordinator for GROUP's committed offsets every 5 ms (OffsetFetch, with a
 * handle that never joins the group) until every partition's committed
 * offset has reached its high watermark. Prints one line:
 *
 *   COMMITTED end_total=N first_wall=W first_total=C t10=T t50=T t90=T
 *             done_wall=W samples=K
 *
 * first_*: when a committed offset was first seen and how many messages it
 * covered; tP: when the committed total was first seen at or above P% of
 * end_total; done_wall: when every partition was seen at its end. All
 * times are wall clock, seconds since the epoch (comparable with khost's
 * log lines). Exit 1 on timeout (default 120 s).
 *
 * With PID (the consumer timed: the reference, or khost's host process),
 * it also samples that process and its live children (khost's workers,
 * found through /proc/PID/task/TID/children, never by name) at the first
 * commit and at the end, and adds to the line:
 *
 *   cpu_first=S cpu_done=S tasks_first=T tasks_done=T procs=K hwm_kb=H
 *   child_hwm_max_kb=H child_rss_max_kb=R child_anon_max_kb=A
 *
 * cpu_*: on-CPU seconds of every thread of PID and of its children
 * (sum_exec_runtime from /proc/PID/task/TID/schedstat, nanoseconds), so
 * cpu_done - cpu_first is what the consumer spent in the timed window
 * (live threads only: tasks_* count the threads summed, so a thread that
 * exited in between shows as tasks_done < tasks_first);
 * procs: PID plus its children at the end; hwm_kb: PID's VmHWM (peak
 * RSS) at the end; child_*: the largest VmHWM, VmRSS and RssAnon among
 * the children at the end. A value that could not be read is -1.
 */
#define _GNU_SOURCE
#include "bench_common.h"

#include <dirent.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#define BENCH_MAX_CHILDREN 256

/* Threads counted by the last proc_cpu_ns calls (see tree_cpu_s). */
static int tasks_seen;

/* On-CPU nanoseconds of every live thread of process pid, or -1. A
 * thread that has exited is not counted: the caller compares the thread
 * counts of its samples (tasks_seen) to notice one. */
static long long proc_cpu_ns(int pid) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", pid);
    DIR *d = opendir(path);
    if (!d)
        return -1;
    long long sum = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char p[320];
        snprintf(p, sizeof p, "/proc/%d/task/%s/schedstat", pid, e->d_name);
        FILE *f = fopen(p, "r");
        long long ns;
        if (f) {
            if (fscanf(f, "%lld", &ns) == 1) {
                sum += ns;
                tasks_seen++;
            }
            fclose(f);
        }
    }
    closedir(d);
    return sum;
}

/* The children of every thread of pid, into kids; returns how many. */
static int proc_children(int pid, int *kids, int max) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", pid);
    DIR *d = opendir(path);
    if (!d)
        return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char p[320];
        snprintf(p, sizeof p, "/proc/%d/task/%s/children", pid, e->d_name);
        FILE *f = fopen(p, "r");
        int k;
        if (f) {
            while (n < max && fscanf(f, "%d", &k) == 1)
                kids[n++] = k;
            fclose(f);
        }
    }
    closedir(d);
    return n;
}

/* One "Key:   N kB" field of /proc/pid/status, in kB, or -1. */
static long proc_status_kb(int pid, const char *key) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    long v = -1;
    size_t kl = strlen(key);
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, kl) && line[kl] == ':') {
            v = strtol(line + kl + 1, NULL, 10);
            break;
        }
    fclose(f);
    return v;
}

/* CPU seconds of pid and its live children, or -1. */
static double tree_cpu_s(int pid) {
    tasks_seen = 0;
    long long ns = proc_cpu_ns(pid);
    if (ns < 0)
        return -1;
    int kids[BENCH_MAX_CHILDREN];
    int n = proc_children(pid, kids, BENCH_MAX_CHILDREN);
    for (int i = 0; i < n; i++) {
        long long c = proc_cpu_ns(kids[i]);
        if (c > 0)
            ns += c;
    }
    return (double)ns / 1e9;
}

static long lmax(long a, long b) {
    return a > b ? a : b;
}

int main(int argc, char **argv) {
    if (argc < 5 || argc > 7) {
        fprintf(stderr, "usage: bench_wait_committed BOOTSTRAP TOPIC "
                        "PARTITIONS GROUP [TIMEOUT_S [PID]]\n");
        return 2;
    }
    const char *topic = argv[2];
    int parts = (int)bench_num("PARTITIONS", argv[3], 1, 10000);
    long timeout = argc >= 6 ? bench_num("TIMEOUT_S", argv[5], 1, 3600) : 120;
    int pid = argc >= 7 ? (int)bench_num("PID", argv[6], 1, 1 << 30) : 0;
    double cpu_first = -1;
    int tasks_first = -1;

    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    bench_set(conf, "bootstrap.servers", argv[1]);
    bench_set(conf, "group.id", argv[4]);
    bench_set(conf, "client.id", "bench-wait-committed");
    bench_set(conf, "enable.auto.commit", "false");
    char errstr[512];
    rd_kafka_t *rk =
        rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
    if (!rk) {
        fprintf(stderr, "bench_wait_committed: %s\n", errstr);
        return 1;
    }
    double deadline = bench_mono() + (double)timeout;

    int64_t *end = calloc((size_t)parts, sizeof *end);
    long end_total = 0;
    for (int p = 0; p < parts; p++) {
        int64_t lo, hi;
        rd_kafka_resp_err_t e;
        while ((e = rd_kafka_query_watermark_offsets(rk, topic, p, &lo, &hi,
                                                     5000))) {
            if (bench_mono() > deadline) {
                fprintf(stderr,
                        "bench_wait_committed: watermarks of %s[%d]: "
                        "%s\n",
                        topic, p, rd_kafka_err2str(e));
                return 1;
            }
            usleep(100000);
        }
        end[p] = hi;
        end_total += hi;
    }

    rd_kafka_topic_partition_list_t *l =
        rd_kafka_topic_partition_list_new(parts);
    for (int p = 0; p < parts; p++)
        rd_kafka_topic_partition_list_add(l, topic, p);

    double first_wall = 0, t_pct[3] = {0, 0, 0};
    static const int pct[3] = {10, 50, 90};
    long first_total = 0, samples = 0;
    for (;;) {
        for (int p = 0; p < parts; p++)
            l->elems[p].offset = RD_KAFKA_OFFSET_INVALID;
        rd_kafka_resp_err_t e = rd_kafka_committed(rk, l, 2000);
        double now = bench_wall();
        if (e) {
            fprintf(stderr, "bench_wait_committed: %s\n", rd_kafka_err2str(e));
        } else {
            samples++;
            long total = 0;
            int at_end = 0;
            for (int p = 0; p < parts; p++) {
                int64_t o = l->elems[p].err ? -1 : l->elems[p].offset;
                if (o > 0)
                    total += (long)o;
                at_end += o >= end[p];
            }
            if (total > 0 && first_wall == 0) {
                first_wall = now;
                first_total = total;
                if (pid) {
                    cpu_first = tree_cpu_s(pid);
                    tasks_first = tasks_seen;
                }
            }
            for (int i = 0; i < 3; i++)
                if (t_pct[i] == 0 && total * 100 >= end_total * pct[i])
                    t_pct[i] = now;
            if (at_end == parts) {
                printf("COMMITTED end_total=%ld first_wall=%.4f "
                       "first_total=%ld t10=%.4f t50=%.4f t90=%.4f "
                       "done_wall=%.4f samples=%ld",
                       end_total, first_wall, first_total, t_pct[0], t_pct[1],
                       t_pct[2], now, samples);
                if (pid) {
                    double cpu_done = tree_cpu_s(pid);
                    int tasks_done = tasks_seen;
                    int kids[BENCH_MAX_CHILDREN];
                    int n = proc_children(pid, kids, BENCH_MAX_CHILDREN);
                    long hwm = -1, rss = -1, anon = -1;
                    for (int i = 0; i < n; i++) {
                        hwm = lmax(hwm, proc_status_kb(kids[i], "VmHWM"));
                        rss = lmax(rss, proc_status_kb(kids[i], "VmRSS"));
                        anon = lmax(anon, proc_status_kb(kids[i], "RssAnon"));
                    }
                    printf(" cpu_first=%.4f cpu_done=%.4f tasks_first=%d "
                           "tasks_done=%d procs=%d hwm_kb=%ld "
                           "child_hwm_max_kb=%ld child_rss_max_kb=%ld "
                           "child_anon_max_kb=%ld",
                           cpu_first, cpu_done, tasks_first, tasks_done, 1 + n,
                           proc_status_kb(pid, "VmHWM"), hwm, rss, anon);
                }
                printf("\n");
                break;
            }
        }
        if (bench_mono() > deadline) {
            fprintf(stderr, "bench_wait_committed: timed out\n");
            return 1;
        }
        usleep(5000);
    }
    rd_kafka_topic_partition_list_destroy(l);
    free(end);
    rd_kafka_destroy(rk);
    return 0;
}
