/* config_load: parsing, defaults, and one exact "FILE:LINE: message" per
 * problem, all of them in one run. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <ini.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "testutil.h"

typedef struct loaded {
    char *dir;
    char *path;
    kh_config cfg;
    kh_errors errs;
    int rc;
} loaded;

static loaded *load_path(char *dir, char *path) {
    loaded *l = calloc(1, sizeof *l);
    cr_assert_not_null(l);
    l->dir = dir;
    l->path = path;
    l->rc = config_load(path, &l->cfg, &l->errs);
    return l;
}

static loaded *load_text(const char *text) {
    char *dir = tu_tmpdir();
    cr_assert_not_null(dir);
    char *path = tu_write_file(dir, "khost.ini", text);
    cr_assert_not_null(path);
    return load_path(dir, path);
}

/* tu_write_file stops at a NUL; garbage needs every byte. */
static loaded *load_bytes(const char *bytes, size_t n) {
    char *dir = tu_tmpdir();
    cr_assert_not_null(dir);
    char *path = NULL;
    cr_assert(asprintf(&path, "%s/khost.ini", dir) > 0);
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(bytes, 1, n, f), n);
    fclose(f);
    return load_path(dir, path);
}

static void unload(loaded *l) {
    config_free(&l->cfg);
    errors_free(&l->errs);
    tu_rmdir(l->dir);
    free(l->dir);
    free(l->path);
    free(l);
}

/* All errors, one per line, for assertion messages. */
static const char *all_errors(const loaded *l) {
    static char buf[16384];
    buf[0] = '\0';
    for (size_t i = 0; i < l->errs.count; i++) {
        strncat(buf, l->errs.items[i], sizeof buf - strlen(buf) - 2);
        strcat(buf, "\n");
    }
    return buf;
}

static bool has_error(const loaded *l, int line, const char *msg) {
    char *want = NULL;
    cr_assert(asprintf(&want, "%s:%d: %s", l->path, line, msg) > 0);
    bool found = false;
    for (size_t i = 0; i < l->errs.count && !found; i++)
        found = strcmp(l->errs.items[i], want) == 0;
    free(want);
    return found;
}

#define assert_error(l, line, msg)                                             \
    cr_assert(has_error((l), (line), (msg)),                                   \
              "expected error \"%s:%d: %s\"\ngot:\n%s", (l)->path, (line),     \
              (msg), all_errors(l))

#define assert_errors(l, n)                                                    \
    do {                                                                       \
        cr_assert_lt((l)->rc, 0, "config_load should fail");                   \
        cr_assert_eq((l)->errs.count, (size_t)(n),                             \
                     "expected %d errors, got %zu:\n%s", (int)(n),             \
                     (l)->errs.count, all_errors(l));                          \
    } while (0)

#define assert_ok(l)                                                           \
    cr_assert(((l)->rc == 0 && (l)->errs.count == 0),                          \
              "expected a valid config, got rc %d:\n%s", (l)->rc,              \
              all_errors(l))

/* A minimal valid file to which a test adds one thing. */
#define VALID_HOST "[host]\nbrokers = mock\n"
#define VALID_PIPELINE                                                         \
    "[pipeline.orders]\ntopics = orders\ngroup = g\nplugin = p.so\n"

static char *join_path(const char *dir, const char *name) {
    char *s = NULL;
    cr_assert(asprintf(&s, "%s/%s", dir, name) > 0);
    return s;
}

/* ---------------------------------------------------------------------- */
/* Valid files */

Test(config, full_valid_config) {
    loaded *l = load_text("; khost test config\n"                    /* 1 */
                          "[host]\n"                                 /* 2 */
                          "brokers = mock:3\n"                       /* 3 */
                          "\n"                                       /* 4 */
                          "[kafka]\n"                                /* 5 */
                          "session.timeout.ms = 6000\n"              /* 6 */
                          "auto.offset.reset = earliest\n"           /* 7 */
                          "\n"                                       /* 8 */
                          "[pipeline.orders]\n"                      /* 9 */
                          "topics =  orders ,payments,  refunds  \n" /* 10 */
                          "group = orders-processor\n"               /* 11 */
                          "plugin = plugins/file_sink.so\n"          /* 12 */
                          "workers = 4\n"                            /* 13 */
                          "max_restarts = 7\n"                       /* 14 */
                          "max_seconds = 60\n"                       /* 15 */
                          "handler_timeout_ms = 0\n"                 /* 16 */
                          "shutdown_timeout_ms = 2500\n"             /* 17 */
                          "on_exhausted = exit\n"                    /* 18 */
                          "[pipeline.orders.config]\n"               /* 19 */
                          "path = /tmp/orders.jsonl\n"               /* 20 */
                          "mode = append ; inline comment\n"         /* 21 */
                          "empty =\n"                                /* 22 */
                          "[pipeline.orders.kafka]\n"                /* 23 */
                          "session.timeout.ms = 10000\n"             /* 24 */
                          "[pipeline.audit]\n"                       /* 25 */
                          "topics = audit\n"                         /* 26 */
                          "group = audit-group\n"                    /* 27 */
                          "plugin = /opt/khost/noop.so\n");          /* 28 */
    assert_ok(l);
    kh_config *c = &l->cfg;

    cr_assert_str_eq(c->path, l->path);
    cr_assert_str_eq(c->dir, l->dir);
    cr_assert_str_eq(c->brokers, "mock:3");
    cr_assert_eq(c->mock_brokers, 3);

    cr_assert_eq(c->n_kafka, 2);
    cr_assert_str_eq(c->kafka[0].key, "session.timeout.ms");
    cr_assert_str_eq(c->kafka[0].value, "6000");
    cr_assert_eq(c->kafka[0].line, 6);
    cr_assert_str_eq(config_kv_get(c->kafka, c->n_kafka, "auto.offset.reset"),
                     "earliest");

    cr_assert_eq(c->n_pipelines, 2);
    kh_pipeline *o = &c->pipelines[0];
    cr_assert_str_eq(o->name, "orders");
    cr_assert_eq(o->line, 9);
    cr_assert_eq(o->n_topics, 3);
    cr_assert_str_eq(o->topics[0], "orders");
    cr_assert_str_eq(o->topics[1], "payments");
    cr_assert_str_eq(o->topics[2], "refunds");
    cr_assert_str_eq(o->group, "orders-processor");
    cr_assert_str_eq(o->plugin, "plugins/file_sink.so");
    char *want = join_path(l->dir, "plugins/file_sink.so");
    cr_assert_str_eq(o->plugin_path, want);
    free(want);
    cr_assert_eq(o->plugin_line, 12);
    cr_assert_eq(o->workers, 4);
    cr_assert_eq(o->max_restarts, 7);
    cr_assert_eq(o->max_seconds, 60);
    cr_assert_eq(o->handler_timeout_ms, 0);
    cr_assert_eq(o->shutdown_timeout_ms, 2500);
    cr_assert_eq(o->on_exhausted, KH_ON_EXHAUSTED_EXIT);

    cr_assert_eq(o->n_config, 3);
    cr_assert_str_eq(config_kv_get(o->config, o->n_config, "path"),
                     "/tmp/orders.jsonl");
    cr_assert_str_eq(config_kv_get(o->config, o->n_config, "mode"), "append");
    cr_assert_str_eq(config_kv_get(o->config, o->n_config, "empty"), "");
    cr_assert_eq(o->config[1].line, 21);
    cr_assert_null(config_kv_get(o->config, o->n_config, "nope"));

    cr_assert_eq(o->n_kafka, 1);
    cr_assert_str_eq(o->kafka[0].key, "session.timeout.ms");
    cr_assert_str_eq(o->kafka[0].value, "10000");
    cr_assert_eq(o->kafka[0].line, 24);

    kh_pipeline *a = &c->pipelines[1];
    cr_assert_str_eq(a->name, "audit");
    cr_assert_eq(a->line, 25);
    cr_assert_eq(a->n_topics, 1);
    cr_assert_str_eq(a->topics[0], "audit");
    cr_assert_str_eq(a->plugin_path, "/opt/khost/noop.so");
    cr_assert_eq(a->n_config, 0);
    cr_assert_eq(a->n_kafka, 0);
    unload(l);
}

