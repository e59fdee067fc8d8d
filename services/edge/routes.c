#include "routes.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "dw/util.h"

static int take_text(json_t *v, edge_request *out)
{
    if (json_is_string(v)) {
        size_t n = json_string_length(v);
        out->data = malloc(n + 1);
        if (!out->data) return -1;
        memcpy(out->data, json_string_value(v), n);
        out->data[n] = '\0';
        out->data_len = n;
        return 0;
    }
    /* The AWS sample posts whatever "data" holds; a non-string goes out as
     * its compact JSON text. */
    out->data = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!out->data) return -1;
    out->data_len = strlen(out->data);
    return 0;
}

/* A JSON string of printable ASCII without escapes, from just after its
 * opening quote: its length, or -1 (anything else is left to jansson). */
static long plain_string(const char *p, const char *end)
{
    const char *q = p;
    for (; q < end && *q != '"'; q++)
        if ((unsigned char)*q < 0x20 || (unsigned char)*q > 0x7e || *q == '\\') return -1;
    return q < end ? (long)(q - p) : -1;
}

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

#define FLAT_MAX 8

/* The common form, a flat object of plain strings
 * ({"action":"sendmessage","data":"hi"}), read without building a JSON
 * tree: jansson's parse was about a quarter of the edge's instructions per
 * message. Anything else (escapes, non-ASCII, other values, nesting, a
 * repeated key, more than FLAT_MAX keys) is left to jansson, so the result
 * is always jansson's (the routes fuzzer compares the two). 1 handled, 0
 * not this form, -1 out of memory. */
static int parse_flat(const char *buf, size_t len, edge_request *out)
{
    const char *p = buf, *end = buf + len;
    struct {
        const char *s;
        long n;
    } key[FLAT_MAX], val[FLAT_MAX];
    int n = 0;
    p = skip_ws(p, end);
    if (p == end || *p++ != '{') return 0;
    for (;;) {
        p = skip_ws(p, end);
        if (n == FLAT_MAX || p == end || *p++ != '"') return 0;
        if ((key[n].n = plain_string(p, end)) < 0) return 0;
        key[n].s = p;
        p = skip_ws(p + key[n].n + 1, end);
        if (p == end || *p++ != ':') return 0;
        p = skip_ws(p, end);
        if (p == end || *p++ != '"') return 0;
        if ((val[n].n = plain_string(p, end)) < 0) return 0;
        val[n].s = p;
        p = skip_ws(p + val[n].n + 1, end);
        for (int i = 0; i < n; i++)
            if (key[i].n == key[n].n && !memcmp(key[i].s, key[n].s, (size_t)key[n].n)) return 0;
        n++;
        if (p == end) return 0;
        if (*p == '}') break;
        if (*p++ != ',') return 0;
    }
    if (skip_ws(p + 1, end) != end) return 0;
#define IS(i, lit) (key[i].n == sizeof lit - 1 && !memcmp(key[i].s, lit, sizeof lit - 1))
    int action = -1, data = -1, message = -1;
    for (int i = 0; i < n; i++) {
        if (IS(i, "action")) action = i;
        if (IS(i, "data")) data = i;
        if (IS(i, "message")) message = i;
    }
#undef IS
    if (action < 0 || val[action].n != sizeof "sendmessage" - 1 ||
        memcmp(val[action].s, "sendmessage", sizeof "sendmessage" - 1))
        return 1; /* ROUTE_DEFAULT */
    int v = data >= 0 ? data : message;
    if (v < 0) {
        out->route = ROUTE_BAD_REQUEST;
        out->error = "sendmessage needs \"data\" or \"message\"";
        return 1;
    }
    if (!(out->data = malloc((size_t)val[v].n + 1))) return -1;
    memcpy(out->data, val[v].s, (size_t)val[v].n);
    out->data[val[v].n] = '\0';
    out->data_len = (size_t)val[v].n;
    out->route = ROUTE_SENDMESSAGE;
    return 1;
}

int routes_parse(const char *buf, size_t len, edge_request *out)
{
    memset(out, 0, sizeof *out);
    out->route = ROUTE_DEFAULT;
    int rc = parse_flat(buf, len, out);
    if (rc) return rc < 0 ? -1 : 0;
    return routes_parse_json(buf, len, out);
}

int routes_parse_json(const char *buf, size_t len, edge_request *out)
{
    memset(out, 0, sizeof *out);
    out->route = ROUTE_DEFAULT;
    json_error_t err;
    json_t *root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &err);
    if (!root || !json_is_object(root)) {
        json_decref(root);
        return 0;
    }
    const char *action = json_string_value(json_object_get(root, "action"));
    if (!action || strcmp(action, "sendmessage")) {
        json_decref(root);
        return 0;
    }
    json_t *v = json_object_get(root, "data");
    if (!v || json_is_null(v)) v = json_object_get(root, "message");
    if (!v || json_is_null(v)) {
        out->route = ROUTE_BAD_REQUEST;
        out->error = "sendmessage needs \"data\" or \"message\"";
        json_decref(root);
        return 0;
    }
    int rc = take_text(v, out);
    json_decref(root);
    if (rc) return -1;
    out->route = ROUTE_SENDMESSAGE;
    return 0;
}

void routes_request_free(edge_request *r)
{
    free(r->data);
    r->data = NULL;
}

char *routes_default_reply(const edge_conn_info *ci, size_t *len)
{
    static const char prefix[] = "Use the sendmessage route to send a message. Your info: ";
    char connected[32], active[32];
    dw_iso8601_ms(ci->connected_at_ms, connected, sizeof connected);
    dw_iso8601_ms(ci->last_active_ms, active, sizeof active);
    /* jansson keeps insertion order, so the keys come out as AWS has them. */
    /* A user agent that is not valid UTF-8 cannot be a JSON string: null. */
    json_t *ua = ci->user_agent ? json_string(ci->user_agent) : NULL;
    if (!ua) ua = json_null();
    json_t *o = json_pack("{s:s, s:{s:s, s:o}, s:s, s:s}", "ConnectedAt", connected, "Identity",
                          "SourceIp", ci->source_ip ? ci->source_ip : "", "UserAgent", ua,
                          "LastActiveAt", active, "connectionID", ci->conn_id);
    if (!o) return NULL;
    char *js = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!js) return NULL;
    size_t n = sizeof prefix - 1 + strlen(js);
    char *out = malloc(n + 1);
    if (out) {
        memcpy(out, prefix, sizeof prefix - 1);
        memcpy(out + sizeof prefix - 1, js, strlen(js) + 1);
        *len = n;
    }
    free(js);
    return out;
}

char *routes_error_reply(const char *message, const char *conn_id, const char *request_id,
                         size_t *len)
{
    json_t *o = json_pack("{s:s, s:s, s:s}", "message", message, "connectionId", conn_id,
                          "requestId", request_id);
    if (!o) return NULL;
    char *js = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (js) *len = strlen(js);
    return js;
}
