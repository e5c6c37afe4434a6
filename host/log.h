/*
 * log: one line per event on stderr, as text or as JSON.
 *
 * Callers put the context in the message as key=value pairs
 * (pipeline=orders partition=3 offset=42) so a line can be grepped; the
 * JSON format also lifts the known keys into fields of their own.
 */
#ifndef KHOST_LOG_H
#define KHOST_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/time.h>

enum { KLOG_ERROR = 3, KLOG_WARN = 4, KLOG_INFO = 6, KLOG_DEBUG = 7 };
enum { KLOG_TEXT = 0, KLOG_JSON = 1 };

/* The level configured (log_level); -v wins over it (klog_set_verbose). */
void klog_set_level(int level);
/* -v/--verbose: debug lines whatever klog_set_level says. */
void klog_set_verbose(bool on);
bool klog_verbose(void);
/* The level in effect. */
int klog_level(void);
void klog_set_format(int format);
int klog_format(void);
/* "error", "warn", "info", "debug" and back; -1 / "?" for anything else. */
int klog_level_parse(const char *name);
const char *klog_level_str(int level);
/* Put the format and the level in effect into KHOST_LOG_FORMAT and
 * KHOST_LOG_LEVEL, which workers (spawned with this environment) read
 * when they start. */
void klog_export(void);
/* Write lines to fd instead of stderr (a worker whose stderr carries its
 * plugin's output keeps its own lines on the original stderr). Whether
 * that is journald is still decided on the original stderr. */
void klog_set_fd(int fd);
/* Prefix every line of this process, e.g. "worker orders/1". */
void klog_set_tag(const char *tag);
void klog(int level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The pieces, for tests. */
/* Whether JOURNAL_STREAM's value ("DEV:INODE") names the file open on fd. */
bool klog_journal_stream_matches(const char *journal_stream, int fd);
/* Whether this process logs to journald (decided once, at the first line). */
bool klog_journald(void);
/* Format one line, '\n' included, into buf (at least 256 bytes); returns
 * its length. */
size_t klog_format_line(char *buf, size_t cap, int format, bool journald,
                        const struct timeval *tv, int level, const char *tag,
                        const char *msg);

#define klog_error(...) klog(KLOG_ERROR, __VA_ARGS__)
#define klog_warn(...) klog(KLOG_WARN, __VA_ARGS__)
#define klog_info(...) klog(KLOG_INFO, __VA_ARGS__)
#define klog_debug(...) klog(KLOG_DEBUG, __VA_ARGS__)

#endif
