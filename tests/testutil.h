/* Small helpers shared by the Criterion tests. */
#ifndef KHOST_TESTUTIL_H
#define KHOST_TESTUTIL_H

#include <stddef.h>
#include <sys/types.h>

/* Output and exit status of a finished command. */
typedef struct tu_result {
    int exit_code; /* exit status, or 128+signal when killed */
    char *out;     /* stdout, NUL-terminated */
    char *err;     /* stderr, NUL-terminated */
} tu_result;

/* Run argv (argv[0] is a path) to completion, capturing both streams.
 * Gives up and kills it after timeout_ms. */
tu_result tu_run(char *const argv[], int timeout_ms);
void tu_result_free(tu_result *r);

/* execv, except that the khost binary runs under valgrind memcheck when
 * KHOST_VALGRIND names a folder for its logs (.ci/valgrind sets it). Only
 * the host is checked: its workers run plugin code natively. Returns only
 * when the exec failed. */
void tu_execv(const char *path, char *const argv[]);

/* A fresh directory under /tmp, removed by tu_rmdir. */
char *tu_tmpdir(void);
void tu_rmdir(const char *dir);

/* Write `text` to dir/name; returns the malloc'd full path. */
char *tu_write_file(const char *dir, const char *name, const char *text);
/* Read a whole file; NULL when missing. *len may be NULL. */
char *tu_read_file(const char *path, size_t *len);
/* Copy src over dst in place (open with O_TRUNC and write, as `cp` does:
 * same inode, so a watcher sees a write, not a rename). Asserts. */
void tu_cp_over(const char *src, const char *dst);
/* Copy src over dst by a rename of dst.new (atomic: the recommended
 * deploy of a plugin). Asserts. */
void tu_install(const char *src, const char *dst);

/* Number of occurrences of needle in haystack. */
int tu_count(const char *haystack, const char *needle);

/* ---- HTTP (the [http] server's tests) ---- */
/* A loopback TCP port nobody listens on now (bound to 0, read, closed). */
int tu_free_port(void);
/* A connected socket to 127.0.0.1:port, or -1. */
int tu_connect_port(int port);
/* One HTTP/1.1 request with Connection: close: `headers` (NULL or lines
 * each ending in \r\n, e.g. "Authorization: Bearer x\r\n") and a body
 * of body_len bytes (`body`, or zeros when NULL). Returns the status (0
 * when no answer) and the whole response in *resp (malloc'd, always set).
 */
int tu_http(int port, const char *method, const char *path, const char *headers,
            const char *body, size_t body_len, char **resp);
/* The value of the Prometheus sample whose name and labels are exactly
 * `line` (e.g. `khost_x_total{pipeline="p"}`) in a /metrics text, -1
 * when there is none. */
double tu_metric(const char *text, const char *line);
/* Check a /metrics text with both reference parsers, `promtool check
 * metrics` and python3-prometheus-client's parser (a missing tool fails),
 * through a file in dir. Returns how many families the parser read. */
int tu_metrics_parse(const char *dir, const char *text);
/* The body of a response tu_http returned. */
const char *tu_http_body(const char *resp);

#endif
