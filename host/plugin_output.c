/*
 * plugin_output: a plugin's stdout and stderr, logged line by line,
 * tagged and rate-limited (see plugin_output.h).
 */
#define _GNU_SOURCE
#include "plugin_output.h"
#include "log.h"
#include "transport.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

static void report_dropped(kh_plugin_output *o, const char *tag) {
    if (!o->dropped)
        return;
    klog_warn("%s plugin output: %llu line%s dropped (over %d lines/s; "
              "%llu dropped in all)",
              tag, (unsigned long long)o->dropped, o->dropped == 1 ? "" : "s",
              KH_PLUGIN_OUTPUT_LINES_PER_S,
              (unsigned long long)o->dropped_total);
    o->dropped = 0;
}

static void emit_line(kh_plugin_output *o, const char *tag) {
    int64_t now = kh_now_ms();
    if (now - o->window_ms >= 1000) {
        report_dropped(o, tag);
        o->window_ms = now;
        o->logged = 0;
    }
    o->lines_total++;
    if (o->logged >= KH_PLUGIN_OUTPUT_LINES_PER_S) {
        o->dropped++;
        o->dropped_total++;
    } else {
        o->logged++;
        klog_info("%s plugin output: %.*s", tag, (int)o->len, o->line);
    }
    o->len = 0;
}

int plugin_output_read(kh_plugin_output *o, int fd, const char *tag) {
    char buf[8192];
    /* A bounded number of reads per call: a plugin printing without
     * pause must not keep the host's loop here. */
    for (int round = 0; round < 16; round++) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n == 0)
            return 0;
        if (n < 0)
            return errno == EAGAIN || errno == EINTR ? 1 : -1;
        for (ssize_t i = 0; i < n; i++) {
            char c = buf[i];
            if (c == '\n') {
                emit_line(o, tag);
                continue;
            }
            o->line[o->len++] = c;
            if (o->len == sizeof o->line)
                emit_line(o, tag);
        }
    }
    return 1;
}

void plugin_output_tick(kh_plugin_output *o, const char *tag) {
    if (o->dropped && kh_now_ms() - o->window_ms >= 1000)
        report_dropped(o, tag);
}

void plugin_output_finish(kh_plugin_output *o, const char *tag) {
    if (o->len)
        emit_line(o, tag);
    report_dropped(o, tag);
    memset(o, 0, sizeof *o);
}
