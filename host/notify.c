/*
 * notify: khost as a systemd Type=notify service. The host tells the
 * service manager when it is ready (every pipeline's workers answered
 * READY once, or the pipeline FAILED), what it is doing (STATUS, one line,
 * sent when its text changes), when a reload starts and ends (RELOADING=1
 * with MONOTONIC_USEC, then READY=1), when the drain starts (STOPPING=1)
 * and, with WatchdogSec, that its loop still turns (WATCHDOG=1).
 *
 * sd_notify reads NOTIFY_SOCKET at each call, and workers are spawned with
 * the host's environment: notify_init remembers the socket's address and
 * the watchdog's interval, then unsets NOTIFY_SOCKET, WATCHDOG_USEC and
 * WATCHDOG_PID, and the datagrams go out through a socket of our own to the
 * address remembered (a path, or '@' for an abstract name), as sd_notify
 * would send them. A leaf: calls libsystemd (sd_watchdog_enabled), libc
 * and log.c. Runs on the event-loop thread only.
 */
#define _GNU_SOURCE
#include "notify.h"

#include "log.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#define STATUS_MIN_GAP_MS 1000 /* STATUS changes at most once a second */
#define STATUS_HOLD_MS 5000    /* a reload's outcome stays this long */

static struct {
    int fd; /* -1: no socket, every call is a no-op */
    struct sockaddr_un addr;
    socklen_t addr_len;
    uint64_t watchdog_usec; /* 0: no watchdog */
    int64_t last_ping_ms;
    bool ready_sent;
    bool send_failed; /* logged once */
    char status[256]; /* the last STATUS sent */
    int64_t status_ms;
    int64_t hold_until_ms;
} nt = {.fd = -1};

static int64_t mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The address NOTIFY_SOCKET names; false (with why) when we cannot use
 * it. */
static bool parse_address(const char *s, const char **why) {
    size_t n = strlen(s);
    memset(&nt.addr, 0, sizeof nt.addr);
    nt.addr.sun_family = AF_UNIX;
    if (s[0] != '/' && s[0] != '@') {
        *why = "not an absolute path nor an abstract name (@...)";
        return false;
    }
    if (n < 2 || n > sizeof nt.addr.sun_path) {
        *why = "too long for a unix socket address";
        return false;
    }
    memcpy(nt.addr.sun_path, s, n);
    if (s[0] == '@')
        nt.addr.sun_path[0] = '\0';
    /* A path ends with its NUL when it fits, an abstract name does not. */
    nt.addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n +
                              (s[0] == '/' && n < sizeof nt.addr.sun_path));
    return true;
}

void notify_init(void) {
    const char *sock = getenv("NOTIFY_SOCKET");
    uint64_t usec = 0;
    /* > 0 only when WATCHDOG_USEC is set and WATCHDOG_PID is absent or
     * names this process. */
    bool watchdog = sd_watchdog_enabled(0, &usec) > 0 && usec > 0;
    if (sock && *sock) {
        const char *why = NULL;
        if (!parse_address(sock, &why)) {
            klog_warn("NOTIFY_SOCKET=%s cannot be used (%s): no systemd "
                      "notifications",
                      sock, why);
        } else if ((nt.fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0)) <
                   0) {
            klog_warn("no systemd notifications: socket: %s", strerror(errno));
        } else {
            nt.watchdog_usec = watchdog ? usec : 0;
            if (nt.watchdog_usec)
                klog_info("systemd: notifying %s, watchdog every %llu ms", sock,
                          (unsigned long long)(usec / 1000));
            else
                klog_info("systemd: notifying %s", sock);
        }
    }
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
}

void notify_close(void) {
    if (nt.fd >= 0)
        close(nt.fd);
    nt.fd = -1;
}

bool notify_active(void) {
    return nt.fd >= 0;
}

bool notify_ready_sent(void) {
    return nt.ready_sent;
}

uint64_t notify_watchdog_usec(void) {
    return nt.fd >= 0 ? nt.watchdog_usec : 0;
}

static void send_text(const char *text) {
    if (nt.fd < 0)
        return;
    ssize_t n = sendto(nt.fd, text, strlen(text), MSG_NOSIGNAL | MSG_DONTWAIT,
                       (const struct sockaddr *)&nt.addr, nt.addr_len);
    if (n < 0 && !nt.send_failed) {
        nt.send_failed = true; /* once: a gone manager must not flood */
        klog_warn("systemd notification failed (further failures are not "
                  "logged): %s",
                  strerror(errno));
    } else if (n >= 0 && nt.send_failed) {
        nt.send_failed = false;
        klog_info("systemd notifications are delivered again");
    }
}

/* Send "HEAD" plus STATUS=status when given (one line: newlines become
 * spaces), and remember the status. */
static void send_with_status(const char *head, const char *status) {
    char buf[512];
    int n = snprintf(buf, sizeof buf, "%s", head);
    if (status && n >= 0 && (size_t)n < sizeof buf) {
        snprintf(nt.status, sizeof nt.status, "%s", status);
        for (char *p = nt.status; *p; p++)
            if (*p == '\n' || *p == '\r')
                *p = ' ';
        nt.status_ms = mono_ms();
        snprintf(buf + n, sizeof buf - (size_t)n, "%sSTATUS=%s",
                 n > 0 ? "\n" : "", nt.status);
    }
    send_text(buf);
}

void notify_ready(const char *status) {
    if (nt.fd < 0)
        return;
    if (nt.ready_sent) {
        notify_status(status);
        return;
    }
    nt.ready_sent = true;
    nt.hold_until_ms = 0;
    send_with_status("READY=1", status);
    klog_info("systemd: READY=1 (%s)", nt.status);
}

void notify_status(const char *status) {
    if (nt.fd < 0 || !strcmp(status, nt.status))
        return;
    int64_t now = mono_ms();
    if (now < nt.hold_until_ms || now - nt.status_ms < STATUS_MIN_GAP_MS)
        return;
    send_with_status("", status);
}

void notify_stopping(void) {
    if (nt.fd < 0)
        return;
    nt.hold_until_ms = 0;
    send_with_status("STOPPING=1", "draining");
}

void notify_reloading(void) {
    if (nt.fd < 0 || !nt.ready_sent)
        return;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    char head[96];
    snprintf(head, sizeof head, "RELOADING=1\nMONOTONIC_USEC=%llu",
             (unsigned long long)ts.tv_sec * 1000000ULL +
                 (unsigned long long)ts.tv_nsec / 1000ULL);
    send_with_status(head, "reloading");
}

void notify_reload_done(const char *outcome) {
    if (nt.fd < 0)
        return;
    char status[256];
    snprintf(status, sizeof status, "reload %s", outcome);
    send_with_status(nt.ready_sent ? "READY=1" : "", status);
    nt.hold_until_ms = mono_ms() + STATUS_HOLD_MS;
}

void notify_keepalive(void) {
    if (nt.fd < 0 || !nt.watchdog_usec)
        return;
    int64_t now = mono_ms();
    /* A quarter of the interval: the tick (50 ms) or a drain's poll
     * (10 ms) may come a little late, and systemd asks for at most half. */
    int64_t every_ms = (int64_t)(nt.watchdog_usec / 4000);
    if (nt.last_ping_ms && now - nt.last_ping_ms < every_ms)
        return;
    nt.last_ping_ms = now;
    send_text("WATCHDOG=1");
}
