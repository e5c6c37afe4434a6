/* harness: mock cluster, khost processes and record-file ledgers. */
#define _GNU_SOURCE
#include "harness.h"

#include "testutil.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int64_t mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t th_now_ms(void) {
    return mono_ms();
}

void th_sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

bool th_pid_running(pid_t pid) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    char *stat = tu_read_file(path, NULL);
    if (!stat)
        return false;
    /* The state follows the ")" that closes the command name. */
    char *paren = strrchr(stat, ')');
    bool running =
        paren && paren[1] == ' ' && paren[2] != 'Z' && paren[2] != 'X';
    free(stat);
    return running;
}

void th_cluster_start(th_cluster *c, int brokers) {
    char err[256];
    cr_assert_eq(mock_cluster_start(&c->mock, brokers, err, sizeof err), 0,
                 "%s", err);
    c->bootstraps = mock_cluster_bootstraps(&c->mock);
}

void th_cluster_stop(th_cluster *c) {
    mock_cluster_stop(&c->mock);
}

void th_create_topic(th_cluster *c, const char *topic, int partitions) {
    char err[256];
    cr_assert_eq(
        mock_cluster_create_topic(&c->mock, topic, partitions, err, sizeof err),
        0, "%s", err);
}

int64_t th_produce(th_cluster *c, const char *topic, int partitions,
                   int per_partition, int marker_part, int marker_index,
                   const char *marker) {
    char errstr[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", c->bootstraps, errstr,
                      sizeof errstr);
    rd_kafka_conf_set(conf, "linger.ms", "5", errstr, sizeof errstr);
    rd_kafka_t *rk =
        rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    cr_assert_not_null(rk, "%s", errstr);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t now = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    for (int i = 0; i < per_partition; i++) {
        for (int p = 0; p < partitions; p++) {
            char key[64], value[256], idx[32];
            snprintf(key, sizeof key, "k%d-%d", p, i);
            snprintf(value, sizeof value, "v %d %d%s%s", p, i,
                     p == marker_part && i == marker_index ? " " : "",
                     p == marker_part && i == marker_index && marker ? marker
                                                                     : "");
            snprintf(idx, sizeof idx, "%d", i);
            rd_kafka_resp_err_t e;
            while ((e = rd_kafka_producev(
                        rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(p),
                        RD_KAFKA_V_KEY(key, strlen(key)),
                        RD_KAFKA_V_VALUE(value, strlen(value)),
                        RD_KAFKA_V_HEADER("idx", idx, (ssize_t)strlen(idx)),
                        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                        RD_KAFKA_V_END)) == RD_KAFKA_RESP_ERR__QUEUE_FULL)
                rd_kafka_poll(rk, 10);
            cr_assert_eq(e, 0, "produce: %s", rd_kafka_err2str(e));
        }
    }
    cr_assert_eq(rd_kafka_flush(rk, 30000), 0, "flush timed out");
    rd_kafka_destroy(rk);
    return now;
}

int64_t th_committed(th_cluster *c, const char *group, const char *topic,
                     int partition) {
    char errstr[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", c->bootstraps, errstr,
                      sizeof errstr);
    rd_kafka_conf_set(conf, "group.id", group, errstr, sizeof errstr);
    rd_kafka_t *rk =
        rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
    cr_assert_not_null(rk, "%s", errstr);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, topic, partition);
    rd_kafka_resp_err_t e = rd_kafka_committed(rk, l, 10000);
    cr_assert_eq(e, 0, "committed: %s", rd_kafka_err2str(e));
    int64_t off = l->elems[0].offset;
    rd_kafka_topic_partition_list_destroy(l);
    rd_kafka_destroy(rk);
    return off < 0 ? -1 : off;
}

bool th_wait_committed(th_cluster *c, const char *group, const char *topic,
                       int parts, int64_t end, int timeout_ms) {
    int64_t deadline = mono_ms() + timeout_ms;
    while (mono_ms() < deadline) {
        int done = 0;
        for (int p = 0; p < parts; p++)
            done += th_committed(c, group, topic, p) == end;
        if (done == parts)
            return true;
        th_sleep_ms(200);
    }
    return false;
}