Test(config, defaults) {
    loaded *l = load_text(VALID_HOST VALID_PIPELINE);
    assert_ok(l);
    kh_pipeline *p = &l->cfg.pipelines[0];
    cr_assert_eq(l->cfg.mock_brokers, 1);
    cr_assert_str_eq(l->cfg.brokers, "mock");
    cr_assert_eq(l->cfg.n_kafka, 0);
    cr_assert_eq(p->workers, 1);
    cr_assert_eq(p->max_restarts, 30);
    cr_assert_eq(p->max_seconds, 5);
    cr_assert_eq(p->handler_timeout_ms, 30000);
    cr_assert_eq(p->shutdown_timeout_ms, 10000);
    cr_assert_eq(p->on_exhausted, KH_ON_EXHAUSTED_PAUSE);
    cr_assert_eq(l->cfg.prefetch_budget_mb, 32);
    cr_assert_eq(p->spare_workers, 1);
    unload(l);
}

Test(config, spare_workers_is_checked) {
    loaded *l = load_text(VALID_HOST VALID_PIPELINE "spare_workers = 0\n");
    assert_ok(l);
    cr_assert_eq(l->cfg.pipelines[0].spare_workers, 0);
    unload(l);
    l = load_text(VALID_HOST VALID_PIPELINE "spare_workers = 16\n");
    assert_ok(l);
    cr_assert_eq(l->cfg.pipelines[0].spare_workers, 16);
    unload(l);
    const char *bad[] = {"17", "-1", "one", ""};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char *text = NULL, *msg = NULL;
        cr_assert(asprintf(&text,
                           VALID_HOST VALID_PIPELINE "spare_workers = %s\n",
                           bad[i]) > 0);
        cr_assert(asprintf(&msg,
                           "bad value '%s' for 'spare_workers' in "
                           "[pipeline.orders]: expected an integer in 0..16",
                           bad[i]) > 0);
        l = load_text(text);
        assert_errors(l, 1);
        assert_error(l, 7, msg);
        unload(l);
        free(text);
        free(msg);
    }
    l = load_text(VALID_HOST VALID_PIPELINE "spare_worker = 1\n");
    assert_errors(l, 1);
    assert_error(l, 7,
                 "unknown key 'spare_worker' in [pipeline.orders] "
                 "(did you mean 'spare_workers'?)");
    unload(l);
}

Test(config, prefetch_budget_mb_is_checked) {
    loaded *l = load_text(
        "[host]\nbrokers = mock\nprefetch_budget_mb = 65536\n" VALID_PIPELINE);
    assert_ok(l);
    cr_assert_eq(l->cfg.prefetch_budget_mb, 65536);
    unload(l);
    const char *bad[] = {"0", "65537", "-1", "16M", ""};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char *text = NULL, *msg = NULL;
        cr_assert(asprintf(&text,
                           "[host]\nbrokers = mock\nprefetch_budget_mb = "
                           "%s\n" VALID_PIPELINE,
                           bad[i]) > 0);
        cr_assert(asprintf(&msg,
                           "bad value '%s' for 'prefetch_budget_mb' in [host]: "
                           "expected an integer in 1..65536",
                           bad[i]) > 0);
        l = load_text(text);
        assert_errors(l, 1);
        assert_error(l, 3, msg);
        unload(l);
        free(text);
        free(msg);
    }
    l = load_text(
        "[host]\nbrokers = mock\nprefetch_budget_mbs = 8\n" VALID_PIPELINE);
    assert_errors(l, 1);
    assert_error(l, 3,
                 "unknown key 'prefetch_budget_mbs' in [host] (did you mean "
                 "'prefetch_budget_mb'?)");
    unload(l);
}

Test(config, range_limits_are_inclusive) {
    loaded *l = load_text(VALID_HOST VALID_PIPELINE
                          "workers = 256\nmax_restarts = 0\n"
                          "max_seconds = 86400\nhandler_timeout_ms = 86400000\n"
                          "shutdown_timeout_ms = 0\non_exhausted = pause\n");
    assert_ok(l);
    kh_pipeline *p = &l->cfg.pipelines[0];
    cr_assert_eq(p->workers, 256);
    cr_assert_eq(p->max_restarts, 0);
    cr_assert_eq(p->max_seconds, 86400);
    cr_assert_eq(p->handler_timeout_ms, 86400000);
    cr_assert_eq(p->shutdown_timeout_ms, 0);
    cr_assert_eq(p->on_exhausted, KH_ON_EXHAUSTED_PAUSE);
    unload(l);
}

Test(config, plugin_path_relative_to_config_folder) {
    char *dir = tu_tmpdir();
    char *sub = join_path(dir, "etc");
    cr_assert_eq(mkdir(sub, 0700), 0);
    char *path = tu_write_file(sub, "k.ini", VALID_HOST VALID_PIPELINE);
    loaded *l = load_path(dir, path);
    assert_ok(l);
    char *want = join_path(sub, "p.so");
    cr_assert_str_eq(l->cfg.dir, sub);
    cr_assert_str_eq(l->cfg.pipelines[0].plugin_path, want);
    free(want);
    free(sub);
    unload(l);
}

/* A relative plugin: next to the config file first, then in the
 * installed plugin folder (config_plugin_dir, pointed at a temporary
 * folder here), the first that exists. */
static char *plugin_dirs(char **cfg_dir, char **installed) {
    char *dir = tu_tmpdir();
    *cfg_dir = join_path(dir, "etc");
    *installed = join_path(dir, "lib");
    cr_assert_eq(mkdir(*cfg_dir, 0700), 0);
    cr_assert_eq(mkdir(*installed, 0700), 0);
    config_plugin_dir = *installed;
    return dir;
}

Test(config, plugin_found_next_to_config_wins) {
    char *etc, *lib;
    char *dir = plugin_dirs(&etc, &lib);
    free(tu_write_file(etc, "p.so", "x"));
    free(tu_write_file(lib, "p.so", "x"));
    loaded *l =
        load_path(dir, tu_write_file(etc, "k.ini", VALID_HOST VALID_PIPELINE));
    assert_ok(l);
    char *want = join_path(etc, "p.so");
    cr_assert_str_eq(l->cfg.pipelines[0].plugin_path, want);
    cr_assert_null(l->cfg.pipelines[0].plugin_tried);
    free(want);
    free(etc);
    free(lib);
    unload(l);
}

