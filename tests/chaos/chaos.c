/*
 * chaos: khost under sustained failure, checked with a delivery ledger.
 *
 * The driver hosts librdkafka's mock cluster (3 brokers) in-process, fills
 * two topics (two pipelines, each its own consumer group), and runs two
 * real `khost run` processes in the same groups with the fault plugin
 * recording every handled message. While they consume it:
 *
 *   - kills a random worker with SIGKILL every 100-300 ms;
 *   - lets marked messages hang their handler (killed by handler_timeout_ms);
 *   - takes a broker down and up again, twice;
 *   - injects OffsetCommit and Fetch errors
 *     (rd_kafka_mock_push_request_errors);
 *   - kills one whole host with SIGKILL while the other runs, and later
 *     starts a replacement.
 *
 * Then it waits until every produced offset was handled, stops the hosts
 * with SIGTERM and prints the result block. Exit status: 0 when nothing
 * was lost, no host died by itself, duplicates stayed under their bound
 * and the hosts stopped cleanly; 1 when a check failed; 2 when the run
 * could not be set up. README.md explains the duplicate bound.
 */
#define _GNU_SOURCE
#include "mock_cluster.h"
#include "partition.h" /* KH_MAX_INFLIGHT */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef KHOST_BUILD_DIR
#define KHOST_BUILD_DIR "."
#endif

#define N_TOPICS 2
#define MAX_PARTS 64 /* per topic */
#define N_BROKERS 3
#define MAX_HOSTS 3 /* a, b, and a2 (a's replacement) */
#define HANG_MARKER "HANG"
/* librdkafka 2.0.2's mock broker, taken down with
 * rd_kafka_mock_broker_set_down, can leave an established client
 * connection open but unserved; requests on it then wait out
 * socket.timeout.ms (60 s by default) before the client reconnects. A
 * shorter timeout keeps such a stall from dominating the run. */
#define SOCKET_TIMEOUT_MS 10000

static const char *const topic_name[N_TOPICS] = {"chaos-a", "chaos-b"};
static const char *const group_name[N_TOPICS] = {"chaos-ga", "chaos-gb"};
static const char *const pipe_name[N_TOPICS] = {"pa", "pb"};

/* ---- options ---- */

typedef struct opts {
    bool is_short;
    int messages;   /* total over both topics */
    int partitions; /* total over both topics */
    int workers;    /* per pipeline per host */
    int slow_ms;    /* fault plugin sleep per message */
    int hangs;      /* hang markers, total */
    int deadline_s; /* consumption must finish within this */
    int broker_down_ms;
    uint64_t seed;
    bool keep;
    const char *build_dir;
    const char *debug; /* librdkafka debug contexts, with khost -v */
} opts;

/* ---- small helpers ---- */

static int64_t mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static int64_t t0_ms;

static void say(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "[chaos %7.2f] ", (double)(mono_ms() - t0_ms) / 1000.0);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static _Noreturn void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("chaos: setup failed: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static char *xasprintf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0)
        die("out of memory");
    va_end(ap);
    return s;
}

static void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size);
    if (!p)
        die("out of memory");
    return p;
}

/* xorshift64*: reproducible from --seed. */
static uint64_t rng_state;
static uint64_t rng(void) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1DULL;
}
static int rng_between(int lo, int hi) { /* inclusive */
    return lo + (int)(rng() % (uint64_t)(hi - lo + 1));
}

static char *read_file(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    char *buf = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&buf, &len);
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        fwrite(chunk, 1, n, mem);
    fclose(f);
    fclose(mem);
    return buf;
}

static int count_in(const char *hay, const char *needle) {
    int n = 0;
    for (const char *p = hay; p && (p = strstr(p, needle)); p += strlen(needle))
        n++;
    return n;
}

/* Sum of the numbers after `field` on the lines that end with `tail`. */
static long sum_on_lines(const char *hay, const char *field, const char *tail) {
    long sum = 0;
    for (const char *line = hay; line && *line;) {
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        size_t tlen = strlen(tail);
        if (len >= tlen && !memcmp(line + len - tlen, tail, tlen)) {
            const char *f = strstr(line, field);
            if (f && f < line + len)
                sum += atol(f + strlen(field));
        }
        line = end ? end + 1 : NULL;
    }
    return sum;
}

/* State letter of a process from /proc/PID/stat, 0 when gone; *ppid. */
static char proc_state(pid_t pid, pid_t *ppid) {
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    char *paren = strrchr(buf, ')');
    if (!paren || paren[1] != ' ')
        return 0;
    if (ppid)
        *ppid = (pid_t)atoi(paren + 4);
    return paren[2];
}

static bool pid_running(pid_t pid) {
    char s = proc_state(pid, NULL);
    return s && s != 'Z' && s != 'X';
}

static bool is_khost_worker(pid_t pid) {
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/%d/cmdline", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return false;
    buf[n] = '\0';
    /* The worker executable sets its title to "khost-worker PIPELINE/N"
     * (argv[0] "khost-worker"); `khost worker`, the fallback, has argv
     * "khost\0[-v\0]worker\0...". Matching only the second missed every
     * worker since khost-worker exists: no worker was killed. */
    char first[256];
    snprintf(first, sizeof first, "%s", buf);
    first[strcspn(first, " ")] = '\0'; /* the title is one string */
    const char *base = strrchr(first, '/') ? strrchr(first, '/') + 1 : first;
    if (!strcmp(base, "khost-worker"))
        return true;
    for (ssize_t i = 0; i < n; i += (ssize_t)strlen(buf + i) + 1)
        if (i > 0 && !strcmp(buf + i, "worker"))
            return true;
    return false;
}

