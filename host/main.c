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
#include "plugin_test.h"
#include "worker.h"

#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <stdbool.h>
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
    fputs(
        "usage: khost [-v|--verbose] COMMAND [ARGS]\n"
        "\n"
        "khost runs Kafka message handlers written as C plugins (.so) in\n"
        "supervised worker processes, one consumer group per pipeline.\n"
        "\n"
        "Commands:\n"
        "  run -c FILE [--socket PATH]\n"
        "                          consume with the pipelines in FILE until\n"
        "                          SIGTERM/SIGINT (a second signal exits at "
        "once)\n"
        "  status [-c FILE] [--socket PATH] [--json]\n"
        "                          one line per pipeline of the running "
        "khost\n"
        "                          (--json: everything, as JSON)\n"
        "  reload [-c FILE] [--socket PATH] [--timeout SECONDS]\n"
        "                          check FILE, make the running khost re-read\n"
        "                          it (as SIGHUP does), wait for the outcome\n"
        "  restart PIPELINE [--worker N] [-c FILE] [--socket PATH]\n"
        "          [--timeout SECONDS]\n"
        "                          stop and start one pipeline (revives a\n"
        "                          FAILED one) or one of its workers, wait\n"
        "                          until it is ready\n"
        "  pause|resume PIPELINE TOPIC PARTITION [-c FILE] [--socket PATH]\n"
        "                          stop or go on consuming one partition\n"
        "                          (resume releases on_failure = pause)\n"
        "  check-config -c FILE    validate FILE and load every plugin it "
        "names\n"
        "                          (ABI check only, init is not called; no "
        "Kafka)\n"
        "  plugin-info FILE.so [--json]\n"
        "                          show a plugin's name, version, ABI and "
        "callbacks\n"
        "  plugin-test PLUGIN.so [OPTIONS] < MESSAGES.jsonl\n"
        "                          run a plugin on chosen messages in real\n"
        "                          workers, no Kafka; a JSON line each "
        "(--help)\n"
        "  mock-cluster [OPTIONS]  run a standalone mock Kafka cluster "
        "(--help)\n"
        "\n"
        "Options:\n"
        "  -v, --verbose           debug logging, whatever log_level says "
        "(also\n"
        "                          after the command: khost run -c F -v)\n"
        "  -h, --help              show this help\n"
        "  -V, --version           show the khost and plugin ABI versions\n"
        "\n"
        "Exit status:\n"
        "  0  success (run: clean shutdown)\n"
        "  1  runtime failure (run: a pipeline exhausted its restarts with\n"
        "     on_exhausted = exit, or Kafka could not be set up)\n"
        "  2  bad usage, invalid configuration or invalid plugin\n"
        "  reload, restart, pause, resume: 0 done, 1 failed, timed out or\n"
        "  no host answers, 2 rejected: bad file, no such pipeline,\n"
        "  partition or worker (COMMAND --help)\n"
        "\n"
        "Control socket (status, reload, restart, pause, resume): --socket\n"
        "PATH, else [host] control_socket of FILE, "
        "$RUNTIME_DIRECTORY/khost.sock,\n"
        "/run/khost/khost.sock, /tmp/khost-UID-HASH.sock of FILE; the host\n"
        "binds the first it may, the commands use the first that answers.\n"
        "COMMAND --help shows a command's options.\n"
        "\n"
        "Configuration: see etc/example.ini and host/config.md.\n",
        out);
}

/* The options of the commands that take -c FILE and --socket PATH, one
 * row per command, so that a new control command is one more row. */
enum { NEED_CONFIG, NEED_CONFIG_OR_SOCKET, NEED_NOTHING };
typedef struct cmd_spec {
    const char *name;
    bool socket; /* accepts --socket PATH */
    bool waits;  /* accepts --timeout SECONDS (waits for an outcome) */
    int n_args;  /* positional arguments: PIPELINE [TOPIC PARTITION] */
    int need;
    bool json;         /* accepts --json */
    bool worker;       /* accepts --worker N */
    const char *usage; /* after "khost NAME " */
    const char *help;  /* printed by NAME --help after the usage line */
} cmd_spec;

