/*
 * http: the HTTP server, libmicrohttpd driven from the host's sd-event
 * loop. MHD runs with MHD_USE_EPOLL and no thread: its epoll fd is one
 * io source of the loop that calls MHD_run, and a timer follows
 * MHD_get_timeout (idle connections, and connections with data MHD has
 * buffered but not handled yet). Handlers therefore run on the loop's
 * thread and read the host's structures (pipelines, partitions, workers)
 * without locks. They never wait: /metrics reads librdkafka's cached
 * watermarks and /proc (metrics.c); a step that takes time (a reload, a
 * restart) suspends its connection, and http_tick resumes it with the
 * outcome (ops_check) or at its timeout.
 *
 * Endpoints: GET /health, /ready, /metrics, /api/v1/status (HEAD too);
 * POST /api/v1/reload, /api/v1/pipelines/NAME/restart,
 * /api/v1/pipelines/NAME/partitions/TOPIC/P/pause and .../resume,
 * /api/v1/pipelines/NAME/workers/N/restart. With [http] token set, every
 * POST needs `Authorization: Bearer TOKEN` (401 otherwise); the GETs stay
 * open, as scrapers and probes expect. Anything else: 404 (unknown path)
 * or 405 with Allow (known path, wrong method), as JSON. A body over
 * KH_HTTP_MAX_BODY gets 413; bodies are not read otherwise.
 *
 * GET / serves the status page (page.h: host/page.html compiled in, no
 * external assets), which renders /api/v1/status in the browser.
 *
 * Calls ops.c, status.c and metrics.c; called by host.c only.
 */
#define _GNU_SOURCE
#include "http.h"

#include "host.h"
#include "log.h"
#include "metrics.h"
#include "ops.h"
#include "page.h"
#include "pipeline.h"
#include "status.h"

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

/* One request's state, kept across MHD's calls for it. */
typedef struct req {
    size_t body; /* bytes of body seen */
    bool too_large;
    /* A suspended request waiting for its step (http_tick): what for,
     * until when, and the answer once known (then it is resumed). */
    struct MHD_Connection *conn;
    kh_ops_wait what;
    int64_t deadline_ms;
    bool waiting;
    unsigned answer_status;
    json_t *answer;
    struct req *next_wait;
} req;

typedef struct kh_http {
    kh_host *host;
    struct MHD_Daemon *d;
    sd_event_source *io_src, *timer_src;
    req *waits; /* suspended requests */
    size_t n_waits;
} kh_http;

/* At most this many requests wait for an outcome at once. */
#define KH_HTTP_MAX_WAITS 16

static void rearm(kh_http *h);

/* ---- responses ---- */

static enum MHD_Result send_body(struct MHD_Connection *c, unsigned status,
                                 char *body, size_t len, const char *type,
                                 const char *allow) {
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", type);
    MHD_add_response_header(r, "Cache-Control", "no-store");
    if (allow)
        MHD_add_response_header(r, "Allow", allow);
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

/* Takes the reference to j. */
static enum MHD_Result send_json(struct MHD_Connection *c, unsigned status,
                                 json_t *j, const char *allow) {
    char *body = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!body)
        return MHD_NO;
    size_t len = strlen(body);
    /* One object per line, as curl users expect. */
    char *nl = realloc(body, len + 2);
    if (!nl) {
        free(body);
        return MHD_NO;
    }
    nl[len] = '\n';
    nl[len + 1] = '\0';
    return send_body(c, status, nl, len + 1, "application/json", allow);
}

static enum MHD_Result send_error(struct MHD_Connection *c, unsigned status,
                                  const char *msg, const char *allow) {
    return send_json(c, status, json_pack("{s:s}", "error", msg), allow);
}

/* ---- /ready ---- */

static enum MHD_Result get_ready(kh_http *h, struct MHD_Connection *c) {
    char why[256];
    status_not_ready(h->host, why, sizeof why);
    if (!why[0])
        return send_json(c, MHD_HTTP_OK, json_pack("{s:b}", "ready", 1), NULL);
    return send_json(c, MHD_HTTP_SERVICE_UNAVAILABLE,
                     json_pack("{s:b,s:s}", "ready", 0, "reason", why), NULL);
}