/* Live worker processes whose parent is one of `parents`. */
static int find_workers(const pid_t *parents, int n_parents, pid_t *out,
                        int max) {
    DIR *d = opendir("/proc");
    if (!d)
        return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < max) {
        if (e->d_name[0] < '1' || e->d_name[0] > '9')
            continue;
        pid_t pid = (pid_t)atoi(e->d_name), ppid = 0;
        char st = proc_state(pid, &ppid);
        if (!st || st == 'Z' || st == 'X')
            continue;
        for (int i = 0; i < n_parents; i++)
            if (parents[i] > 0 && ppid == parents[i] && is_khost_worker(pid))
                out[n++] = pid;
    }
    closedir(d);
    return n;
}

/* ---- the mock cluster and the data set ---- */

typedef struct dataset {
    int parts;    /* per topic */
    int per_part; /* messages per partition */
    int total;
    /* hang markers, as (topic, partition, index) */
    int n_marks;
    int (*marks)[3];
} dataset;

static bool is_marked(const dataset *ds, int t, int p, int i) {
    for (int k = 0; k < ds->n_marks; k++)
        if (ds->marks[k][0] == t && ds->marks[k][1] == p &&
            ds->marks[k][2] == i)
            return true;
    return false;
}

static void produce(kh_mock *mock, const dataset *ds) {
    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    const char *kv[][2] = {
        {"bootstrap.servers", mock_cluster_bootstraps(mock)},
        {"linger.ms", "20"},
        {"batch.num.messages", "10000"},
        {"queue.buffering.max.messages", "1000000"},
        {"queue.buffering.max.kbytes", "1048576"},
        {"log_level", "3"},
    };
    for (size_t i = 0; i < sizeof kv / sizeof kv[0]; i++)
        if (rd_kafka_conf_set(conf, kv[i][0], kv[i][1], errstr,
                              sizeof errstr) != RD_KAFKA_CONF_OK)
            die("producer config %s: %s", kv[i][0], errstr);
    rd_kafka_t *rk =
        rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (!rk)
        die("producer: %s", errstr);
    for (int i = 0; i < ds->per_part; i++)
        for (int t = 0; t < N_TOPICS; t++)
            for (int p = 0; p < ds->parts; p++) {
                char key[32], value[64];
                snprintf(key, sizeof key, "k%d-%d", p, i);
                snprintf(value, sizeof value, "v %d %d%s", p, i,
                         is_marked(ds, t, p, i) ? " " HANG_MARKER : "");
                rd_kafka_resp_err_t e;
                while ((e = rd_kafka_producev(
                            rk, RD_KAFKA_V_TOPIC(topic_name[t]),
                            RD_KAFKA_V_PARTITION(p),
                            RD_KAFKA_V_KEY(key, strlen(key)),
                            RD_KAFKA_V_VALUE(value, strlen(value)),
                            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                            RD_KAFKA_V_END)) == RD_KAFKA_RESP_ERR__QUEUE_FULL)
                    rd_kafka_poll(rk, 10);
                if (e)
                    die("produce: %s", rd_kafka_err2str(e));
                rd_kafka_poll(rk, 0);
            }
    if (rd_kafka_flush(rk, 120000) != 0)
        die("producer flush timed out");
    /* The mock keeps about 5 MB per partition: prove nothing was dropped
     * before the hosts start, or "lost" would mean nothing. */
    for (int t = 0; t < N_TOPICS; t++)
        for (int p = 0; p < ds->parts; p++) {
            int64_t lo = -1, hi = -1;
            rd_kafka_resp_err_t e = rd_kafka_query_watermark_offsets(
                rk, topic_name[t], p, &lo, &hi, 10000);
            if (e)
                die("watermarks of %s[%d]: %s", topic_name[t], p,
                    rd_kafka_err2str(e));
            if (lo != 0 || hi != ds->per_part)
                die("%s[%d] holds offsets %" PRId64 "..%" PRId64
                    ", expected 0..%d (mock retention exceeded? use more "
                    "partitions)",
                    topic_name[t], p, lo, hi, ds->per_part);
        }
    rd_kafka_destroy(rk);
}

/* ---- the ledger: what the record files say was handled ---- */

typedef struct rec_file {
    char *path;
    int topic;
    long pos; /* bytes consumed: whole lines only */
} rec_file;

typedef struct ledger {
    pthread_mutex_t mu;
    int parts, per_part;
    /* per (topic, partition, offset): handler calls with attempt 1, and
     * with attempt >= 2 */
    uint16_t *n1, *n2;
    int64_t max_off[N_TOPICS][MAX_PARTS]; /* highest offset handled */
    int64_t committed[N_TOPICS][MAX_PARTS];
    long distinct, calls, bad_lines;
    long calls_topic[N_TOPICS];
    /* For the duplicate bound: the most messages handled but not
     * committed at once, per group, and the most calls between two
     * samples (the peak may fall between samples). */
    long max_gap[N_TOPICS], max_step[N_TOPICS];
    int commit_queries, commit_query_failures;
    rd_kafka_resp_err_t last_query_error;
    rec_file files[MAX_HOSTS * N_TOPICS];
    int n_files;
} ledger;

static size_t lidx(const ledger *l, int t, int p, int64_t o) {
    return ((size_t)t * (size_t)l->parts + (size_t)p) * (size_t)l->per_part +
           (size_t)o;
}

static long json_field(const char *line, const char *name) {
    const char *p = strstr(line, name);
    return p ? strtol(p + strlen(name), NULL, 10) : -1;
}

