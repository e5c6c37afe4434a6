/*
 * fuzz_config: any bytes as a khost config file.
 *
 * The input goes into one memfd per process, read back by config_load
 * through /proc/self/fd/N, so a run leaves no file behind. Whatever the
 * file says, config_load must return (0 or an error list), never crash,
 * leak or read out of bounds, and the result must be consistent: 0 means
 * no errors and at least one pipeline; an error return reports at least
 * one "FILE:LINE: message" line.
 */
#define _GNU_SOURCE
#include "config.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* Diagnostics go to a copy of stderr taken before libFuzzer's
 * -close_fd_mask=2 points fd 2 at /dev/null (run.sh uses it to mute
 * khost's log); the sanitizers and libFuzzer keep their own copy. */
static FILE *diag;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv) {
    int fd = dup(STDERR_FILENO);
    diag = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (!diag)
        diag = stderr;
    setvbuf(diag, NULL, _IONBF, 0);
    return 0;
}

static int memfd = -1;
static char path[64];

static void setup(void) {
    memfd = memfd_create("khost-fuzz-config", MFD_CLOEXEC);
    if (memfd < 0) {
        fprintf(diag, "memfd_create: %s\n", strerror(errno));
        abort();
    }
    snprintf(path, sizeof path, "/proc/self/fd/%d", memfd);
}

static void write_input(const uint8_t *data, size_t size) {
    if (ftruncate(memfd, 0) != 0)
        abort();
    size_t done = 0;
    while (done < size) {
        ssize_t n = pwrite(memfd, data + done, size - done, (off_t)done);
        if (n <= 0)
            abort();
        done += (size_t)n;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (memfd < 0)
        setup();
    write_input(data, size);

    kh_config cfg;
    kh_errors errs = {0};
    int rc = config_load(path, &cfg, &errs);
    if (rc == 0 && (errs.count != 0 || cfg.n_pipelines == 0)) {
        fprintf(diag,
                "config_load returned 0 with %zu error(s) and %zu "
                "pipeline(s)\n",
                errs.count, cfg.n_pipelines);
        abort();
    }
    if (rc != 0 && errs.count == 0) {
        fprintf(diag, "config_load failed without an error line\n");
        abort();
    }
    size_t plen = strlen(path);
    for (size_t i = 0; i < errs.count; i++) {
        /* Every line starts with "FILE:" (the path exactly as given). */
        if (strncmp(errs.items[i], path, plen) || errs.items[i][plen] != ':') {
            fprintf(diag, "error line without FILE: prefix: %s\n",
                    errs.items[i]);
            abort();
        }
    }
    if (rc == 0) {
        /* A valid config: walk what the host would use. */
        for (size_t i = 0; i < cfg.n_pipelines; i++) {
            const kh_pipeline *pl = &cfg.pipelines[i];
            if (!pl->name || !pl->group || !pl->plugin_path ||
                pl->n_topics == 0 || pl->workers < 1 || pl->workers > 256 ||
                pl->max_attempts < 1 || pl->poison_after < 1 ||
                pl->retry_backoff_ms < 0 ||
                pl->retry_backoff_max_ms < pl->retry_backoff_ms) {
                fprintf(diag, "pipeline %zu accepted incomplete\n", i);
                abort();
            }
            for (size_t t = 0; t < pl->n_topics; t++)
                if (!pl->topics[t] || !*pl->topics[t])
                    abort();
            for (size_t k = 0; k < pl->n_config; k++)
                (void)config_kv_get(pl->config, pl->n_config,
                                    pl->config[k].key);
        }
        FILE *devnull = fopen("/dev/null", "w");
        if (devnull) {
            config_print_warnings(&cfg, devnull);
            fclose(devnull);
        }
    }
    config_free(&cfg);
    errors_free(&errs);
    return 0;
}
