/*
 * reload: the API of reload.c, the config diff of a reload.
 */
#ifndef KHOST_RELOAD_H
#define KHOST_RELOAD_H

#include "pipeline.h"

#include <stddef.h>
#include <stdint.h>

/* Re-read the config file and apply what changed. Returns 0 when the new
 * file was accepted (plugin swaps go on in the background), -1 when it
 * was rejected and the old configuration keeps running; msg gets one
 * line either way. The caller re-arms admin_watch (plugin paths may have
 * changed). */
int reload_apply(kh_host *host, char *msg, size_t len);
/* From the host's tick: drive every swap, free configurations no longer
 * referenced. */
void reload_tick(kh_host *host, int64_t now_ms);

#endif
