/* The connect authorizer's pure parts: the request head, the request JSON,
 * the reply. No NATS in here (authorizer.h). */
#include "authorizer.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "dw/bus.h"
#include "session.h"

static const char *find_crlf(const char *p, const char *end)
{
    for (; p + 1 < end; p++)
        if (p[0] == '\r' && p[1] == '\n') return p;
    return NULL;
}

static bool is_tchar(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

int authz_head_parse(const char *buf, size_t len, authz_head *h)
{
    memset(h, 0, sizeof *h);
    const char *end = NULL;
    for (size_t i = 0; i + 3 < len; i++)
        if (buf[i] == '\r' && buf[i + 1] == '\n' && buf[i + 2] == '\r' && buf[i + 3] == '\n') {
            end = buf + i + 2; /* the last header line's CRLF included */
            break;
        }
    if (!end) {
        /* Not even a request line's worth of bytes that could be HTTP: say so early. */
        for (size_t i = 0; i < len && i < 16; i++)
            if (buf[i] == ' ')
                break;
            else if (!is_tchar(buf[i]))
                return -1;
        return 1;
    }
    h->len = (size_t)(end - buf) + 2;
    /* request line */
    const char *p = buf, *eol = find_crlf(p, end);
    if (!eol) return -1;
    const char *sp1 = memchr(p, ' ', (size_t)(eol - p));
    if (!sp1 || sp1 == p) return -1;
    for (const char *q = p; q < sp1; q++)
        if (!is_tchar(*q)) return -1;
    const char *target = sp1 + 1;
    const char *sp2 = memchr(target, ' ', (size_t)(eol - target));
    if (!sp2 || sp2 == target || *target != '/') return -1;
    if ((size_t)(eol - sp2 - 1) != 8 || memcmp(sp2 + 1, "HTTP/1.", 7)) return -1;
    h->method = p;
    h->method_len = (size_t)(sp1 - p);
    const char *qm = memchr(target, '?', (size_t)(sp2 - target));
    h->path = target;
    h->path_len = (size_t)((qm ? qm : sp2) - target);
    if (qm) {
        h->query = qm + 1;
        h->query_len = (size_t)(sp2 - qm - 1);
    }
    for (const char *q = target; q < sp2; q++)
        if ((unsigned char)*q <= 0x20 || *q == 0x7f) return -1;
    /* headers */
    p = eol + 2;
    while (p < end) {
        eol = find_crlf(p, end + 2);
        if (!eol) return -1;
        const char *colon = memchr(p, ':', (size_t)(eol - p));
        if (!colon || colon == p) return -1; /* (obsolete line folding is refused too) */
        for (const char *q = p; q < colon; q++)
            if (!is_tchar(*q)) return -1;
        const char *v = colon + 1, *ve = eol;
        while (v < ve && (*v == ' ' || *v == '\t'))
            v++;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        for (const char *q = v; q < ve; q++)
            if ((*q != '\t' && (unsigned char)*q < 0x20) || *q == 0x7f) return -1;
        if (h->nheaders == AUTHZ_MAX_HEADERS) return -1;
        authz_header *hd = &h->headers[h->nheaders++];
        hd->name = p;
        hd->name_len = (size_t)(colon - p);
        hd->value = v;
        hd->value_len = (size_t)(ve - v);
        p = eol + 2;
    }
    const authz_header *up = authz_head_get(h, "upgrade");
    h->websocket = up && up->value_len == 9 && !strncasecmp(up->value, "websocket", 9);
    return 0;
}

const authz_header *authz_head_get(const authz_head *h, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; i < h->nheaders; i++)
        if (h->headers[i].name_len == n && !strncasecmp(h->headers[i].name, name, n))
            return &h->headers[i];
    return NULL;
}

int authz_forward_parse(const char *list, authz_forward *f)
{
    memset(f, 0, sizeof *f);
    const char *p = list;
    while (*p) {
        const char *c = strchr(p, ',');
        size_t n = c ? (size_t)(c - p) : strlen(p);
        while (n && (*p == ' ' || *p == '\t')) {
            p++;
            n--;
        }
        while (n && (p[n - 1] == ' ' || p[n - 1] == '\t'))
            n--;
        if (!n) goto error;
        char **nn = realloc(f->names, (f->n + 1) * sizeof *nn);
        if (!nn) goto error;
        f->names = nn;
        char *name = strndup(p, n);
        if (!name) goto error;
        for (char *q = name; *q; q++) {
            if (!is_tchar(*q)) {
                free(name);
                goto error;
            }
            if (*q >= 'A' && *q <= 'Z') *q = (char)(*q - 'A' + 'a');
        }
        f->names[f->n++] = name;
        if (!c) break;
        p = c + 1;
    }
    return 0;
error:
    authz_forward_free(f);
    return -1;
}