static char *copy_bytes(const void *p, size_t len) {
    if (!p)
        return NULL;
    char *s = malloc(len + 1);
    memcpy(s, p, len);
    s[len] = '\0';
    return s;
}

th_msg *th_consume_topic(th_cluster *c, const char *topic, size_t *n,
                         int timeout_ms) {
    char errstr[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", c->bootstraps, errstr,
                      sizeof errstr);
    rd_kafka_conf_set(conf, "group.id", "th-reader", errstr, sizeof errstr);
    rd_kafka_conf_set(conf, "enable.partition.eof", "true", errstr,
                      sizeof errstr);
    rd_kafka_conf_set(conf, "enable.auto.commit", "false", errstr,
                      sizeof errstr);
    rd_kafka_t *rk =
        rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
    cr_assert_not_null(rk, "%s", errstr);
    *n = 0;
    th_msg *out = NULL;
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    const struct rd_kafka_metadata *md;
    if (rd_kafka_metadata(rk, 0, rkt, &md, 5000) != 0 || md->topic_cnt != 1 ||
        md->topics[0].err) {
        /* No such topic: nothing was written to it. */
        if (md)
            rd_kafka_metadata_destroy(md);
        rd_kafka_topic_destroy(rkt);
        rd_kafka_destroy(rk);
        return NULL;
    }
    int parts = md->topics[0].partition_cnt;
    rd_kafka_metadata_destroy(md);
    rd_kafka_topic_destroy(rkt);
    rd_kafka_topic_partition_list_t *l =
        rd_kafka_topic_partition_list_new(parts);
    for (int p = 0; p < parts; p++)
        rd_kafka_topic_partition_list_add(l, topic, p)->offset =
            RD_KAFKA_OFFSET_BEGINNING;
    rd_kafka_assign(rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    int eof = 0;
    int64_t deadline = mono_ms() + timeout_ms;
    while (eof < parts && mono_ms() < deadline) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
        if (!m)
            continue;
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            eof++;
            rd_kafka_message_destroy(m);
            continue;
        }
        if (m->err) {
            rd_kafka_message_destroy(m);
            continue;
        }
        out = realloc(out, (*n + 1) * sizeof *out);
        th_msg *t = &out[(*n)++];
        t->key = copy_bytes(m->key, m->key_len);
        t->value = copy_bytes(m->payload, m->len);
        size_t hl = 0;
        t->headers = calloc(1, 1);
        rd_kafka_headers_t *h;
        if (!rd_kafka_message_headers(m, &h)) {
            const char *name;
            const void *v;
            size_t vlen;
            for (size_t i = 0; !rd_kafka_header_get_all(h, i, &name, &v, &vlen);
                 i++) {
                size_t add = strlen(name) + vlen + 2;
                t->headers = realloc(t->headers, hl + add + 1);
                hl += (size_t)sprintf(t->headers + hl, "%s=%.*s\n", name,
                                      (int)vlen, v ? (const char *)v : "");
            }
        }
        rd_kafka_message_destroy(m);
    }
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    return out;
}

void th_msgs_free(th_msg *msgs, size_t n) {
    for (size_t i = 0; i < n; i++) {
        free(msgs[i].key);
        free(msgs[i].value);
        free(msgs[i].headers);
    }
    free(msgs);
}

const char *th_header(const th_msg *m, const char *name) {
    static char buf[1024];
    bool any = false;
    size_t nl = strlen(name);
    for (const char *p = m->headers; p && *p;) {
        const char *end = strchr(p, '\n');
        if (!end)
            break;
        if (!strncmp(p, name, nl) && p[nl] == '=') {
            snprintf(buf, sizeof buf, "%.*s", (int)(end - p - (int)nl - 1),
                     p + nl + 1);
            any = true;
        }
        p = end + 1;
    }
    return any ? buf : NULL;
}

void th_host_start(th_host *h, const char *dir, const char *name,
                   const char *ini) {
    th_host_start_args(h, dir, name, ini, NULL);
}

/* Every host started here, by pid: whatever a test does (a failed
 * assertion leaves it before its own stop), the test process ends them
 * when it exits. Only a pid that is still our unreaped child is killed,
 * so a pid reused by someone else never is. */
