/*
 * config_diag: the config loader's problem lists. Errors and warnings are
 * gathered as (line, message), cut to a readable length, freed of control
 * characters, and sorted by line once the whole file has been seen;
 * misspelled keys and sections get a suggestion.
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
/* Public helpers */

void config_print_warnings(const kh_config *cfg, FILE *out) {
    if (!cfg || !out)
        return;
    for (size_t i = 0; i < cfg->warnings.count; i++)
        fprintf(out, "warning: %s\n", cfg->warnings.items[i]);
    fflush(out);
}

__attribute__((format(printf, 4, 0))) void
add_diag(diag **list, size_t *count, int line, const char *fmt, va_list ap) {
    char *msg = NULL;
    int n = vasprintf(&msg, fmt, ap);
    if (n < 0)
        out_of_memory();
    if (n > DIAG_MAX_CHARS)
        strcpy(msg + DIAG_MAX_CHARS - 3, "...");
    /* Garbage in the file must not become terminal escape sequences. */
    for (char *c = msg; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f)
            *c = '?';
    *list = xrealloc(*list, (*count + 1) * sizeof **list);
    (*list)[*count] = (diag){line, *count, msg};
    (*count)++;
}

__attribute__((format(printf, 3, 4))) void report(parser *p, int line,
                                                  const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    add_diag(&p->diags, &p->n_diags, line, fmt, ap);
    va_end(ap);
}

/* A warning: shown to the operator, but the file is still valid. */
__attribute__((format(printf, 3, 4))) void
report_warning(parser *p, int line, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    add_diag(&p->warns, &p->n_warns, line, fmt, ap);
    va_end(ap);
}

int diag_cmp(const void *a, const void *b) {
    const diag *x = a, *y = b;
    if (x->line != y->line)
        return x->line < y->line ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}
/* ---------------------------------------------------------------------- */
/* Small text helpers */

size_t levenshtein(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    /* Only distances up to 2 matter; skip the work for hopeless pairs. */
    if ((la > lb ? la - lb : lb - la) > 2)
        return 3;
    size_t *row = xmalloc((lb + 1) * sizeof *row);
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag_prev = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
            size_t best = diag_prev + cost;
            if (up + 1 < best)
                best = up + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag_prev = up;
        }
    }
    size_t d = row[lb];
    free(row);
    return d;
}

/* The closest candidate within distance 2, or NULL. */
const char *closest(const char *word, const char *const *cands, size_t n) {
    const char *best = NULL;
    size_t best_d = 3;
    for (size_t i = 0; i < n; i++) {
        size_t d = levenshtein(word, cands[i]);
        if (d < best_d) {
            best_d = d;
            best = cands[i];
        }
    }
    return best;
}
