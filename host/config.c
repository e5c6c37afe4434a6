/*
 * config: turns a khost INI file into a validated kh_config: reads the file
 * and drives the load (config_parse.c, config_check.c), then hands the
 * problems over sorted by line (config_diag.c).
 *
 * inih splits "key = value" lines and strips comments; everything else is
 * ours. We read the file ourselves and hand it to inih one line at a time
 * through ini_parse_stream's reader, which gives us three things inih's
 * Debian build cannot: the line number of every pair, section headers as
 * events (even for sections without keys), and one report per malformed
 * line instead of only the first. Problems are gathered as (line, message)
 * and emitted sorted by line once the whole file has been seen.
 *
 * See config.md for the grammar and every key.
 */
#define _GNU_SOURCE
#include "config_internal.h"

#include <ctype.h>
#include <errno.h>
#include <grp.h>
#include <ini.h>
#include <librdkafka/rdkafka.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---------------------------------------------------------------------- */

static char *read_file(const char *path, size_t *len, int *err, mode_t *mode) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        *err = errno;
        return NULL;
    }
    struct stat st;
    *mode = fstat(fileno(f), &st) == 0 ? st.st_mode : 0;
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n == cap) {
            if (cap >= CONFIG_MAX_BYTES + 1) {
                *err = EFBIG;
                break;
            }
            cap = cap ? cap * 2 : 4096;
            buf = xrealloc(buf, cap);
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) {
            if (ferror(f))
                *err = errno ? errno : EIO;
            break;
        }
    }
    fclose(f);
    if (*err == 0 && n > CONFIG_MAX_BYTES)
        *err = EFBIG;
    if (*err) {
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

static char *dir_of(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash)
        return xstrdup(".");
    if (slash == path)
        return xstrdup("/");
    return xstrndup(path, (size_t)(slash - path));
}

int config_load(const char *path, kh_config *cfg, kh_errors *errs) {
    if (!cfg || !errs)
        return -1;
    memset(cfg, 0, sizeof *cfg);
    if (!path || !*path) {
        errors_add(errs, "(none):0: no config file given");
        return -1;
    }
    cfg->path = xstrdup(path);
    cfg->dir = dir_of(path);
    for (size_t i = 0; i < N_HOST_INT_KEYS; i++)
        *(int *)((char *)cfg + host_int_keys[i].field) = host_int_keys[i].def;

    size_t len = 0;
    int err = 0;
    mode_t mode = 0;
    char *text = read_file(path, &len, &err, &mode);
    if (!text) {
        if (err == EFBIG)
            errors_add(errs, "%s:0: cannot read: larger than %d bytes", path,
                       CONFIG_MAX_BYTES);
        else
            errors_add(errs, "%s:0: cannot read: %s", path, strerror(err));
        return -1;
    }

    size_t longest = 0;
    for (size_t i = 0; i < len;) {
        const char *nl = memchr(text + i, '\n', len - i);
        size_t n = nl ? (size_t)(nl - (text + i)) + 1 : len - i;
        if (n > longest)
            longest = n;
        i += n;
    }

    parser p = {
        .path = path, .cfg = cfg, .text = text, .len = len, .file_mode = mode};
    int rc = with_ini_settings(&p, longest);
    if (rc == -2)
        report(&p, 0, "out of memory while parsing");
    else if (rc > 0) {
        /* classify_line should have caught it; report it anyway rather
         * than accept a line we did not understand. */
        bool known = false;
        for (size_t i = 0; i < p.n_diags && !known; i++)
            known = p.diags[i].line == rc;
        if (!known)
            report(&p, rc, "syntax error");
    }
    check_complete(&p);

    if (p.n_diags)
        qsort(p.diags, p.n_diags, sizeof *p.diags, diag_cmp);
    for (size_t i = 0; i < p.n_diags; i++) {
        if (i < CONFIG_MAX_ERRORS)
            errors_add(errs, "%s:%d: %s", path, p.diags[i].line,
                       p.diags[i].msg);
        else if (i == CONFIG_MAX_ERRORS)
            errors_add(errs, "%s:%d: %zu more errors not shown", path,
                       p.diags[i].line, p.n_diags - CONFIG_MAX_ERRORS);
        free(p.diags[i].msg);
    }
    size_t n_errors = p.n_diags;
    free(p.diags);
    if (p.n_warns)
        qsort(p.warns, p.n_warns, sizeof *p.warns, diag_cmp);
    for (size_t i = 0; i < p.n_warns; i++) {
        if (i < CONFIG_MAX_ERRORS)
            errors_add(&cfg->warnings, "%s:%d: %s", path, p.warns[i].line,
                       p.warns[i].msg);
        free(p.warns[i].msg);
    }
    free(p.warns);
    free(p.ps);
    free(p.section);
    free(p.scratch);
    free(text);
    return n_errors ? -1 : 0;
}