static enum MHD_Result get_metrics(kh_http *h, struct MHD_Connection *c) {
    size_t len = 0;
    char *body = metrics_render(h->host, h->host->start_time_s, &len);
    if (!body)
        return send_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory",
                          NULL);
    return send_body(c, MHD_HTTP_OK, body, len,
                     "text/plain; version=0.0.4; charset=utf-8", NULL);
}

/* ---- / : the status page (host/page.html, compiled in) ---- */

static enum MHD_Result get_page(struct MHD_Connection *c) {
    struct MHD_Response *r = MHD_create_response_from_buffer(
        kh_page_html_len, (void *)kh_page_html, MHD_RESPMEM_PERSISTENT);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, "Content-Type", "text/html; charset=utf-8");
    MHD_add_response_header(r, "Cache-Control", "no-store");
    enum MHD_Result ret = MHD_queue_response(c, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result get_status(kh_http *h, struct MHD_Connection *c) {
    json_t *j = status_json(h->host);
    if (!j)
        return send_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory",
                          NULL);
    return send_json(c, MHD_HTTP_OK, j, NULL);
}

/* ---- the admin endpoints ---- */

/* Constant time in the token's length: the comparison does not say how
 * much of a guess was right. */
static bool token_ok(kh_http *h, struct MHD_Connection *c) {
    const char *want = h->host->cfg->http_token;
    if (!want)
        return true;
    const char *auth =
        MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!auth || strncasecmp(auth, "Bearer ", 7))
        return false;
    const char *got = auth + 7;
    size_t wl = strlen(want), gl = strlen(got);
    unsigned diff = wl != gl;
    for (size_t i = 0; i < wl; i++)
        diff |= (unsigned char)want[i] ^ (unsigned char)(i < gl ? got[i] : 0);
    return diff == 0;
}

static enum MHD_Result send_unauthorized(struct MHD_Connection *c) {
    json_t *j = json_pack("{s:b,s:s}", "ok", 0, "error",
                          "this endpoint needs Authorization: Bearer TOKEN "
                          "([http] token)");
    char *body = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!body)
        return MHD_NO;
    size_t len = strlen(body);
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", "application/json");
    MHD_add_response_header(r, "WWW-Authenticate", "Bearer realm=\"khost\"");
    enum MHD_Result ret = MHD_queue_response(c, MHD_HTTP_UNAUTHORIZED, r);
    MHD_destroy_response(r);
    return ret;
}

static unsigned status_of(kh_ops_rc rc) {
    switch (rc) {
    case KH_OPS_OK:
        return MHD_HTTP_OK;
    case KH_OPS_NOT_FOUND:
        return MHD_HTTP_NOT_FOUND;
    case KH_OPS_CONFLICT:
        return MHD_HTTP_CONFLICT;
    case KH_OPS_REJECTED:
        return MHD_HTTP_UNPROCESSABLE_CONTENT;
    case KH_OPS_FAILED:
        break;
    }
    return MHD_HTTP_INTERNAL_SERVER_ERROR;
}

static json_t *answer(bool ok, const char *text) {
    json_t *s = json_string(text);
    if (!s) /* not UTF-8: a plugin's text, say */
        s = json_string("(the outcome is not valid UTF-8: see the log)");
    return json_pack("{s:b,s:o}", "ok", ok, ok ? "result" : "error", s);
}

/* ?timeout=SECONDS, 1..3600, default 60. */
static int wait_seconds(struct MHD_Connection *c) {
    const char *t =
        MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "timeout");
    long v = t ? strtol(t, NULL, 10) : 60;
    return v >= 1 && v <= 3600 ? (int)v : 60;
}

static void wait_settled(kh_http *h, req *r, int rc, const char *out) {
    (void)h;
    r->answer_status = rc == 0 ? MHD_HTTP_OK : MHD_HTTP_INTERNAL_SERVER_ERROR;
    r->answer = answer(rc == 0, out);
}

/* A begun step: answer now when it settled already, else suspend the
 * connection until http_tick knows. */
