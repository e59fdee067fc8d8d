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

int routes_parse(const char *buf, size_t len, edge_request *out)
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
