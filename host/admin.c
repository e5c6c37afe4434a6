/*
 * admin: control socket. Commands:
 *   reload   re-read the config file and apply it (as SIGHUP does), but
 *            answer with the outcome: "ok: applied: ..." or
 *            "error: rejected: ..."
 *   status   one line per pipeline: plugin, workers, counters
 */
#define _GNU_SOURCE
#include "admin.h"

#include "admin.h"
#include "host.h"
#include "log.h"
#include "reload.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

char *admin_socket_path(const char *config_path) {
    char real[PATH_MAX];
    if (!realpath(config_path, real))
        return NULL;
    char *out = NULL;
    const char *rt = getenv("RUNTIME_DIRECTORY");
    if (rt && *rt) {
        if (asprintf(&out, "%s/khost.sock", rt) < 0)
            return NULL;
        return out;
    }
    /* FNV-1a: a short, stable name for "the host of this config file". */
    uint64_t h = 1469598103934665603ULL;
    for (const char *p = real; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    if (asprintf(&out, "/tmp/khost-%u-%016llx.sock", (unsigned)getuid(),
                 (unsigned long long)h) < 0)
        return NULL;
    return out;
}

static void reply(int fd, const char *line) {
    size_t len = strlen(line);
    ssize_t w = send(fd, line, len, MSG_NOSIGNAL);
    (void)w;
}

static void do_status(kh_host *host, int fd) {
    char line[512];
    for (size_t i = 0; i < host->n_pipelines; i++) {
        kh_pipeline_rt *pl = host->pipelines[i];
        int assigned = 0;
        for (size_t p = 0; p < pl->n_parts; p++)
            assigned += pl->parts[p]->assigned;
        snprintf(line, sizeof line,
                 "pipeline=%s plugin=%s version=%s workers=%d partitions=%d "
                 "handled=%llu crashes=%llu failed=%llu dead-lettered=%llu "
                 "reloads=%llu%s\n",
                 pl->cfg->name, pl->plugin_name, pl->plugin_version,
                 pl->n_workers, assigned, (unsigned long long)pl->handled,
                 (unsigned long long)pl->crashes,
                 (unsigned long long)pl->failures,
                 (unsigned long long)pl->dlq_written,
                 (unsigned long long)pl->reloads, pl->failed ? " FAILED" : "");
        reply(fd, line);
    }
    reply(fd, "ok\n");
}

static int on_admin(sd_event_source *s, int fd, uint32_t revents, void *ud) {
    kh_host *host = ud;
    (void)s;
    (void)revents;
    int c = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
    if (c < 0)
        return 0;
    /* A short, bounded read: a client that says nothing is dropped. */
    char cmd[64] = "";
    struct pollfd p = {.fd = c, .events = POLLIN};
    if (poll(&p, 1, 1000) == 1) {
        ssize_t n = recv(c, cmd, sizeof cmd - 1, 0);
        cmd[n > 0 ? n : 0] = '\0';
        cmd[strcspn(cmd, "\r\n")] = '\0';
    }
    char msg[600], line[640];
    if (!strcmp(cmd, "reload")) {
        klog_info("reload requested on the control socket");
        int rc = reload_apply(host, msg, sizeof msg);
        if (rc == 0)
            admin_watch(host); /* plugin paths may have changed */
        snprintf(line, sizeof line, "%s: %s\n", rc == 0 ? "ok" : "error", msg);
        reply(c, line);
    } else if (!strcmp(cmd, "status")) {
        do_status(host, c);
    } else {
        reply(c, "error: unknown command (expected reload or status)\n");
    }
    close(c);
    return 0;
}

#define KH_WATCH_QUIET_MS 300

static bool watched_name(kh_host *host, const char *dir, const char *name) {
    size_t dl = strlen(dir);
    const char *paths[1 + 256];
    size_t n = 0;
    paths[n++] = host->cfg->path;
    for (size_t i = 0; i < host->cfg->n_pipelines && n < 257; i++)
        paths[n++] = host->cfg->pipelines[i].plugin_path;
    for (size_t i = 0; i < n; i++) {
        const char *slash = strrchr(paths[i], '/');
        const char *base = slash ? slash + 1 : paths[i];
        size_t pl = slash ? (size_t)(slash - paths[i]) : 1;
        const char *pdir = slash ? paths[i] : ".";
        if (pl == dl && !strncmp(pdir, dir, dl) && !strcmp(base, name))
            return true;
    }
    return false;
}

static int on_watch(sd_event_source *s, const struct inotify_event *ev,
                    void *ud) {
    kh_host *host = ud;
    const char *dir = NULL;
    sd_event_source_get_description(s, &dir);
    if (ev->len && dir && watched_name(host, dir, ev->name)) {
        /* Wait for quiet: an editor or a deploy writes in several steps. */
        host->watch_due_ms = kh_now_ms() + KH_WATCH_QUIET_MS;
        klog_debug("watch: %s/%s changed", dir, ev->name);
    }
    return 0;
}

static void unwatch(kh_host *host) {
    for (size_t i = 0; i < host->n_watch; i++)
        sd_event_source_disable_unref(host->watch_srcs[i]);
    free(host->watch_srcs);
    host->watch_srcs = NULL;
    host->n_watch = 0;
}

static void watch_dir(kh_host *host, const char *path) {
    char dir[PATH_MAX];
    const char *slash = strrchr(path, '/');
    if (slash)
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    else
        snprintf(dir, sizeof dir, ".");
    for (size_t i = 0; i < host->n_watch; i++) {
        const char *d = NULL;
        sd_event_source_get_description(host->watch_srcs[i], &d);
        if (d && !strcmp(d, dir))
            return;
    }
    sd_event_source *src = NULL;
    int rc = sd_event_add_inotify(host->ev, &src, dir,
                                  IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE,
                                  on_watch, host);
    if (rc < 0) {
        klog_warn("watch: cannot watch %s: %s", dir, strerror(-rc));
        return;
    }
    sd_event_source_set_description(src, dir);
    host->watch_srcs =
        realloc(host->watch_srcs, (host->n_watch + 1) * sizeof src);
    host->watch_srcs[host->n_watch++] = src;
}

void admin_watch(kh_host *host) {
    unwatch(host);
    if (!host->cfg->watch)
        return;
    watch_dir(host, host->cfg->path);
    for (size_t i = 0; i < host->cfg->n_pipelines; i++)
        watch_dir(host, host->cfg->pipelines[i].plugin_path);
    klog_info("watch: reloading when %s or a plugin file changes",
              host->cfg->path);
}

int admin_start(kh_host *host, char *err, size_t errlen) {
    host->admin_path = admin_socket_path(host->cfg->path);
    if (!host->admin_path) {
        snprintf(err, errlen, "cannot resolve %s: %s", host->cfg->path,
                 strerror(errno));
        return -1;
    }
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(host->admin_path) >= sizeof addr.sun_path) {
        snprintf(err, errlen, "socket path too long: %s", host->admin_path);
        return -1;
    }
    strcpy(addr.sun_path, host->admin_path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    /* A socket left by a host that died is stale; one that answers is a
     * live host on the same config file, which we must not steal. */
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0) {
        snprintf(err, errlen, "another khost already serves %s at %s",
                 host->cfg->path, host->admin_path);
        close(fd);
        free(host->admin_path);
        host->admin_path = NULL;
        return -1;
    }
    unlink(host->admin_path);
    mode_t old = umask(0177); /* the socket is created 0600 */
    int rc = bind(fd, (struct sockaddr *)&addr, sizeof addr);
    umask(old);
    if (rc != 0 || listen(fd, 8) != 0) {
        snprintf(err, errlen, "%s: %s", host->admin_path, strerror(errno));
        close(fd);
        free(host->admin_path);
        host->admin_path = NULL;
        return -1;
    }
    host->admin_fd = fd;
    sd_event_add_io(host->ev, &host->admin_src, fd, EPOLLIN, on_admin, host);
    klog_info("control socket %s (khost reload -c %s)", host->admin_path,
              host->cfg->path);
    return 0;
}

