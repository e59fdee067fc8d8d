#include "events.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dw/bus.h"
#include "dw/wire.h"

int reg_ev_pos_cmp(reg_ev_pos a, reg_ev_pos b)
{
    if (a.seq != b.seq) return a.seq < b.seq ? -1 : 1;
    if (a.idx != b.idx) return a.idx < b.idx ? -1 : 1;
    return 0;
}

int reg_ev_msg_id(char *buf, size_t len, reg_ev_pos p)
{
    return dw_msgid_event(buf, len, p.seq, p.idx);
}

int reg_ev_msg_id_parse(const char *id, size_t len, reg_ev_pos *out)
{
    return dw_msgid_event_parse(id, len, &out->seq, &out->idx);
}

int reg_ev_type_valid(const char *type)
{
    return type && (!strcmp(type, REG_EV_CONNECT) || !strcmp(type, REG_EV_DISCONNECT) ||
                    !strcmp(type, REG_EV_JOIN) || !strcmp(type, REG_EV_LEAVE));
}

int reg_ev_subject(char *buf, size_t len, const char *type)
{
    if (!reg_ev_type_valid(type)) return -1;
    int n = snprintf(buf, len, DW_SUBJ_EVENTS_PREFIX "%s", type);
    return n > 0 && (size_t)n < len ? 0 : -1;
}

/* A JSON string, or null for NULL / "". User ids come from tokens and
 * URLs; a value jansson refuses (not UTF-8) goes out as printable ASCII. */
static json_t *str_or_null(const char *s)
{
    if (!s || !*s) return json_null();
    json_t *j = json_string(s);
    if (j) return j;
    size_t n = strlen(s);
    char *copy = malloc(n + 1);
    if (!copy) return NULL;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        copy[i] = (c < 0x20 || c >= 0x7f) ? '?' : (char)c;
    }
    copy[n] = '\0';
    j = json_string(copy);
    free(copy);
    return j;
}

char *reg_ev_json(const Dw__LifecycleEvent *ev, size_t *len)
{
    if (!ev || !reg_ev_type_valid(ev->type)) return NULL;
    json_t *o = json_object();
    if (!o) return NULL;
    /* json_object_set_new takes the value even when it fails; a NULL value
     * (out of memory) makes it fail, which the final check catches. */
    int bad = json_object_set_new(o, "type", json_string(ev->type));
    bad |= json_object_set_new(o, "connectionId", str_or_null(ev->conn_id));
    bad |= json_object_set_new(o, "user", str_or_null(ev->user_id));
    bad |= json_object_set_new(o, "room", str_or_null(ev->room));
    bad |= json_object_set_new(o, "edge", str_or_null(ev->edge_id));
    bad |= json_object_set_new(o, "ts", json_integer((json_int_t)ev->ts_ms));
    bad |= json_object_set_new(o, "reason", str_or_null(ev->reason));
    char *text = bad ? NULL : json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (text && len) *len = strlen(text);
    return text;
}