static enum MHD_Result begin_wait(kh_http *h, struct MHD_Connection *c, req *r,
                                  const kh_ops_wait *what) {
    char out[sizeof h->host->reload.outcome];
    int rc = ops_check(h->host, what, out, sizeof out);
    if (rc != 1) {
        wait_settled(h, r, rc, out);
        json_t *j = r->answer;
        r->answer = NULL;
        return send_json(c, r->answer_status, j, NULL);
    }
    r->conn = c;
    r->what = *what;
    r->deadline_ms = kh_now_ms() + wait_seconds(c) * 1000LL;
    r->waiting = true;
    r->next_wait = h->waits;
    h->waits = r;
    h->n_waits++;
    MHD_suspend_connection(c);
    return MHD_YES;
}

static void unlink_wait(kh_http *h, req *r) {
    for (req **pp = &h->waits; *pp; pp = &(*pp)->next_wait) {
        if (*pp == r) {
            *pp = r->next_wait;
            h->n_waits--;
            break;
        }
    }
    r->waiting = false;
}

void http_tick(kh_host *host, int64_t now_ms) {
    kh_http *h = host->http;
    if (!h || !h->waits)
        return;
    bool resumed = false;
    req *r = h->waits;
    while (r) {
        req *next = r->next_wait;
        char out[sizeof host->reload.outcome];
        int rc = host->shutting_down
                     ? 1
                     : ops_check(host, &r->what, out, sizeof out);
        if (rc != 1) {
            wait_settled(h, r, rc, out);
        } else if (host->shutting_down) {
            r->answer_status = MHD_HTTP_SERVICE_UNAVAILABLE;
            r->answer = answer(false, "khost is shutting down before the "
                                      "step settled");
        } else if (now_ms >= r->deadline_ms) {
            char line[sizeof out + 128];
            snprintf(line, sizeof line,
                     "timeout: still under way (%s); it goes on: see GET "
                     "/api/v1/status",
                     out);
            r->answer_status = MHD_HTTP_GATEWAY_TIMEOUT;
            r->answer = answer(false, line);
        }
        if (r->answer) {
            struct MHD_Connection *conn = r->conn;
            unlink_wait(h, r);
            MHD_resume_connection(conn);
            resumed = true;
        }
        r = next;
    }
    if (resumed) {
        MHD_run(h->d);
        rearm(h);
    }
}

/* POST /api/v1/... : the path after /api/v1/, split at '/'. */
static enum MHD_Result admin_post(kh_http *h, struct MHD_Connection *c, req *r,
                                  const char *path) {
    char who[96] = "over HTTP";
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (ci && ci->client_addr && ci->client_addr->sa_family == AF_INET) {
        char ip[INET_ADDRSTRLEN];
        const struct sockaddr_in *sin =
            (const struct sockaddr_in *)ci->client_addr;
        if (inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof ip))
            snprintf(who, sizeof who, "over HTTP from %s", ip);
    }
    char msg[2048];
    kh_ops_wait what = {0};
    kh_ops_rc rc;
    if (!strcmp(path, "reload")) {
        rc = ops_reload(h->host, who, &what, msg, sizeof msg);
        if (rc == KH_OPS_OK)
            return begin_wait(h, c, r, &what);
        return send_json(c, status_of(rc), answer(false, msg), NULL);
    }
    /* pipelines/NAME/... */
    char name[128], rest[512];
    if (sscanf(path, "pipelines/%127[^/]/%511s", name, rest) != 2)
        return send_error(c, MHD_HTTP_NOT_FOUND, "no such path", NULL);
    char topic[256], action[16];
    int part = -1, worker = -1;
    if (!strcmp(rest, "restart")) {
        rc = ops_restart_pipeline(h->host, name, who, &what, msg, sizeof msg);
        if (rc == KH_OPS_OK)
            return begin_wait(h, c, r, &what);
    } else if (sscanf(rest, "workers/%d/%15s", &worker, action) == 2 &&
               !strcmp(action, "restart")) {
        rc = ops_restart_worker(h->host, name, worker, who, &what, msg,
                                sizeof msg);
        if (rc == KH_OPS_OK)
            return begin_wait(h, c, r, &what);
    } else if (sscanf(rest, "partitions/%255[^/]/%d/%15s", topic, &part,
                      action) == 3 &&
               (!strcmp(action, "pause") || !strcmp(action, "resume"))) {
        rc = ops_pause(h->host, name, topic, part, action[0] == 'p', who, msg,
                       sizeof msg);
        if (rc == KH_OPS_OK)
            return send_json(c, MHD_HTTP_OK, answer(true, msg), NULL);
    } else {
        return send_error(c, MHD_HTTP_NOT_FOUND, "no such path", NULL);
    }
    return send_json(c, status_of(rc), answer(false, msg), NULL);
}

