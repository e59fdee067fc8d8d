#include "dw/dlq_record.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Subject tokens as NATS accepts them in a published subject: no empty
 * token, no wildcard, no white space. Looser than dw_room_valid on purpose:
 * a message published straight to DW_MSG under any subject must still be
 * recordable. */
static int tokens_valid(const char *s)
{
    if (!*s || *s == '.') return 0;
    for (const char *p = s; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c <= ' ' || c == 0x7f || c == '*' || c == '>') return 0;
        if (c == '.' && (p[1] == '.' || p[1] == '\0')) return 0;
    }
    return 1;
}

const char *dlq_room_of_subject(const char *subject)
{
    const char *room = dw_subj_msg_room(subject, NULL);
    return room && tokens_valid(room) ? room : NULL;
}

int dlq_subject(char *buf, size_t len, const char *room)
{
    if (!room || !tokens_valid(room)) return -1;
    int n = snprintf(buf, len, DW_SUBJ_DLQ_PREFIX "%s", room);
    return n < 0 || (size_t)n >= len ? -1 : 0;
}

const char *dlq_route_of_subject(const char *subject)
{
    static const char prefix[] = DW_SUBJ_ROUTE_PREFIX;
    if (!subject || strncmp(subject, prefix, sizeof prefix - 1)) return NULL;
    const char *action = subject + sizeof prefix - 1;
    return dw_action_valid(action, strlen(action)) ? action : NULL;
}

int dlq_route_subject(char *buf, size_t len, const char *action)
{
    if (!action || !dw_action_valid(action, strlen(action))) return -1;
    int n = snprintf(buf, len, DLQ_SUBJECT_ROUTE_PREFIX "%s", action);
    return n < 0 || (size_t)n >= len ? -1 : 0;
}

int dlq_reason_edges(char *buf, size_t len, const char *kind, const char *const *edges, size_t n)
{
    static const char more[] = ",...";
    int w = snprintf(buf, len, "%s:", kind);
    if (w < 0 || (size_t)w >= len) {
        if (len) buf[0] = '\0';
        return -1;
    }
    size_t off = (size_t)w;
    for (size_t i = 0; i < n; i++) {
        size_t need = strlen(edges[i]) + (i ? 1 : 0);
        /* keep room for the ",..." that says the list was cut */
        size_t reserve = i + 1 < n ? sizeof more - 1 : 0;
        if (off + need + reserve + 1 > len) {
            if (off + sizeof more <= len) snprintf(buf + off, len - off, "%s", i ? more : more + 1);
            return 0;
        }
        off += (size_t)snprintf(buf + off, len - off, "%s%s", i ? "," : "", edges[i]);
    }
    return 0;
}

int dlq_reason_matches(const char *reason, const char *filter)
{
    if (!filter || !*filter) return 1;
    if (!reason) return 0;
    size_t fl = strlen(filter);
    return !strncmp(reason, filter, fl) && (reason[fl] == '\0' || reason[fl] == ':');
}

int dlq_record_valid(const Dw__DeadLetter *dl)
{
    if (!dl || !dl->subject || !dl->room) return 0;
    if (!*dl->subject) {
        /* Captured after the original had left DW_MSG: nothing to replay. */
        if (dl->payload.len || *dl->room) return 0;
    } else if (dlq_route_of_subject(dl->subject)) {
        if (*dl->room) return 0; /* an async route's frame: no room */
    } else {
        const char *room = dlq_room_of_subject(dl->subject);
        if (!room || strcmp(dl->room, room)) return 0;
    }
    if (dl->stream_seq == 0) return 0;
    if (!dl->reason || !*dl->reason || strlen(dl->reason) > DLQ_REASON_MAX) return 0;
    if (!dl->source || !*dl->source) return 0;
    if (dl->n_attempt_ms > DLQ_ATTEMPTS_MAX) return 0;
    return 1;
}

uint8_t *dlq_record_pack(const Dw__DeadLetter *dl, size_t *len)
{
    if (!dlq_record_valid(dl)) return NULL;
    return dw_pb_pack(&dl->base, len);
}

Dw__DeadLetter *dlq_record_unpack(const void *data, size_t len)
{
    Dw__DeadLetter *dl = dw__dead_letter__unpack(NULL, len, data);
    if (dl && !dlq_record_valid(dl)) {
        dw__dead_letter__free_unpacked(dl, NULL);
        dl = NULL;
    }
    return dl;
}

int dlq_edges_parse(const char *text, char ***out, size_t *n)
{
    char **v = NULL;
    size_t cnt = 0, cap = 0;
    const char *p = text ? text : "";

    while (*p) {
        const char *end = strchr(p, ',');
        size_t l = end ? (size_t)(end - p) : strlen(p);
        if (l) {
            if (cnt == cap) {
                size_t nc = cap ? cap * 2 : 4;
                char **g = realloc(v, nc * sizeof *g);
                if (!g) goto error;
                v = g;
                cap = nc;
            }
            if (!(v[cnt] = strndup(p, l))) goto error;
            cnt++;
        }
        p += l;
        if (*p == ',') p++;
    }
    *out = v;
    *n = cnt;
    return 0;

error:
    dlq_edges_free(v, cnt);
    *out = NULL;
    *n = 0;
    return -1;
}

char *dlq_edges_join(char *const *edges, size_t n)
{
    size_t len = 1;
    for (size_t i = 0; i < n; i++)
        len += strlen(edges[i]) + 1;
    char *s = malloc(len), *p = s;
    if (!s) return NULL;
    *p = '\0';
    for (size_t i = 0; i < n; i++)
        p += sprintf(p, "%s%s", i ? "," : "", edges[i]);
    return s;
}

void dlq_edges_free(char **edges, size_t n)
{
    if (!edges) return;
    for (size_t i = 0; i < n; i++)
        free(edges[i]);
    free(edges);
}
