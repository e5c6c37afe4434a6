/*
 * admin: control socket. One command line per connection, one reply:
 *   reload [SECONDS]            re-read the config file and apply it (as
 *                               SIGHUP does); answers with the outcome
 *   restart NAME [SECONDS]      restart a pipeline (revives a FAILED one)
 *   restart-worker NAME N [S]   restart one worker in order
 *   pause|resume NAME TOPIC P   a partition (resume releases a hold)
 *   status                      one line per pipeline
 *   status json                 the JSON of GET /api/v1/status, one line
 * Replies: "ok: ...", "error: rejected: ..." (bad request or config),
 * "error: busy: ...", "error: failed: ...", "error: timeout: ...". The
 * steps themselves are ops.c's; waits are answered from admin_tick.
 */
#define _GNU_SOURCE
#include "admin.h"

#include "host.h"
#include "log.h"
#include "ops.h"
#include "reload.h"
#include "status.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define KH_RUN_DIR "/run/khost"

static void add_path(kh_admin_paths *out, char *path, const char *why) {
    if (!path)
        return;
    for (size_t i = 0; i < out->n; i++) {
        if (!strcmp(out->path[i], path)) {
            free(path); /* e.g. RUNTIME_DIRECTORY=/run/khost */
            return;
        }
    }
    out->path[out->n] = path;
    out->why[out->n++] = why;
}

/* systemd sets RUNTIME_DIRECTORY to a colon-separated list when
 * RuntimeDirectory= names several folders; the socket is in the first. */
static char *runtime_dir_socket(void) {
    const char *rt = getenv("RUNTIME_DIRECTORY");
    size_t n = rt ? strcspn(rt, ":") : 0;
    char *out = NULL;
    if (n == 0 || asprintf(&out, "%.*s/khost.sock", (int)n, rt) < 0)
        return NULL;
    return out;
}

/* /tmp/khost-UID-HASH.sock: FNV-1a of the config file's real path, a
 * short, stable name for "the host of this config file". */