static const cmd_spec cmd_specs[] = {
    {"run", true, false, 0, NEED_CONFIG, false, false,
     "-c FILE [--socket PATH]",
     "Consume with the pipelines in FILE until SIGTERM/SIGINT.\n"
     "  -c, --config FILE   the configuration\n"
     "  --socket PATH       the control socket (else [host] control_socket,\n"
     "                      $RUNTIME_DIRECTORY/khost.sock, "
     "/run/khost/khost.sock\n"
     "                      when that folder is writable, or\n"
     "                      /tmp/khost-UID-HASH.sock)\n"},
    {"check-config", false, false, 0, NEED_CONFIG, false, false, "-c FILE",
     "Validate FILE and load every plugin it names (no Kafka).\n"
     "  -c, --config FILE   the configuration\n"},
    {"status", true, false, 0, NEED_NOTHING, true, false,
     "[-c FILE] [--socket PATH] [--json]",
     "One line per pipeline of the running khost.\n"
     "  --json              print the JSON of GET /api/v1/status instead:\n"
     "                      pipelines, workers, partitions with offsets and\n"
     "                      lag, recent crashes and reloads\n"
     "  -c, --config FILE   find the host of FILE: its control_socket, then\n"
     "                      $RUNTIME_DIRECTORY/khost.sock, "
     "/run/khost/khost.sock\n"
     "                      and the per-user path of FILE (the first that\n"
     "                      answers); without -c, only the middle two\n"
     "  --socket PATH       talk to this socket only\n"},
    {"reload", true, true, 0, NEED_CONFIG_OR_SOCKET, false, false,
     "[-c FILE] [--socket PATH] [--timeout SECONDS]",
     "Make the running khost re-read its file (as SIGHUP does), wait until\n"
     "the outcome is known (every plugin swap's new workers ready, or the\n"
     "swap abandoned; every pipeline started or restarted with its workers\n"
     "ready, or one failed to start) and print it. A FAILED pipeline is\n"
     "restarted by any reload. Needs -c FILE, --socket PATH or both.\n"
     "  -c, --config FILE   check FILE first, then find its host as status "
     "does\n"
     "  --socket PATH       talk to this socket only; without -c the file is\n"
     "                      not checked here (the host still checks it)\n"
     "  --timeout SECONDS   wait at most this long (default 120); the reload\n"
     "                      goes on in the host after a timeout\n"
     "Exit status: 0 applied; 1 failed (abandoned, rolled back or not\n"
     "started: the reason is printed), timed out, busy with another reload,\n"
     "or no host answers; 2 the new file was rejected (the old one runs).\n"},
    {"restart", true, true, 1, NEED_NOTHING, false, true,
     "PIPELINE [--worker N] [-c FILE] [--socket PATH] [--timeout SECONDS]",
     "Stop PIPELINE (drain, commit, leave its group) and start it again from\n"
     "the running configuration, then wait until its workers are ready. It\n"
     "revives a FAILED pipeline; a running one restarts too (a rebalance).\n"
     "  --worker N          restart only worker N (0-based), in order: it\n"
     "                      answers what it was sent, runs terminate and\n"
     "                      exits; a new one starts at once (no rebalance,\n"
     "                      not counted as a crash); unacked deferred\n"
     "                      messages are delivered again\n"
     "  -c, --config FILE   find the host of FILE as status does\n"
     "  --socket PATH       talk to this socket only\n"
     "  --timeout SECONDS   wait at most this long (default 120)\n"
     "Exit status: 0 its workers are ready; 1 a worker failed to start (the\n"
     "pipeline keeps retrying), timed out, busy, or no host answers; 2 no\n"
     "such pipeline or worker.\n"},
    {"pause", true, false, 3, NEED_NOTHING, false, false,
     "PIPELINE TOPIC PARTITION [-c FILE] [--socket PATH]",
     "Stop fetching and dispatching one partition of PIPELINE on the\n"
     "running khost (messages in flight finish; their acks count). The\n"
     "pause lasts while this host owns the partition, across rebalances\n"
     "that give it back, until khost resume, or a restart of the pipeline\n"
     "or of khost.\n"
     "  -c, --config FILE   find the host of FILE as status does\n"
     "  --socket PATH       talk to this socket only\n"
     "Exit status: 0 paused (or already); 1 no host answers or shutting\n"
     "down; 2 no such pipeline, or the partition is not assigned here.\n"},
    {"resume", true, false, 3, NEED_NOTHING, false, false,
     "PIPELINE TOPIC PARTITION [-c FILE] [--socket PATH]",
     "Resume a paused partition. It also releases a partition held at a\n"
     "failed message (on_failure = pause): that message goes to the\n"
     "handler once more (a FAIL, or a RETRY with the retries used up,\n"
     "holds it again).\n"
     "  -c, --config FILE   find the host of FILE as status does\n"
     "  --socket PATH       talk to this socket only\n"
     "Exit status: 0 resumed (or was not paused); 1 no host answers, or\n"
     "its pipeline is FAILED (restart it); 2 no such pipeline, or the\n"
     "partition is not assigned here.\n"},
};

