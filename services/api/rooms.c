#include "rooms.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dw/util.h"
#include "dw/wire.h"

#define SEGMENT "@rooms/"
#define SUFFIX "/messages"

void api_publish_req_clear(api_publish_req *r)
{
    if (!r) return;
    free(r->data);
    memset(r, 0, sizeof *r);
}

static int fail(char *err, size_t errlen, int status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(char *err, size_t errlen, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return status;
}

int api_rooms_route_parse(const char *path, char *room)
{
    if (!path || path[0] != '/') return API_ROOMS_NOT_FOUND;
    const char *p = path + 1;
    if (strncmp(p, SEGMENT, strlen(SEGMENT))) {
        /* one stage segment: "/<stage>/@rooms/..." */
        const char *slash = strchr(p, '/');
        if (!slash || slash == p || strncmp(slash + 1, SEGMENT, strlen(SEGMENT)))
            return API_ROOMS_NOT_FOUND;
        p = slash + 1;
    }
    p += strlen(SEGMENT);
    size_t n = strlen(p), slen = strlen(SUFFIX);
    if (n <= slen || strcmp(p + n - slen, SUFFIX)) return API_ROOMS_NOT_FOUND;
    n -= slen;
    if (!dw_room_valid(p, n)) return API_ROOMS_BAD_ROOM;
    memcpy(room, p, n);
    room[n] = '\0';
    return API_ROOMS_OK;
}

/* Valid UTF-8 (NUL bytes allowed: they are UTF-8), as jansson checks it. */
static bool utf8_ok(const char *s, size_t len)
{
    json_t *j = json_stringn(s, len);
    bool ok = j != NULL;
    json_decref(j);
    return ok;
}

int api_publish_set_from(api_publish_req *r, const char *from, size_t len, char *err, size_t errlen)
{
    if (!len || len > API_FROM_MAX)
        return fail(err, errlen, 400, "from: 1 to %d bytes", API_FROM_MAX);
    if (!utf8_ok(from, len)) return fail(err, errlen, 400, "from: not UTF-8");
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)from[i];
        /* C0, DEL, and C1 (U+0080..U+009F, 0xC2 0x80..0x9F in UTF-8). */
        if (c < 0x20 || c == 0x7f ||
            (c == 0xc2 && i + 1 < len && (unsigned char)from[i + 1] <= 0x9f))
            return fail(err, errlen, 400, "from: control characters are not allowed");
    }
    memcpy(r->from, from, len);
    r->from[len] = '\0';
    return 0;
}

int api_publish_set_key(api_publish_req *r, const char *key, size_t len, char *err, size_t errlen)
{
    if (!len || len > API_KEY_MAX)
        return fail(err, errlen, 400, "idempotency key: 1 to %d characters", API_KEY_MAX);
    for (size_t i = 0; i < len; i++) {
        char c = key[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == ':' || c == '-'))
            return fail(err, errlen, 400, "idempotency key: only A-Z a-z 0-9 . _ : -");
    }
    memcpy(r->key, key, len);
    r->key[len] = '\0';
    return 0;
}

/* Take the value as the message: a string's text, anything else as compact
 * JSON text. */
static int take_value(api_publish_req *r, json_t *v, size_t max, char *err, size_t errlen)
{
    char *text = NULL;
    size_t n = 0;
    bool is_json = !json_is_string(v);
    if (is_json) {
        text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY | JSON_PRESERVE_ORDER);
        if (!text) return fail(err, errlen, 500, "out of memory");
        n = strlen(text);
    } else {
        n = json_string_length(v);
        text = malloc(n ? n : 1);
        if (!text) return fail(err, errlen, 500, "out of memory");
        memcpy(text, json_string_value(v), n);
    }
    if (n > max) {
        free(text);
        return fail(err, errlen, 413, "message of %zu bytes is over the limit of %zu", n, max);
    }
    free(r->data);
    r->data = text;
    r->len = n;
    r->data_json = is_json;
    return 0;
}