Test(config, plugin_falls_back_to_installed_folder) {
    char *etc, *lib;
    char *dir = plugin_dirs(&etc, &lib);
    char *sub = join_path(lib, "sub");
    cr_assert_eq(mkdir(sub, 0700), 0);
    free(sub);
    free(tu_write_file(lib, "p.so", "x"));
    free(tu_write_file(lib, "sub/q.so", "x"));
    loaded *l =
        load_path(dir, tu_write_file(etc, "k.ini",
                                     VALID_HOST VALID_PIPELINE
                                     "[pipeline.q]\ntopics = q\ngroup = q\n"
                                     "plugin = sub/q.so\n"
                                     "[pipeline.r]\ntopics = r\ngroup = r\n"
                                     "plugin = /nonexistent/r.so\n"));
    assert_ok(l);
    char *want = join_path(lib, "p.so");
    cr_assert_str_eq(l->cfg.pipelines[0].plugin_path, want);
    cr_assert_str_eq(l->cfg.pipelines[0].plugin, "p.so");
    cr_assert_null(l->cfg.pipelines[0].plugin_tried);
    free(want);
    want = join_path(lib, "sub/q.so");
    cr_assert_str_eq(l->cfg.pipelines[1].plugin_path, want);
    free(want);
    /* an absolute path is never looked for elsewhere */
    cr_assert_str_eq(l->cfg.pipelines[2].plugin_path, "/nonexistent/r.so");
    cr_assert_null(l->cfg.pipelines[2].plugin_tried);
    free(etc);
    free(lib);
    unload(l);
}

/* Found nowhere: the config folder's path stays (the loader reports it
 * missing) and plugin_tried names the installed one, for that error. */
Test(config, plugin_found_nowhere_names_both_paths) {
    char *etc, *lib;
    char *dir = plugin_dirs(&etc, &lib);
    loaded *l =
        load_path(dir, tu_write_file(etc, "k.ini", VALID_HOST VALID_PIPELINE));
    assert_ok(l);
    char *want = join_path(etc, "p.so");
    cr_assert_str_eq(l->cfg.pipelines[0].plugin_path, want);
    free(want);
    want = join_path(lib, "p.so");
    cr_assert_str_eq(l->cfg.pipelines[0].plugin_tried, want);
    free(want);
    free(etc);
    free(lib);
    unload(l);
}

Test(config, installed_plugin_folder_is_the_install_prefix) {
    char *want = join_path(KHOST_INSTALL_PREFIX, "lib/khost/plugins");
    cr_assert_str_eq(config_plugin_dir, want);
    free(want);
}

Test(config, bare_file_name_resolves_against_cwd) {
    char *dir = tu_tmpdir();
    free(tu_write_file(dir, "k.ini", VALID_HOST VALID_PIPELINE));
    cr_assert_eq(chdir(dir), 0); /* each Criterion test is its own process */
    loaded *l = load_path(dir, strdup("k.ini"));
    assert_ok(l);
    cr_assert_str_eq(l->cfg.path, "k.ini");
    cr_assert_str_eq(l->cfg.dir, ".");
    cr_assert_str_eq(l->cfg.pipelines[0].plugin_path, "./p.so");
    unload(l);
}

Test(config, indented_keys_and_crlf) {
    /* inih would read an indented line as a continuation of the previous
     * value; khost treats it as an ordinary key. */
    loaded *l = load_text("[host]\r\n  brokers = mock\r\n[pipeline.x]\r\n"
                          "  topics = t\r\n\tgroup = g\r\n  plugin = p.so\r\n"
                          "    workers = 3\r\n");
    assert_ok(l);
    cr_assert_str_eq(l->cfg.brokers, "mock");
    cr_assert_str_eq(l->cfg.pipelines[0].group, "g");
    cr_assert_eq(l->cfg.pipelines[0].workers, 3);
    unload(l);
}

Test(config, comments_and_colon_separator) {
    loaded *l =
        load_text("# hash comment\n; semicolon comment\n"
                  "[host] ; trailing comment\nbrokers: mock\n" VALID_PIPELINE
                  "workers = 4 ; four\n"
                  "[pipeline.orders.config]\nurl = a;b # kept\n");
    assert_ok(l);
    cr_assert_eq(l->cfg.pipelines[0].workers, 4);
    cr_assert_str_eq(config_kv_get(l->cfg.pipelines[0].config,
                                   l->cfg.pipelines[0].n_config, "url"),
                     "a;b # kept");
    unload(l);
}

Test(config, example_ini_is_valid) {
    char *path = join_path(KHOST_SOURCE_DIR, "etc/example.ini");
    loaded *l = load_path(NULL, path);
    assert_ok(l);
    cr_assert_geq(l->cfg.n_pipelines, 1);
    unload(l);
}

/* ---------------------------------------------------------------------- */
/* Brokers */

Test(config, brokers_mock_forms) {
    const struct {
        const char *value;
        int mock;
    } ok[] = {{"mock", 1}, {"mock:1", 1}, {"mock:3", 3}, {"mock:16", 16}};
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        char *text = NULL;
        cr_assert(asprintf(&text, "[host]\nbrokers = %s\n" VALID_PIPELINE,
                           ok[i].value) > 0);
        loaded *l = load_text(text);
        assert_ok(l);
        cr_assert_str_eq(l->cfg.brokers, ok[i].value);
        cr_assert_eq(l->cfg.mock_brokers, ok[i].mock, "%s", ok[i].value);
        unload(l);
        free(text);
    }
}

Test(config, brokers_bad_mock_count) {
    const char *bad[] = {"mock:0",  "mock:abc", "mock:17", "mock:",
                         "mock:-1", "mock:3x",  "mock: 3"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char *text = NULL, *msg = NULL;
        cr_assert(asprintf(&text, "[host]\nbrokers = %s\n" VALID_PIPELINE,
                           bad[i]) > 0);
        cr_assert(asprintf(&msg,
                           "bad value '%s' for 'brokers' in [host]: mock:N "
                           "needs N in 1..16",
                           bad[i]) > 0);
        loaded *l = load_text(text);
        assert_errors(l, 1);
        assert_error(l, 2, msg);
        unload(l);
        free(text);
        free(msg);
    }
}

Test(config, brokers_host_list) {
    loaded *l = load_text("[host]\nbrokers =  k1:9092 , k2:9093,[::1]:9094,"
                          "SSL://k3:9095,k4\n" VALID_PIPELINE);
    assert_ok(l);
    cr_assert_str_eq(l->cfg.brokers,
                     "k1:9092,k2:9093,[::1]:9094,SSL://k3:9095,k4");
    cr_assert_eq(l->cfg.mock_brokers, 0);
    unload(l);
}

