/*
 * bench_first: the noop plugin plus one line on stderr when its process
 * handles its first message, for tests/bench/crash.sh:
 *
 *   BENCH_FIRST pid=PID wall=SECONDS.MICROS messages=N
 *
 * wall is CLOCK_REALTIME at the entry of the first handle or handle_batch
 * call (N: that batch's size). Every message is acked, as noop does; the
 * only extra cost is one branch per call. With hold_us set in
 * [pipeline.NAME.config], each call sleeps that long (after the first
 * call's time is taken), so that a kill finds messages in flight
 * (crash.sh's CRASH_HOLD_US). A worker shares the host's
 * stderr, so the line lands in khost's log next to the host's own lines.
 * Benchmark only: not installed.
 */
#include <khost/plugin.h>

#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static int first_done;
static long hold_us;

static void hold(void) {
    if (hold_us > 0) {
        struct timespec d = {hold_us / 1000000, (hold_us % 1000000) * 1000};
        nanosleep(&d, NULL);
    }
}

/* The time is taken before the hold: it is when the message arrived. */
static void first_call(size_t n) {
    if (first_done) {
        hold();
        return;
    }
    first_done = 1;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    char line[128];
    int len = snprintf(
        line, sizeof line, "BENCH_FIRST pid=%d wall=%lld.%06ld messages=%zu\n",
        (int)getpid(), (long long)ts.tv_sec, ts.tv_nsec / 1000, n);
    if (len > 0 && write(STDERR_FILENO, line, (size_t)len) < 0)
        first_done = 1; /* nothing to do about it */
    hold();
}

static int first_init(const khost_init_args *args, void **state) {
    const char *hold = args->api->config_get(args->host, "hold_us");
    hold_us = hold ? strtol(hold, NULL, 10) : 0;
    *state = NULL;
    return 0;
}

static khost_result first_handle(void *state, const khost_message *message) {
    (void)state;
    (void)message;
    first_call(1);
    return KHOST_ACK;
}

static void first_handle_batch(void *state,
                               const khost_message *const *messages,
                               size_t count, khost_result *results) {
    (void)state;
    (void)messages;
    first_call(count);
    for (size_t i = 0; i < count; i++)
        results[i] = KHOST_ACK;
}

static void first_terminate(void *state) {
    (void)state;
}

static const khost_plugin_descriptor descriptor = {
    .struct_size = sizeof(khost_plugin_descriptor),
    .abi_major = KHOST_ABI_MAJOR,
    .abi_minor = KHOST_ABI_MINOR,
    .name = "bench_first",
    .version = "1",
    .description = "noop that logs the time of its first message (crash.sh)",
    .init = first_init,
    .handle = first_handle,
    .terminate = first_terminate,
    .handle_batch = first_handle_batch,
};

KHOST_PLUGIN_EXPORT const khost_plugin_descriptor *khost_plugin_entry(void) {
    return &descriptor;
}
