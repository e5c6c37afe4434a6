/*
 * reload: the API of reload.c, the config diff of a reload.
 */
#ifndef KHOST_RELOAD_H
#define KHOST_RELOAD_H

#include "pipeline.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Re-read the config file and apply what changed. Returns 0 when the new
 * file was accepted (plugin swaps and starts go on in the background:
 * reload_outcome tells how they end), -1 when it was rejected, or when a
 * reload is still under way ("busy: ..."), and the old configuration keeps
 * running; msg gets one line either way. The caller re-arms admin_watch
 * (plugin paths may have changed). */
int reload_apply(kh_host *host, char *msg, size_t len);
/* Stop and start pipeline `name` again (it revives a FAILED one), as a
 * reload of that one pipeline: 0 begun (reload_outcome tells the end),
 * -1 not now (shutting down, busy), -2 no such pipeline. */
int reload_restart(kh_host *host, const char *name, char *msg, size_t len);
/* A reload's outcome: 1 still pending (msg names what it waits for), 0
 * applied, -1 failed (msg: "applied: ..." / "failed: pipeline=X: why").
 * Settles the reload once nothing is pending, logging the outcome once. */
int reload_outcome(kh_host *host, char *msg, size_t len);
bool reload_busy(const kh_host *host);
/* From the host's tick: drive every swap, settle the reload's outcome,
 * free configurations no longer referenced. */
void reload_tick(kh_host *host, int64_t now_ms);

#endif