static char *per_user_socket(const char *config_path) {
    char real[PATH_MAX];
    if (!realpath(config_path, real))
        return NULL;
    uint64_t h = 1469598103934665603ULL;
    for (const char *p = real; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    char *out = NULL;
    if (asprintf(&out, "/tmp/khost-%u-%016llx.sock", (unsigned)getuid(),
                 (unsigned long long)h) < 0)
        return NULL;
    return out;
}

void admin_socket_paths(kh_admin_paths *out, const char *explicit_path,
                        const char *explicit_why, const char *config_path,
                        bool for_host) {
    memset(out, 0, sizeof *out);
    if (explicit_path)
        add_path(out, strdup(explicit_path), explicit_why);
    add_path(out, runtime_dir_socket(), "$RUNTIME_DIRECTORY");
    /* The host does not create /run/khost (systemd's RuntimeDirectory= or
     * the package does), and uses it only when it may create a socket
     * there; a client always tries it. */
    if (!for_host || access(KH_RUN_DIR, W_OK | X_OK) == 0)
        add_path(out, strdup(KH_RUN_DIR "/khost.sock"), KH_RUN_DIR);
    /* khost@NAME.service runs /etc/khost/NAME.ini with its socket in
     * /run/khost/NAME/: a client given that file finds it there. (The
     * host is told by the unit: --socket.) */
    if (!for_host && config_path) {
        const char *base = strrchr(config_path, '/');
        base = base ? base + 1 : config_path;
        size_t stem = strcspn(base, ".");
        char *p = NULL;
        if (stem &&
            asprintf(&p, KH_RUN_DIR "/%.*s/khost.sock", (int)stem, base) < 0)
            p = NULL;
        add_path(out, p, "khost@NAME.service");
    }
    if (config_path) {
        char *p = per_user_socket(config_path);
        if (!p)
            out->per_user_errno = errno;
        add_path(out, p, "the per-user default");
    }
}

void admin_paths_free(kh_admin_paths *paths) {
    for (size_t i = 0; i < paths->n; i++)
        free(paths->path[i]);
    memset(paths, 0, sizeof *paths);
}

static void reply(int fd, const char *line) {
    size_t len = strlen(line);
    ssize_t w = send(fd, line, len, MSG_NOSIGNAL);
    (void)w;
}

static void do_status(kh_host *host, int fd) {
    char line[2300];
    size_t n_failed = 0;
    for (size_t i = 0; i < host->n_pipelines; i++) {
        kh_pipeline_rt *pl = host->pipelines[i];
        int assigned = 0;
        for (size_t p = 0; p < pl->n_parts; p++)
            assigned += pl->parts[p]->assigned;
        n_failed += pl->failed;
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
        /* What an operator stopped, or on_failure = pause holds: each
         * waits for a khost resume. */
        for (size_t p = 0; p < pl->n_parts; p++) {
            kh_part *part = pl->parts[p];
            if (!part->assigned || (!part->held && !part->operator_paused))
                continue;
            if (part->held)
                snprintf(line, sizeof line,
                         "  partition=%s/%d held at offset=%lld (on_failure "
                         "= pause): khost resume %s %s %d releases it\n",
                         part->topic, (int)part->partition,
                         (long long)part->held_offset, pl->cfg->name,
                         part->topic, (int)part->partition);
            else
                snprintf(line, sizeof line,
                         "  partition=%s/%d paused by an operator: khost "
                         "resume %s %s %d\n",
                         part->topic, (int)part->partition, pl->cfg->name,
                         part->topic, (int)part->partition);
            reply(fd, line);
        }
    }
    if (n_failed && n_failed == host->n_pipelines) {
        snprintf(line, sizeof line,
                 "host: all %zu pipeline(s) FAILED: nothing is consumed; "
                 "khost restart NAME or a reload starts them again\n",
                 n_failed);
        reply(fd, line);
    }
    if (host->reload.gen) {
        char out[sizeof host->reload.outcome];
        int rc = reload_outcome(host, out, sizeof out);
        snprintf(line, sizeof line, "last-reload: %s%s\n",
                 rc == 1 ? "under way, " : "", out);
        reply(fd, line);
    }
    reply(fd, "ok\n");
}

/* A client waiting for the outcome of the step it asked for. */
struct kh_admin_wait {
    int fd;
    int64_t deadline_ms;
    kh_ops_wait what;
    struct kh_admin_wait *next;
};

/* The reply line for a settled (or timed out) step: "ok: ..." or
 * "error: ...". */
static void settled_line(int rc, const char *out, char *line, size_t len) {
    snprintf(line, len, "%s: %s\n", rc == 0 ? "ok" : "error", out);
}

/* Answer with the outcome now when it is known, else keep the client
 * until it is (admin_tick) or its timeout passes. */
static void answer_or_wait(kh_host *host, int c, const kh_ops_wait *what,
                           int timeout_s) {
    char out[sizeof host->reload.outcome], line[sizeof out + 16];
    int rc = ops_check(host, what, out, sizeof out);
    if (rc != 1) {
        settled_line(rc, out, line, sizeof line);
        reply(c, line);
        close(c);
        return;
    }
    struct kh_admin_wait *w = calloc(1, sizeof *w);
    if (!w) {
        reply(c, "error: out of memory\n");
        close(c);
        return;
    }
    w->fd = c;
    w->deadline_ms = kh_now_ms() + timeout_s * 1000LL;
    w->what = *what;
    w->next = host->admin_waits;
    host->admin_waits = w;
}

void admin_tick(kh_host *host, int64_t now_ms) {
    struct kh_admin_wait **pp = &host->admin_waits;
    while (*pp) {
        struct kh_admin_wait *w = *pp;
        char out[sizeof host->reload.outcome], line[sizeof out + 160];
        /* Shutting down: the pipelines may be gone already (host_free),
         * so the outcome is not asked for; had it settled, the tick would
         * have answered before. */
        int rc = host->shutting_down
                     ? 1
                     : ops_check(host, &w->what, out, sizeof out);
        if (rc == 1 && !host->shutting_down && now_ms < w->deadline_ms) {
            pp = &w->next;
            continue;
        }
        if (rc != 1)
            settled_line(rc, out, line, sizeof line);
        else if (host->shutting_down)
            snprintf(line, sizeof line,
                     "error: khost is shutting down before the %s settled\n",
                     w->what.kind == KH_OPS_WAIT_RELOAD ? "reload" : "restart");
        else
            snprintf(line, sizeof line,
                     "error: timeout: the %s is still under way (%s); it "
                     "goes on: see khost status and the log\n",
                     w->what.kind == KH_OPS_WAIT_RELOAD ? "reload"
                                                        : "worker restart",
                     out);
        reply(w->fd, line);
        close(w->fd);
        *pp = w->next;
        free(w);
    }
}

/* A client that names its config file (config=PATH, the real path) must
 * reach the host of that file: a host of another file answers
 * "elsewhere:", and the client tries the next path of its list. */
static bool serves(kh_host *host, const char *real) {
    char mine[PATH_MAX];
    return !real || !realpath(host->cfg->path, mine) || !strcmp(real, mine);
}

/* The reply prefix of an ops result that is not OK. Not found counts as
 * rejected (the CLI's exit status 2: the request itself was wrong). */
static const char *error_prefix(kh_ops_rc rc) {
    switch (rc) {
    case KH_OPS_NOT_FOUND:
        return "rejected: ";
    case KH_OPS_CONFLICT:
    case KH_OPS_REJECTED: /* the message says "rejected: ..." itself */
    case KH_OPS_FAILED:
    case KH_OPS_OK:
        break;
    }
    return "";
}

static void do_status_json(kh_host *host, int fd) {
    json_t *j = status_json(host);
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!text) {
        reply(fd, "error: out of memory\n");
        return;
    }
    reply(fd, text);
    reply(fd, "\n");
    free(text);
}

