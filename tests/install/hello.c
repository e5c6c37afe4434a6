/*
 * hello: the one-file plugin of the install test (tests/install/run.sh),
 * built from outside the tree with only the installed SDK:
 *   cc hello.c $(pkg-config --cflags --libs khost-plugin) -o hello.so
 * It acks every message and counts them in a file, so the test can see
 * that the installed khost ran it.
 */
#include <khost/plugin.h>

#include <stdio.h>
#include <stdlib.h>

static int init(const khost_init_args *args, void **state) {
    const char *path = args->api->config_get(args->host, "count_file");
    FILE *f = path ? fopen(path, "a") : NULL;
    if (!f) {
        snprintf(args->errbuf, args->errbuf_size,
                 "hello: count_file = FILE is required and writable");
        return -1;
    }
    setvbuf(f, NULL, _IONBF, 0);
    *state = f;
    return 0;
}

static khost_result handle(void *state, const khost_message *m) {
    fprintf(state, "%d %lld\n", (int)m->partition, (long long)m->offset);
    return KHOST_ACK;
}

static void terminate(void *state) {
    fclose(state);
}

static const khost_plugin_descriptor descriptor = {
    .struct_size = sizeof(khost_plugin_descriptor),
    .abi_major = KHOST_ABI_MAJOR,
    .abi_minor = KHOST_ABI_MINOR,
    .name = "hello",
    .version = "1.0.0",
    .description = "the install test's one-file plugin",
    .init = init,
    .handle = handle,
    .terminate = terminate,
};

KHOST_PLUGIN_EXPORT const khost_plugin_descriptor *khost_plugin_entry(void) {
    return &descriptor;
}