/* Read what was appended to the record files since the last call. */
static void ledger_read_locked(ledger *l) {
    char *line = NULL;
    size_t cap = 0;
    for (int i = 0; i < l->n_files; i++) {
        rec_file *rf = &l->files[i];
        FILE *f = fopen(rf->path, "r");
        if (!f)
            continue;
        if (fseek(f, rf->pos, SEEK_SET) != 0) {
            fclose(f);
            continue;
        }
        ssize_t n;
        while ((n = getline(&line, &cap, f)) > 0) {
            if (line[n - 1] != '\n')
                break; /* still being written */
            rf->pos += n;
            long p = json_field(line, "\"partition\":");
            long o = json_field(line, "\"offset\":");
            long a = json_field(line, "\"attempt\":");
            int t = rf->topic;
            if (p < 0 || p >= l->parts || o < 0 || o >= l->per_part || a < 1) {
                l->bad_lines++;
                continue;
            }
            size_t k = lidx(l, t, (int)p, o);
            if (l->n1[k] + l->n2[k] == 0)
                l->distinct++;
            if (a == 1)
                l->n1[k]++;
            else
                l->n2[k]++;
            l->calls++;
            l->calls_topic[t]++;
            if (o > l->max_off[t][p])
                l->max_off[t][p] = o;
        }
        fclose(f);
    }
    free(line);
}

static void ledger_init(ledger *l, int parts, int per_part) {
    memset(l, 0, sizeof *l);
    pthread_mutex_init(&l->mu, NULL);
    l->parts = parts;
    l->per_part = per_part;
    size_t n = (size_t)N_TOPICS * (size_t)parts * (size_t)per_part;
    l->n1 = xcalloc(n, sizeof *l->n1);
    l->n2 = xcalloc(n, sizeof *l->n2);
    for (int t = 0; t < N_TOPICS; t++)
        for (int p = 0; p < MAX_PARTS; p++) {
            l->max_off[t][p] = -1;
            l->committed[t][p] = -1;
        }
}

static void ledger_free(ledger *l) {
    for (int i = 0; i < l->n_files; i++)
        free(l->files[i].path);
    free(l->n1);
    free(l->n2);
    pthread_mutex_destroy(&l->mu);
}

static void ledger_add_file(ledger *l, const char *path, int topic) {
    pthread_mutex_lock(&l->mu);
    rec_file *rf = &l->files[l->n_files++];
    rf->path = strdup(path);
    rf->topic = topic;
    rf->pos = 0;
    pthread_mutex_unlock(&l->mu);
}

/* ---- the sampler thread: ledger and committed offsets ---- */

typedef struct sampler {
    ledger *l;
    const char *bootstraps;
    rd_kafka_t *rk[N_TOPICS]; /* one per group, never subscribed */
    volatile bool stop;
    pthread_t thread;
} sampler;

static rd_kafka_t *group_reader(const char *bootstraps, const char *group) {
    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    const char *kv[][2] = {
        {"bootstrap.servers", bootstraps},
        {"group.id", group},
        {"enable.auto.commit", "false"},
        {"socket.timeout.ms", "10000"},
        {"log_level", "0"},
    };
    for (size_t i = 0; i < sizeof kv / sizeof kv[0]; i++)
        if (rd_kafka_conf_set(conf, kv[i][0], kv[i][1], errstr,
                              sizeof errstr) != RD_KAFKA_CONF_OK)
            die("reader config %s: %s", kv[i][0], errstr);
    rd_kafka_t *rk =
        rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
    if (!rk)
        die("reader: %s", errstr);
    return rk;
}

/* Committed offsets of group t; a failed query keeps the previous values. */
static void sample_committed(sampler *s, int t) {
    ledger *l = s->l;
    rd_kafka_topic_partition_list_t *list =
        rd_kafka_topic_partition_list_new(l->parts);
    for (int p = 0; p < l->parts; p++)
        rd_kafka_topic_partition_list_add(list, topic_name[t], p);
    rd_kafka_resp_err_t e = rd_kafka_committed(s->rk[t], list, 1000);
    pthread_mutex_lock(&l->mu);
    l->commit_queries++;
    for (int i = 0; !e && i < list->cnt; i++)
        if (list->elems[i].err)
            e = list->elems[i].err;
    if (e) {
        l->commit_query_failures++;
        l->last_query_error = e;
    }
    /* The latest answer, not the highest: a retried old OffsetCommit can
     * move a committed offset back, and a rewind replays from there. */
    for (int i = 0; i < list->cnt; i++) {
        const rd_kafka_topic_partition_t *tp = &list->elems[i];
        if (!tp->err && tp->offset >= 0)
            l->committed[t][tp->partition] = tp->offset;
    }
    pthread_mutex_unlock(&l->mu);
    rd_kafka_topic_partition_list_destroy(list);
}

static void *sampler_main(void *arg) {
    sampler *s = arg;
    ledger *l = s->l;
    long last_calls[N_TOPICS] = {0};
    while (!s->stop) {
        /* Committed first, then the records: a commit can only cover
         * messages handled before it, so this order never underestimates
         * the gap. */
        for (int t = 0; t < N_TOPICS; t++)
            sample_committed(s, t);
        pthread_mutex_lock(&l->mu);
        ledger_read_locked(l);
        for (int t = 0; t < N_TOPICS; t++) {
            long gap = 0;
            for (int p = 0; p < l->parts; p++) {
                int64_t c = l->committed[t][p] < 0 ? 0 : l->committed[t][p];
                if (l->max_off[t][p] + 1 > c)
                    gap += (long)(l->max_off[t][p] + 1 - c);
            }
            if (gap > l->max_gap[t])
                l->max_gap[t] = gap;
            long step = l->calls_topic[t] - last_calls[t];
            if (step > l->max_step[t])
                l->max_step[t] = step;
            last_calls[t] = l->calls_topic[t];
        }
        pthread_mutex_unlock(&l->mu);
        sleep_ms(100);
    }
    return NULL;
}

static void sampler_start(sampler *s, ledger *l, const char *bootstraps) {
    memset(s, 0, sizeof *s);
    s->l = l;
    s->bootstraps = bootstraps;
    for (int t = 0; t < N_TOPICS; t++)
        s->rk[t] = group_reader(bootstraps, group_name[t]);
    if (pthread_create(&s->thread, NULL, sampler_main, s) != 0)
        die("cannot start the sampler thread");
}

static void sampler_stop(sampler *s) {
    s->stop = true;
    pthread_join(s->thread, NULL);
}