static pid_t started[64];
static size_t n_started;

static void end_started_hosts(void) {
    for (size_t i = 0; i < n_started; i++) {
        int st;
        if (started[i] > 0 && waitpid(started[i], &st, WNOHANG) == 0) {
            kill(started[i], SIGKILL);
            waitpid(started[i], &st, 0);
        }
    }
    n_started = 0;
}

void th_register_pid(pid_t pid) {
    static bool registered;
    if (!registered) {
        atexit(end_started_hosts);
        registered = true;
    }
    if (n_started < sizeof started / sizeof started[0])
        started[n_started++] = pid;
}

void th_host_start_args(th_host *h, const char *dir, const char *name,
                        const char *ini, const char *const *extra) {
    memset(h, 0, sizeof *h);
    h->dir = strdup(dir);
    char file[256];
    snprintf(file, sizeof file, "%s.ini", name);
    h->cfg_path = tu_write_file(dir, file, ini);
    cr_assert_not_null(h->cfg_path);
    cr_assert_neq(asprintf(&h->log_path, "%s/%s.log", dir, name), -1);
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        int fd = open(h->log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
        dup2(fd, 1);
        dup2(fd, 2);
        /* Only stdin, stdout and stderr, as under systemd or a shell: a
         * host that happens to find fds 3 and 4 taken (the test runner's)
         * hides bugs about the fds it gives its children. */
        close_range(3, ~0U, 0);
        char *argv[16] = {"khost", "run", "-c", h->cfg_path};
        size_t n = 4;
        for (; extra && *extra && n + 1 < sizeof argv / sizeof argv[0]; extra++)
            argv[n++] = (char *)*extra;
        argv[n] = NULL;
        tu_execv(KHOST_BUILD_DIR "/khost", argv);
        _exit(127);
    }
    h->pid = pid;
    th_register_pid(pid);
}

bool th_host_alive(th_host *h) {
    if (!h->pid)
        return false;
    /* WNOWAIT: look without reaping, so th_host_stop still gets the exit
     * status. */
    siginfo_t si = {0};
    if (waitid(P_PID, (id_t)h->pid, &si, WEXITED | WNOHANG | WNOWAIT) != 0)
        return false;
    return si.si_pid == 0;
}

/* A host that does not stop in time: every thread's stack goes to the end
 * of its log before it is killed, so the failure says where it hung. gdb
 * reads a plain host; under valgrind, gdb reaches the guest through
 * valgrind's own gdbserver (vgdb). Best effort: without gdb the log just
 * lacks the stacks. */
static void dump_stacks(th_host *h) {
    const char *vg = getenv("KHOST_VALGRIND");
    char target[64];
    if (vg && *vg)
        snprintf(target, sizeof target, "target remote | vgdb --pid=%d",
                 (int)h->pid);
    else
        snprintf(target, sizeof target, "attach %d", (int)h->pid);
    int fd = open(h->log_path, O_WRONLY | O_APPEND);
    if (fd < 0)
        return;
    dprintf(fd,
            "== test harness: host pid %d did not stop in time; its "
            "threads:\n",
            (int)h->pid);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fd, 1);
        dup2(fd, 2);
        close_range(3, ~0U, 0);
        execlp("timeout", "timeout", "60", "gdb", "-batch", "-nx", "-q", "-ex",
               target, "-ex", "thread apply all bt", "-ex", "detach",
               KHOST_BUILD_DIR "/khost", (char *)NULL);
        _exit(127);
    }
    if (pid > 0)
        waitpid(pid, NULL, 0);
    close(fd);
}

int th_host_stop(th_host *h, int sig, int timeout_ms) {
    if (!h->pid)
        return -1;
    kill(h->pid, sig);
    int64_t deadline = mono_ms() + timeout_ms;
    int status = 0;
    for (;;) {
        pid_t r = waitpid(h->pid, &status, WNOHANG);
        if (r == h->pid)
            break;
        if (mono_ms() > deadline) {
            dump_stacks(h);
            kill(h->pid, SIGKILL);
            waitpid(h->pid, &status, 0);
            h->pid = 0;
            return -1;
        }
        th_sleep_ms(20);
    }
    h->pid = 0;
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    return 128 + WTERMSIG(status);
}