Test(config, brokers_host_list_errors) {
    loaded *l = load_text("[host]\nbrokers = a:9092,,b:0\n" VALID_PIPELINE);
    assert_errors(l, 2);
    assert_error(l, 2,
                 "bad value 'a:9092,,b:0' for 'brokers' in [host]: empty "
                 "broker address");
    assert_error(l, 2,
                 "bad value 'a:9092,,b:0' for 'brokers' in [host]: port of "
                 "'b:0' must be in 1..65535");
    unload(l);

    l = load_text("[host]\nbrokers = a:x\n" VALID_PIPELINE);
    assert_errors(l, 1);
    assert_error(l, 2,
                 "bad value 'a:x' for 'brokers' in [host]: port of 'a:x' "
                 "must be in 1..65535");
    unload(l);

    l = load_text("[host]\nbrokers =\n" VALID_PIPELINE);
    assert_errors(l, 1);
    assert_error(l, 2, "empty value for 'brokers' in [host]");
    unload(l);
}

/* As shipped: without KHOST_DEMO_RECORD (which only .ci/demo sets). */
Test(config, demo_ini_is_valid_without_its_variable) {
    unsetenv("KHOST_DEMO_RECORD");
    char *path = join_path(KHOST_SOURCE_DIR, "etc/demo.ini");
    loaded *l = load_path(NULL, path);
    assert_ok(l);
    kh_pipeline *p = &l->cfg.pipelines[0];
    cr_assert_str_eq(config_kv_get(p->config, p->n_config, "record"), "");
    unload(l);
}

/* ---------------------------------------------------------------------- */
/* Environment */

Test(config, env_expansion) {
    setenv("KH_T_HOSTS", "b1:9092,b2:9092", 1);
    setenv("KH_T_ENV", "prod", 1);
    setenv("KH_T_APP", "orders", 1);
    setenv("KH_T_EMPTY", "", 1);
    setenv("KH_T_TOPICS", "a, b", 1);
    setenv("KH_T_NESTED", "${KH_T_ENV}", 1);
    loaded *l = load_text("[host]\nbrokers = ${KH_T_HOSTS}\n"
                          "[pipeline.p]\ntopics = ${KH_T_TOPICS}, c\n"
                          "group = ${KH_T_APP}-${KH_T_ENV}\n"
                          "plugin = p.so\n"
                          "workers = ${KH_T_EMPTY}2\n"
                          "[pipeline.p.config]\n"
                          "path = /data/${KH_T_ENV}/${KH_T_APP}.jsonl\n"
                          "raw = $HOME and $ and {x}\n"
                          "nested = ${KH_T_NESTED}\n"
                          "[pipeline.p.kafka]\nclient.id = ${KH_T_APP}\n");
    assert_ok(l);
    kh_pipeline *p = &l->cfg.pipelines[0];
    cr_assert_str_eq(l->cfg.brokers, "b1:9092,b2:9092");
    cr_assert_eq(p->n_topics, 3);
    cr_assert_str_eq(p->topics[0], "a");
    cr_assert_str_eq(p->topics[1], "b");
    cr_assert_str_eq(p->topics[2], "c");
    cr_assert_str_eq(p->group, "orders-prod");
    cr_assert_eq(p->workers, 2);
    cr_assert_str_eq(config_kv_get(p->config, p->n_config, "path"),
                     "/data/prod/orders.jsonl");
    cr_assert_str_eq(config_kv_get(p->config, p->n_config, "raw"),
                     "$HOME and $ and {x}");
    /* expanded once: a value is never re-scanned */
    cr_assert_str_eq(config_kv_get(p->config, p->n_config, "nested"),
                     "${KH_T_ENV}");
    cr_assert_str_eq(config_kv_get(p->kafka, p->n_kafka, "client.id"),
                     "orders");
    unload(l);
}

Test(config, env_unset_and_malformed) {
    unsetenv("KH_T_UNSET_ONE");
    unsetenv("KH_T_UNSET_TWO");
    loaded *l = load_text(VALID_HOST                    /* 1-2 */
                          "[pipeline.p]\n"              /* 3 */
                          "topics = t\n"                /* 4 */
                          "group = ${KH_T_UNSET_ONE}\n" /* 5 */
                          "plugin = p.so\n"             /* 6 */
                          "[pipeline.p.config]\n"       /* 7 */
                          "a = x${KH_T_UNSET_TWO}y\n"   /* 8 */
                          "b = ${HOME\n"                /* 9 */
                          "c = ${not-a-name}\n"         /* 10 */
                          "d = ${}\n");                 /* 11 */
    /* no "missing required key 'group'" on top of the unset variable */
    assert_errors(l, 5);
    assert_error(l, 5, "environment variable KH_T_UNSET_ONE is not set");
    assert_error(l, 8, "environment variable KH_T_UNSET_TWO is not set");
    assert_error(l, 9, "unterminated '${' in value of 'b'");
    assert_error(l, 10,
                 "invalid environment variable name 'not-a-name' in value "
                 "of 'c'");
    assert_error(l, 11, "invalid environment variable name '' in value of 'd'");
    unload(l);
}

Test(config, env_default) {
    unsetenv("KH_T_UNSET");
    setenv("KH_T_EMPTY", "", 1);
    setenv("KH_T_SET", "b9:9092", 1);
    loaded *l = load_text("[host]\nbrokers = ${KH_T_SET:-localhost:9092}\n"
                          "[pipeline.p]\ntopics = ${KH_T_UNSET:-t1}, t2\n"
                          "group = g-${KH_T_EMPTY:-dev}\n"
                          "plugin = p.so\n"
                          "[pipeline.p.config]\n"
                          "none = ${KH_T_UNSET:-}\n"
                          "twice = ${KH_T_UNSET:-a}/${KH_T_SET:-b}\n"
                          "literal = ${KH_T_UNSET:-${KH_T_SET}}\n"
                          "dash = ${KH_T_UNSET:--x:-y}\n");
    assert_ok(l);
    kh_pipeline *p = &l->cfg.pipelines[0];
    cr_assert_str_eq(l->cfg.brokers, "b9:9092");
    cr_assert_eq(p->n_topics, 2);
    cr_assert_str_eq(p->topics[0], "t1");
    /* empty counts as unset, as with the shell's :- */
    cr_assert_str_eq(p->group, "g-dev");
    cr_assert_str_eq(config_kv_get(p->config, p->n_config, "none"), "");
    cr_assert_str_eq(config_kv_get(p->config, p->n_config, "twice"),
                     "a/b9:9092");
    /* the default is literal and ends at the first '}' */
    cr_assert_str_eq(config_kv_get(p->config, p->n_config, "literal"),
                     "${KH_T_SET}");
    cr_assert_str_eq(config_kv_get(p->config, p->n_config, "dash"), "-x:-y");
    unload(l);
}

Test(config, env_default_errors) {
    unsetenv("KH_T_UNSET");
    loaded *l = load_text(VALID_HOST VALID_PIPELINE    /* 1-6 */
                          "[pipeline.orders.config]\n" /* 7 */
                          "a = ${:-x}\n"               /* 8 */
                          "b = ${KH-T:-x}\n"           /* 9 */
                          "c = ${KH_T_UNSET:x}\n"      /* 10 */
                          "d = ${KH_T_UNSET:-x\n"      /* 11 */
                          "e = ${KH_T_UNSET}\n");      /* 12 */
    assert_errors(l, 5);
    assert_error(l, 8, "invalid environment variable name '' in value of 'a'");
    assert_error(l, 9,
                 "invalid environment variable name 'KH-T' in value of 'b'");
    assert_error(l, 10,
                 "invalid environment variable name 'KH_T_UNSET:x' in value "
                 "of 'c'");
    assert_error(l, 11, "unterminated '${' in value of 'd'");
    assert_error(l, 12, "environment variable KH_T_UNSET is not set");
    unload(l);
}