static void sampler_free(sampler *s) {
    for (int t = 0; t < N_TOPICS; t++)
        rd_kafka_destroy(s->rk[t]);
}

/* ---- khost processes ---- */

typedef struct host {
    char name[8];
    pid_t pid;       /* 0 once reaped */
    bool killed;     /* by us, deliberately */
    bool crashed;    /* died by itself */
    int exit_status; /* exit code, or 128+signal */
    int stop_status; /* exit status after our SIGTERM, -1 if none */
    char *log_path;
} host;

static char *host_ini(const opts *o, const char *dir, const char *name,
                      const char *bootstraps) {
    char *pipes = xasprintf("%s", "");
    for (int t = 0; t < N_TOPICS; t++) {
        char *next = xasprintf(
            "%s"
            "[pipeline.%s]\n"
            "topics = %s\n"
            "group = %s\n"
            "plugin = %s/plugins/fault.so\n"
            "workers = %d\n"
            "max_restarts = 10000\n"
            "max_seconds = 60\n"
            "handler_timeout_ms = 1000\n"
            "poison_after = 1000\n"
            "shutdown_timeout_ms = 5000\n"
            "[pipeline.%s.config]\n"
            "record = %s/%s-%s.jsonl\n"
            "hang_on = " HANG_MARKER "\n"
            "misbehave_attempts = 3\n"
            "slow_ms = %d\n",
            pipes, pipe_name[t], topic_name[t], group_name[t], o->build_dir,
            o->workers, pipe_name[t], dir, name, pipe_name[t], o->slow_ms);
        free(pipes);
        pipes = next;
    }
    char *debug = o->debug ? xasprintf("debug = %s\n", o->debug) : NULL;
    char *ini =
        xasprintf("[host]\nbrokers = %s\n"
                  "[kafka]\n"
                  "session.timeout.ms = 4500\n"
                  "heartbeat.interval.ms = 300\n"
                  "auto.commit.interval.ms = 500\n"
                  "socket.timeout.ms = %d\n"
                  "%s%s",
                  bootstraps, SOCKET_TIMEOUT_MS, debug ? debug : "", pipes);
    free(debug);
    free(pipes);
    return ini;
}

