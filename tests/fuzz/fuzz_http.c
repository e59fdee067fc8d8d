/* The HTTP request path of the edge, as far as the parsing is ours:
 * libwebsockets parses the request and hands over a URL-decoded path;
 * httproute_match() maps it to a resource, and httproute_inside() decides
 * whether a resolved static file may be served. Input: "<path>", or
 * "<root>\n<path>" to check containment as well. */
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "httproute.h"

static void route(const char *p, size_t n)
{
    httproute r = httproute_match(p, n);
    switch (r.target) {
    case HTTPROUTE_NOT_FOUND:
        if (r.file || r.mime) abort();
        break;
    case HTTPROUTE_FILE:
        /* A plain name from the table: never a path, never ".." */
        if (!r.file || !r.mime || strchr(r.file, '/') || strstr(r.file, "..")) abort();
        /* fallthrough */
    default:
        /* Only exact, absolute, short paths name anything. */
        if (n == 0 || p[0] != '/' || n > 16 || memchr(p, '\0', n) || strstr(p, "..")) abort();
    }
}

/* No empty, "." or ".." segment. */
static int clean(const char *p)
{
    if (p[0] != '/') return 0;
    if (!p[1]) return 1;
    for (const char *s = p; *s;) {
        const char *e = strchr(s + 1, '/');
        size_t n = e ? (size_t)(e - s - 1) : strlen(s + 1);
        if (n == 0 || (n == 1 && s[1] == '.') || (n == 2 && s[1] == '.' && s[2] == '.')) return 0;
        if (!e) break;
        s = e;
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (!s) return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    route(s, size);
    char *nl = memchr(s, '\n', size);
    if (nl) {
        *nl = '\0';
        const char *root = s, *path = nl + 1;
        route(path, size - (size_t)(path - s));
        if (httproute_inside(root, path)) {
            /* Inside means: both clean, and path is root or below it. */
            size_t n = strlen(root);
            if (!clean(root) || !clean(path)) abort();
            if (n > 1 && (strncmp(path, root, n) || (path[n] && path[n] != '/'))) abort();
        } else if (clean(root) && clean(path) && !strcmp(root, path)) {
            abort(); /* a clean root contains itself */
        }
    }
    free(s);
    return 0;
}
