/* The connect authorizer's decoders (services/edge/authorizer.c): its reply
 * comes from user code over NATS, and the request head from anyone on the
 * internet, read before libwebsockets sees it. The first byte picks the
 * decoder. A reply that decodes keeps its promises (a status of 401 or 403
 * when refused; a printable user, valid room names and a JSON object of
 * bounded size as context when allowed); a head that parses lies inside
 * the input, and the request built from it is JSON. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "authorizer.h"
#include "dw/bus.h"
#include "fuzz.h"

static void reply(const char *buf, size_t len)
{
    authz_decision d;
    const char *why = NULL;
    if (authz_reply_decode(buf, len, &d, &why)) {
        if (!why) abort();
        return;
    }
    if (!d.allow && d.status != 401 && d.status != 403) abort();
    if (d.user && (strlen(d.user) == 0 || strlen(d.user) > 128)) abort();
    if (d.nrooms > AUTHZ_MAX_ROOMS || (d.nrooms && !d.has_rooms)) abort();
    for (size_t i = 0; i < d.nrooms; i++)
        if (!dw_room_valid(d.rooms[i], strlen(d.rooms[i]))) abort();
    if (d.context_json) {
        if (strlen(d.context_json) > AUTHZ_MAX_CONTEXT) abort();
        json_t *c = json_loads(d.context_json, 0, NULL);
        if (!json_is_object(c)) abort();
        json_decref(c);
    }
    authz_decision_free(&d);
}

static void head(const char *buf, size_t len)
{
    authz_head h;
    if (authz_head_parse(buf, len, &h) != 0) return;
    if (h.len > len) abort();
    const char *end = buf + h.len;
    if (h.path < buf || h.path + h.path_len > end) abort();
    if (h.query && (h.query < buf || h.query + h.query_len > end)) abort();
    for (size_t i = 0; i < h.nheaders; i++)
        if (h.headers[i].name < buf || h.headers[i].value + h.headers[i].value_len > end) abort();
    authz_forward f;
    if (authz_forward_parse("authorization,cookie,user-agent,x-a", &f)) abort();
    char *json = NULL;
    size_t n = 0;
    if (authz_request_build(&h, "192.0.2.1", &f, &json, &n) == 0) {
        json_t *r = json_loadb(json, n, 0, NULL);
        if (!json_is_object(r) || !json_is_object(json_object_get(r, "query")) ||
            !json_is_object(json_object_get(r, "headers")))
            abort();
        json_decref(r);
        free(json);
    }
    authz_forward_free(&f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!size) return 0;
    if (data[0] & 1)
        head((const char *)data + 1, size - 1);
    else
        reply((const char *)data + 1, size - 1);
    return 0;
}
