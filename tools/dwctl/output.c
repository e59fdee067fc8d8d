/* dwctl's output: stderr messages, JSON lines, aligned tables. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dw/util.h"
#include "dwctl.h"

void dwctl_err(const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* One write, so the line stays whole even when stderr is shared. */
    fprintf(stderr, "dwctl: %s\n", msg);
}

json_t *dwctl_json_str(const char *s)
{
    if (!s) return json_null();
    json_t *j = json_string(s);
    if (j) return j;
    /* Not UTF-8 (protobuf-c does not check proto3 strings): keep ASCII. */
    char *copy = strdup(s);
    if (!copy) return NULL;
    for (char *p = copy; *p; p++)
        if ((unsigned char)*p >= 0x80) *p = '?';
    j = json_string(copy);
    free(copy);
    return j;
}

int dwctl_json_print_line(json_t *obj)
{
    if (!obj) {
        dwctl_err("out of memory building JSON");
        return DWCTL_FAIL;
    }
    char *text = json_dumps(obj, JSON_COMPACT);
    json_decref(obj);
    if (!text) {
        dwctl_err("out of memory building JSON");
        return DWCTL_FAIL;
    }
    puts(text);
    free(text);
    return DWCTL_OK;
}

const char *dwctl_term_safe(const char *s, char *buf, size_t len)
{
    if (!s || !*s) return "-";
    size_t i = 0;
    for (; s[i] && i + 1 < len; i++) {
        unsigned char c = (unsigned char)s[i];
        buf[i] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    buf[i] = '\0';
    return buf;
}

const char *dwctl_time(int64_t ms, char *buf, size_t len)
{
    if (ms <= 0) {
        snprintf(buf, len, "%s", "");
        return buf;
    }
    dw_iso8601_ms(ms, buf, len);
    return buf;
}

int dwctl_table_init(dwctl_table *t, size_t ncols, const char *const *headers)
{
    memset(t, 0, sizeof *t);
    t->ncols = ncols;
    return dwctl_table_add(t, headers);
}

int dwctl_table_add(dwctl_table *t, const char *const *cells)
{
    if (t->nrows == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 16;
        char **grown = realloc(t->cells, cap * t->ncols * sizeof *grown);
        if (!grown) return -1;
        t->cells = grown;
        t->cap = cap;
    }
    char **row = t->cells + t->nrows * t->ncols;
    for (size_t c = 0; c < t->ncols; c++) {
        char tmp[1024];
        row[c] = strdup(dwctl_term_safe(cells[c], tmp, sizeof tmp));
        if (!row[c]) {
            while (c--)
                free(row[c]);
            return -1;
        }
    }
    t->nrows++;
    return 0;
}

/* Terminal columns taken by s: UTF-8 continuation bytes take none. */
static size_t text_width(const char *s)
{
    size_t w = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xc0) != 0x80) w++;
    return w;
}

void dwctl_table_print(const dwctl_table *t, FILE *out)
{
    size_t width[16] = {0};
    size_t ncols = t->ncols < 16 ? t->ncols : 16;
    for (size_t r = 0; r < t->nrows; r++)
        for (size_t c = 0; c < ncols; c++) {
            size_t w = text_width(t->cells[r * t->ncols + c]);
            if (w > width[c]) width[c] = w;
        }
    for (size_t r = 0; r < t->nrows; r++) {
        for (size_t c = 0; c < ncols; c++) {
            const char *cell = t->cells[r * t->ncols + c];
            if (c + 1 == ncols)
                fprintf(out, "%s\n", cell); /* no trailing blanks */
            else
                fprintf(out, "%s%*s", cell, (int)(width[c] - text_width(cell) + 2), "");
        }
    }
}

void dwctl_table_free(dwctl_table *t)
{
    if (!t) return;
    for (size_t i = 0; i < t->nrows * t->ncols; i++)
        free(t->cells[i]);
    free(t->cells);
    memset(t, 0, sizeof *t);
}
