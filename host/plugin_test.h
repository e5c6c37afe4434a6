/*
 * plugin_test: `khost plugin-test`, a plugin run against chosen messages
 * with no Kafka.
 *
 * The messages come as JSON lines; each is handed to the plugin in real
 * worker processes, started exactly as production starts them
 * (worker_proc.c: exec, channel, status page, hardening), speaking the
 * same frames (transport.h). Results, retries, crashes, hangs, deferred
 * acks and the failure policy are applied like the host applies them,
 * and reported as one JSON line per message and a summary. The usage
 * text (plugin_test_main --help) and plugin-api/ABI.md document the input,
 * the output and the exit codes.
 */
#ifndef KHOST_PLUGIN_TEST_H
#define KHOST_PLUGIN_TEST_H

/* Exit codes of `khost plugin-test`. */
enum {
    KH_PT_OK = 0,        /* every message acked (or --expect matched) */
    KH_PT_NOT_ACKED = 1, /* a message ended otherwise than acked */
    KH_PT_SETUP = 2,     /* bad usage, ini or plugin; init failed */
    KH_PT_INPUT = 3,     /* malformed input lines (the rest ran) */
    KH_PT_EXPECT = 4,    /* --expect: results differ */
};

/* argv[0] is "plugin-test". */
int plugin_test_main(int argc, char **argv);

#endif
