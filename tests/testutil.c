/* Helpers for running the khost binary and handling scratch files. */
#define _GNU_SOURCE
#include "testutil.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void append(char **buf, size_t *len, const char *data, size_t n) {
    *buf = realloc(*buf, *len + n + 1);
    memcpy(*buf + *len, data, n);
    *len += n;
    (*buf)[*len] = '\0';
}

void tu_execv(const char *path, char *const argv[]) {
    const char *logs = getenv("KHOST_VALGRIND");
    if (!logs || !*logs || strcmp(path, KHOST_BUILD_DIR "/khost") != 0) {
        execv(path, argv);
        return;
    }
    /* Definite leaks and memory errors are what fail; a failing host also
     * exits 99 so the test that ran it sees it at once. */
    char log_file[4096];
    snprintf(log_file, sizeof log_file, "--log-file=%s/vg.%%p", logs);
    char *vg[64] = {"valgrind",
                    "--quiet",
                    "--error-exitcode=99",
                    "--leak-check=full",
                    "--show-leak-kinds=definite",
                    "--errors-for-leak-kinds=definite",
                    "--trace-children=no",
                    "--child-silent-after-fork=yes",
                    log_file,
                    (char *)path};
    int n = 10;
    for (int i = 1; argv[i] && n < 63; i++)
        vg[n++] = argv[i];
    vg[n] = NULL;
    execvp("valgrind", vg);
}

tu_result tu_run(char *const argv[], int timeout_ms) {
    tu_result r = {.exit_code = -1, .out = calloc(1, 1), .err = calloc(1, 1)};
    int po[2], pe[2];
    if (pipe2(po, O_CLOEXEC) || pipe2(pe, O_CLOEXEC))
        return r;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(po[1], 1);
        dup2(pe[1], 2);
        tu_execv(argv[0], argv);
        _exit(127);
    }
    close(po[1]);
    close(pe[1]);
    size_t olen = 0, elen = 0;
    long long deadline = now_ms() + timeout_ms;
    int open_fds = 2;
    struct pollfd fds[2] = {{po[0], POLLIN, 0}, {pe[0], POLLIN, 0}};
    while (open_fds > 0) {
        long long left = deadline - now_ms();
        if (left <= 0) {
            kill(pid, SIGKILL);
            break;
        }
        if (poll(fds, 2, (int)left) < 0 && errno != EINTR)
            break;
        for (int i = 0; i < 2; i++) {
            if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP)))
                continue;
            char chunk[4096];
            ssize_t n = read(fds[i].fd, chunk, sizeof chunk);
            if (n <= 0) {
                close(fds[i].fd);
                fds[i].fd = -1;
                open_fds--;
            } else if (i == 0) {
                append(&r.out, &olen, chunk, (size_t)n);
            } else {
                append(&r.err, &elen, chunk, (size_t)n);
            }
        }
    }
    for (int i = 0; i < 2; i++)
        if (fds[i].fd >= 0)
            close(fds[i].fd);
    int status = 0;
    waitpid(pid, &status, 0);
    if (WIFEXITED(status))
        r.exit_code = WEXITSTATUS(status);
    else if (WIFSIGNALED(status))
        r.exit_code = 128 + WTERMSIG(status);
    return r;
}

void tu_result_free(tu_result *r) {
    free(r->out);
    free(r->err);
    r->out = r->err = NULL;
}

char *tu_tmpdir(void) {
    char *dir = strdup("/tmp/khost-test-XXXXXX");
    if (!mkdtemp(dir)) {
        free(dir);
        return NULL;
    }
    return dir;
}

static int rm_entry(const char *path, const struct stat *sb, int flag,
                    struct FTW *ftw) {
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

void tu_rmdir(const char *dir) {
    if (dir)
        nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

char *tu_write_file(const char *dir, const char *name, const char *text) {
    char *path = NULL;
    if (asprintf(&path, "%s/%s", dir, name) < 0)
        return NULL;
    FILE *f = fopen(path, "w");
    if (!f) {
        free(path);
        return NULL;
    }
    fputs(text, f);
    fclose(f);
    return path;
}

char *tu_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = NULL;
    size_t n = 0;
    char chunk[65536];
    size_t got;
    while ((got = fread(chunk, 1, sizeof chunk, f)) > 0)
        append(&buf, &n, chunk, got);
    fclose(f);
    if (!buf)
        buf = calloc(1, 1);
    if (len)
        *len = n;
    return buf;
}

int tu_count(const char *haystack, const char *needle) {
    int n = 0;
    size_t step = strlen(needle);
    if (!step)
        return 0;
    for (const char *p = haystack; (p = strstr(p, needle)); p += step)
        n++;
    return n;
}

/* Under ASan, leak checking is for khost's own processes (the host and
 * its workers, which the tests start): test binaries allocate freely in
 * assertions' messages. ASAN_OPTIONS from the environment still wins. */
#if defined(__SANITIZE_ADDRESS__)
const char *__asan_default_options(void);
const char *__asan_default_options(void) {
    return "detect_leaks=0";
}
#endif

void tu_cp_over(const char *src, const char *dst) {
    size_t len;
    char *bytes = tu_read_file(src, &len);
    cr_assert_not_null(bytes, "%s", src);
    FILE *f = fopen(dst, "w");
    cr_assert_not_null(f, "%s", dst);
    cr_assert_eq(fwrite(bytes, 1, len, f), len);
    cr_assert_eq(fclose(f), 0);
    free(bytes);
}

/* ---- HTTP ---- */

int tu_free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    socklen_t len = sizeof sa;
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd);
    return ntohs(sa.sin_port);
}

