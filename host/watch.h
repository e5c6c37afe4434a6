/*
 * watch: reload when the config file or a plugin file changes ([host]
 * watch = true), by inotify on their folders.
 */
#ifndef KHOST_WATCH_H
#define KHOST_WATCH_H

typedef struct kh_host kh_host;

/* (Re)arm the watches for the current configuration (none when watch is
 * off): a change sets host->watch_due_ms after a quiet period. */
void watch_arm(kh_host *host);
/* Remove every watch. */
void watch_stop(kh_host *host);

#endif