static const cmd_spec *find_spec(const char *name) {
    for (size_t i = 0; i < sizeof cmd_specs / sizeof cmd_specs[0]; i++)
        if (!strcmp(cmd_specs[i].name, name))
            return &cmd_specs[i];
    return NULL;
}

typedef struct cmd_opts {
    const char *config;  /* -c FILE, NULL when not given */
    const char *socket;  /* --socket PATH, NULL when not given */
    int timeout_s;       /* --timeout SECONDS, default 120 */
    const char *args[3]; /* the positional arguments (args[0]: PIPELINE) */
    bool json;           /* --json */
    int worker;          /* --worker N, -1 when not given */
} cmd_opts;

/* Parse argv (argv[0] is the command) by its row in cmd_specs; bad usage
 * is one error line and the usage line, exit status 2. */
static cmd_opts parse_cmd(int argc, char **argv, const char *cmd) {
    const cmd_spec *spec = find_spec(cmd);
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"socket", required_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'},
        {"verbose", no_argument, NULL, 'v'},
        {"timeout", required_argument, NULL, 't'},
        {"json", no_argument, NULL, 'j'},
        {"worker", required_argument, NULL, 'w'},
        {0, 0, 0, 0},
    };
    cmd_opts o = {.timeout_s = 120, .worker = -1};
    char bad[300] = "";
    int c;
    optind = 1;
    opterr = 0; /* our own one line below, not getopt's */
    while (!*bad && (c = getopt_long(argc, argv, ":c:hv", opts, NULL)) != -1) {
        const char *arg = argv[optind - 1];
        if (c == 'c') {
            o.config = optarg;
        } else if (c == 'v') {
            klog_set_verbose(true);
        } else if (c == 's' && spec->socket) {
            o.socket = optarg;
            if (!*optarg)
                snprintf(bad, sizeof bad, "--socket needs a path");
        } else if (c == 't' && spec->waits) {
            char *end;
            long t = strtol(optarg, &end, 10);
            if (*end || end == optarg || t < 1 || t > 86400)
                snprintf(bad, sizeof bad,
                         "bad value '%s' for --timeout: expected seconds in "
                         "1..86400",
                         optarg);
            o.timeout_s = (int)t;
        } else if (c == 'j' && spec->json) {
            o.json = true;
        } else if (c == 'w' && spec->worker) {
            char *end;
            long n = strtol(optarg, &end, 10);
            if (*end || end == optarg || n < 0 || n > 255)
                snprintf(bad, sizeof bad,
                         "bad value '%s' for --worker: expected a worker "
                         "index in 0..255",
                         optarg);
            o.worker = (int)n;
        } else if (c == 'h') {
            printf("usage: khost %s %s\n%s", cmd, spec->usage, spec->help);
            exit(EXIT_OK);
        } else if (c == 's' || c == 't' || c == 'j' || c == 'w') {
            snprintf(bad, sizeof bad, "unknown option '--%s'",
                     c == 's'   ? "socket"
                     : c == 't' ? "timeout"
                     : c == 'j' ? "json"
                                : "worker");
        } else if (c == ':') {
            snprintf(bad, sizeof bad, "option '%s' needs an argument", arg);
        } else if (optopt && optopt != 's') {
            snprintf(bad, sizeof bad, "unknown option '-%c'", optopt);
        } else {
            snprintf(bad, sizeof bad, "unknown option '%s'", arg);
        }
    }
    static const char *const arg_names[] = {"the pipeline's name", "the topic",
                                            "the partition"};
    int got = 0;
    while (!*bad && got < spec->n_args && optind < argc)
        o.args[got++] = argv[optind++];
    if (!*bad && got < spec->n_args)
        snprintf(bad, sizeof bad, "%s is required", arg_names[got]);
    else if (!*bad && spec->n_args == 3) {
        char *end;
        long p = strtol(o.args[2], &end, 10);
        if (*end || end == o.args[2] || p < 0 || p > INT32_MAX)
            snprintf(bad, sizeof bad,
                     "bad partition '%s': expected a number >= 0", o.args[2]);
    }
    if (*bad)
        ;
    else if (!*bad && optind < argc)
        snprintf(bad, sizeof bad, "unexpected argument '%s'", argv[optind]);
    else if (!*bad && spec->need == NEED_CONFIG && !o.config)
        snprintf(bad, sizeof bad, "-c FILE is required");
    else if (!*bad && spec->need == NEED_CONFIG_OR_SOCKET && !o.config &&
             !o.socket)
        snprintf(bad, sizeof bad, "-c FILE or --socket PATH is required");
    if (*bad) {
        fprintf(stderr, "khost %s: %s\nusage: khost %s %s\n", cmd, bad, cmd,
                spec->usage);
        exit(EXIT_INVALID);
    }
    return o;
}

