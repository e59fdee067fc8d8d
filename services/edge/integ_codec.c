#include "integ_codec.h"

#include "proto_v1.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The edge's own actions: no route may take them. */
static const char *const builtins[] = {"sendmessage", "join",     "leave",       "history",
                                       "presence",    "$connect", "$disconnect", "$default"};

bool integ_action_builtin(const char *action)
{
    for (size_t i = 0; i < sizeof builtins / sizeof builtins[0]; i++)
        if (!strcmp(action, builtins[i])) return true;
    return false;
}

/* "DW_ROUTES: '<item>' <why>" into err; -1. */
static int fail(char *err, size_t errlen, const char *item, size_t n, const char *why)
{
    snprintf(err, errlen, "DW_ROUTES: '%.*s' %s", (int)(n > 80 ? 80 : n), item, why);
    return -1;
}

int integ_routes_parse(const char *spec, integ_route_spec **out, size_t *n, char *err,
                       size_t errlen)
{
    *out = NULL;
    *n = 0;
    integ_route_spec *v = NULL;
    size_t cnt = 0;
    const char *p = spec ? spec : "";
    while (*p) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        const char *item = p;
        p += len + (end ? 1 : 0);
        while (len && (*item == ' ' || *item == '\t'))
            item++, len--;
        while (len && (item[len - 1] == ' ' || item[len - 1] == '\t'))
            len--;
        if (!len) {
            if (end && !*p) break; /* a trailing comma */
            free(v);
            snprintf(err, errlen, "DW_ROUTES: an empty item (want action:mode,...)");
            return -1;
        }
        const char *colon = memchr(item, ':', len);
        if (!colon) {
            free(v);
            return fail(err, errlen, item, len, "has no mode (want action:sync or action:async)");
        }
        size_t alen = (size_t)(colon - item), mlen = len - alen - 1;
        const char *mode = colon + 1;
        char action[DW_ACTION_MAX + 1];
        if (!dw_action_valid(item, alen)) {
            free(v);
            return fail(err, errlen, item, len,
                        "names no valid action (1-64 of letters, digits, - and _)");
        }
        memcpy(action, item, alen);
        action[alen] = '\0';
        if (integ_action_builtin(action)) {
            free(v);
            return fail(err, errlen, item, alen,
                        "is a built-in action of the edge and cannot be a route");
        }
        integ_mode m;
        if (mlen == 4 && !memcmp(mode, "sync", 4))
            m = INTEG_SYNC;
        else if (mlen == 5 && !memcmp(mode, "async", 5))
            m = INTEG_ASYNC;
        else {
            free(v);
            return fail(err, errlen, item, len, "has no valid mode (sync or async)");
        }
        for (size_t i = 0; i < cnt; i++)
            if (!strcmp(v[i].action, action)) {
                free(v);
                return fail(err, errlen, item, alen, "is named twice");
            }
        if (cnt == INTEG_ROUTES_MAX) {
            free(v);
            snprintf(err, errlen, "DW_ROUTES: more than %d routes", INTEG_ROUTES_MAX);
            return -1;
        }
        integ_route_spec *g = realloc(v, (cnt + 1) * sizeof *g);
        if (!g) {
            free(v);
            snprintf(err, errlen, "DW_ROUTES: out of memory");
            return -1;
        }
        v = g;
        memcpy(v[cnt].action, action, alen + 1);
        v[cnt].mode = m;
        cnt++;
    }
    *out = v;
    *n = cnt;
    return 0;
}

int integ_frame_parse(const char *buf, size_t len, json_t **frame, const char **action)
{
    *frame = NULL;
    *action = NULL;
    json_t *root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, NULL);
    const char *a = json_string_value(json_object_get(root, "action"));
    if (!json_is_object(root) || !a) {
        json_decref(root);
        return -1;
    }
    *frame = root;
    *action = a;
    return 0;
}

/* A string from the connection (any bytes): null when it is no UTF-8. */
static json_t *str_or_null(const char *s)
{
    json_t *v = s && *s ? json_string(s) : NULL;
    return v ? v : json_null();
}

