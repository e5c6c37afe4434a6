/*
 * http: the HTTP server, libmicrohttpd driven from the host's sd-event
 * loop. MHD runs with MHD_USE_EPOLL and no thread: its epoll fd is one
 * io source of the loop that calls MHD_run, and a timer follows
 * MHD_get_timeout (idle connections, and connections with data MHD has
 * buffered but not handled yet). Handlers therefore run on the loop's
 * thread and read the host's structures (pipelines, partitions, workers)
 * without locks. They never wait: /metrics reads librdkafka's cached
 * watermarks and /proc (metrics.c).
 *
 * Endpoints: GET /health, GET /ready, GET /metrics; HEAD is accepted
 * where GET is. Anything else: 404 (unknown path) or 405 with Allow
 * (known path, wrong method), as JSON. A body over KH_HTTP_MAX_BODY gets
 * 413. [http] token protects nothing yet: there is no mutating endpoint;
 * the three endpoints here are open, as scrapers and probes expect.
 *
 * Calls metrics.c and reads pipeline/partition/supervisor structs;
 * called by host.c only.
 */
#define _GNU_SOURCE
#include "http.h"

#include "host.h"
#include "log.h"
#include "metrics.h"
#include "pipeline.h"

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

typedef struct kh_http {
    kh_host *host;
    struct MHD_Daemon *d;
    sd_event_source *io_src, *timer_src;
    double start_time_s;
} kh_http;

/* One request's state, kept across MHD's calls for it. */
typedef struct req {
    size_t body; /* bytes of body seen */
    bool too_large;
} req;

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

/* Why the host is not ready, or "" when it is: every pipeline serves,
 * i.e. is not FAILED, has no plugin swap under way, has every worker of
 * its generation READY and at least one partition assigned. */
static void not_ready_reason(kh_host *host, char *why, size_t len) {
    why[0] = '\0';
    if (host->shutting_down || host->stop_requested) {
        snprintf(why, len, "shutting down");
        return;
    }
    for (size_t i = 0; i < host->n_pipelines; i++) {
        kh_pipeline_rt *pl = host->pipelines[i];
        const char *name = pl->cfg->name;
        if (pl->failed) {
            snprintf(why, len, "pipeline %s: FAILED", name);
            return;
        }
        if (pl->swap || pl->n_next) {
            snprintf(why, len, "pipeline %s: plugin swap in progress", name);
            return;
        }
        for (int w = 0; w < pl->n_workers; w++) {
            if (pl->workers[w].state != KH_W_READY) {
                snprintf(why, len, "pipeline %s: worker %d not ready", name, w);
                return;
            }
        }
        size_t assigned = 0;
        for (size_t j = 0; j < pl->n_parts; j++)
            assigned += pl->parts[j] && pl->parts[j]->assigned;
        if (!assigned) {
            snprintf(why, len, "pipeline %s: no partition assigned", name);
            return;
        }
    }
}

static enum MHD_Result get_ready(kh_http *h, struct MHD_Connection *c) {
    char why[256];
    not_ready_reason(h->host, why, sizeof why);
    if (!why[0])
        return send_json(c, MHD_HTTP_OK, json_pack("{s:b}", "ready", 1), NULL);
    return send_json(c, MHD_HTTP_SERVICE_UNAVAILABLE,
                     json_pack("{s:b,s:s}", "ready", 0, "reason", why), NULL);
}

static enum MHD_Result get_metrics(kh_http *h, struct MHD_Connection *c) {
    size_t len = 0;
    char *body = metrics_render(h->host, h->start_time_s, &len);
    if (!body)
        return send_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory",
                          NULL);
    return send_body(c, MHD_HTTP_OK, body, len,
                     "text/plain; version=0.0.4; charset=utf-8", NULL);
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
    enum { NONE, HEALTH, READY, METRICS } path = NONE;
    if (strcmp(url, "/health") == 0)
        path = HEALTH;
    else if (strcmp(url, "/ready") == 0)
        path = READY;
    else if (strcmp(url, "/metrics") == 0)
        path = METRICS;
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
    case NONE:
        break;
    }
    return MHD_NO;
}

static void on_completed(void *cls, struct MHD_Connection *c, void **state,
                         enum MHD_RequestTerminationCode code) {
    free(*state);
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
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    h->start_time_s = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)cfg->http_port)};
    inet_pton(AF_INET, cfg->http_addr, &sa.sin_addr);
    h->d = MHD_start_daemon(
        MHD_USE_EPOLL | MHD_USE_ERROR_LOG, (uint16_t)cfg->http_port, NULL, NULL,
        on_request, h, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
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
    klog_info("http: listening on %s (GET /health, /ready, /metrics)",
              cfg->http_listen);
    return 0;
}

void http_stop(kh_host *host) {
    kh_http *h = host->http;
    if (!h)
        return;
    h->io_src = sd_event_source_disable_unref(h->io_src);
    h->timer_src = sd_event_source_disable_unref(h->timer_src);
    MHD_stop_daemon(h->d);
    free(h);
    host->http = NULL;
}