/* A secret given as a default is written in the file all the same. */
Test(config, env_default_secret_warns) {
    unsetenv("KH_T_UNSET");
    char *dir = tu_tmpdir();
    char *path = tu_write_file(dir, "k.ini",
                               VALID_HOST VALID_PIPELINE /* 1-6 */
                               "[pipeline.orders.config]\n"
                               "db_password = ${KH_T_UNSET:-hunter2}\n" /* 8 */
                               "api_token = ${KH_T_UNSET:-}\n"          /* 9 */
                               "secret = ${KH_T_UNSET}\n");             /* 10 */
    cr_assert_eq(chmod(path, 0644), 0);
    setenv("KH_T_UNSET", "", 1); /* line 10 may expand */
    loaded *l = load_path(dir, path);
    assert_ok(l);
    cr_assert_eq(l->cfg.warnings.count, 1, "%zu warnings",
                 l->cfg.warnings.count);
    char *want = NULL;
    cr_assert(asprintf(&want,
                       "%s:8: 'db_password' is written in a file readable by "
                       "others (mode 0644); use ${VAR} or chmod 600",
                       path) > 0);
    cr_assert_str_eq(l->cfg.warnings.items[0], want);
    free(want);
    unload(l);
}

/* ---------------------------------------------------------------------- */
/* Collecting errors */

Test(config, several_problems_all_reported_in_one_run) {
    loaded *l = load_text("[host]\n"                /* 1 */
                          "brokers = mock:0\n"      /* 2 */
                          "[pipeline.orders]\n"     /* 3 */
                          "topics = orders\n"       /* 4 */
                          "wrokers = 2\n"           /* 5 */
                          "plugin = p.so\n"         /* 6 */
                          "max_seconds = forever\n" /* 7 */
                          "[kafka]\n"               /* 8 */
                          "group.id = nope\n");     /* 9 */
    assert_errors(l, 5);
    /* sorted by line, header-line problems included */
    cr_assert(strstr(l->errs.items[0], ":2: ") != NULL, "%s", all_errors(l));
    cr_assert(strstr(l->errs.items[1], ":3: ") != NULL, "%s", all_errors(l));
    cr_assert(strstr(l->errs.items[2], ":5: ") != NULL, "%s", all_errors(l));
    cr_assert(strstr(l->errs.items[3], ":7: ") != NULL, "%s", all_errors(l));
    cr_assert(strstr(l->errs.items[4], ":9: ") != NULL, "%s", all_errors(l));
    assert_error(l, 2,
                 "bad value 'mock:0' for 'brokers' in [host]: mock:N needs N "
                 "in 1..16");
    assert_error(l, 3, "[pipeline.orders] is missing required key 'group'");
    assert_error(l, 5,
                 "unknown key 'wrokers' in [pipeline.orders] (did you mean "
                 "'workers'?)");
    assert_error(l, 7,
                 "bad value 'forever' for 'max_seconds' in [pipeline.orders]: "
                 "expected an integer in 1..86400");
    assert_error(l, 9,
                 "'group.id' is not allowed in [kafka]: use group = in "
                 "[pipeline.NAME]");
    unload(l);
}

Test(config, syntax_errors_each_reported_and_parsing_continues) {
    loaded *l = load_text("[host]\n"                  /* 1 */
                          "brokers = mock\n"          /* 2 */
                          "this line has no equals\n" /* 3 */
                          "[pipeline.orders\n"        /* 4 */
                          "= value without key\n"     /* 5 */
                          VALID_PIPELINE              /* 6-9 */
                          "workers = lots\n"          /* 10 */
                          "[kafka] junk\n"            /* 11 */
                          "also bad\n");              /* 12 */
    assert_errors(l, 6);
    assert_error(l, 3,
                 "syntax error: expected 'key = value', '[section]' or a "
                 "comment");
    assert_error(l, 4, "syntax error: '[' without closing ']'");
    assert_error(l, 5, "syntax error: missing key before '='");
    assert_error(l, 10,
                 "bad value 'lots' for 'workers' in [pipeline.orders]: "
                 "expected an integer in 1..256");
    assert_error(l, 11, "syntax error: unexpected text after ']'");
    assert_error(l, 12,
                 "syntax error: expected 'key = value', '[section]' or a "
                 "comment");
    unload(l);
}

Test(config, key_outside_any_section) {
    loaded *l = load_text("brokers = mock\n" VALID_HOST VALID_PIPELINE);
    assert_errors(l, 1);
    assert_error(l, 1, "key 'brokers' is outside any section");
    unload(l);
}

/* ---------------------------------------------------------------------- */
/* Sections and keys */

Test(config, did_you_mean_section) {
    loaded *l = load_text(VALID_HOST VALID_PIPELINE   /* 1-6 */
                          "[hots]\n"                  /* 7 */
                          "[kafak]\n"                 /* 8 */
                          "[pipline.audit]\n"         /* 9 */
                          "[pipeline.orders.confg]\n" /* 10 */
                          "[pipelines]\n"             /* 11 */
                          "[consumer]\n"              /* 12 */
                          "x = 1\n");                 /* 13: ignored */
    assert_errors(l, 6);
    assert_error(l, 7, "unknown section [hots] (did you mean [host]?)");
    assert_error(l, 8, "unknown section [kafak] (did you mean [kafka]?)");
    assert_error(l, 9,
                 "unknown section [pipline.audit] (did you mean "
                 "[pipeline.audit]?)");
    assert_error(l, 10,
                 "unknown section [pipeline.orders.confg] (did you mean "
                 "[pipeline.orders.config]?)");
    assert_error(l, 11,
                 "unknown section [pipelines] (did you mean "
                 "[pipeline.NAME]?)");
    assert_error(l, 12,
                 "unknown section [consumer] (expected [host], [kafka], "
                 "[http], [pipeline.NAME], [pipeline.NAME.config] or "
                 "[pipeline.NAME.kafka])");
    unload(l);
}

Test(config, did_you_mean_key) {
    loaded *l = load_text(
        "[host]\nbroker = mock\nbrokers = mock\n" VALID_PIPELINE /* 4-7 */
        "wrokers = 2\n"                                          /* 8 */
        "grop = x\n"                                             /* 9 */
        "on_exhaust = exit\n"                                    /* 10 */
        "colour = blue\n");                                      /* 11 */
    assert_errors(l, 5);
    assert_error(l, 2,
                 "unknown key 'broker' in [host] (did you mean 'brokers'?)");
    assert_error(l, 8,
                 "unknown key 'wrokers' in [pipeline.orders] (did you mean "
                 "'workers'?)");
    assert_error(l, 9,
                 "unknown key 'grop' in [pipeline.orders] (did you mean "
                 "'group'?)");
    assert_error(l, 10,
                 "unknown key 'on_exhaust' in [pipeline.orders] (did you mean "
                 "'on_exhausted'?)");
    assert_error(l, 11, "unknown key 'colour' in [pipeline.orders]");
    unload(l);
}