int tu_connect_port(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int tu_http(int port, const char *method, const char *path, const char *headers,
            const char *body, size_t body_len, char **resp) {
    *resp = strdup("");
    int fd = tu_connect_port(port);
    if (fd < 0)
        return 0;
    char head[2048];
    int n = snprintf(head, sizeof head,
                     "%s %s HTTP/1.1\r\nHost: localhost\r\nConnection: "
                     "close\r\n%sContent-Length: %zu\r\n\r\n",
                     method, path, headers ? headers : "", body_len);
    if (n < 0 || (size_t)n >= sizeof head || write(fd, head, (size_t)n) != n) {
        close(fd);
        return 0;
    }
    char *zeros = body ? NULL : calloc(1, body_len + 1);
    const char *src = body ? body : zeros;
    size_t off = 0;
    while (off < body_len) {
        ssize_t w = write(fd, src + off, body_len - off);
        if (w <= 0)
            break; /* the server may answer and close before the body */
        off += (size_t)w;
    }
    free(zeros);
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 10000) <= 0)
            break;
        if (len + 4096 > cap)
            buf = realloc(buf, cap *= 2);
        ssize_t r = read(fd, buf + len, cap - len - 1);
        if (r <= 0)
            break;
        len += (size_t)r;
    }
    buf[len] = '\0';
    close(fd);
    free(*resp);
    *resp = buf;
    int status = 0;
    if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1)
        status = 0;
    return status;
}

const char *tu_http_body(const char *resp) {
    const char *b = strstr(resp, "\r\n\r\n");
    return b ? b + 4 : "";
}

double tu_metric(const char *text, const char *line) {
    char *needle;
    cr_assert_neq(asprintf(&needle, "\n%s ", line), -1);
    const char *p = strstr(text, needle);
    double v = p ? strtod(p + strlen(needle), NULL) : -1;
    free(needle);
    return v;
}

int tu_metrics_parse(const char *dir, const char *text) {
    char *file = tu_write_file(dir, "metrics.txt", text);
    char *cmd;
    cr_assert_neq(asprintf(&cmd, "promtool check metrics < %s", file), -1);
    tu_result r = tu_run((char *[]){"/bin/sh", "-c", cmd, NULL}, 30000);
    cr_assert_eq(r.exit_code, 0, "promtool: %s%s", r.out, r.err);
    tu_result_free(&r);
    free(cmd);
    /* Debian's python3, where python3-prometheus-client installs. */
    cr_assert_neq(
        asprintf(
            &cmd,
            "/usr/bin/python3 -c 'import sys; from prometheus_client.parser "
            "import text_string_to_metric_families as f; "
            "print(len(list(f(sys.stdin.read()))))' < %s",
            file),
        -1);
    r = tu_run((char *[]){"/bin/sh", "-c", cmd, NULL}, 30000);
    cr_assert_eq(r.exit_code, 0, "prometheus_client: %s%s", r.out, r.err);
    int families = atoi(r.out);
    tu_result_free(&r);
    free(cmd);
    free(file);
    return families;
}

void tu_install(const char *src, const char *dst) {
    size_t len;
    char *bytes = tu_read_file(src, &len);
    cr_assert_not_null(bytes, "%s", src);
    char *tmp;
    cr_assert_neq(asprintf(&tmp, "%s.new", dst), -1);
    FILE *f = fopen(tmp, "w");
    cr_assert_not_null(f, "%s", tmp);
    cr_assert_eq(fwrite(bytes, 1, len, f), len);
    cr_assert_eq(fclose(f), 0);
    cr_assert_eq(rename(tmp, dst), 0);
    free(tmp);
    free(bytes);
}
