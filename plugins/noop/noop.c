/*
 * noop: acks every message and does nothing else. It is the baseline for
 * benchmarks (the cost of the host itself) and the smallest example of a
 * complete plugin. It has no config and no state.
 */
#include <khost/plugin.h>

#ifndef KHOST_VERSION
#define KHOST_VERSION "0.0.0"
#endif

static int noop_init(const khost_init_args *args, void **state) {
    *state = NULL;
    return 0;
}

static khost_result noop_handle(void *state, const khost_message *message) {
    return KHOST_ACK;
}

static void noop_handle_batch(void *state, const khost_message *const *messages,
                              size_t count, khost_result *results) {
    for (size_t i = 0; i < count; i++)
        results[i] = KHOST_ACK;
}

static void noop_terminate(void *state) {
}

static const khost_plugin_descriptor descriptor = {
    .struct_size = sizeof(khost_plugin_descriptor),
    .abi_major = KHOST_ABI_MAJOR,
    .abi_minor = KHOST_ABI_MINOR,
    .name = "noop",
    .version = KHOST_VERSION,
    .description = "acks every message; a baseline for benchmarks",
    .init = noop_init,
    .handle = noop_handle,
    .terminate = noop_terminate,
    .handle_batch = noop_handle_batch,
    /* noop never looks at headers: spare the host parsing them. */
    .flags = KHOST_PLUGIN_NO_HEADERS,
};

KHOST_PLUGIN_EXPORT const khost_plugin_descriptor *khost_plugin_entry(void) {
    return &descriptor;
}