char *integ_request_body(const char *action, const char *conn_id, const char *request_id,
                         const integ_identity *id, json_t *frame, size_t *len)
{
    json_t *ctx = id->context_json ? json_loads(id->context_json, JSON_DECODE_ANY, NULL) : NULL;
    json_t *ident = json_pack("{s:o, s:o, s:o, s:o}", "sourceIp", str_or_null(id->source_ip),
                              "userAgent", str_or_null(id->user_agent), "user",
                              str_or_null(id->user), "context", ctx ? ctx : json_null());
    if (!ident) return NULL;
    /* jansson keeps insertion order: the fields come out as documented. */
    json_t *o = json_pack("{s:s, s:s, s:s, s:o, s:O}", "action", action, "connectionId", conn_id,
                          "requestId", request_id, "identity", ident, "body", frame);
    if (!o) return NULL;
    char *text = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (text) *len = strlen(text);
    return text;
}

static int set_text(integ_reply *out, const char *s, size_t n)
{
    out->text = malloc(n + 1);
    if (!out->text) return -1;
    memcpy(out->text, s, n);
    out->text[n] = '\0';
    out->text_len = n;
    return 0;
}

int integ_reply_decode(const char *data, size_t len, integ_reply *out)
{
    memset(out, 0, sizeof *out);
    json_t *root =
        data && len ? json_loadb(data, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, NULL) : NULL;
    json_t *reply = json_object_get(root, "reply");
    json_t *error = json_object_get(root, "error");
    int rc = 0;
    if (!json_is_object(root)) {
        out->kind = INTEG_REPLY_BAD;
        rc = set_text(out, "the reply is not a JSON object", 30);
    } else if (reply && !error) {
        out->kind = INTEG_REPLY_OK;
        if (json_is_string(reply)) {
            rc = set_text(out, json_string_value(reply), json_string_length(reply));
        } else {
            out->text = json_dumps(reply, JSON_COMPACT | JSON_ENCODE_ANY);
            out->text_json = true;
            if (out->text)
                out->text_len = strlen(out->text);
            else
                rc = -1;
        }
    } else if (error && !reply) {
        out->kind = INTEG_REPLY_ERROR;
        const char *e = json_string_value(error);
        if (e)
            rc = set_text(out, e, json_string_length(error));
        else
            rc = set_text(out, "(error without a text)", 22);
    } else {
        out->kind = INTEG_REPLY_BAD;
        rc = reply ? set_text(out, "the reply has both \"reply\" and \"error\"", 38)
                   : set_text(out, "the reply has neither \"reply\" nor \"error\"", 41);
    }
    json_decref(root);
    if (rc) integ_reply_free(out);
    return rc;
}

void integ_reply_free(integ_reply *r)
{
    free(r->text);
    r->text = NULL;
    r->text_len = 0;
}

char *integ_v1_reply(const char *action, const char *ref, const char *text, size_t text_len,
                     bool text_json, size_t *len)
{
    json_t *data = text_json ? json_loadb(text, text_len, JSON_DECODE_ANY, NULL)
                             : json_stringn(text, text_len);
    /* A reply string that is not UTF-8 cannot be a JSON string. */
    if (!data) data = json_null();
    return v1_finish(json_pack("{s:s, s:s, s:o}", "type", "reply", "action", action, "data", data),
                     ref, len);
}

char *integ_v1_ack(const char *action, uint64_t seq, const char *id, const char *ref, size_t *len)
{
    json_t *o =
        json_pack("{s:s, s:s, s:I}", "type", "ack", "action", action, "seq", (json_int_t)seq);
    if (o && id) json_object_set_new(o, "id", json_string(id));
    return v1_finish(o, ref, len);
}

char *integ_v1_error(const char *action, const char *request_id, const char *message,
                     const char *ref, size_t *len)
{
    return v1_finish(json_pack("{s:s, s:s, s:s, s:s, s:s}", "type", "error", "code",
                               "integration_failed", "message", message, "action", action,
                               "requestId", request_id),
                     ref, len);
}
