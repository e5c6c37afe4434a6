/*
 * main: the khost command line. Each command is a small function; the
 * work lives in the modules (config, plugin_loader, mock_cluster, host).
 * check-config and run load plugins only in `khost probe-plugin`
 * children; plugin-info, a one-shot command about one file the user
 * names, loads it in-process.
 */
#define _GNU_SOURCE
#include "admin.h"
#include "config.h"
#include "host.h"
#include "log.h"
#include "mock_cluster.h"
#include "plugin_loader.h"
#include "worker.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Exit codes, documented in --help and the README. */
enum {
    EXIT_OK = 0,
    EXIT_RUNTIME =
        1, /* runtime failure, e.g. a pipeline with on_exhausted=exit */
    EXIT_INVALID = 2, /* bad usage, invalid config or plugin */
};

static void usage(FILE *out) {
    fputs("usage: khost [-v|--verbose] COMMAND [ARGS]\n"
          "\n"
          "khost runs Kafka message handlers written as C plugins (.so) in\n"
          "supervised worker processes, one consumer group per pipeline.\n"
          "\n"
          "Commands:\n"
          "  run -c FILE             consume with the pipelines in FILE until\n"
          "                          SIGTERM/SIGINT (a second signal exits at "
          "once)\n"
          "  check-config -c FILE    validate FILE and load every plugin it "
          "names\n"
          "                          (ABI check only, init is not called; no "
          "Kafka)\n"
          "  plugin-info FILE.so     show a plugin's name, version, ABI and "
          "callbacks\n"
          "  mock-cluster [OPTIONS]  run a standalone mock Kafka cluster "
          "(--help)\n"
          "\n"
          "Options:\n"
          "  -v, --verbose           debug logging\n"
          "  -h, --help              show this help\n"
          "  -V, --version           show the khost and plugin ABI versions\n"
          "\n"
          "Exit status:\n"
          "  0  success (run: clean shutdown)\n"
          "  1  runtime failure (run: a pipeline exhausted its restarts with\n"
          "     on_exhausted = exit, or Kafka could not be set up)\n"
          "  2  bad usage, invalid configuration or invalid plugin\n"
          "\n"
          "Configuration: see etc/example.ini and host/config.md.\n",
          out);
}

/* Parse "-c FILE" for run and check-config. */
static const char *config_arg(int argc, char **argv, const char *cmd) {
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"help", no_argument, NULL, 'h'},
        {0, 0, 0, 0},
    };
    const char *path = NULL;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        if (c == 'c') {
            path = optarg;
        } else if (c == 'h') {
            printf("usage: khost %s -c FILE\n", cmd);
            exit(EXIT_OK);
        } else {
            fprintf(stderr, "usage: khost %s -c FILE\n", cmd);
            exit(EXIT_INVALID);
        }
    }
    if (!path || optind < argc) {
        fprintf(stderr, "khost %s: %s\nusage: khost %s -c FILE\n", cmd,
                path ? "unexpected argument" : "-c FILE is required", cmd);
        exit(EXIT_INVALID);
    }
    return path;
}

static void print_errors(const kh_errors *errs) {
    for (size_t i = 0; i < errs->count; i++)
        fprintf(stderr, "%s\n", errs->items[i]);
}

static int cmd_check_config(int argc, char **argv) {
    const char *path = config_arg(argc, argv, "check-config");
    kh_config cfg = {0};
    kh_errors errs = {0};
    config_load(path, &cfg, &errs);
    config_print_warnings(&cfg, stderr);
    /* Load the plugins of whatever parsed, each in a probe child (a
     * plugin's constructor never runs here), but do report plugin problems
     * together with any other problems of the same file. */
    kh_probe *probes = calloc(cfg.n_pipelines + 1, sizeof *probes);
    if (!probes) {
        fprintf(stderr, "khost check-config: out of memory\n");
        errors_free(&errs);
        config_free(&cfg);
        return EXIT_RUNTIME;
    }
    size_t n = 0;
    for (size_t i = 0; i < cfg.n_pipelines; i++)
        if (cfg.pipelines[i].plugin_path)
            probes[n++].path = cfg.pipelines[i].plugin_path;
    plugin_probe_all(probes, n, KH_PROBE_TIMEOUT_MS);
    const kh_probe *pr = probes;
    for (size_t i = 0; i < cfg.n_pipelines; i++) {
        kh_pipeline *p = &cfg.pipelines[i];
        if (!p->plugin_path)
            continue;
        if (!pr->ok) {
            errors_add(&errs, "%s:%d: plugin of [pipeline.%s]: %s", path,
                       p->plugin_line, p->name, pr->err);
            pr++;
            continue;
        }
        if (errs.count == 0)
            printf("pipeline %s: topics", p->name);
        for (size_t t = 0; errs.count == 0 && t < p->n_topics; t++)
            printf("%s%s", t ? "," : " ", p->topics[t]);
        if (errs.count == 0)
            printf(" group %s plugin %s %s (ABI %u.%u) workers %d\n", p->group,
                   pr->name, pr->version, pr->abi_major, pr->abi_minor,
                   p->workers);
        pr++;
    }
    free(probes);
    int rc = EXIT_OK;
    if (errs.count) {
        print_errors(&errs);
        fprintf(stderr, "%s: invalid, %zu error%s\n", path, errs.count,
                errs.count == 1 ? "" : "s");
        rc = EXIT_INVALID;
    } else {
        printf("%s: OK, %zu pipeline%s\n", path, cfg.n_pipelines,
               cfg.n_pipelines == 1 ? "" : "s");
    }
    errors_free(&errs);
    config_free(&cfg);
    return rc;
}