/* Is this an admin path (POST only)? */
static bool is_admin_path(const char *url) {
    return !strcmp(url, "/api/v1/reload") ||
           !strncmp(url, "/api/v1/pipelines/", 18);
}

/* ---- routing ---- */

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c,
                                  const char *url, const char *method,
                                  const char *version, const char *upload,
                                  size_t *upload_size, void **state) {
    kh_http *h = cls;
    req *r = *state;
    if (!r) {
        /* First call: headers only. A declared body over the bound is
         * refused now, before any of it is read. */
        r = calloc(1, sizeof *r);
        if (!r)
            return MHD_NO;
        *state = r;
        const char *cl =
            MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > KH_HTTP_MAX_BODY)
            return send_error(c, MHD_HTTP_CONTENT_TOO_LARGE,
                              "request body over 65536 bytes", NULL);
        return MHD_YES;
    }
    if (r->answer) { /* resumed: the step settled or timed out */
        json_t *j = r->answer;
        r->answer = NULL;
        return send_json(c, r->answer_status, j, NULL);
    }
    if (*upload_size) {
        /* No endpoint takes a body: count it and drop it. */
        r->body += *upload_size;
        if (r->body > KH_HTTP_MAX_BODY)
            r->too_large = true;
        *upload_size = 0;
        return MHD_YES;
    }
    if (r->too_large)
        return send_error(c, MHD_HTTP_CONTENT_TOO_LARGE,
                          "request body over 65536 bytes", NULL);
    bool get = strcmp(method, MHD_HTTP_METHOD_GET) == 0 ||
               strcmp(method, MHD_HTTP_METHOD_HEAD) == 0;
    bool post = strcmp(method, MHD_HTTP_METHOD_POST) == 0;
    if (is_admin_path(url)) {
        if (!post)
            return send_error(c, MHD_HTTP_METHOD_NOT_ALLOWED,
                              "method not allowed", "POST");
        if (!token_ok(h, c))
            return send_unauthorized(c);
        if (h->n_waits >= KH_HTTP_MAX_WAITS)
            return send_error(c, MHD_HTTP_SERVICE_UNAVAILABLE,
                              "too many requests waiting for an outcome", NULL);
        return admin_post(h, c, r, url + strlen("/api/v1/"));
    }
    enum { NONE, HEALTH, READY, METRICS, STATUS, PAGE } path = NONE;
    if (strcmp(url, "/") == 0)
        path = PAGE;
    else if (strcmp(url, "/health") == 0)
        path = HEALTH;
    else if (strcmp(url, "/ready") == 0)
        path = READY;
    else if (strcmp(url, "/metrics") == 0)
        path = METRICS;
    else if (strcmp(url, "/api/v1/status") == 0)
        path = STATUS;
    if (path == NONE)
        return send_error(c, MHD_HTTP_NOT_FOUND, "no such path", NULL);
    if (!get)
        return send_error(c, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed",
                          "GET, HEAD");
    switch (path) {
    case HEALTH:
        return send_json(c, MHD_HTTP_OK, json_pack("{s:s}", "status", "ok"),
                         NULL);
    case READY:
        return get_ready(h, c);
    case METRICS:
        return get_metrics(h, c);
    case STATUS:
        return get_status(h, c);
    case PAGE:
        return get_page(c);
    case NONE:
        break;
    }
    return MHD_NO;
}