static void host_start(host *h, const opts *o, const char *dir,
                       const char *name, const char *bootstraps, ledger *l) {
    memset(h, 0, sizeof *h);
    snprintf(h->name, sizeof h->name, "%s", name);
    h->stop_status = -1;
    char *cfg = xasprintf("%s/%s.ini", dir, name);
    char *ini = host_ini(o, dir, name, bootstraps);
    FILE *f = fopen(cfg, "w");
    if (!f || fputs(ini, f) < 0 || fclose(f) != 0)
        die("cannot write %s: %s", cfg, strerror(errno));
    free(ini);
    h->log_path = xasprintf("%s/%s.log", dir, name);
    for (int t = 0; t < N_TOPICS; t++) {
        char *rec = xasprintf("%s/%s-%s.jsonl", dir, name, pipe_name[t]);
        ledger_add_file(l, rec, t);
        free(rec);
    }
    char *khost = xasprintf("%s/khost", o->build_dir);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0)
        die("fork: %s", strerror(errno));
    if (pid == 0) {
        /* A host outlives no driver: ctest's timeout kill takes it along. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        int fd = open(h->log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        if (o->debug)
            execl(khost, "khost", "-v", "run", "-c", cfg, (char *)NULL);
        else
            execl(khost, "khost", "run", "-c", cfg, (char *)NULL);
        _exit(127);
    }
    free(khost);
    free(cfg);
    h->pid = pid;
    say("host %s started (pid %d)", name, (int)pid);
}

static int wait_status_code(int status) {
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* Reap a host that exited on its own: that is a host crash. */
static void host_check(host *h) {
    if (!h->pid)
        return;
    int status;
    if (waitpid(h->pid, &status, WNOHANG) == h->pid) {
        h->crashed = true;
        h->exit_status = wait_status_code(status);
        h->pid = 0;
        say("HOST %s DIED BY ITSELF (exit status %d)", h->name, h->exit_status);
    }
}

static void host_kill9(host *h) {
    kill(h->pid, SIGKILL);
    int status;
    waitpid(h->pid, &status, 0);
    h->killed = true;
    h->exit_status = wait_status_code(status);
    h->pid = 0;
}

/* SIGTERM to every running host at once, then collect the statuses. */
static void hosts_stop(host *hs, int n, int timeout_ms) {
    for (int i = 0; i < n; i++)
        if (hs[i].pid)
            kill(hs[i].pid, SIGTERM);
    int64_t deadline = mono_ms() + timeout_ms;
    for (int i = 0; i < n; i++) {
        host *h = &hs[i];
        while (h->pid) {
            int status;
            if (waitpid(h->pid, &status, WNOHANG) == h->pid) {
                h->stop_status = wait_status_code(status);
                h->pid = 0;
            } else if (mono_ms() > deadline) {
                say("host %s did not stop within %d ms; SIGKILL", h->name,
                    timeout_ms);
                kill(h->pid, SIGKILL);
                waitpid(h->pid, &status, 0);
                h->stop_status = -1;
                h->pid = 0;
            } else {
                sleep_ms(20);
            }
        }
    }
}

/* ---- chaos ---- */

typedef struct chaos_stats {
    int worker_kills;
    int host_kills;
    int broker_cycles;
    int commit_errors; /* injected OffsetCommit error responses */
    int fetch_errors;  /* injected Fetch error responses */
    int orphan_workers;
} chaos_stats;

static const rd_kafka_resp_err_t commit_errs[] = {
    RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
    RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE,
    RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
    RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS,
};
static const rd_kafka_resp_err_t fetch_errs[] = {
    RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
    RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
    RD_KAFKA_RESP_ERR_KAFKA_STORAGE_ERROR,
    RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT, /* surfaces as a consume error */
};

/* Queue `n` error responses for the next requests of `api_key`, from any
 * client to any broker. */
static void inject_errors(kh_mock *mock, int16_t api_key, int n,
                          const rd_kafka_resp_err_t *errs, size_t n_errs) {
    rd_kafka_resp_err_t *list = xcalloc((size_t)n, sizeof *list);
    for (int i = 0; i < n; i++)
        list[i] = errs[(size_t)i % n_errs];
    rd_kafka_mock_push_request_errors_array(mock->cluster, api_key, (size_t)n,
                                            list);
    free(list);
}

enum event_kind {
    EV_COMMIT_ERRORS,
    EV_FETCH_ERRORS,
    EV_BROKER_DOWN,
    EV_KILL_HOST,
    EV_START_REPLACEMENT,
};

typedef struct event {
    double at; /* fraction of the messages handled */
    enum event_kind kind;
    bool done;
} event;

/* ---- log facts ---- */

typedef struct log_facts {
    int deaths;         /* "crashed:" lines: kills, hangs */
    long crash_unacked; /* messages in flight, unacked, at those deaths */
    int hang_kills;     /* of those, by handler_timeout_ms */
    int assignments[N_TOPICS];
    int failed_pipelines;
    int consume_errors;
    int commit_failures;
} log_facts;

static void read_log_facts(host *hs, int n, log_facts *f) {
    memset(f, 0, sizeof *f);
    for (int i = 0; i < n; i++) {
        char *s = read_file(hs[i].log_path);
        if (!s)
            continue;
        f->deaths += count_in(s, " crashed: ");
        /* Each death rewinds its partitions; the host logs how many
         * unacked messages each rewind gives up on. Only those can be
         * handled twice because of the death. */
        f->crash_unacked += sum_on_lines(s, ", unacked=", "): worker crashed");
        f->hang_kills += count_in(s, "(hang) while handling");
        for (int t = 0; t < N_TOPICS; t++) {
            char needle[64];
            snprintf(needle, sizeof needle, "pipeline=%s rebalance #",
                     pipe_name[t]);
            f->assignments[t] += count_in(s, needle);
        }
        f->failed_pipelines += count_in(s, " FAILED: ");
        f->consume_errors += count_in(s, "consume error");
        f->commit_failures += count_in(s, "commit failed");
        free(s);
    }
}

/* Messages in a topic (the dead-letter topics must stay empty). */
static int64_t topic_messages(rd_kafka_t *rk, const char *topic) {
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    const struct rd_kafka_metadata *md = NULL;
    int64_t total = 0;
    if (rd_kafka_metadata(rk, 0, rkt, &md, 5000) == 0 && md->topic_cnt == 1 &&
        !md->topics[0].err) {
        for (int p = 0; p < md->topics[0].partition_cnt; p++) {
            int64_t lo = 0, hi = 0;
            if (!rd_kafka_query_watermark_offsets(rk, topic, p, &lo, &hi, 5000))
                total += hi - lo;
        }
    }
    if (md)
        rd_kafka_metadata_destroy(md);
    rd_kafka_topic_destroy(rkt);
    return total;
}

/* " chaos-a[2]=4970 ..." for every partition not committed at `end`. */
static void describe_uncommitted(ledger *l, int end, char *buf, size_t len) {
    size_t used = 0;
    buf[0] = '\0';
    pthread_mutex_lock(&l->mu);
    for (int t = 0; t < N_TOPICS; t++)
        for (int p = 0; p < l->parts; p++) {
            if (l->committed[t][p] == end)
                continue;
            int n = snprintf(buf + used, len - used, " %s[%d]=%" PRId64,
                             topic_name[t], p, l->committed[t][p]);
            if (n < 0 || (size_t)n >= len - used)
                goto out;
            used += (size_t)n;
        }
out:
    pthread_mutex_unlock(&l->mu);
}

/* ---- main ---- */

static void usage(FILE *out) {
    fputs("usage: chaos [--short] [--messages N] [--partitions N] [--seed S]\n"
          "             [--workers N] [--slow-ms N] [--hangs N]\n"
          "             [--deadline SECONDS] [--build-dir DIR] [--keep]\n"
          "             [--debug LIBRDKAFKA_CONTEXTS]\n"
          "\n"
          "Runs two khost hosts against an in-process mock cluster while\n"
          "killing workers, hanging handlers, taking brokers down, "
          "injecting\n"
          "OffsetCommit/Fetch errors and killing one host; prints the "
          "result.\n"
          "Default: 500000 messages over 16 partitions. --short: 40000 over "
          "8.\n"
          "Exit status: 0 pass, 1 a check failed, 2 setup failed.\n",
          out);
}

static void parse_opts(int argc, char **argv, opts *o) {
    static const struct option lo[] = {
        {"short", no_argument, NULL, 's'},
        {"messages", required_argument, NULL, 'm'},
        {"partitions", required_argument, NULL, 'p'},
        {"seed", required_argument, NULL, 'S'},
        {"workers", required_argument, NULL, 'w'},
        {"slow-ms", required_argument, NULL, 'l'},
        {"hangs", required_argument, NULL, 'H'},
        {"deadline", required_argument, NULL, 'd'},
        {"build-dir", required_argument, NULL, 'b'},
        {"keep", no_argument, NULL, 'k'},
        {"debug", required_argument, NULL, 'D'},
        {"help", no_argument, NULL, 'h'},
        {0, 0, 0, 0},
    };
    /* Two passes: --short sets the defaults the other options override. */
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--short"))
            o->is_short = true;
    if (o->is_short) {
        o->messages = 40000;
        o->partitions = 8;
        o->workers = 2;
        o->slow_ms = 1;
        o->hangs = 4;
        o->deadline_s = 150;
        o->broker_down_ms = 2000;
    } else {
        o->messages = 500000;
        o->partitions = 16;
        o->workers = 2;
        o->slow_ms = 0;
        o->hangs = 24;
        o->deadline_s = 900;
        o->broker_down_ms = 2500;
    }
    o->seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    o->build_dir = KHOST_BUILD_DIR;
    int c;
    while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        switch (c) {
        case 's':
            break;
        case 'm':
            o->messages = atoi(optarg);
            break;
        case 'p':
            o->partitions = atoi(optarg);
            break;
        case 'S':
            o->seed = strtoull(optarg, NULL, 0);
            break;
        case 'w':
            o->workers = atoi(optarg);
            break;
        case 'l':
            o->slow_ms = atoi(optarg);
            break;
        case 'H':
            o->hangs = atoi(optarg);
            break;
        case 'd':
            o->deadline_s = atoi(optarg);
            break;
        case 'b':
            o->build_dir = optarg;
            break;
        case 'k':
            o->keep = true;
            break;
        case 'D':
            o->debug = optarg;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        default:
            usage(stderr);
            exit(2);
        }
    }
    if (optind < argc || o->partitions < 2 || o->partitions % 2 ||
        o->partitions / 2 > MAX_PARTS || o->messages < o->partitions ||
        o->messages % o->partitions || o->workers < 1 || o->slow_ms < 0 ||
        o->hangs < 0 || o->deadline_s < 10) {
        fprintf(stderr,
                "chaos: --partitions must be even (2..%d) and divide "
                "--messages; see --help\n",
                2 * MAX_PARTS);
        exit(2);
    }
    if (o->messages / o->partitions > 40000)
        die("%d messages per partition: the mock keeps only ~45,000 small "
            "messages per partition",
            o->messages / o->partitions);
}