void admin_stop(kh_host *host) {
    unwatch(host);
    host->admin_src = sd_event_source_disable_unref(host->admin_src);
    if (host->admin_fd >= 0) {
        close(host->admin_fd);
        host->admin_fd = -1;
    }
    if (host->admin_path) {
        unlink(host->admin_path);
        free(host->admin_path);
        host->admin_path = NULL;
    }
}

int admin_request(const char *config_path, const char *command, char *out,
                  size_t len) {
    char *path = admin_socket_path(config_path);
    if (!path) {
        snprintf(out, len, "%s: %s", config_path, strerror(errno));
        return -1;
    }
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        snprintf(out, len, "no khost is running %s (control socket %s: %s)",
                 config_path, path, strerror(errno));
        if (fd >= 0)
            close(fd);
        free(path);
        return -1;
    }
    free(path);
    char line[80];
    snprintf(line, sizeof line, "%s\n", command);
    if (send(fd, line, strlen(line), MSG_NOSIGNAL) < 0) {
        snprintf(out, len, "send: %s", strerror(errno));
        close(fd);
        return -1;
    }
    /* A reload may take as long as the plugin swaps' first steps. */
    size_t used = 0;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    while (used + 1 < len && poll(&p, 1, 120000) == 1) {
        ssize_t n = recv(fd, out + used, len - used - 1, 0);
        if (n <= 0)
            break;
        used += (size_t)n;
    }
    out[used] = '\0';
    close(fd);
    return 0;
}
