/*
 * http: the host's HTTP server ([http] listen), on libmicrohttpd, run
 * from the host's sd-event loop on its one thread: GET /health, GET
 * /ready and GET /metrics (metrics.c). No thread of its own, so its
 * handlers read the host's structures directly; every connection is
 * bounded (count, per address, idle time, header memory, body size), so
 * a slow or hostile client costs memory and a few calls, never a wait.
 */
#ifndef KHOST_HTTP_H
#define KHOST_HTTP_H

#include <stddef.h>
#include <stdint.h>

typedef struct kh_host kh_host;

/* Bodies larger than this are refused with 413 (no endpoint takes one
 * yet); connections beyond the limits are refused at accept. */
#define KH_HTTP_MAX_BODY (64 * 1024)
#define KH_HTTP_MAX_CONNECTIONS 64
#define KH_HTTP_MAX_PER_IP 32
#define KH_HTTP_TIMEOUT_S 10

/* Start listening on host->cfg's [http] listen, when set (nothing to do
 * otherwise: returns 0). Returns -1 with err[] set when it cannot. */
int http_start(kh_host *host, char *err, size_t errlen);
/* From the host's tick: answer the requests waiting for a step's outcome
 * (once it settled, or their timeout passed, or khost stops). */
void http_tick(kh_host *host, int64_t now_ms);
/* Close the listener and every connection. Safe without a start. */
void http_stop(kh_host *host);

#endif