int api_publish_set_body(api_publish_req *r, const char *body, size_t len, bool json, size_t max,
                         char *err, size_t errlen)
{
    if (json) {
        json_error_t je;
        json_t *v =
            json_loadb(body ? body : "", len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &je);
        if (!v) return fail(err, errlen, 400, "the body is not JSON: %s", je.text);
        int rc = take_value(r, v, max, err, errlen);
        json_decref(v);
        return rc;
    }
    if (len > max)
        return fail(err, errlen, 413, "message of %zu bytes is over the limit of %zu", len, max);
    if (!utf8_ok(body ? body : "", len))
        return fail(err, errlen, 400,
                    "the message is not UTF-8 text (members get it as a text "
                    "frame)");
    char *copy = malloc(len ? len : 1);
    if (!copy) return fail(err, errlen, 500, "out of memory");
    if (len) memcpy(copy, body, len);
    free(r->data);
    r->data = copy;
    r->len = len;
    r->data_json = false;
    return 0;
}

/* An optional string field: 0 absent, 1 present (*s, *n), -1 not a string. */
static int opt_string(json_t *o, const char *name, const char **s, size_t *n)
{
    json_t *v = json_object_get(o, name);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_string(v)) return -1;
    *s = json_string_value(v);
    *n = json_string_length(v);
    return 1;
}

int api_publish_parse_json(api_publish_req *r, const char *body, size_t len, size_t max, char *err,
                           size_t errlen)
{
    json_error_t je;
    const char *s = NULL;
    size_t n = 0;
    int rc = 0, has;
    json_t *o = json_loadb(body ? body : "", len, JSON_REJECT_DUPLICATES, &je);
    if (!o) return fail(err, errlen, 400, "not a JSON object: %s", je.text);
    if (!json_is_object(o)) {
        rc = fail(err, errlen, 400, "not a JSON object");
        goto done;
    }
    has = opt_string(o, "room", &s, &n);
    if (has <= 0 || !dw_room_valid(s, n)) {
        rc = fail(err, errlen, 400,
                  "room: 1-%d of A-Z a-z 0-9 - _ . (a '.' may not start, end or repeat)",
                  DW_ROOM_MAX);
        goto done;
    }
    memcpy(r->room, s, n);
    r->room[n] = '\0';
    json_t *data = json_object_get(o, "data");
    if (!data) {
        rc = fail(err, errlen, 400, "data: missing (a string, or any JSON value)");
        goto done;
    }
    if ((rc = take_value(r, data, max, err, errlen))) goto done;
    has = opt_string(o, "from", &s, &n);
    if (has < 0) {
        rc = fail(err, errlen, 400, "from: not a string");
        goto done;
    }
    if ((rc = has ? api_publish_set_from(r, s, n, err, errlen)
                  : api_publish_set_from(r, API_FROM_DEFAULT, strlen(API_FROM_DEFAULT), err,
                                         errlen)))
        goto done;
    has = opt_string(o, "idempotencyKey", &s, &n);
    if (has < 0) {
        rc = fail(err, errlen, 400, "idempotencyKey: not a string");
        goto done;
    }
    if (has) rc = api_publish_set_key(r, s, n, err, errlen);
done:
    json_decref(o);
    if (rc) api_publish_req_clear(r);
    return rc;
}

int api_publish_msg_id(const api_publish_req *r, char *buf, size_t len)
{
    return dw_msgid_room_publish(buf, len, r->room, r->key);
}

static char *dump(json_t *o, size_t *len)
{
    if (!o) return NULL;
    char *text = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (text && len) *len = strlen(text);
    return text;
}

char *api_publish_ok_json(const char *room, uint64_t seq, bool duplicate, size_t *len)
{
    json_t *o = json_pack("{s:s, s:I}", "room", room, "seq", (json_int_t)seq);
    if (o && duplicate) json_object_set_new(o, "duplicate", json_true());
    return dump(o, len);
}

char *api_publish_error_json(unsigned status, const char *error, size_t *len)
{
    json_t *o = json_object();
    if (!o) return NULL;
    json_t *e = json_string(error ? error : "");
    json_object_set_new(o, "error", e ? e : json_string("(not UTF-8)"));
    json_object_set_new(o, "status", json_integer(status));
    return dump(o, len);
}
