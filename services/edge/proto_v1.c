#include "proto_v1.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void bad(v1_request *r, const char *code, const char *msg)
{
    r->action = V1_BAD;
    r->error_code = code;
    r->error_msg = msg;
}

bool v1_name_valid(const char *name, size_t len)
{
    if (!name || len == 0 || len > 64) return false;
    for (size_t i = 0; i < len; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.'))
            return false;
    }
    return true;
}

/* A non-negative integer that fits in 53 bits (what JavaScript keeps exact). */
static int get_seq(json_t *v, uint64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0 ||
        json_integer_value(v) > 9007199254740991LL)
        return -1;
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

static int take_room(json_t *root, v1_request *r)
{
    const char *room = json_string_value(json_object_get(root, "room"));
    size_t n = room ? json_string_length(json_object_get(root, "room")) : 0;
    if (!room) {
        bad(r, "bad_request", "\"room\" is required");
        return -1;
    }
    if (!dw_room_valid(room, n)) {
        bad(r, "bad_request", "invalid room name (1-64 of letters, digits, - _ .)");
        return -1;
    }
    memcpy(r->room, room, n + 1);
    return 0;
}

static int parse_send(json_t *root, v1_request *r)
{
    json_t *data = json_object_get(root, "data");
    if (!data) {
        bad(r, "bad_request", "\"data\" is required");
        return 0;
    }
    json_t *id = json_object_get(root, "id");
    if (id) {
        if (!json_is_string(id) || json_string_length(id) == 0 ||
            json_string_length(id) > V1_CLIENT_ID_MAX) {
            bad(r, "bad_request", "\"id\" must be a string of 1-64 characters");
            return 0;
        }
        memcpy(r->client_id, json_string_value(id), json_string_length(id) + 1);
        if (memchr(r->client_id, '\0', json_string_length(id))) {
            bad(r, "bad_request", "\"id\" must not contain NUL");
            return 0;
        }
    }
    json_t *ex = json_object_get(root, "exclude_self");
    if (ex && !json_is_boolean(ex)) {
        bad(r, "bad_request", "\"exclude_self\" must be a boolean");
        return 0;
    }
    r->exclude_self = json_is_true(ex);
    if (json_is_string(data)) {
        size_t n = json_string_length(data);
        r->data = malloc(n + 1);
        if (!r->data) return -1;
        memcpy(r->data, json_string_value(data), n + 1);
        r->data_len = n;
    } else {
        r->data = json_dumps(data, JSON_COMPACT | JSON_ENCODE_ANY);
        if (!r->data) return -1;
        r->data_len = strlen(r->data);
        r->data_json = true;
    }
    r->action = V1_SEND;
    return 0;
}

int v1_parse(const char *buf, size_t len, v1_request *r)
{
    memset(r, 0, sizeof *r);
    json_error_t err;
    json_t *root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &err);
    if (!root || !json_is_object(root)) {
        json_decref(root);
        bad(r, "bad_request", "frames are JSON objects with an \"action\"");
        return 0;
    }
    json_t *ref = json_object_get(root, "ref");
    if (ref && (json_is_string(ref) || json_is_integer(ref)) &&
        (!json_is_string(ref) || json_string_length(ref) <= 64)) {
        r->ref = json_dumps(ref, JSON_COMPACT | JSON_ENCODE_ANY);
        if (!r->ref) {
            json_decref(root);
            return -1;
        }
    }
    const char *action = json_string_value(json_object_get(root, "action"));
    int rc = 0;
    if (!action) {
        bad(r, "bad_request", "\"action\" is required");
    } else if (!strcmp(action, "sendmessage")) {
        if (!take_room(root, r)) rc = parse_send(root, r);
    } else if (!strcmp(action, "join")) {
        if (!take_room(root, r)) {
            json_t *since = json_object_get(root, "since");
            r->action = V1_JOIN;
            if (since && !json_is_null(since)) {
                if (get_seq(since, &r->since))
                    bad(r, "bad_request", "\"since\" must be a sequence number");
                else
                    r->has_since = true;
            }
        }
    } else if (!strcmp(action, "leave")) {
        if (!take_room(root, r)) r->action = V1_LEAVE;
    } else if (!strcmp(action, "history")) {
        if (!take_room(root, r)) {
            json_t *before = json_object_get(root, "before");
            json_t *limit = json_object_get(root, "limit");
            uint64_t lim = 50;
            r->action = V1_HISTORY;
            if (before && !json_is_null(before) && get_seq(before, &r->before))
                bad(r, "bad_request", "\"before\" must be a sequence number");
            else if (limit && (get_seq(limit, &lim) || lim == 0))
                bad(r, "bad_request", "\"limit\" must be a positive number");
            r->limit = (uint32_t)(lim > V1_HISTORY_MAX ? V1_HISTORY_MAX : lim);
        }
    } else if (!strcmp(action, "presence")) {
        if (!take_room(root, r)) {
            json_t *after = json_object_get(root, "after");
            json_t *limit = json_object_get(root, "limit");
            uint64_t lim = 100;
            r->action = V1_PRESENCE;
            if (after && !json_is_null(after)) {
                if (!json_is_string(after) || json_string_length(after) > V1_USER_MAX)
                    bad(r, "bad_request", "\"after\" must be a user id");
                else
                    memcpy(r->after, json_string_value(after), json_string_length(after) + 1);
            }
            if (r->action == V1_PRESENCE && limit && (get_seq(limit, &lim) || lim == 0))
                bad(r, "bad_request", "\"limit\" must be a positive number");
            r->limit = (uint32_t)(lim > 1000 ? 1000 : lim);
        }
    } else {
        bad(r, "bad_request", "unknown action");
    }
    json_decref(root);
    if (rc) v1_request_free(r);
    return rc;
}

