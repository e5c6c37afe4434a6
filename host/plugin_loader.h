/*
 * plugin_loader: opens a plugin .so and validates its descriptor against
 * the host's ABI, so that every rejection is one clear line naming the
 * file, what is wrong and what was expected, instead of a crash.
 */
#ifndef KHOST_PLUGIN_LOADER_H
#define KHOST_PLUGIN_LOADER_H

#include "config.h"

#include <khost/plugin.h>
#include <stddef.h>

typedef struct kh_plugin {
    char *path; /* the file as asked for */
    void *dl;   /* dlopen handle */
    const khost_plugin_descriptor *desc;
} kh_plugin;

/* Open `path` with RTLD_NOW | RTLD_LOCAL and validate its descriptor.
 * Returns 0, or -1 with one line in err ("PATH: reason (expected ...)"). */
int plugin_load(const char *path, kh_plugin *plugin, char *err, size_t errlen);

/* Call the plugin's init. Returns 0, or -1 with the plugin's own message
 * in err ("PATH: init failed: <plugin message>"). */
int plugin_init(kh_plugin *plugin, const khost_init_args *args, void **state,
                char *err, size_t errlen);

void plugin_unload(kh_plugin *plugin);

/* Load (and unload) every pipeline's plugin of cfg, adding one
 * "FILE:LINE: plugin of [pipeline.NAME]: ..." error per plugin that cannot
 * be loaded. Used before starting (run) and before applying a reload. */
void plugin_check_all(const kh_config *cfg, kh_errors *errs);

/* Copy `path` to a fresh file in `dir` and return its malloc'd path.
 * Workers load the copy, so an operator overwriting the original in place
 * (cp new.so plugin.so) never changes the bytes under a running worker
 * (glibc maps a .so by path and inode), and a restarted worker gets the
 * same version as its siblings. Returns NULL with err set on failure. */
char *plugin_snapshot(const char *path, const char *dir, char *err,
                      size_t errlen);

/* Names of the optional callbacks the plugin provides, space separated,
 * e.g. "handle_batch tick"; "none" when there are none. */
void plugin_describe_optional(const kh_plugin *plugin, char *buf, size_t len);

#endif