static void print_errors(const kh_errors *errs) {
    for (size_t i = 0; i < errs->count; i++)
        fprintf(stderr, "%s\n", errs->items[i]);
}

static int cmd_check_config(int argc, char **argv) {
    const char *path = parse_cmd(argc, argv, "check-config").config;
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
            errors_add(&errs, "%s:%d: plugin of [pipeline.%s]: %s%s%s%s", path,
                       p->plugin_line, p->name, pr->err,
                       p->plugin_tried ? " (also tried " : "",
                       p->plugin_tried ? p->plugin_tried : "",
                       p->plugin_tried ? ")" : "");
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

/* A JSON string of a plugin's text, which need not be UTF-8: bytes of an
 * invalid sequence become '?' (jansson refuses them). NULL: JSON null. */
static json_t *plugin_text(const char *s) {
    if (!s)
        return json_null();
    json_t *j = json_string(s);
    if (j)
        return j;
    char *copy = strdup(s);
    if (!copy)
        return json_null();
    for (char *p = copy; *p; p++)
        if ((unsigned char)*p >= 0x80)
            *p = '?';
    j = json_string(copy);
    free(copy);
    return j ? j : json_null();
}

static void print_json(json_t *j) {
    char *text = j ? json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
    json_decref(j);
    if (text)
        printf("%s\n", text);
    free(text);
}

static int cmd_plugin_info(int argc, char **argv) {
    static const char usage_line[] =
        "usage: khost plugin-info FILE.so [--json]";
    const char *path = NULL;
    bool json = false, bad = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            printf("%s\n"
                   "Load one plugin in-process (its entry point only: init is "
                   "not\n"
                   "called) and show its descriptor: name, version, "
                   "description,\n"
                   "ABI, size and which optional callbacks it has.\n"
                   "  --json   one JSON object instead, for tooling: path, "
                   "name,\n"
                   "           version, description, abi, host_abi, "
                   "descriptor_size,\n"
                   "           compatible, callbacks; or path and error\n"
                   "Exit status: 0 loaded; 2 it cannot be loaded (the reason "
                   "is\n"
                   "printed, and is the JSON's error).\n",
                   usage_line);
            return EXIT_OK;
        }
        if (!strcmp(argv[i], "--json"))
            json = true;
        else if (argv[i][0] == '-' || path)
            bad = true;
        else
            path = argv[i];
    }
    if (bad || !path) {
        fprintf(stderr, "%s\n", usage_line);
        return EXIT_INVALID;
    }
    kh_plugin plugin;
    char err[1024];
    if (plugin_load(path, &plugin, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        if (json)
            print_json(json_pack("{s:o,s:o}", "path", plugin_text(path),
                                 "error", plugin_text(err)));
        return EXIT_INVALID;
    }
    const khost_plugin_descriptor *d = plugin.desc;
    /* The flags as the descriptor holds them before init (init may set
     * more: ABI.md, Flags). */
    uint64_t flags = KHOST_DESCRIPTOR_HAS(d, flags) ? d->flags : 0;
    bool no_headers = (flags & KHOST_PLUGIN_NO_HEADERS) != 0;
    if (json) {
#define HAS(f) json_boolean(KHOST_DESCRIPTOR_HAS(d, f) && d->f)
        json_t *cb =
            json_pack("{s:b,s:b,s:b,s:o,s:o,s:o,s:o,s:o}", "init", 1, "handle",
                      1, "terminate", 1, "handle_batch", HAS(handle_batch),
                      "on_assign", HAS(on_assign), "on_revoke", HAS(on_revoke),
                      "tick", HAS(tick), "get_extension", HAS(get_extension));
#undef HAS
        json_t *fl = json_array();
        if (no_headers)
            json_array_append_new(fl, json_string("no_headers"));
        print_json(json_pack(
            "{s:o,s:o,s:o,s:o,s:{s:i,s:i},s:{s:i,s:i},s:i,s:b,s:o,s:o}", "path",
            plugin_text(path), "name", plugin_text(d->name), "version",
            plugin_text(d->version), "description", plugin_text(d->description),
            "abi", "major", (int)d->abi_major, "minor", (int)d->abi_minor,
            "host_abi", "major", KHOST_ABI_MAJOR, "minor", KHOST_ABI_MINOR,
            "descriptor_size", (int)d->struct_size, "compatible", 1,
            "callbacks", cb, "flags", fl));
        plugin_unload(&plugin);
        return EXIT_OK;
    }
    char optional[256];
    plugin_describe_optional(&plugin, optional, sizeof optional);
    printf("file:        %s\n", path);
    printf("name:        %s\n", d->name);
    printf("version:     %s\n", d->version ? d->version : "-");
    printf("description: %s\n", d->description ? d->description : "-");
    printf("abi:         %u.%u (host speaks %d.%d)\n", d->abi_major,
           d->abi_minor, KHOST_ABI_MAJOR, KHOST_ABI_MINOR);
    printf("descriptor:  %u bytes\n", d->struct_size);
    printf("required:    init handle terminate\n");
    printf("optional:    %s\n", optional);
    printf("flags:       %s\n", no_headers ? "no_headers" : "none");
    plugin_unload(&plugin);
    return EXIT_OK;
}

