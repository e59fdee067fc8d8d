/* The connect authorizer's pure parts (DW_AUTHORIZER, docs/integrations.md):
 * the HTTP request head of an upgrade as the edge reads it before
 * libwebsockets does (authz_head_parse), the JSON request sent to the
 * authorizer subject (authz_request_build) and its reply
 * (authz_reply_decode), and what a decision does to a session
 * (authz_apply). No NATS, no sockets: unit-tested and fuzzed. The thread
 * that reads heads and asks is authz_gate.c.
 *
 * Ownership: an authz_head points into a buffer the caller owns; the
 * JSON request and a decision's strings are the caller's to free
 * (authz_decision_free). Threads: any, no shared state (authz_apply: the
 * thread that owns the session, lws's). */
#ifndef EDGE_AUTHORIZER_H
#define EDGE_AUTHORIZER_H

#include <stdbool.h>
#include <stddef.h>

#define AUTHZ_MAX_HEADERS 64      /* more: the head is refused (431) */
#define AUTHZ_MAX_QUERY_PARAMS 64 /* more are not forwarded */
#define AUTHZ_MAX_VALUE 4096      /* a forwarded header or parameter value, bytes */
#define AUTHZ_MAX_ROOMS 128       /* rooms in an allowing reply */
#define AUTHZ_MAX_CONTEXT 4096    /* a reply's context, as compact JSON text, bytes */
#define AUTHZ_MAX_REPLY 65536     /* a reply larger than this is a bad reply */

typedef struct authz_header {
    const char *name, *value; /* not NUL-terminated */
    size_t name_len, value_len;
} authz_header;

/* One HTTP/1.1 request head. */
typedef struct authz_head {
    size_t len;                        /* bytes up to and including the blank line */
    const char *method, *path, *query; /* query: after '?', NULL when none */
    size_t method_len, path_len, query_len;
    authz_header headers[AUTHZ_MAX_HEADERS];
    size_t nheaders;
    bool websocket; /* "Upgrade: websocket" (any case) */
} authz_head;

/* Parse a request head from the first len bytes of buf. 1: incomplete
 * (read more), 0: parsed (h->len says where the head ends; bytes after it
 * are the client's and stay where they are), -1: not an HTTP/1.x request
 * head, or more than AUTHZ_MAX_HEADERS headers. */
int authz_head_parse(const char *buf, size_t len, authz_head *h);

/* The first header called name (any case), or NULL. */
const authz_header *authz_head_get(const authz_head *h, const char *name);

/* Forwarded header names: lower case, comma-separated in DW_AUTHORIZER_HEADERS. */
typedef struct authz_forward {
    char **names;
    size_t n;
} authz_forward;
/* 0, or -1 (out of memory, or an empty name). */
int authz_forward_parse(const char *list, authz_forward *f);
void authz_forward_free(authz_forward *f);

/* The authorizer request: {"sourceIp", "userAgent", "path", "query": {name:
 * value, URL-decoded; a repeated name: the first}, "headers": {lower-case
 * name: value, only the names in fwd; a repeated one: the first}}. Values
 * longer than AUTHZ_MAX_VALUE and values that are not UTF-8 are left out.
 * A malloc'd JSON text in *out (length *len), 0; -1 when out of memory. */
int authz_request_build(const authz_head *h, const char *source_ip, const authz_forward *fwd,
                        char **out, size_t *len);

/* A reply: {"allow": true, "user"?, "rooms"?, "context"?} or {"allow":
 * false, "status"?}. */
typedef struct authz_decision {
    bool allow;
    unsigned status; /* refused: 401 or 403 (a missing or other status: 403) */
    char *user;      /* NULL: the authorizer named none */
    bool has_rooms;  /* "rooms" was given: the connection may use only those */
    char **rooms;    /* valid room names (dw_room_valid) */
    size_t nrooms;
    char *context_json; /* compact JSON object text, NULL when none */
} authz_decision;

/* Decode a reply into *d (zeroed first). 0, or -1 with *why (static text)
 * for a bad reply: not JSON, no boolean allow, a user that is not 1..128
 * printable ASCII characters, rooms that are not an array of valid room
 * names (at most AUTHZ_MAX_ROOMS), a context that is not an object or is
 * longer than AUTHZ_MAX_CONTEXT as text. A bad reply refuses (503). */
int authz_reply_decode(const char *buf, size_t len, authz_decision *d, const char **why);
void authz_decision_free(authz_decision *d);

/* After the edge's other checks passed (lws thread): the decision's user
 * (over a JWT's sub), rooms (those both the JWT and the authorizer allow,
 * when both name some) and context (authz_context_json) onto the session;
 * what the session takes is moved out of d, which is freed. 0. */
struct edge_session;
int authz_apply(struct edge_session *s, authz_decision *d);

/* The HTTP response that refuses an upgrade with status (401, 403, 503, ...):
 * a short text into buf (Connection: close). Its length, or 0 when buf is too small. */
size_t authz_refusal(unsigned status, char *buf, size_t cap);

#endif
