/*
 * plugin_loader: dlopen a plugin and check it against the host's ABI.
 *
 * The checks run from the cheapest to the most specific so the message
 * names the first thing that is really wrong: the file, the ELF header,
 * the entry point, the ABI version, the descriptor size, the callbacks.
 * Each message has the form "PATH: what is wrong (expected ...)".
 */
#define _GNU_SOURCE
#include "plugin_loader.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define KHOST_ABI_STRING_(a, b) #a "." #b
#define KHOST_ABI_STRING(a, b) KHOST_ABI_STRING_(a, b)
#define HOST_ABI KHOST_ABI_STRING(KHOST_ABI_MAJOR, KHOST_ABI_MINOR)

/* dlopen's own message for a non-ELF file is "invalid ELF header" at best
 * and "file too short" at worst; look at the magic ourselves first. */
static int check_file(const char *path, char *err, size_t errlen) {
    struct stat st;
    if (stat(path, &st) != 0) {
        snprintf(err, errlen, "%s: %s (expected a khost plugin .so file)", path,
                 strerror(errno));
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(err, errlen,
                 "%s: not a regular file (expected a khost plugin .so file)",
                 path);
        return -1;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    unsigned char magic[4] = {0};
    ssize_t n = read(fd, magic, sizeof magic);
    close(fd);
    if (n != 4 || memcmp(magic, "\177ELF", 4) != 0) {
        snprintf(err, errlen,
                 "%s: not a shared object: no ELF header (expected a .so "
                 "built against include/khost/plugin.h)",
                 path);
        return -1;
    }
    return 0;
}

static int check_descriptor(const char *path, const khost_plugin_descriptor *d,
                            char *err, size_t errlen) {
    if (!d) {
        snprintf(err, errlen,
                 "%s: " KHOST_PLUGIN_ENTRY_NAME "() returned NULL (expected a "
                 "pointer to a khost_plugin_descriptor)",
                 path);
        return -1;
    }
    if (d->abi_major != KHOST_ABI_MAJOR) {
        snprintf(err, errlen,
                 "%s: plugin ABI major %u is not supported (this host speaks "
                 "ABI " HOST_ABI "; expected major %d: rebuild the plugin "
                 "against this khost's include/khost/plugin.h)",
                 path, d->abi_major, KHOST_ABI_MAJOR);
        return -1;
    }
    if (d->abi_minor > KHOST_ABI_MINOR) {
        snprintf(err, errlen,
                 "%s: plugin ABI %u.%u is newer than this host's " HOST_ABI
                 " (expected minor <= %d: upgrade khost or build the plugin "
                 "against an older header)",
                 path, d->abi_major, d->abi_minor, KHOST_ABI_MINOR);
        return -1;
    }
    if (d->struct_size < KHOST_DESCRIPTOR_MIN_SIZE) {
        snprintf(err, errlen,
                 "%s: descriptor too small: struct_size is %u bytes (expected "
                 "at least %zu, the size up to 'terminate' in ABI 1.0)",
                 path, d->struct_size, (size_t)KHOST_DESCRIPTOR_MIN_SIZE);
        return -1;
    }
    const char *missing = !d->init        ? "init"
                          : !d->handle    ? "handle"
                          : !d->terminate ? "terminate"
                                          : NULL;
    if (missing) {
        snprintf(err, errlen,
                 "%s: required callback '%s' is NULL (expected init, handle "
                 "and terminate to be set)",
                 path, missing);
        return -1;
    }
    if (!d->name || !d->name[0]) {
        snprintf(err, errlen,
                 "%s: descriptor has no name (expected a short identifier)",
                 path);
        return -1;
    }
    return 0;
}

int plugin_load(const char *path, kh_plugin *plugin, char *err, size_t errlen) {
    memset(plugin, 0, sizeof *plugin);
    if (check_file(path, err, errlen) != 0)
        return -1;

    /* A bare file name would make dlopen search the library path; a
     * plugin path always means that file. */
    char *open_path = NULL;
    if (strchr(path, '/'))
        open_path = strdup(path);
    else if (asprintf(&open_path, "./%s", path) < 0)
        open_path = NULL;
    if (!open_path) {
        snprintf(err, errlen, "%s: out of memory", path);
        return -1;
    }
    void *dl = dlopen(open_path, RTLD_NOW | RTLD_LOCAL);
    free(open_path);
    if (!dl) {
        snprintf(err, errlen, "%s: cannot be loaded: %s", path, dlerror());
        return -1;
    }
    khost_plugin_entry_fn entry;
    /* POSIX's sanctioned way to turn dlsym's void * into a function. */
    *(void **)&entry = dlsym(dl, KHOST_PLUGIN_ENTRY_NAME);
    if (!entry) {
        snprintf(err, errlen,
                 "%s: no entry point '" KHOST_PLUGIN_ENTRY_NAME
                 "' (expected a function exported with KHOST_PLUGIN_EXPORT)",
                 path);
        dlclose(dl);
        return -1;
    }
    const khost_plugin_descriptor *desc = entry();
    if (check_descriptor(path, desc, err, errlen) != 0) {
        dlclose(dl);
        return -1;
    }
    plugin->path = strdup(path);
    plugin->dl = dl;
    plugin->desc = desc;
    return 0;
}

int plugin_init(kh_plugin *plugin, const khost_init_args *args, void **state,
                char *err, size_t errlen) {
    if (args->errbuf && args->errbuf_size)
        args->errbuf[0] = '\0';
    *state = NULL;
    int rc = plugin->desc->init(args, state);
    if (rc == 0)
        return 0;
    const char *why = args->errbuf && args->errbuf[0]
                          ? args->errbuf
                          : "(the plugin gave no reason)";
    snprintf(err, errlen, "%s: init failed (returned %d): %s", plugin->path, rc,
             why);
    return -1;
}

char *plugin_snapshot(const char *path, const char *dir, char *err,
                      size_t errlen) {
    static unsigned serial;
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    char *out = NULL;
    if (asprintf(&out, "%s/%u-%s", dir, ++serial, base) < 0) {
        snprintf(err, errlen, "%s: out of memory", path);
        return NULL;
    }
    int in = open(path, O_RDONLY | O_CLOEXEC);
    int fd =
        in < 0 ? -1 : open(out, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0500);
    if (in < 0 || fd < 0) {
        snprintf(err, errlen, "%s: cannot snapshot to %s: %s", path, out,
                 strerror(errno));
        goto fail;
    }
    /* Readable by a worker running as another user, writable by nobody:
     * chown to that user would let one worker change what others load.
     * fchmod, because the umask may have cut bits from open's mode. */
    fchmod(fd, 0555);
    char buf[65536];
    ssize_t n;
    while ((n = read(in, buf, sizeof buf)) > 0) {
        for (ssize_t done = 0; done < n;) {
            ssize_t w = write(fd, buf + done, (size_t)(n - done));
            if (w < 0) {
                snprintf(err, errlen, "%s: cannot write snapshot %s: %s", path,
                         out, strerror(errno));
                goto fail;
            }
            done += w;
        }
    }
    if (n < 0) {
        snprintf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
        goto fail;
    }
    close(in);
    close(fd);
    return out;
fail:
    if (in >= 0)
        close(in);
    if (fd >= 0) {
        close(fd);
        unlink(out);
    }
    free(out);
    return NULL;
}

void plugin_check_all(const kh_config *cfg, kh_errors *errs) {
    for (size_t i = 0; i < cfg->n_pipelines; i++) {
        const kh_pipeline *p = &cfg->pipelines[i];
        kh_plugin plugin;
        char err[1024];
        if (plugin_load(p->plugin_path, &plugin, err, sizeof err) != 0)
            errors_add(errs, "%s:%d: plugin of [pipeline.%s]: %s", cfg->path,
                       p->plugin_line, p->name, err);
        else
            plugin_unload(&plugin);
    }
}

void plugin_unload(kh_plugin *plugin) {
    if (plugin->dl)
        dlclose(plugin->dl);
    free(plugin->path);
    memset(plugin, 0, sizeof *plugin);
}

void plugin_describe_optional(const kh_plugin *plugin, char *buf, size_t len) {
    const khost_plugin_descriptor *d = plugin->desc;
    struct {
        const char *name;
        int present;
    } opt[] = {
        {"handle_batch",
         KHOST_DESCRIPTOR_HAS(d, handle_batch) && d->handle_batch},
        {"on_assign", KHOST_DESCRIPTOR_HAS(d, on_assign) && d->on_assign},
        {"on_revoke", KHOST_DESCRIPTOR_HAS(d, on_revoke) && d->on_revoke},
        {"tick", KHOST_DESCRIPTOR_HAS(d, tick) && d->tick},
        {"get_extension",
         KHOST_DESCRIPTOR_HAS(d, get_extension) && d->get_extension},
    };
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < sizeof opt / sizeof opt[0]; i++) {
        if (!opt[i].present)
            continue;
        int n = snprintf(buf + used, len - used, "%s%s", used ? " " : "",
                         opt[i].name);
        if (n < 0 || (size_t)n >= len - used)
            break;
        used += (size_t)n;
    }
    if (!used)
        snprintf(buf, len, "none");
}