static int cmd_run(int argc, char **argv) {
    cmd_opts o = parse_cmd(argc, argv, "run");
    const char *path = o.config;
    kh_config *cfg = calloc(1, sizeof *cfg);
    kh_errors errs = {0};
    /* A plugin that cannot even load would only crash-loop its workers:
     * refuse to start, as check-config would. */
    if (config_load(path, cfg, &errs) == 0) {
        /* From here on the host logs as the file says: its warnings too
         * are log lines (JSON with log_format = json). */
        klog_set_format(cfg->log_format);
        for (size_t i = 0; i < cfg->warnings.count; i++)
            klog_warn("%s", cfg->warnings.items[i]);
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
    if (o.socket) { /* overrides control_socket; line 0 says so */
        free(cfg->control_socket);
        cfg->control_socket = strdup(o.socket);
        cfg->control_socket_line = 0;
    }
    return host_run(cfg); /* takes cfg: a reload replaces it */
}

/* reload and status talk to the running host through its control
 * socket: --socket PATH alone, else the list the host chose from
 * (admin_socket_paths), with the control_socket of -c FILE first. */
static int cmd_control(int argc, char **argv, const char *command) {
    cmd_opts o = parse_cmd(argc, argv, command);
    kh_config cfg = {0};
    kh_errors errs = {0};
    if (o.config) {
        int rc = config_load(o.config, &cfg, &errs);
        if (rc != 0 && !strcmp(command, "reload")) {
            /* Check the file first: a clear error here beats a rejection
             * that only the host's log explains. */
            print_errors(&errs);
            fprintf(stderr, "%s: invalid, %zu error%s; not reloading\n",
                    o.config, errs.count, errs.count == 1 ? "" : "s");
            errors_free(&errs);
            config_free(&cfg);
            return EXIT_INVALID;
        }
        if (rc == 0 && !strcmp(command, "reload"))
            config_print_warnings(&cfg, stderr);
        errors_free(&errs);
    }
    /* status finds the host even of a file that no longer parses: the
     * control_socket line counts when it parsed itself. */
    kh_admin_paths paths;
    if (o.socket)
        paths = (kh_admin_paths){
            .n = 1, .path = {strdup(o.socket)}, .why = {"--socket"}};
    else
        admin_socket_paths(&paths, cfg.control_socket, "control_socket",
                           o.config, false);
    config_free(&cfg);
    /* The request line: the command, its argument and timeout, and the
     * real path of -c FILE so that only the host of that file answers. */
    char request[PATH_MAX + 256], real[PATH_MAX];
    int n = snprintf(request, sizeof request, "%s%s",
                     o.worker >= 0 ? "restart-worker" : command,
                     o.json ? " json" : "");
    for (int a = 0; a < 3 && o.args[a]; a++)
        n +=
            snprintf(request + n, sizeof request - (size_t)n, " %s", o.args[a]);
    if (o.worker >= 0)
        n += snprintf(request + n, sizeof request - (size_t)n, " %d", o.worker);
    if (find_spec(command)->waits)
        n += snprintf(request + n, sizeof request - (size_t)n, " %d",
                      o.timeout_s);
    if (o.config && realpath(o.config, real))
        snprintf(request + n, sizeof request - (size_t)n, " config=%s", real);
    char reply[8192];
    int rc = admin_request(&paths, request, reply, sizeof reply,
                           (o.timeout_s + 30) * 1000);
    admin_paths_free(&paths);
    if (rc != 0) {
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
            klog_set_verbose(true);
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
    if (!strcmp(cmd, "plugin-test"))
        return plugin_test_main(sub_argc, sub_argv);
    if (!strcmp(cmd, "reload") || !strcmp(cmd, "status") ||
        !strcmp(cmd, "restart") || !strcmp(cmd, "pause") ||
        !strcmp(cmd, "resume"))
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