/* The command line's words: NAME ARG... [config=PATH]. */
static int on_admin(sd_event_source *s, int fd, uint32_t revents, void *ud) {
    kh_host *host = ud;
    (void)s;
    (void)revents;
    int c = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
    if (c < 0)
        return 0;
    /* A short, bounded read: a client that says nothing is dropped. */
    char cmd[PATH_MAX + 256] = "";
    struct pollfd p = {.fd = c, .events = POLLIN};
    if (poll(&p, 1, 1000) == 1) {
        ssize_t n = recv(c, cmd, sizeof cmd - 1, 0);
        cmd[n > 0 ? n : 0] = '\0';
        cmd[strcspn(cmd, "\r\n")] = '\0';
    }
    char *config = strstr(cmd, " config=");
    if (config) {
        *config = '\0';
        config += strlen(" config=");
    }
    static const char *const who = "on the control socket";
    char msg[2048], line[2100], name[128] = "", topic[256] = "";
    int timeout_s = 120, n = 0;
    kh_ops_wait what = {0};
    kh_ops_rc rc = KH_OPS_OK;
    bool waits = false;
    if (!serves(host, config)) {
        snprintf(line, sizeof line, "elsewhere: this khost runs %s\n",
                 host->cfg->path);
        reply(c, line);
        close(c);
        return 0;
    }
    if (!strncmp(cmd, "reload", 6) && (!cmd[6] || cmd[6] == ' ')) {
        sscanf(cmd + 6, "%d", &timeout_s);
        rc = ops_reload(host, who, &what, msg, sizeof msg);
        waits = true;
    } else if (sscanf(cmd, "restart-worker %127s %d %d", name, &n,
                      &timeout_s) >= 2) {
        rc = ops_restart_worker(host, name, n, who, &what, msg, sizeof msg);
        waits = true;
    } else if (sscanf(cmd, "restart %127s %d", name, &timeout_s) >= 1) {
        rc = ops_restart_pipeline(host, name, who, &what, msg, sizeof msg);
        waits = true;
    } else if (sscanf(cmd, "pause %127s %255s %d", name, topic, &n) == 3 ||
               sscanf(cmd, "resume %127s %255s %d", name, topic, &n) == 3) {
        rc = ops_pause(host, name, topic, n, cmd[0] == 'p', who, msg,
                       sizeof msg);
    } else if (!strcmp(cmd, "status json")) {
        do_status_json(host, c);
        close(c);
        return 0;
    } else if (!strcmp(cmd, "status")) {
        do_status(host, c);
        close(c);
        return 0;
    } else {
        reply(c, "error: unknown command (expected reload, restart NAME, "
                 "restart-worker NAME N, pause|resume NAME TOPIC PARTITION "
                 "or status [json])\n");
        close(c);
        return 0;
    }
    if (rc == KH_OPS_OK && waits) {
        answer_or_wait(host, c, &what, timeout_s);
        return 0;
    }
    if (rc == KH_OPS_OK)
        snprintf(line, sizeof line, "ok: %s\n", msg);
    else
        snprintf(line, sizeof line, "error: %s%s\n", error_prefix(rc), msg);
    reply(c, line);
    close(c);
    return 0;
}