void authz_forward_free(authz_forward *f)
{
    if (!f) return;
    for (size_t i = 0; i < f->n; i++)
        free(f->names[i]);
    free(f->names);
    f->names = NULL;
    f->n = 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* URL-decode (with '+' as space) into out (cap >= n + 1). Its length. */
static size_t url_decode(const char *s, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%' && i + 2 < n && hexval(s[i + 1]) >= 0 && hexval(s[i + 2]) >= 0) {
            out[o++] = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
            i += 2;
        } else {
            out[o++] = s[i] == '+' ? ' ' : s[i];
        }
    }
    out[o] = '\0';
    return o;
}

/* Set key to a string of n bytes unless the key is there already, or the
 * bytes are not UTF-8 (jansson refuses them) or hold a NUL (a %00: many
 * JSON readers refuse \u0000). */
static int set_first(json_t *obj, const char *key, const char *v, size_t n)
{
    if (n > AUTHZ_MAX_VALUE || memchr(v, 0, n) || json_object_get(obj, key)) return 0;
    json_t *s = json_stringn(v, n);
    if (!s) return 0; /* not UTF-8: left out */
    return json_object_set_new(obj, key, s) ? -1 : 0;
}

int authz_request_build(const authz_head *h, const char *source_ip, const authz_forward *fwd,
                        char **out, size_t *len)
{
    int rc = -1;
    char *buf = NULL;
    json_t *root = json_object(), *q = json_object(), *hd = json_object();
    if (!root || !q || !hd) goto out;
    const authz_header *ua = authz_head_get(h, "user-agent");
    if (json_object_set_new(root, "sourceIp", json_string(source_ip ? source_ip : ""))) goto out;
    json_t *uav = ua && ua->value_len <= AUTHZ_MAX_VALUE ? json_stringn(ua->value, ua->value_len)
                                                         : json_null();
    if (json_object_set_new(root, "userAgent", uav ? uav : json_null())) goto out;
    size_t cap = h->path_len > h->query_len ? h->path_len : h->query_len;
    buf = malloc(cap + 1);
    if (!buf) goto out;
    size_t n = url_decode(h->path, h->path_len, buf);
    /* (a path with %00 or not UTF-8 once decoded goes as it came) */
    json_t *pv = memchr(buf, 0, n) ? NULL : json_stringn(buf, n);
    if (!pv) pv = json_stringn(h->path, h->path_len);
    if (json_object_set_new(root, "path", pv ? pv : json_string("/"))) goto out;
    /* query: name=value pairs separated by & */
    size_t nparams = 0;
    const char *p = h->query, *end = h->query ? h->query + h->query_len : NULL;
    while (p && p < end && nparams < AUTHZ_MAX_QUERY_PARAMS) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *pe = amp ? amp : end;
        const char *eq = memchr(p, '=', (size_t)(pe - p));
        if (pe > p) {
            size_t kn = url_decode(p, (size_t)((eq ? eq : pe) - p), buf);
            char *key = strndup(buf, kn);
            if (!key) goto out;
            size_t vn = eq ? url_decode(eq + 1, (size_t)(pe - eq - 1), buf) : 0;
            if (!eq) buf[0] = '\0';
            int r = kn && strlen(key) == kn ? set_first(q, key, buf, vn) : 0;
            free(key);
            if (r) goto out;
            nparams++;
        }
        p = amp ? amp + 1 : end;
    }
    for (size_t i = 0; i < h->nheaders; i++) {
        const authz_header *x = &h->headers[i];
        for (size_t k = 0; fwd && k < fwd->n; k++) {
            if (strlen(fwd->names[k]) != x->name_len ||
                strncasecmp(fwd->names[k], x->name, x->name_len))
                continue;
            if (set_first(hd, fwd->names[k], x->value, x->value_len)) goto out;
        }
    }
    if (json_object_set(root, "query", q) || json_object_set(root, "headers", hd)) goto out;
    *out = json_dumps(root, JSON_COMPACT);
    if (!*out) goto out;
    *len = strlen(*out);
    rc = 0;
out:
    free(buf);
    json_decref(q);
    json_decref(hd);
    json_decref(root);
    return rc;
}

static bool user_valid(const char *u, size_t n)
{
    if (n == 0 || n > 128) return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)u[i] < 0x21 || (unsigned char)u[i] > 0x7e) return false;
    return true;
}