int main(int argc, char **argv) {
    opts o = {0};
    parse_opts(argc, argv, &o);
    t0_ms = mono_ms();
    rng_state = o.seed ? o.seed : 1;
    signal(SIGPIPE, SIG_IGN);

    char dir[] = "/tmp/khost-chaos-XXXXXX";
    if (!mkdtemp(dir))
        die("mkdtemp: %s", strerror(errno));
    say("%s run, seed %" PRIu64 ", work dir %s", o.is_short ? "short" : "full",
        o.seed, dir);

    dataset ds = {0};
    ds.parts = o.partitions / N_TOPICS;
    ds.per_part = o.messages / o.partitions;
    ds.total = o.messages;
    ds.n_marks = o.hangs;
    ds.marks = xcalloc((size_t)o.hangs + 1, sizeof *ds.marks);
    for (int k = 0; k < o.hangs; k++) {
        ds.marks[k][0] = k % N_TOPICS;
        ds.marks[k][1] = rng_between(0, ds.parts - 1);
        /* Not in the first 5%: hangs should meet the rest of the chaos. */
        ds.marks[k][2] = rng_between(ds.per_part / 20, ds.per_part - 1);
    }

    kh_mock mock;
    char err[512];
    if (mock_cluster_start(&mock, N_BROKERS, err, sizeof err) != 0)
        die("%s", err);
    const char *boot = mock_cluster_bootstraps(&mock);
    for (int t = 0; t < N_TOPICS; t++)
        if (mock_cluster_create_topic(&mock, topic_name[t], ds.parts, err,
                                      sizeof err) != 0)
            die("%s", err);
    int64_t t_produce = mono_ms();
    produce(&mock, &ds);
    t_produce = mono_ms() - t_produce;
    say("produced %d messages to %s and %s (%d partitions each, %d per "
        "partition) in %.1f s; %d hang markers",
        ds.total, topic_name[0], topic_name[1], ds.parts, ds.per_part,
        (double)t_produce / 1000.0, ds.n_marks);

    ledger l;
    ledger_init(&l, ds.parts, ds.per_part);
    host hosts[MAX_HOSTS];
    memset(hosts, 0, sizeof hosts);
    int n_hosts = 2;
    int64_t t_consume = mono_ms();
    host_start(&hosts[0], &o, dir, "a", boot, &l);
    host_start(&hosts[1], &o, dir, "b", boot, &l);
    sampler smp;
    sampler_start(&smp, &l, boot);

    event events[] = {
        {0.08, EV_COMMIT_ERRORS, false},     {0.16, EV_BROKER_DOWN, false},
        {0.24, EV_FETCH_ERRORS, false},      {0.32, EV_KILL_HOST, false},
        {0.55, EV_START_REPLACEMENT, false}, {0.62, EV_COMMIT_ERRORS, false},
        {0.70, EV_BROKER_DOWN, false},       {0.78, EV_FETCH_ERRORS, false},
    };
    const size_t n_events = sizeof events / sizeof events[0];
    chaos_stats cs = {0};
    int64_t deadline = mono_ms() + (int64_t)o.deadline_s * 1000;
    int64_t next_kill = 0, broker_up_at = 0, last_report = mono_ms();
    int down_broker = 0;
    long distinct = 0;
    bool started = false;

    while (mono_ms() < deadline) {
        pthread_mutex_lock(&l.mu);
        distinct = l.distinct;
        pthread_mutex_unlock(&l.mu);
        if (distinct >= ds.total)
            break;
        for (int i = 0; i < n_hosts; i++)
            host_check(&hosts[i]);
        int64_t now = mono_ms();
        if (!started && distinct > 0) {
            started = true;
            say("consumption started; chaos begins");
        }
        if (started && now >= next_kill) {
            pid_t parents[MAX_HOSTS], workers[256];
            for (int i = 0; i < n_hosts; i++)
                parents[i] = hosts[i].pid;
            int n = find_workers(parents, n_hosts, workers, 256);
            if (n > 0 && kill(workers[rng() % (uint64_t)n], SIGKILL) == 0)
                cs.worker_kills++;
            next_kill = now + rng_between(100, 300);
        }
        if (broker_up_at && now >= broker_up_at) {
            rd_kafka_mock_broker_set_up(mock.cluster, down_broker);
            say("broker %d up", down_broker);
            broker_up_at = 0;
        }
        double f = (double)distinct / ds.total;
        for (size_t e = 0; e < n_events; e++) {
            event *ev = &events[e];
            if (ev->done || f < ev->at)
                continue;
            if (ev->kind == EV_BROKER_DOWN && broker_up_at)
                continue; /* one broker down at a time */
            ev->done = true;
            switch (ev->kind) {
            case EV_COMMIT_ERRORS: {
                int n = 12;
                inject_errors(&mock, 8 /* OffsetCommit */, n, commit_errs,
                              sizeof commit_errs / sizeof commit_errs[0]);
                cs.commit_errors += n;
                say("injected %d OffsetCommit errors", n);
                break;
            }
            case EV_FETCH_ERRORS: {
                int n = 12;
                inject_errors(&mock, 1 /* Fetch */, n, fetch_errs,
                              sizeof fetch_errs / sizeof fetch_errs[0]);
                cs.fetch_errors += n;
                say("injected %d Fetch errors", n);
                break;
            }
            case EV_BROKER_DOWN:
                down_broker = rng_between(1, N_BROKERS);
                rd_kafka_mock_broker_set_down(mock.cluster, down_broker);
                broker_up_at = now + o.broker_down_ms;
                cs.broker_cycles++;
                say("broker %d down for %d ms", down_broker, o.broker_down_ms);
                break;
            case EV_KILL_HOST: {
                host *victim = &hosts[0];
                if (!victim->pid || !hosts[1].pid) {
                    say("host kill skipped: a host is not running");
                    break;
                }
                pid_t ws[64];
                int nw = find_workers(&victim->pid, 1, ws, 64);
                host_kill9(victim);
                cs.host_kills++;
                say("host %s killed with SIGKILL (%d workers); host %s "
                    "carries on",
                    victim->name, nw, hosts[1].name);
                /* Its workers must die with it (PR_SET_PDEATHSIG). */
                sleep_ms(500);
                for (int i = 0; i < nw; i++)
                    if (pid_running(ws[i])) {
                        cs.orphan_workers++;
                        say("worker pid %d outlived its host", (int)ws[i]);
                        kill(ws[i], SIGKILL);
                    }
                break;
            }
            case EV_START_REPLACEMENT:
                host_start(&hosts[2], &o, dir, "a2", boot, &l);
                n_hosts = 3;
                break;
            }
        }
        if (now - last_report >= 5000) {
            last_report = now;
            pthread_mutex_lock(&l.mu);
            say("handled %ld of %d distinct (%ld calls), %d worker kills",
                l.distinct, ds.total, l.calls, cs.worker_kills);
            pthread_mutex_unlock(&l.mu);
        }
        sleep_ms(20);
    }
    if (broker_up_at)
        rd_kafka_mock_broker_set_up(mock.cluster, down_broker);
    t_consume = mono_ms() - t_consume;
    bool complete = distinct >= ds.total;
    say(complete ? "every message handled; chaos stops"
                 : "DEADLINE: not every message was handled");
    int skipped_events = 0;
    for (size_t e = 0; e < n_events; e++)
        skipped_events += !events[e].done;

    /* Everything handled must also get committed before the stop. */
    int64_t t_stop = mono_ms();
    bool all_committed = false;
    int64_t commit_deadline = mono_ms() + (complete ? 60000 : 5000);
    while (!all_committed && mono_ms() < commit_deadline) {
        for (int i = 0; i < n_hosts; i++)
            host_check(&hosts[i]);
        pthread_mutex_lock(&l.mu);
        all_committed = true;
        for (int t = 0; t < N_TOPICS; t++)
            for (int p = 0; p < ds.parts; p++)
                all_committed &= l.committed[t][p] == ds.per_part;
        pthread_mutex_unlock(&l.mu);
        if (!all_committed)
            sleep_ms(100);
        if (!all_committed && mono_ms() - last_report >= 5000) {
            last_report = mono_ms();
            char behind[512];
            describe_uncommitted(&l, ds.per_part, behind, sizeof behind);
            say("waiting for commits:%s", behind);
        }
    }
    for (int i = 0; i < n_hosts; i++)
        host_check(&hosts[i]);
    hosts_stop(hosts, n_hosts, 30000);
    t_stop = mono_ms() - t_stop;
    sampler_stop(&smp);
    pthread_mutex_lock(&l.mu);
    ledger_read_locked(&l);
    pthread_mutex_unlock(&l.mu);

    int64_t dlq = 0;
    for (int t = 0; t < N_TOPICS; t++) {
        char dlq_topic[64];
        snprintf(dlq_topic, sizeof dlq_topic, "%s.dlq", topic_name[t]);
        dlq += topic_messages(smp.rk[0], dlq_topic);
    }
    sampler_free(&smp);

    /* ---- the verdict ---- */
    log_facts lf;
    read_log_facts(hosts, n_hosts, &lf);
    long dup_worker = 0, dup_rewind = 0;
    for (int t = 0; t < N_TOPICS; t++)
        for (int p = 0; p < ds.parts; p++)
            for (int off = 0; off < ds.per_part; off++) {
                size_t k = lidx(&l, t, p, off);
                int n1 = l.n1[k], n2 = l.n2[k];
                /* A fresh assignment starts every ledger at attempt 1; a
                 * worker death replays its in-flight messages with
                 * attempt + 1. */
                dup_rewind += n1 > 1 ? n1 - 1 : 0;
                dup_worker += n1 > 0 ? n2 : (n2 > 0 ? n2 - 1 : 0);
            }
    long lost = ds.total - l.distinct;
    long dups = l.calls - l.distinct;
    long bound_worker = lf.crash_unacked;
    long bound_rewind = 0;
    long rewinds[N_TOPICS];
    for (int t = 0; t < N_TOPICS; t++) {
        rewinds[t] = lf.assignments[t] > 1 ? lf.assignments[t] - 1 : 0;
        bound_rewind += rewinds[t] * (l.max_gap[t] + l.max_step[t]);
    }
    long bound = bound_worker + bound_rewind;
    int host_crashes = 0, unclean_stops = 0;
    for (int i = 0; i < n_hosts; i++) {
        host *h = &hosts[i];
        if (h->killed)
            continue;
        /* Dying by a signal of its own (SIGABRT, SIGSEGV) after our
         * SIGTERM is a crash too; a non-zero exit or a hang is not
         * clean. */
        if (h->crashed || h->stop_status >= 128)
            host_crashes++;
        else if (h->stop_status != 0)
            unclean_stops++;
    }
    int64_t total_ms = mono_ms() - t0_ms;

    bool pass = lost == 0 && host_crashes == 0 && dups <= bound &&
                dup_worker <= bound_worker && dup_rewind <= bound_rewind &&
                bound_worker <= (long)KH_MAX_INFLIGHT * lf.deaths &&
                unclean_stops == 0 && all_committed && l.bad_lines == 0 &&
                dlq == 0 && lf.failed_pipelines == 0 &&
                cs.orphan_workers == 0 && skipped_events == 0 &&
                cs.host_kills == 1 && cs.worker_kills > 0;

    printf("\n== khost chaos result (%s, seed %" PRIu64 ") ==\n",
           o.is_short ? "short" : "full", o.seed);
    printf("messages produced:  %d (%d topics x %d partitions x %d)\n",
           ds.total, N_TOPICS, ds.parts, ds.per_part);
    printf("handled (distinct): %ld\n", l.distinct);
    printf("handler calls:      %ld\n", l.calls);
    printf("lost:               %ld (must be 0)\n", lost);
    printf("duplicated:         %ld (bound %ld, must stay <= bound)\n", dups,
           bound);
    printf("  after worker deaths (attempt >= 2): %ld <= %ld unacked in "
           "flight at the %d deaths (at most %d each)\n",
           dup_worker, bound_worker, lf.deaths, KH_MAX_INFLIGHT);
    printf("  after group rewinds (attempt 1 again): %ld <= %ld\n", dup_rewind,
           bound_rewind);
    for (int t = 0; t < N_TOPICS; t++)
        printf("    group %s: %ld assignments after the first x (%ld max "
               "handled-uncommitted + %ld max calls between samples) = %ld\n",
               group_name[t], rewinds[t], l.max_gap[t], l.max_step[t],
               rewinds[t] * (l.max_gap[t] + l.max_step[t]));
    printf("host crashes:       %d (must be 0)\n", host_crashes);
    printf("time taken:         %.1f s (produce %.1f s, consume under chaos "
           "%.1f s, commit+stop %.1f s)\n",
           (double)total_ms / 1000.0, (double)t_produce / 1000.0,
           (double)t_consume / 1000.0, (double)t_stop / 1000.0);
    printf("chaos:              %d worker kill -9 (every 100-300 ms), %d "
           "hang kills (%d markers), %d broker down/up (%d ms), %d "
           "OffsetCommit + %d Fetch errors injected, %d host kill -9\n",
           cs.worker_kills, lf.hang_kills, ds.n_marks, cs.broker_cycles,
           o.broker_down_ms, cs.commit_errors, cs.fetch_errors, cs.host_kills);
    printf("worker deaths seen: %d (host logs), orphaned workers: %d\n",
           lf.deaths, cs.orphan_workers);
    printf("host logs:          %d consume errors, %d commit failures "
           "logged, %d pipelines FAILED\n",
           lf.consume_errors, lf.commit_failures, lf.failed_pipelines);
    printf("clean stops:       ");
    for (int i = 0; i < n_hosts; i++) {
        putchar(' ');
        if (hosts[i].killed)
            printf("%s killed by us (%d)", hosts[i].name, hosts[i].exit_status);
        else if (hosts[i].crashed)
            printf("%s crashed (%d)", hosts[i].name, hosts[i].exit_status);
        else if (hosts[i].stop_status < 0)
            printf("%s did not stop in 30 s", hosts[i].name);
        else if (hosts[i].stop_status >= 128)
            printf("%s died by signal %d on SIGTERM", hosts[i].name,
                   hosts[i].stop_status - 128);
        else
            printf("%s exit %d", hosts[i].name, hosts[i].stop_status);
    }
    char behind[512];
    describe_uncommitted(&l, ds.per_part, behind, sizeof behind);
    printf("\ncommitted at end:   %s%s\n",
           all_committed ? "every partition at its end offset"
                         : "NOT every partition at its end offset:",
           behind);
    printf("offset queries:     %d, %d failed%s%s\n", l.commit_queries,
           l.commit_query_failures, l.commit_query_failures ? ", last: " : "",
           l.commit_query_failures ? rd_kafka_err2str(l.last_query_error) : "");
    printf("dead-lettered:      %" PRId64 "\n", dlq);
    if (l.bad_lines)
        printf("bad record lines:   %ld\n", l.bad_lines);
    if (skipped_events)
        printf("chaos events not reached: %d\n", skipped_events);
    if (!cs.worker_kills)
        printf("no worker was killed: the run tried nothing it claims\n");
    printf("RESULT: %s\n", pass ? "PASS" : "FAIL");
    fflush(stdout);

    mock_cluster_stop(&mock);
    ledger_free(&l);
    for (int i = 0; i < n_hosts; i++)
        free(hosts[i].log_path);
    free(ds.marks);
    if (pass && !o.keep) {
        char *cmd = xasprintf("rm -rf '%s'", dir);
        if (system(cmd) != 0)
            say("could not remove %s", dir);
        free(cmd);
    } else {
        say("logs and record files kept in %s", dir);
    }
    return pass ? 0 : 1;
}
