/*
 * log: timestamped lines on stderr.
 *
 * One write() per line so lines from the host and its workers, which
 * share stderr, never interleave mid-line.
 */
#define _GNU_SOURCE
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static int log_max_level = KLOG_INFO;
static char log_tag[64] = "khost";

void klog_set_level(int level) {
    log_max_level = level;
}

int klog_level(void) {
    return log_max_level;
}

void klog_set_tag(const char *tag) {
    snprintf(log_tag, sizeof log_tag, "%s", tag);
}

static const char *level_name(int level) {
    switch (level) {
    case KLOG_ERROR:
        return "ERROR";
    case KLOG_WARN:
        return "WARN ";
    case KLOG_INFO:
        return "INFO ";
    default:
        return "DEBUG";
    }
}

void klog(int level, const char *fmt, ...) {
    if (level > log_max_level)
        return;
    char line[2048];
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    int n = (int)strftime(line, sizeof line, "%H:%M:%S", &tm);
    n += snprintf(line + n, sizeof line - (size_t)n,
                  ".%03ld %s %s: ", (long)(tv.tv_usec / 1000),
                  level_name(level), log_tag);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof line - 2)
        len = sizeof line - 2;
    line[len++] = '\n';
    ssize_t ignored = write(STDERR_FILENO, line, len);
    (void)ignored;
}