Test(config, pipeline_names) {
    loaded *l = load_text(VALID_HOST VALID_PIPELINE /* 1-6 */
                          "[pipeline.a.b]\n"        /* 7 */
                          "[pipeline.]\n"           /* 8 */
                          "[pipeline]\n"            /* 9 */
                          "[pipeline.bad name]\n"   /* 10 */
                          "[pipeline.ok_Name-2]\n"  /* 11 */
                          "topics = t\ngroup = g2\nplugin = p.so\n");
    assert_errors(l, 4);
    assert_error(l, 7,
                 "pipeline name 'a.b' in [pipeline.a.b] must not contain '.' "
                 "(the only subsections are .config and .kafka)");
    assert_error(l, 8,
                 "empty pipeline name in [pipeline.] (use [pipeline.NAME])");
    assert_error(l, 9, "[pipeline] needs a name: use [pipeline.NAME]");
    assert_error(l, 10,
                 "invalid pipeline name 'bad name' in [pipeline.bad name]: "
                 "use letters, digits, '_' and '-'");
    unload(l);
}

Test(config, missing_required_keys) {
    loaded *l = load_text(VALID_HOST "[pipeline.orders]\n" /* 3 */
                                     "workers = 2\n"
                                     "[pipeline.empty]\n"); /* 5 */
    assert_errors(l, 6);
    assert_error(l, 3, "[pipeline.orders] is missing required key 'topics'");
    assert_error(l, 3, "[pipeline.orders] is missing required key 'group'");
    assert_error(l, 3, "[pipeline.orders] is missing required key 'plugin'");
    assert_error(l, 5, "[pipeline.empty] is missing required key 'topics'");
    unload(l);
}

Test(config, empty_required_values) {
    loaded *l = load_text(VALID_HOST "[pipeline.orders]\ntopics =\n"
                                     "group = ; just a comment\nplugin=\n");
    assert_errors(l, 3);
    assert_error(l, 4, "empty value for 'topics' in [pipeline.orders]");
    assert_error(l, 5, "empty value for 'group' in [pipeline.orders]");
    assert_error(l, 6, "empty value for 'plugin' in [pipeline.orders]");
    unload(l);
}

Test(config, missing_brokers) {
    loaded *l = load_text("; header\n[host]\n" VALID_PIPELINE);
    assert_errors(l, 1);
    assert_error(l, 2, "missing required key 'brokers' in [host]");
    unload(l);

    l = load_text("; no host at all\n" VALID_PIPELINE);
    assert_errors(l, 1);
    assert_error(l, 1, "missing required key 'brokers' in [host]");
    unload(l);
}

Test(config, no_pipeline) {
    loaded *l = load_text(VALID_HOST "[kafka]\nclient.id = x\n");
    assert_errors(l, 1);
    assert_error(l, 1, "no [pipeline.NAME] section");
    unload(l);
}

Test(config, duplicates) {
    loaded *l = load_text(VALID_HOST                     /* 1-2 */
                              VALID_PIPELINE             /* 3-6 */
                          "workers = 2\n"                /* 7 */
                          "workers = 3\n"                /* 8 */
                          "[pipeline.orders]\n"          /* 9 */
                          "topics = other\n"             /* 10: ignored */
                          "[host]\n"                     /* 11 */
                          "[kafka]\nclient.id = a\n"     /* 12-13 */
                          "client.id = b\n"              /* 14 */
                          "[pipeline.orders.config]\n"   /* 15 */
                          "k = 1\nk = 2\n"               /* 16-17 */
                          "[pipeline.orders.config]\n"); /* 18 */
    assert_errors(l, 6);
    assert_error(l, 8,
                 "duplicate key 'workers' in [pipeline.orders] (first at "
                 "line 7)");
    assert_error(l, 9, "duplicate section [pipeline.orders] (first at line 3)");
    assert_error(l, 11, "duplicate section [host] (first at line 1)");
    assert_error(l, 14,
                 "duplicate key 'client.id' in [kafka] (first at line 13)");
    assert_error(l, 17,
                 "duplicate key 'k' in [pipeline.orders.config] (first at "
                 "line 16)");
    assert_error(l, 18,
                 "duplicate section [pipeline.orders.config] (first at line "
                 "15)");
    /* the first definition is what was kept */
    cr_assert_eq(l->cfg.pipelines[0].workers, 2);
    cr_assert_str_eq(l->cfg.pipelines[0].topics[0], "orders");
    unload(l);
}

Test(config, subsection_without_pipeline) {
    loaded *l = load_text(VALID_HOST "[pipeline.ghost.config]\n"  /* 3 */
                                     "k = v\n" VALID_PIPELINE     /* 4-8 */
                                     "[pipeline.ghost.kafka]\n"); /* 9 */
    assert_errors(l, 2);
    assert_error(l, 3,
                 "[pipeline.ghost.config] has no matching [pipeline.ghost] "
                 "section");
    assert_error(l, 9,
                 "[pipeline.ghost.kafka] has no matching [pipeline.ghost] "
                 "section");
    unload(l);
}

Test(config, subsection_before_its_pipeline_is_fine) {
    loaded *l = load_text(VALID_HOST
                          "[pipeline.orders.config]\nk = v\n" VALID_PIPELINE);
    assert_ok(l);
    cr_assert_eq(l->cfg.n_pipelines, 1);
    cr_assert_eq(l->cfg.pipelines[0].line, 5);
    cr_assert_str_eq(l->cfg.pipelines[0].config[0].value, "v");
    unload(l);
}

Test(config, shared_group_rejected) {
    loaded *l = load_text(VALID_HOST VALID_PIPELINE               /* 1-6 */
                          "[pipeline.b]\ntopics = x\ngroup = g\n" /* 7-9 */
                          "plugin = p.so\n");
    assert_errors(l, 1);
    assert_error(l, 9,
                 "group 'g' of [pipeline.b] is already used by "
                 "[pipeline.orders] (line 5); each pipeline needs its own "
                 "consumer group");
    unload(l);
}

Test(config, bad_numbers) {
    loaded *l =
        load_text(VALID_HOST VALID_PIPELINE                      /* 1-6 */
                  "workers = 0\n"                                /* 7 */
                  "max_restarts = 100001\n"                      /* 8 */
                  "max_seconds = 5s\n"                           /* 9 */
                  "handler_timeout_ms = -1\n"                    /* 10 */
                  "shutdown_timeout_ms = 99999999999999999999\n" /* 11 */
                  "[pipeline.b]\ntopics = x\ngroup = h\n"        /* 12-14 */
                  "plugin = p.so\nworkers = 1.5\n"               /* 15-16 */
                  "max_seconds =\n"                              /* 17 */
                  "workers = 0x10\n");                           /* 18 */
    assert_errors(l, 8);
    assert_error(l, 7,
                 "bad value '0' for 'workers' in [pipeline.orders]: expected "
                 "an integer in 1..256");
    assert_error(l, 8,
                 "bad value '100001' for 'max_restarts' in [pipeline.orders]: "
                 "expected an integer in 0..100000");
    assert_error(l, 9,
                 "bad value '5s' for 'max_seconds' in [pipeline.orders]: "
                 "expected an integer in 1..86400");
    assert_error(l, 10,
                 "bad value '-1' for 'handler_timeout_ms' in "
                 "[pipeline.orders]: expected an integer in 0..86400000");
    assert_error(l, 11,
                 "bad value '99999999999999999999' for 'shutdown_timeout_ms' "
                 "in [pipeline.orders]: expected an integer in 0..3600000");
    assert_error(l, 16,
                 "bad value '1.5' for 'workers' in [pipeline.b]: expected an "
                 "integer in 1..256");
    assert_error(l, 17,
                 "bad value '' for 'max_seconds' in [pipeline.b]: expected an "
                 "integer in 1..86400");
    assert_error(l, 18,
                 "duplicate key 'workers' in [pipeline.b] (first at line 16)");
    unload(l);
}