static int cmd_plugin_info(int argc, char **argv) {
    if (argc != 2 || argv[1][0] == '-') {
        if (argc == 2 &&
            (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
            printf("usage: khost plugin-info FILE.so\n");
            return EXIT_OK;
        }
        fprintf(stderr, "usage: khost plugin-info FILE.so\n");
        return EXIT_INVALID;
    }
    kh_plugin plugin;
    char err[1024];
    if (plugin_load(argv[1], &plugin, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        return EXIT_INVALID;
    }
    const khost_plugin_descriptor *d = plugin.desc;
    char optional[256];
    plugin_describe_optional(&plugin, optional, sizeof optional);
    printf("file:        %s\n", argv[1]);
    printf("name:        %s\n", d->name);
    printf("version:     %s\n", d->version ? d->version : "-");
    printf("description: %s\n", d->description ? d->description : "-");
    printf("abi:         %u.%u (host speaks %d.%d)\n", d->abi_major,
           d->abi_minor, KHOST_ABI_MAJOR, KHOST_ABI_MINOR);
    printf("descriptor:  %u bytes\n", d->struct_size);
    printf("required:    init handle terminate\n");
    printf("optional:    %s\n", optional);
    plugin_unload(&plugin);
    return EXIT_OK;
}

static int cmd_run(int argc, char **argv) {
    const char *path = config_arg(argc, argv, "run");
    kh_config *cfg = calloc(1, sizeof *cfg);
    kh_errors errs = {0};
    /* A plugin that cannot even load would only crash-loop its workers:
     * refuse to start, as check-config would. */
    if (config_load(path, cfg, &errs) == 0) {
        config_print_warnings(cfg, stderr);
        plugin_check_all(cfg, &errs);
    }
    if (errs.count) {
        print_errors(&errs);
        fprintf(stderr, "%s: invalid, %zu error%s; not starting\n", path,
                errs.count, errs.count == 1 ? "" : "s");
        errors_free(&errs);
        config_free(cfg);
        free(cfg);
        return EXIT_INVALID;
    }
    errors_free(&errs);
    return host_run(cfg); /* takes cfg: a reload replaces it */
}

/* reload and status talk to the running host through its control
 * socket, found from the same config file. */
static int cmd_control(int argc, char **argv, const char *command) {
    const char *path = config_arg(argc, argv, argv[0]);
    if (!strcmp(command, "reload")) {
        /* Check the file first: a clear error here beats a rejection that
         * only the host's log explains. */
        kh_config cfg = {0};
        kh_errors errs = {0};
        if (config_load(path, &cfg, &errs) != 0) {
            print_errors(&errs);
            fprintf(stderr, "%s: invalid, %zu error%s; not reloading\n", path,
                    errs.count, errs.count == 1 ? "" : "s");
            errors_free(&errs);
            config_free(&cfg);
            return EXIT_INVALID;
        }
        config_print_warnings(&cfg, stderr);
        errors_free(&errs);
        config_free(&cfg);
    }
    char reply[8192];
    if (admin_request(path, command, reply, sizeof reply) != 0) {
        fprintf(stderr, "khost %s: %s\n", command, reply);
        return EXIT_RUNTIME;
    }
    fputs(reply, stdout);
    if (!strncmp(reply, "error:", 6) || strstr(reply, "\nerror:"))
        return !strncmp(reply, "error: rejected", 15) ? EXIT_INVALID
                                                      : EXIT_RUNTIME;
    return EXIT_OK;
}

int main(int argc, char **argv) {
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return EXIT_OK;
        } else if (!strcmp(a, "-V") || !strcmp(a, "--version")) {
            printf("khost %s (plugin ABI %d.%d)\n", KHOST_VERSION,
                   KHOST_ABI_MAJOR, KHOST_ABI_MINOR);
            return EXIT_OK;
        } else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) {
            klog_set_level(KLOG_DEBUG);
        } else {
            fprintf(stderr, "khost: unknown option '%s'\n", a);
            usage(stderr);
            return EXIT_INVALID;
        }
    }
    if (i >= argc) {
        usage(stderr);
        return EXIT_INVALID;
    }
    const char *cmd = argv[i];
    int sub_argc = argc - i;
    char **sub_argv = argv + i;
    if (!strcmp(cmd, "run"))
        return cmd_run(sub_argc, sub_argv);
    if (!strcmp(cmd, "check-config"))
        return cmd_check_config(sub_argc, sub_argv);
    if (!strcmp(cmd, "plugin-info"))
        return cmd_plugin_info(sub_argc, sub_argv);
    if (!strcmp(cmd, "reload") || !strcmp(cmd, "status"))
        return cmd_control(sub_argc, sub_argv, cmd);
    if (!strcmp(cmd, "mock-cluster"))
        return mock_cluster_main(sub_argc, sub_argv);
    /* Internal: the host execs itself in this mode for each worker. */
    if (!strcmp(cmd, "worker"))
        return worker_main(sub_argc, sub_argv);
    /* Internal: check-config, run and reload load each plugin this way,
     * so that its constructors run in a child, never in the host. */
    if (!strcmp(cmd, "probe-plugin"))
        return plugin_probe_main(sub_argc, sub_argv);
    fprintf(stderr, "khost: unknown command '%s' (try khost --help)\n", cmd);
    return EXIT_INVALID;
}
