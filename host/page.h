/*
 * page: the status page served at GET / (host/page.html), embedded at
 * build time by host/embed.cmake into page_html.c in the build folder.
 * One self-contained HTML file (inline CSS and JS) that reads
 * /api/v1/status; a leaf, data only.
 */
#ifndef KHOST_PAGE_H
#define KHOST_PAGE_H

#include <stddef.h>

/* The page's bytes, NUL-terminated; kh_page_html_len excludes the NUL. */
extern const char kh_page_html[];
extern const size_t kh_page_html_len;

#endif