void v1_request_free(v1_request *r)
{
    free(r->data);
    free(r->ref);
    r->data = r->ref = NULL;
}

char *v1_finish(json_t *o, const char *ref, size_t *len)
{
    if (!o) return NULL;
    if (ref) {
        json_t *rv = json_loads(ref, JSON_DECODE_ANY, NULL);
        if (rv) json_object_set_new(o, "ref", rv);
    }
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (s) *len = strlen(s);
    return s;
}

/* Text from clients may be any bytes; a JSON string must be UTF-8. */
static json_t *str(const char *s)
{
    json_t *v = json_string(s ? s : "");
    return v ? v : json_string("?");
}

char *v1_hello(const char *conn_id, const char *user, size_t *len)
{
    return v1_finish(json_pack("{s:s, s:s, s:o, s:s}", "type", "hello", "connectionId", conn_id,
                               "user", str(user), "protocol", V1_PROTOCOL),
                     NULL, len);
}

char *v1_error(const char *code, const char *message, const char *ref, int64_t retry_after_ms,
               size_t *len)
{
    json_t *o = json_pack("{s:s, s:s, s:s}", "type", "error", "code", code, "message", message);
    if (o && retry_after_ms >= 0)
        json_object_set_new(o, "retry_after_ms", json_integer(retry_after_ms));
    return v1_finish(o, ref, len);
}

char *v1_joined(const char *room, uint64_t seq, bool recovered, const char *ref, size_t *len)
{
    return v1_finish(json_pack("{s:s, s:s, s:I, s:b}", "type", "joined", "room", room, "seq",
                               (json_int_t)seq, "recovered", recovered),
                     ref, len);
}

char *v1_left(const char *room, const char *ref, size_t *len)
{
    return v1_finish(json_pack("{s:s, s:s}", "type", "left", "room", room), ref, len);
}

char *v1_ack(const char *id, const char *room, uint64_t seq, const char *ref, size_t *len)
{
    return v1_finish(json_pack("{s:s, s:o, s:s, s:I}", "type", "ack", "id", str(id), "room", room,
                               "seq", (json_int_t)seq),
                     ref, len);
}

char *v1_presence_event(const char *type, const char *room, const char *user, size_t *len)
{
    return v1_finish(json_pack("{s:s, s:s, s:o}", "type", type, "room", room, "user", str(user)),
                     NULL, len);
}

json_t *v1_message_obj(const v1_msg *m)
{
    json_t *data = NULL;
    if (m->data_json) data = json_loadb(m->data, m->data_len, JSON_DECODE_ANY, NULL);
    if (!data) data = json_stringn(m->data ? m->data : "", m->data_len);
    if (!data) data = json_string(""); /* not UTF-8: cannot be a JSON string */
    return json_pack("{s:s, s:s, s:I, s:o, s:o, s:o, s:I}", "type", "message", "room", m->room,
                     "seq", (json_int_t)m->seq, "id", str(m->id), "from", str(m->from), "data",
                     data, "ts", (json_int_t)m->ts_ms);
}

char *v1_message_json(const v1_msg *m, size_t *len)
{
    return v1_finish(v1_message_obj(m), NULL, len);
}

/* Bytes s[0..n) as the body of a JSON string, escaped as jansson's
 * json_dumps escapes them; only for ASCII (see message_ascii). Returns
 * where it stopped writing; with out NULL, counts. */