Test(config, on_exhausted_values) {
    loaded *l = load_text(VALID_HOST VALID_PIPELINE "on_exhausted = stop\n");
    assert_errors(l, 1);
    assert_error(l, 7,
                 "bad value 'stop' for 'on_exhausted' in [pipeline.orders]: "
                 "expected pause or exit");
    unload(l);
}

Test(config, topics_list_problems) {
    loaded *l = load_text(VALID_HOST
                          "[pipeline.a]\ntopics = x, ,y,\ngroup = a\n" /* 4 */
                          "plugin = p.so\n"
                          "[pipeline.b]\ntopics = x,y,x\ngroup = b\n" /* 8 */
                          "plugin = p.so\n"
                          "[pipeline.c]\ntopics = x y\ngroup = c\n" /* 12 */
                          "plugin = p.so\n");
    assert_errors(l, 3);
    assert_error(l, 4,
                 "empty topic name in 'topics' of [pipeline.a] (value 'x, "
                 ",y,')");
    assert_error(l, 8, "topic 'x' is listed twice in [pipeline.b]");
    assert_error(l, 12,
                 "topic 'x y' in [pipeline.c] contains whitespace (separate "
                 "topics with ',')");
    unload(l);
}

/* ---------------------------------------------------------------------- */
/* librdkafka properties */

static void assert_rdkafka_error(const loaded *l, int line, const char *key,
                                 const char *section) {
    char *prefix = NULL;
    cr_assert(asprintf(&prefix,
                       "%s:%d: invalid librdkafka property '%s' in [%s]: ",
                       l->path, line, key, section) > 0);
    bool found = false;
    for (size_t i = 0; i < l->errs.count && !found; i++) {
        const char *e = l->errs.items[i];
        /* librdkafka's own errstr follows, naming the property */
        found = strncmp(e, prefix, strlen(prefix)) == 0 &&
                strlen(e) > strlen(prefix) && strstr(e + strlen(prefix), key);
    }
    cr_assert(found, "expected \"%s<librdkafka message>\"\ngot:\n%s", prefix,
              all_errors(l));
    free(prefix);
}

Test(config, invalid_librdkafka_properties) {
    loaded *l = load_text(VALID_HOST "[kafka]\n"                      /* 3 */
                                     "session.timeout.ms = abc\n"     /* 4 */
                                     "no.such.property = 1\n"         /* 5 */
                                     "auto.offset.reset = earliest\n" /* 6 */
                          VALID_PIPELINE                              /* 7-10 */
                                     "[pipeline.orders.kafka]\n"      /* 11 */
                                     "auto.offset.reset = sideways\n" /* 12 */
                                     "fetch.wait.max.ms = 10\n");     /* 13 */
    assert_errors(l, 3);
    assert_rdkafka_error(l, 4, "session.timeout.ms", "kafka");
    assert_rdkafka_error(l, 5, "no.such.property", "kafka");
    assert_rdkafka_error(l, 12, "auto.offset.reset", "pipeline.orders.kafka");
    /* the good ones are kept, the bad ones are not */
    cr_assert_eq(l->cfg.n_kafka, 1);
    cr_assert_str_eq(l->cfg.kafka[0].key, "auto.offset.reset");
    cr_assert_eq(l->cfg.pipelines[0].n_kafka, 1);
    cr_assert_str_eq(l->cfg.pipelines[0].kafka[0].key, "fetch.wait.max.ms");
    unload(l);
}

Test(config, forbidden_properties) {
    loaded *l =
        load_text(VALID_HOST "[kafka]\n"                         /* 3 */
                             "group.id = x\n"                    /* 4 */
                             "bootstrap.servers = k:9092\n"      /* 5 */
                  VALID_PIPELINE                                 /* 6-9 */
                             "[pipeline.orders.kafka]\n"         /* 10 */
                             "metadata.broker.list = k:9092\n"   /* 11 */
                             "enable.auto.offset.store = true\n" /* 12 */
                             "enable.auto.commit = true\n");     /* 13: ok */
    assert_errors(l, 4);
    assert_error(l, 4,
                 "'group.id' is not allowed in [kafka]: use group = in "
                 "[pipeline.NAME]");
    assert_error(l, 5,
                 "'bootstrap.servers' is not allowed in [kafka]: use brokers "
                 "= in [host]");
    assert_error(l, 11,
                 "'metadata.broker.list' is not allowed in "
                 "[pipeline.orders.kafka]: use brokers = in [host]");
    assert_error(l, 12,
                 "'enable.auto.offset.store' is not allowed in "
                 "[pipeline.orders.kafka]: khost stores offsets itself");
    unload(l);
}

/* ---------------------------------------------------------------------- */
/* Hostile input */

Test(config, unreadable_file) {
    char *dir = tu_tmpdir();
    loaded *l = load_path(dir, join_path(dir, "missing.ini"));
    assert_errors(l, 1);
    assert_error(l, 0, "cannot read: No such file or directory");
    unload(l);

    dir = tu_tmpdir();
    l = load_path(dir, strdup(dir));
    assert_errors(l, 1);
    assert_error(l, 0, "cannot read: Is a directory");
    unload(l);
}

Test(config, empty_file) {
    loaded *l = load_text("");
    assert_errors(l, 2);
    assert_error(l, 1, "missing required key 'brokers' in [host]");
    assert_error(l, 1, "no [pipeline.NAME] section");
    cr_assert_str_eq(l->cfg.path, l->path);
    unload(l);
}

Test(config, binary_garbage) {
    char bytes[8192];
    unsigned x = 12345;
    for (size_t i = 0; i < sizeof bytes; i++) {
        x = x * 1103515245u + 12345u;
        bytes[i] = (char)(x >> 16);
    }
    loaded *l = load_bytes(bytes, sizeof bytes);
    cr_assert_lt(l->rc, 0);
    cr_assert_gt(l->errs.count, 2);
    cr_assert_leq(l->errs.count, 101, "errors are capped");
    for (size_t i = 0; i < l->errs.count; i++) {
        cr_assert_eq(strncmp(l->errs.items[i], l->path, strlen(l->path)), 0);
        for (const char *c = l->errs.items[i]; *c; c++)
            cr_assert_geq((unsigned char)*c, 0x20, "control char in %s",
                          l->errs.items[i]);
    }
    unload(l);
}

Test(config, nul_byte_line) {
    static const char bytes[] = VALID_HOST VALID_PIPELINE "work\0ers = 2\n";
    loaded *l = load_bytes(bytes, sizeof bytes - 1);
    assert_errors(l, 1);
    assert_error(l, 7, "syntax error: line contains a NUL byte");
    unload(l);
}

