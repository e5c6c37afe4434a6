/*
 * worker_main: main() of the khost-worker executable, the worker process
 * on its own (host/CMakeLists.txt). It links only what a worker runs
 * (worker.c, transport.c, hardening.c, plugin_loader.c, log.c and libc),
 * none of librdkafka, libsystemd, libmicrohttpd, jansson or inih, so a
 * worker maps a few hundred kB of libraries instead of several MB, and
 * starts faster after a crash. khost execs it with the arguments it
 * would give `khost worker` (worker_proc.c, kh_worker_exe).
 */
#include "log.h"
#include "worker.h"

#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    int i = 1;
    if (i < argc && !strcmp(argv[i], "-v")) {
        klog_set_verbose(true);
        i++;
    }
    if (i >= argc || strcmp(argv[i], "worker")) {
        fprintf(stderr, "khost-worker: internal, started by khost (usage: "
                        "khost-worker [-v] worker --host-pid PID ...)\n");
        return 2;
    }
    return worker_main(argc - i, argv + i);
}