/* Bind and listen on host->admin_path, unless a live host answers there
 * (never steal its socket) or the path is not a socket (never delete what
 * is not ours). Remembers the socket file's device and inode, so that
 * admin_check_socket and admin_stop know whether the path still names it.
 */
static int admin_bind(kh_host *host, char *err, size_t errlen) {
    const char *path = host->admin_path;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof addr.sun_path) {
        snprintf(err, errlen, "socket path too long (at most %zu bytes): %s",
                 sizeof addr.sun_path - 1, path);
        return -1;
    }
    strcpy(addr.sun_path, path);
    /* A socket left by a host that died is stale; one that answers is a
     * live host, which we must not steal. Closing at once costs that host
     * no wait: it reads the end of the connection. */
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (probe >= 0) {
        int rc = connect(probe, (struct sockaddr *)&addr, sizeof addr);
        int e = errno;
        close(probe);
        if (rc == 0 || e == EAGAIN) {
            snprintf(err, errlen, "another khost already answers at %s", path);
            return -1;
        }
    }
    struct stat st;
    if (lstat(path, &st) == 0 && !S_ISSOCK(st.st_mode)) {
        snprintf(err, errlen, "%s exists and is not a socket", path);
        return -1;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    unlink(path);
    mode_t old = umask(0177); /* the socket is created 0600 */
    int rc = bind(fd, (struct sockaddr *)&addr, sizeof addr);
    umask(old);
    if (rc != 0 || listen(fd, 8) != 0 || stat(path, &st) != 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    host->admin_dev = st.st_dev;
    host->admin_ino = st.st_ino;
    host->admin_fd = fd;
    sd_event_add_io(host->ev, &host->admin_src, fd, EPOLLIN, on_admin, host);
    return 0;
}

/* Does the path still name the socket we bound? */
static bool admin_path_is_ours(kh_host *host) {
    struct stat st;
    return host->admin_fd >= 0 && host->admin_path &&
           stat(host->admin_path, &st) == 0 && S_ISSOCK(st.st_mode) &&
           st.st_dev == host->admin_dev && st.st_ino == host->admin_ino;
}

static void admin_close(kh_host *host) {
    host->admin_src = sd_event_source_disable_unref(host->admin_src);
    if (host->admin_fd >= 0) {
        close(host->admin_fd);
        host->admin_fd = -1;
    }
}

int admin_start(kh_host *host, char *err, size_t errlen) {
    const kh_config *cfg = host->cfg;
    kh_admin_paths paths;
    admin_socket_paths(&paths, cfg->control_socket,
                       cfg->control_socket_line ? "control_socket" : "--socket",
                       cfg->path, true);
    if (paths.n == 0) {
        snprintf(err, errlen, "cannot resolve %s: %s", cfg->path,
                 strerror(paths.per_user_errno));
        return -1;
    }
    const char *why = paths.why[0];
    host->admin_path = paths.path[0];
    paths.path[0] = NULL;
    for (size_t i = 1; i < paths.n; i++)
        free(paths.path[i]);
    /* The path stays chosen even when it cannot be bound now: SIGHUP
     * tries it again (admin_check_socket). */
    if (admin_bind(host, err, errlen) != 0)
        return -1;
    if (!strcmp(why, "control_socket"))
        klog_info("control socket %s (control_socket in %s)", host->admin_path,
                  cfg->path);
    else
        klog_info("control socket %s (%s)", host->admin_path, why);
    return 0;
}

void admin_check_socket(kh_host *host) {
    if (!host->admin_path || admin_path_is_ours(host))
        return;
    if (host->admin_fd >= 0) {
        struct stat st;
        bool gone = stat(host->admin_path, &st) != 0;
        klog_warn("control socket %s %s: binding it again", host->admin_path,
                  gone ? "was deleted" : "now names another file");
        admin_close(host);
    }
    char err[512];
    if (admin_bind(host, err, sizeof err) != 0)
        klog_warn("control socket unavailable (khost reload will not work; "
                  "SIGHUP still does): %s",
                  err);
    else
        klog_info("control socket %s bound again", host->admin_path);
}

void admin_stop(kh_host *host) {
    admin_tick(host, kh_now_ms()); /* waiting clients get their answer */
    /* Unlink only our own socket: after a deletion the path may be
     * another host's by now. */
    if (admin_path_is_ours(host))
        unlink(host->admin_path);
    admin_close(host);
    free(host->admin_path);
    host->admin_path = NULL;
}

/* One request on one path: 0 with the reply, or -1 with errno set when
 * nothing answers there. */
static int request_one(const char *path, const char *command, char *out,
                       size_t len, int wait_ms) {
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof addr.sun_path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    strcpy(addr.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    char line[PATH_MAX + 300];
    snprintf(line, sizeof line, "%s\n", command);
    if (send(fd, line, strlen(line), MSG_NOSIGNAL) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    /* A reload waits for its outcome, bounded by the timeout it names
     * (the host answers by then, so wait_ms is that plus a margin). */
    size_t used = 0;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    while (used + 1 < len && poll(&p, 1, wait_ms) == 1) {
        ssize_t n = recv(fd, out + used, len - used - 1, 0);
        if (n <= 0)
            break;
        used += (size_t)n;
    }
    out[used] = '\0';
    close(fd);
    return 0;
}

int admin_request(const kh_admin_paths *paths, const char *command, char *out,
                  size_t len, int wait_ms) {
    char tried[2048] = "";
    size_t used = 0;
    for (size_t i = 0; i < paths->n; i++) {
        const char *why;
        if (request_one(paths->path[i], command, out, len, wait_ms) == 0) {
            /* The host of another config file: not ours, try on. */
            if (strncmp(out, "elsewhere: ", 11))
                return 0;
            out[strcspn(out, "\n")] = '\0';
            why = out + 11;
        } else {
            why = strerror(errno);
        }
        int n = snprintf(tried + used, sizeof tried - used, "%s%s: %s",
                         used ? ", " : "", paths->path[i], why);
        if (n > 0)
            used = used + (size_t)n < sizeof tried ? used + (size_t)n
                                                   : sizeof tried - 1;
    }
    if (paths->per_user_errno) {
        int n = snprintf(tried + used, sizeof tried - used,
                         "%sno per-user path: %s", used ? ", " : "",
                         strerror(paths->per_user_errno));
        (void)n;
    }
    snprintf(out, len, "no khost answers (tried %s)", tried);
    return -1;
}