Test(config, huge_line_keeps_value_and_line_numbers) {
    size_t big = 1 << 20;
    char *text = malloc(big + 256);
    int n = sprintf(text, VALID_HOST VALID_PIPELINE
                    "[pipeline.orders.config]\nblob = ");
    memset(text + n, 'v', big);
    strcpy(text + n + big, "\nworkers = 2\n"); /* a free key on line 9 */
    loaded *l = load_text(text);
    assert_ok(l);
    kh_pipeline *p = &l->cfg.pipelines[0];
    cr_assert_eq(strlen(config_kv_get(p->config, p->n_config, "blob")), big);
    cr_assert_eq(p->config[0].line, 8);
    cr_assert_eq(p->config[1].line, 9);
    unload(l);

    /* a long section name is kept whole (inih alone truncates at 49) */
    char name[300];
    memset(name, 'n', sizeof name - 1);
    name[sizeof name - 1] = '\0';
    sprintf(text,
            VALID_HOST "[pipeline.%s]\ntopics = t\ngroup = g\n"
                       "plugin = p.so\nbogus = 1\n",
            name);
    l = load_text(text);
    assert_errors(l, 1);
    cr_assert_str_eq(l->cfg.pipelines[0].name, name);
    cr_assert(strstr(l->errs.items[0], ":7: unknown key 'bogus' in "
                                       "[pipeline.nnnnnnnnnn") != NULL,
              "%s", all_errors(l));
    unload(l);
    free(text);
}

Test(config, huge_value_is_truncated_in_messages) {
    size_t big = 100000;
    char *text = malloc(big + 256);
    int n = sprintf(text, VALID_HOST VALID_PIPELINE "workers = ");
    memset(text + n, '9', big);
    strcpy(text + n + big, "\n");
    loaded *l = load_text(text);
    assert_errors(l, 1);
    cr_assert_lt(strlen(l->errs.items[0]), 1000);
    cr_assert(strstr(l->errs.items[0], "...") != NULL);
    unload(l);
    free(text);
}

Test(config, error_flood_is_capped) {
    char text[4096] = "";
    for (int i = 0; i < 150; i++)
        strcat(text, "junk\n");
    loaded *l = load_text(text);
    assert_errors(l, 101);
    assert_error(l, 1,
                 "syntax error: expected 'key = value', '[section]' or a "
                 "comment");
    /* line 1 also carries missing brokers and no pipeline, so the 100
     * shown end at line 98 and 150 + 2 - 100 are left */
    assert_error(l, 98,
                 "syntax error: expected 'key = value', '[section]' or a "
                 "comment");
    assert_error(l, 99, "52 more errors not shown");
    unload(l);
}

Test(config, inih_settings_restored) {
    int max_line = ini_max_line;
    bool multiline = ini_allow_multiline;
    loaded *l = load_text(VALID_HOST VALID_PIPELINE);
    assert_ok(l);
    cr_assert_eq(ini_max_line, max_line);
    cr_assert_eq(ini_allow_multiline, multiline);
    unload(l);
}

/* ---------------------------------------------------------------------- */
/* Helpers */

Test(config, free_is_safe_on_zero_and_twice) {
    kh_config cfg;
    memset(&cfg, 0, sizeof cfg);
    config_free(&cfg);
    config_free(NULL);

    loaded *l = load_text("[pipeline.x]\nworkers = 0\n[hots]\n");
    cr_assert_lt(l->rc, 0);
    config_free(&l->cfg); /* partial config after errors */
    config_free(&l->cfg);
    unload(l);

    kh_errors errs = {0};
    errors_free(&errs);
}

Test(config, errors_add_formats_and_grows) {
    kh_errors errs = {0};
    for (int i = 0; i < 100; i++)
        errors_add(&errs, "%s:%d: %s", "f.ini", i, "msg");
    cr_assert_eq(errs.count, 100);
    cr_assert_str_eq(errs.items[42], "f.ini:42: msg");
    errors_free(&errs);
    cr_assert_eq(errs.count, 0);
    cr_assert_null(errs.items);
}

Test(config, kv_get) {
    kh_kv kv[] = {{"a", "1", 1}, {"b", "2", 2}};
    cr_assert_str_eq(config_kv_get(kv, 2, "b"), "2");
    cr_assert_null(config_kv_get(kv, 2, "c"));
    cr_assert_null(config_kv_get(kv, 1, "b"));
    cr_assert_null(config_kv_get(NULL, 0, "a"));
}

Test(config, failure_policy_defaults) {
    loaded *l = load_text(VALID_HOST VALID_PIPELINE);
    assert_ok(l);
    kh_pipeline *p = &l->cfg.pipelines[0];
    cr_assert_eq(p->on_failure, KH_ON_FAILURE_DLQ);
    cr_assert_eq(p->max_attempts, 5);
    cr_assert_eq(p->retry_backoff_ms, 100);
    cr_assert_eq(p->retry_backoff_max_ms, 10000);
    cr_assert_eq(p->poison_after, 3);
    cr_assert_null(p->dlq_topic);
    unload(l);
}

Test(config, failure_policy_values) {
    loaded *l = load_text(VALID_HOST VALID_PIPELINE
                          "on_failure = skip\nmax_attempts = 9\n"
                          "poison_after = 2\ndlq_topic = dead\n");
    assert_ok(l);
    kh_pipeline *p = &l->cfg.pipelines[0];
    cr_assert_eq(p->on_failure, KH_ON_FAILURE_SKIP);
    cr_assert_eq(p->max_attempts, 9);
    cr_assert_eq(p->poison_after, 2);
    cr_assert_str_eq(p->dlq_topic, "dead");
    unload(l);
}

Test(config, failure_policy_errors) {
    loaded *l = load_text(VALID_HOST VALID_PIPELINE
                          "on_failure = drop\n"          /* line 7 */
                          "max_attempts = -1\n"          /* line 8 */
                          "retry_backoff_ms = 500\n"     /* line 9 */
                          "retry_backoff_max_ms = 100\n" /* line 10 */
                          "dlq_topic = orders\n");       /* line 11 */
    assert_errors(l, 4);
    assert_error(l, 7,
                 "bad value 'drop' for 'on_failure' in [pipeline.orders]: "
                 "expected dlq, skip or pause");
    assert_error(l, 8,
                 "bad value '-1' for 'max_attempts' in [pipeline.orders]: "
                 "expected an integer in 1..1000000");
    assert_error(l, 10,
                 "retry_backoff_max_ms (100) of [pipeline.orders] is below "
                 "retry_backoff_ms (500)");
    assert_error(l, 11,
                 "dlq_topic 'orders' of [pipeline.orders] is consumed by "
                 "[pipeline.orders]; failed messages would loop back");
    unload(l);
}

Test(config, default_dlq_topic_consumed_elsewhere) {
    loaded *l = load_text(VALID_HOST VALID_PIPELINE
                          "[pipeline.second]\ntopics = orders.dlq\n"
                          "group = g2\nplugin = p.so\n");
    assert_errors(l, 1);
    assert_error(l, 4,
                 "the default dead-letter topic 'orders.dlq' of "
                 "[pipeline.orders] is consumed by [pipeline.second]; set "
                 "dlq_topic");
    unload(l);
}
