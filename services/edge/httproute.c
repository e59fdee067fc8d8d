#include "httproute.h"

#include <string.h>

static const struct {
    const char *path;
    httproute r;
} table[] = {
    {"/healthz", {HTTPROUTE_HEALTHZ, NULL, NULL}},
    {"/readyz", {HTTPROUTE_READYZ, NULL, NULL}},
    {"/metrics", {HTTPROUTE_METRICS, NULL, NULL}},
    {"/", {HTTPROUTE_FILE, "index.html", "text/html; charset=utf-8"}},
    {"/index.html", {HTTPROUTE_FILE, "index.html", "text/html; charset=utf-8"}},
    {"/app.js", {HTTPROUTE_FILE, "app.js", "text/javascript; charset=utf-8"}},
    {"/style.css", {HTTPROUTE_FILE, "style.css", "text/css; charset=utf-8"}},
};

httproute httproute_match(const char *path, size_t len)
{
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (strlen(table[i].path) == len && !memcmp(table[i].path, path, len)) return table[i].r;
    return (httproute){HTTPROUTE_NOT_FOUND, NULL, NULL};
}

/* Every segment after the first '/' is a real name: not empty, ".", "..". */
static bool clean(const char *p)
{
    if (*p != '/') return false;
    if (!p[1]) return true; /* "/" */
    while (*p == '/') {
        const char *seg = ++p;
        while (*p && *p != '/')
            p++;
        size_t n = (size_t)(p - seg);
        if (n == 0 || (n == 1 && seg[0] == '.') || (n == 2 && seg[0] == '.' && seg[1] == '.'))
            return false;
    }
    return *p == '\0';
}

bool httproute_inside(const char *root, const char *path)
{
    if (!clean(root) || !clean(path)) return false;
    size_t n = strlen(root);
    if (n == 1) return true; /* root "/" */
    return !strncmp(path, root, n) && (path[n] == '\0' || path[n] == '/');
}
