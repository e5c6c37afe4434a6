/* plugin_loader: every rejection is one clear line, never a crash. */
#include "plugin_loader.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <string.h>

#define FX(name) KHOST_FIXTURE_DIR "/" name ".so"

/* Load a plugin expected to be rejected; return the message. */
static char *reject(const char *path) {
    static char err[1024];
    kh_plugin p;
    err[0] = '\0';
    cr_assert_eq(plugin_load(path, &p, err, sizeof err), -1, "%s was accepted",
                 path);
    cr_assert_null(p.dl);
    cr_assert_null(strchr(err, '\n'), "not one line: %s", err);
    cr_assert(strncmp(err, path, strlen(path)) == 0,
              "message does not start with the file: %s", err);
    return err;
}

Test(loader, accepts_valid_plugin) {
    kh_plugin p;
    char err[512] = "";
    cr_assert_eq(plugin_load(FX("fx_good"), &p, err, sizeof err), 0, "%s", err);
    cr_assert_str_eq(p.desc->name, "fx_good");
    cr_assert_str_eq(p.desc->version, "0.0.1");
    char opt[128];
    plugin_describe_optional(&p, opt, sizeof opt);
    cr_assert_str_eq(opt, "none");
    plugin_unload(&p);
}

Test(loader, lists_optional_callbacks) {
    kh_plugin p;
    char err[512] = "";
    cr_assert_eq(plugin_load(FX("fx_full"), &p, err, sizeof err), 0, "%s", err);
    char opt[128];
    plugin_describe_optional(&p, opt, sizeof opt);
    cr_assert_str_eq(opt,
                     "handle_batch on_assign on_revoke tick get_extension");
    const int *ext = p.desc->get_extension("khost.ext.fixture/1");
    cr_assert_not_null(ext);
    cr_assert_eq(*ext, 42);
    cr_assert_null(p.desc->get_extension("khost.ext.unknown/1"));
    plugin_unload(&p);
}

Test(loader, accepts_struct_grown_at_the_end) {
    kh_plugin p;
    char err[512] = "";
    cr_assert_eq(plugin_load(FX("fx_bigger_struct"), &p, err, sizeof err), 0,
                 "%s", err);
    plugin_unload(&p);
}

Test(loader, rejects_missing_file) {
    char *err = reject(KHOST_FIXTURE_DIR "/does_not_exist.so");
    cr_assert(strstr(err, "No such file or directory"), "%s", err);
    cr_assert(strstr(err, "expected a khost plugin .so"), "%s", err);
}

Test(loader, rejects_directory) {
    char *err = reject(KHOST_FIXTURE_DIR);
    cr_assert(strstr(err, "not a regular file"), "%s", err);
}

Test(loader, rejects_not_a_shared_object) {
    char *dir = tu_tmpdir();
    char *path = tu_write_file(dir, "text.so", "this is not an ELF file\n");
    char *err = reject(path);
    cr_assert(strstr(err, "not a shared object"), "%s", err);
    free(path);
    tu_rmdir(dir);
    free(dir);
}

Test(loader, rejects_empty_file) {
    char *dir = tu_tmpdir();
    char *path = tu_write_file(dir, "empty.so", "");
    char *err = reject(path);
    cr_assert(strstr(err, "not a shared object"), "%s", err);
    free(path);
    tu_rmdir(dir);
    free(dir);
}

Test(loader, rejects_executable_that_dlopen_refuses) {
    /* An ELF file that is not a loadable library: the khost binary. */
    char *err = reject(KHOST_BUILD_DIR "/khost");
    cr_assert(strstr(err, "cannot be loaded") || strstr(err, "no entry point"),
              "%s", err);
}

Test(loader, rejects_missing_entry_point) {
    char *err = reject(FX("fx_no_entry"));
    cr_assert(strstr(err, "no entry point 'khost_plugin_entry'"), "%s", err);
}

Test(loader, rejects_null_descriptor) {
    char *err = reject(FX("fx_null_descriptor"));
    cr_assert(strstr(err, "returned NULL"), "%s", err);
}

Test(loader, rejects_other_abi_major) {
    char *err = reject(FX("fx_abi_major"));
    cr_assert(strstr(err, "ABI major 2 is not supported"), "%s", err);
    cr_assert(strstr(err, "expected major 1"), "%s", err);
}

Test(loader, rejects_newer_abi_minor) {
    char *err = reject(FX("fx_abi_minor"));
    cr_assert(strstr(err, "ABI 1.3 is newer than this host's 1.2"), "%s", err);
    cr_assert(strstr(err, "expected minor <= 2"), "%s", err);
}

Test(loader, rejects_missing_required_callback) {
    char *err = reject(FX("fx_no_handle"));
    cr_assert(strstr(err, "required callback 'handle' is NULL"), "%s", err);
}

Test(loader, rejects_small_descriptor) {
    char *err = reject(FX("fx_small_struct"));
    cr_assert(strstr(err, "descriptor too small: struct_size is 16 bytes"),
              "%s", err);
}

/* A stand-in host API: init only needs the struct to exist. */
static void test_log(khost_host *h, int level, const char *msg) {
    (void)h;
    (void)level;
    (void)msg;
}

Test(loader, reports_init_failure_with_plugin_message) {
    kh_plugin p;
    char err[512] = "";
    cr_assert_eq(plugin_load(FX("fx_init_fails"), &p, err, sizeof err), 0, "%s",
                 err);
    khost_host_api api = {.struct_size = sizeof api,
                          .abi_major = KHOST_ABI_MAJOR,
                          .abi_minor = KHOST_ABI_MINOR,
                          .log = test_log};
    char plugin_err[256];
    khost_init_args args = {.struct_size = sizeof args,
                            .api = &api,
                            .pipeline = "test",
                            .errbuf = plugin_err,
                            .errbuf_size = sizeof plugin_err};
    void *state;
    cr_assert_eq(plugin_init(&p, &args, &state, err, sizeof err), -1);
    cr_assert(strstr(err, "fx_init_fails.so: init failed (returned -7): "
                          "database unreachable: connection refused"),
              "%s", err);
    plugin_unload(&p);
}

Test(loader, init_success_passes_state_through) {
    kh_plugin p;
    char err[512] = "";
    cr_assert_eq(plugin_load(FX("fx_good"), &p, err, sizeof err), 0, "%s", err);
    khost_host_api api = {.struct_size = sizeof api, .log = test_log};
    char plugin_err[256];
    khost_init_args args = {.struct_size = sizeof args,
                            .api = &api,
                            .errbuf = plugin_err,
                            .errbuf_size = sizeof plugin_err};
    void *state = (void *)1;
    cr_assert_eq(plugin_init(&p, &args, &state, err, sizeof err), 0);
    cr_assert_null(state);
    plugin_unload(&p);
}
