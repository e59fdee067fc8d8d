/* The edge's HTTP side: which of its fixed resources a request path names,
 * and the check that a static file resolves inside the web root.
 *
 * libwebsockets parses the request (and URL-decodes and normalises the
 * path: "..", "%2e%2e", "//"); the edge then serves only exact paths from a
 * fixed table, so no request path is ever joined to a directory. The
 * files themselves may still be symlinks, hence httproute_inside(). Pure
 * code, any thread. */
#ifndef EDGE_HTTPROUTE_H
#define EDGE_HTTPROUTE_H

#include <stdbool.h>
#include <stddef.h>

typedef enum {
    HTTPROUTE_NOT_FOUND = 0,
    HTTPROUTE_HEALTHZ,
    HTTPROUTE_READYZ,
    HTTPROUTE_METRICS,
    HTTPROUTE_FILE, /* file (a plain name, no '/') in the web root */
} httproute_target;

typedef struct httproute {
    httproute_target target;
    const char *file; /* HTTPROUTE_FILE: static name, e.g. "index.html" */
    const char *mime; /* HTTPROUTE_FILE: its Content-Type */
} httproute;

/* The resource for a request path (without the query), as lws gives it:
 * NUL-terminated, len bytes. Anything but an exact match is NOT_FOUND. */
httproute httproute_match(const char *path, size_t len);

/* Is path (an absolute, resolved path: realpath()) root itself or below
 * it (root: resolved too, without a trailing '/', except "/")? Textual:
 * a path with "." or ".." segments, or empty ones, is never inside. */
bool httproute_inside(const char *root, const char *path);

#endif
