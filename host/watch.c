/*
 * watch: [host] watch = true. inotify on the folders of the config file
 * and of the plugins, from the host's sd-event loop; a change of one of
 * those files schedules a reload after a quiet period (host->watch_due_ms,
 * which the host's loop acts on). Owns host->watch_srcs; calls nothing
 * but sd-event and the log.
 */
#define _GNU_SOURCE
#include "watch.h"

#include "host.h"
#include "log.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>

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

void watch_stop(kh_host *host) {
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

void watch_arm(kh_host *host) {
    watch_stop(host);
    if (!host->cfg->watch)
        return;
    watch_dir(host, host->cfg->path);
    for (size_t i = 0; i < host->cfg->n_pipelines; i++)
        watch_dir(host, host->cfg->pipelines[i].plugin_path);
    klog_info("watch: reloading when %s or a plugin file changes",
              host->cfg->path);
}
