/*
 * log: one line per event on stderr, "TIME LEVEL message".
 *
 * Callers put the context in the message as key=value pairs
 * (pipeline=orders partition=3 offset=42) so a line can be grepped.
 */
#ifndef KHOST_LOG_H
#define KHOST_LOG_H

enum { KLOG_ERROR = 3, KLOG_WARN = 4, KLOG_INFO = 6, KLOG_DEBUG = 7 };

void klog_set_level(int level);
int klog_level(void);
/* Prefix every line of this process, e.g. "worker orders/1". */
void klog_set_tag(const char *tag);
void klog(int level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define klog_error(...) klog(KLOG_ERROR, __VA_ARGS__)
#define klog_warn(...) klog(KLOG_WARN, __VA_ARGS__)
#define klog_info(...) klog(KLOG_INFO, __VA_ARGS__)
#define klog_debug(...) klog(KLOG_DEBUG, __VA_ARGS__)

#endif