int authz_reply_decode(const char *buf, size_t len, authz_decision *d, const char **why)
{
    memset(d, 0, sizeof *d);
    if (len > AUTHZ_MAX_REPLY) {
        *why = "reply too large";
        return -1;
    }
    json_t *root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, NULL);
    if (!root || !json_is_object(root)) {
        *why = "reply is not a JSON object";
        goto bad;
    }
    json_t *allow = json_object_get(root, "allow");
    if (!json_is_boolean(allow)) {
        *why = "reply has no boolean allow";
        goto bad;
    }
    if (!json_is_true(allow)) {
        json_t *st = json_object_get(root, "status");
        d->status = json_is_integer(st) && json_integer_value(st) == 401 ? 401 : 403;
        json_decref(root);
        return 0;
    }
    d->allow = true;
    json_t *u = json_object_get(root, "user");
    if (u && !json_is_null(u)) {
        if (!json_is_string(u) || !user_valid(json_string_value(u), json_string_length(u))) {
            *why = "user must be 1..128 printable ASCII characters";
            goto bad;
        }
        d->user = strdup(json_string_value(u));
        if (!d->user) goto oom;
    }
    json_t *rooms = json_object_get(root, "rooms");
    if (rooms && !json_is_null(rooms)) {
        if (!json_is_array(rooms) || json_array_size(rooms) > AUTHZ_MAX_ROOMS) {
            *why = "rooms must be an array of at most 128 room names";
            goto bad;
        }
        d->has_rooms = true;
        size_t n = json_array_size(rooms);
        d->rooms = calloc(n ? n : 1, sizeof *d->rooms);
        if (!d->rooms) goto oom;
        for (size_t i = 0; i < n; i++) {
            json_t *r = json_array_get(rooms, i);
            if (!json_is_string(r) || !dw_room_valid(json_string_value(r), json_string_length(r))) {
                *why = "rooms must hold valid room names";
                goto bad;
            }
            d->rooms[d->nrooms] = strdup(json_string_value(r));
            if (!d->rooms[d->nrooms]) goto oom;
            d->nrooms++;
        }
    }
    json_t *ctx = json_object_get(root, "context");
    if (ctx && !json_is_null(ctx)) {
        if (!json_is_object(ctx)) {
            *why = "context must be an object";
            goto bad;
        }
        d->context_json = json_dumps(ctx, JSON_COMPACT);
        if (!d->context_json) goto oom;
        if (strlen(d->context_json) > AUTHZ_MAX_CONTEXT) {
            *why = "context too large";
            goto bad;
        }
    }
    json_decref(root);
    return 0;
oom:
    *why = "out of memory";
bad:
    json_decref(root);
    authz_decision_free(d);
    return -1;
}

void authz_decision_free(authz_decision *d)
{
    if (!d) return;
    free(d->user);
    for (size_t i = 0; i < d->nrooms; i++)
        free(d->rooms[i]);
    free(d->rooms);
    free(d->context_json);
    memset(d, 0, sizeof *d);
}

size_t authz_refusal(unsigned status, char *buf, size_t cap)
{
    const char *text = status == 401   ? "Unauthorized"
                       : status == 403 ? "Forbidden"
                       : status == 400 ? "Bad Request"
                       : status == 408 ? "Request Timeout"
                       : status == 431 ? "Request Header Fields Too Large"
                                       : "Service Unavailable";
    int n = snprintf(buf, cap,
                     "HTTP/1.1 %u %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n%s\n",
                     status, text, strlen(text) + 1, text);
    return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

static void take_rooms(edge_session *s, authz_decision *d)
{
    if (!s->has_allowed_rooms) {
        s->allowed_rooms = d->rooms;
        s->n_allowed_rooms = d->nrooms;
        s->has_allowed_rooms = true;
        d->rooms = NULL;
        d->nrooms = 0;
        return;
    }
    /* Both the JWT and the authorizer name rooms: only those both allow. */
    size_t k = 0;
    for (size_t i = 0; i < s->n_allowed_rooms; i++) {
        bool both = false;
        for (size_t j = 0; j < d->nrooms && !both; j++)
            both = !strcmp(s->allowed_rooms[i], d->rooms[j]);
        if (both)
            s->allowed_rooms[k++] = s->allowed_rooms[i];
        else
            free(s->allowed_rooms[i]);
    }
    s->n_allowed_rooms = k;
}

int authz_apply(edge_session *s, authz_decision *d)
{
    if (d->user) snprintf(s->user, sizeof s->user, "%s", d->user);
    if (d->has_rooms) take_rooms(s, d);
    free(s->authz_context_json);
    s->authz_context_json = d->context_json;
    d->context_json = NULL;
    authz_decision_free(d);
    return 0;
}