static size_t put_ascii(char *out, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *esc = c == '"'    ? "\\\""
                          : c == '\\' ? "\\\\"
                          : c == '\b' ? "\\b"
                          : c == '\f' ? "\\f"
                          : c == '\n' ? "\\n"
                          : c == '\r' ? "\\r"
                          : c == '\t' ? "\\t"
                                      : NULL;
        if (esc) {
            if (out) memcpy(out + k, esc, 2);
            k += 2;
        } else if (c < 0x20) {
            if (out) {
                memcpy(out + k, "\\u00", 4);
                out[k + 4] = hex[c >> 4];
                out[k + 5] = hex[c & 15];
            }
            k += 6;
        } else {
            if (out) out[k] = (char)c;
            k++;
        }
    }
    return k;
}

static bool is_ascii(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] >= 0x80) return false;
    return true;
}

/* The message frame written by hand when every text in it is ASCII and
 * data is a string: jansson's object, then json_dumps, was ~26,000
 * instructions per message, a quarter of the edge's for a v1 room message.
 * The bytes are jansson's (v1_message_json; the v1 fuzzer and test_rooms'
 * unit test compare the two). NULL with *handled false: not this case. */
static char *message_ascii(const v1_msg *m, size_t *len, bool *handled)
{
    *handled = false;
    const char *id = m->id ? m->id : "", *from = m->from ? m->from : "";
    const char *data = m->data ? m->data : "";
    size_t nroom = m->room ? strlen(m->room) : 0, nid = strlen(id), nfrom = strlen(from);
    if (!m->room || m->data_json || !is_ascii(m->room, nroom) || !is_ascii(id, nid) ||
        !is_ascii(from, nfrom) || !is_ascii(data, m->data_len))
        return NULL;
    *handled = true;
    char seq[24], ts[24];
    int nseq = snprintf(seq, sizeof seq, "%" JSON_INTEGER_FORMAT, (json_int_t)m->seq);
    int nts = snprintf(ts, sizeof ts, "%" JSON_INTEGER_FORMAT, (json_int_t)m->ts_ms);
    static const char k0[] = "{\"type\":\"message\",\"room\":\"",
                      k1[] = "\",\"seq\":", k2[] = ",\"id\":\"", k3[] = "\",\"from\":\"",
                      k4[] = "\",\"data\":\"", k5[] = "\",\"ts\":", k6[] = "}";
    size_t n = sizeof k0 + sizeof k1 + sizeof k2 + sizeof k3 + sizeof k4 + sizeof k5 + sizeof k6 -
               7 + (size_t)nseq + (size_t)nts + put_ascii(NULL, m->room, nroom) +
               put_ascii(NULL, id, nid) + put_ascii(NULL, from, nfrom) +
               put_ascii(NULL, data, m->data_len);
    char *out = malloc(n + 1), *p = out;
    if (!out) return NULL;
#define LIT(k) (memcpy(p, k, sizeof k - 1), p += sizeof k - 1)
    LIT(k0);
    p += put_ascii(p, m->room, nroom);
    LIT(k1);
    memcpy(p, seq, (size_t)nseq);
    p += nseq;
    LIT(k2);
    p += put_ascii(p, id, nid);
    LIT(k3);
    p += put_ascii(p, from, nfrom);
    LIT(k4);
    p += put_ascii(p, data, m->data_len);
    LIT(k5);
    memcpy(p, ts, (size_t)nts);
    p += nts;
    LIT(k6);
#undef LIT
    *p = '\0';
    *len = n;
    return out;
}

char *v1_message(const v1_msg *m, size_t *len)
{
    bool handled;
    char *s = message_ascii(m, len, &handled);
    return handled ? s : v1_message_json(m, len);
}

char *v1_history(const char *room, json_t *messages, bool more, const char *ref, size_t *len)
{
    return v1_finish(json_pack("{s:s, s:s, s:o, s:b}", "type", "history", "room", room, "messages",
                               messages ? messages : json_array(), "more", more),
                     ref, len);
}

char *v1_presence(const char *room, const char *const *users, const uint32_t *conns, size_t n,
                  bool more, const char *ref, size_t *len)
{
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < n; i++)
        json_array_append_new(
            arr, json_pack("{s:o, s:i}", "user", str(users[i]), "connections", (int)conns[i]));
    return v1_finish(json_pack("{s:s, s:s, s:o, s:b}", "type", "presence", "room", room, "users",
                               arr ? arr : json_array(), "more", more),
                     ref, len);
}