static void on_completed(void *cls, struct MHD_Connection *c, void **state,
                         enum MHD_RequestTerminationCode code) {
    kh_http *h = cls;
    req *r = *state;
    if (r) {
        if (r->waiting)
            unlink_wait(h, r);
        json_decref(r->answer);
        free(r);
    }
    *state = NULL;
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap) {
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = '\0';
    klog_debug("http: %s", line);
}

/* ---- the loop's side ---- */

static void rearm(kh_http *h) {
    MHD_UNSIGNED_LONG_LONG ms = 0;
    if (MHD_get_timeout(h->d, &ms) != MHD_YES) {
        sd_event_source_set_enabled(h->timer_src, SD_EVENT_OFF);
        return;
    }
    uint64_t now = 0;
    sd_event_now(h->host->ev, CLOCK_MONOTONIC, &now);
    sd_event_source_set_time(h->timer_src, now + (uint64_t)ms * 1000);
    sd_event_source_set_enabled(h->timer_src, SD_EVENT_ONESHOT);
}

static int on_io(sd_event_source *s, int fd, uint32_t revents, void *ud) {
    kh_http *h = ud;
    MHD_run(h->d);
    rearm(h);
    return 0;
}

static int on_timer(sd_event_source *s, uint64_t usec, void *ud) {
    kh_http *h = ud;
    MHD_run(h->d);
    rearm(h);
    return 0;
}

int http_start(kh_host *host, char *err, size_t errlen) {
    const kh_config *cfg = host->cfg;
    if (!cfg->http_listen)
        return 0;
    kh_http *h = calloc(1, sizeof *h);
    if (!h) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    h->host = host;
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)cfg->http_port)};
    inet_pton(AF_INET, cfg->http_addr, &sa.sin_addr);
    h->d = MHD_start_daemon(
        MHD_USE_EPOLL | MHD_USE_ERROR_LOG | MHD_ALLOW_SUSPEND_RESUME,
        (uint16_t)cfg->http_port, NULL, NULL, on_request, h,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)KH_HTTP_MAX_CONNECTIONS,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)KH_HTTP_MAX_PER_IP,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)KH_HTTP_TIMEOUT_S,
        /* The URL and headers live in this buffer: a longer request line
         * is answered 414 by MHD itself. */
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)16384,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
        MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, h, MHD_OPTION_END);
    if (!h->d) {
        snprintf(err, errlen, "cannot listen on %s: %s", cfg->http_listen,
                 errno ? strerror(errno) : "libmicrohttpd refused to start");
        free(h);
        return -1;
    }
    const union MHD_DaemonInfo *info =
        MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_EPOLL_FD);
    if (!info || info->epoll_fd < 0 ||
        sd_event_add_io(host->ev, &h->io_src, info->epoll_fd, EPOLLIN, on_io,
                        h) < 0 ||
        sd_event_add_time(host->ev, &h->timer_src, CLOCK_MONOTONIC, 0, 1000,
                          on_timer, h) < 0) {
        snprintf(err, errlen, "cannot add the HTTP server to the event loop");
        h->io_src = sd_event_source_disable_unref(h->io_src);
        MHD_stop_daemon(h->d);
        free(h);
        return -1;
    }
    host->http = h;
    rearm(h);
    klog_info("http: listening on %s (GET /health, /ready, /metrics, "
              "/api/v1/status, /; POST /api/v1/...: %s)",
              cfg->http_listen,
              cfg->http_token ? "Bearer token required" : "no token set");
    return 0;
}

void http_stop(kh_host *host) {
    kh_http *h = host->http;
    if (!h)
        return;
    /* MHD stops only with every connection resumed: waiting requests get
     * their answer (503) first. */
    while (h->waits) {
        req *r = h->waits;
        r->answer_status = MHD_HTTP_SERVICE_UNAVAILABLE;
        r->answer = answer(false, "khost is shutting down");
        struct MHD_Connection *conn = r->conn;
        unlink_wait(h, r);
        MHD_resume_connection(conn);
    }
    MHD_run(h->d);
    h->io_src = sd_event_source_disable_unref(h->io_src);
    h->timer_src = sd_event_source_disable_unref(h->timer_src);
    MHD_stop_daemon(h->d);
    free(h);
    host->http = NULL;
}
