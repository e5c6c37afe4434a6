/*
 * notify: the host's side of systemd's notification protocol (sd_notify):
 * READY, STATUS, RELOADING, STOPPING and WATCHDOG datagrams to the socket
 * NOTIFY_SOCKET named when khost started. Without NOTIFY_SOCKET every
 * call is a no-op. Only the host notifies: notify_init removes the
 * variables from the environment, so workers and probe children, spawned
 * with it, cannot.
 */
#ifndef KHOST_NOTIFY_H
#define KHOST_NOTIFY_H

#include <stdbool.h>
#include <stdint.h>

/* Read NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID (sd_watchdog_enabled:
 * a WATCHDOG_PID that is not ours means no watchdog), remember them, and
 * unset them. Call once, before any thread or child exists. */
void notify_init(void);
/* Close the socket (at exit). */
void notify_close(void);
/* Whether there is a socket to notify. */
bool notify_active(void);

/* READY=1 with STATUS=status; sent once (later calls only set STATUS). */
void notify_ready(const char *status);
bool notify_ready_sent(void);
/* STATUS=status when the text differs from the last one sent, at most once
 * a second (a newer text waits for the next call); a reload's outcome is
 * kept for 5 s before a summary replaces it. */
void notify_status(const char *status);
/* STOPPING=1 with STATUS=draining (the shutdown's drain starts). */
void notify_stopping(void);
/* RELOADING=1 with MONOTONIC_USEC (systemd >= 253 wants both), then
 * READY=1 with STATUS=reload OUTCOME. Before the first READY=1 (a reload
 * while pipelines start) only the STATUS is sent: a READY=1 then would end
 * the start early. */
void notify_reloading(void);
void notify_reload_done(const char *outcome);

/* WATCHDOG=1 when a watchdog is on and a quarter of WATCHDOG_USEC passed
 * since the last one; cheap otherwise. Called from the loop's tick and
 * from the drain's bounded wait, never from elsewhere, so the pings stop
 * when the host stops turning. */
void notify_keepalive(void);
/* WATCHDOG_USEC as read at start when it applies to us, else 0. */
uint64_t notify_watchdog_usec(void);

#endif