char *th_log(th_host *h) {
    char *s = tu_read_file(h->log_path, NULL);
    return s ? s : strdup("");
}

int th_log_count(th_host *h, const char *needle) {
    char *s = th_log(h);
    int n = tu_count(s, needle);
    free(s);
    return n;
}

bool th_wait_log(th_host *h, const char *needle, int count, int timeout_ms) {
    int64_t deadline = mono_ms() + timeout_ms;
    while (mono_ms() < deadline) {
        if (th_log_count(h, needle) >= count)
            return true;
        th_sleep_ms(50);
    }
    return false;
}

pid_t th_worker_pid(th_host *h, int worker) {
    char *s = th_log(h);
    char needle[64];
    snprintf(needle, sizeof needle, " worker=%d pid=", worker);
    pid_t pid = 0;
    for (char *p = s; (p = strstr(p, needle)); p++) {
        char *end = strchr(p, '\n');
        char *ready = strstr(p, " ready: ");
        if (ready && (!end || ready < end))
            pid = (pid_t)atoi(p + strlen(needle));
    }
    free(s);
    return pid;
}

void th_host_free(th_host *h) {
    if (h->pid)
        th_host_stop(h, SIGKILL, 5000);
    free(h->dir);
    free(h->log_path);
    free(h->cfg_path);
}

void th_ledger_init(th_ledger *l, int parts, int per_part) {
    memset(l, 0, sizeof *l);
    cr_assert_leq(parts, TH_MAX_PARTS);
    l->parts = parts;
    l->per_part = per_part;
    for (int p = 0; p < parts; p++) {
        l->seen[p] = calloc((size_t)per_part, sizeof(int));
        l->attempt[p] = calloc((size_t)per_part, sizeof(int));
        l->first[p] = -1;
    }
}

static long field(const char *line, const char *name) {
    const char *p = strstr(line, name);
    return p ? strtol(p + strlen(name), NULL, 10) : -1;
}

void th_ledger_add_file(th_ledger *l, const char *path) {
    char *text = tu_read_file(path, NULL);
    if (!text)
        return;
    for (char *line = text; line && *line;) {
        char *nl = strchr(line, '\n');
        if (!nl)
            break; /* a line still being written */
        *nl = '\0';
        long p = field(line, "\"partition\":");
        long o = field(line, "\"offset\":");
        long a = field(line, "\"attempt\":");
        if (p < 0 || p >= l->parts || o < 0 || o >= l->per_part) {
            l->bad_lines++;
        } else {
            if (l->first[p] < 0)
                l->first[p] = (int)o;
            l->seen[p][o]++;
            if (a > l->attempt[p][o])
                l->attempt[p][o] = (int)a;
        }
        l->lines++;
        line = nl + 1;
    }
    free(text);
}

int th_ledger_distinct(const th_ledger *l) {
    int n = 0;
    for (int p = 0; p < l->parts; p++)
        for (int o = 0; o < l->per_part; o++)
            n += l->seen[p][o] > 0;
    return n;
}

int th_ledger_duplicates(const th_ledger *l) {
    int n = 0;
    for (int p = 0; p < l->parts; p++)
        for (int o = 0; o < l->per_part; o++)
            n += l->seen[p][o] > 1 ? l->seen[p][o] - 1 : 0;
    return n;
}

void th_ledger_free(th_ledger *l) {
    for (int p = 0; p < l->parts; p++) {
        free(l->seen[p]);
        free(l->attempt[p]);
    }
}

bool th_wait_distinct(const char *const *paths, int n_paths, int parts,
                      int per_part, int distinct, int timeout_ms) {
    int64_t deadline = mono_ms() + timeout_ms;
    while (mono_ms() < deadline) {
        th_ledger l;
        th_ledger_init(&l, parts, per_part);
        for (int i = 0; i < n_paths; i++)
            th_ledger_add_file(&l, paths[i]);
        int d = th_ledger_distinct(&l);
        th_ledger_free(&l);
        if (d >= distinct)
            return true;
        th_sleep_ms(100);
    }
    return false;
}
