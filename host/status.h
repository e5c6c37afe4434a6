/*
 * status: what a running host shows of itself, as JSON (GET
 * /api/v1/status, `khost status --json`) and as the reason it is not
 * ready (GET /ready). A reader: it changes nothing but settling a reload
 * whose outcome became known (reload_outcome).
 */
#ifndef KHOST_STATUS_H
#define KHOST_STATUS_H

#include <jansson.h>
#include <stddef.h>

typedef struct kh_host kh_host;
typedef struct kh_pipeline_rt kh_pipeline_rt;

/* The whole status (the schema is in README.md, "The HTTP server"); a new
 * reference, NULL when out of memory. */
json_t *status_json(kh_host *host);
/* Why the host is not ready, or "" when it is: every pipeline serves,
 * i.e. is not FAILED, has no plugin swap under way, has every worker of
 * its generation READY and at least one partition assigned. */
void status_not_ready(kh_host *host, char *why, size_t len);
/* A pipeline's state: running, starting, swapping, failed, paused (every
 * assigned partition paused by an operator or held) or stopping. */
const char *status_pipeline_state(const kh_pipeline_rt *pl);

#endif
