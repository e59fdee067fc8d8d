/* Routes to user code (docs/integrations.md), the pure part: the DW_ROUTES
 * setting, a client frame's action, the JSON a worker gets, the worker's
 * reply, and the frames the sender gets back. No sockets, no bus;
 * unit-tested (tests/unit/edge/test_integ_codec.c) and fuzzed
 * (tests/fuzz/fuzz_integ_reply.c). Any thread. */
#ifndef EDGE_INTEG_CODEC_H
#define EDGE_INTEG_CODEC_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dw/bus.h"

typedef enum { INTEG_SYNC = 0, INTEG_ASYNC = 1 } integ_mode;

typedef struct integ_route_spec {
    char action[DW_ACTION_MAX + 1];
    integ_mode mode;
} integ_route_spec;

/* At most this many routes in DW_ROUTES. */
#define INTEG_ROUTES_MAX 64

/* Parse DW_ROUTES: comma-separated "action:mode" (mode sync or async,
 * spaces around items allowed; "" is no route). A built-in action
 * (sendmessage, join, leave, history, presence, and API Gateway's $connect,
 * $disconnect, $default), an action that is not 1..64 of [A-Za-z0-9_-], a
 * repeat, or an unknown mode is refused: -1 with the reason in err.
 * 0 with *out (malloc'd, caller frees; NULL when n is 0) and *n. */
int integ_routes_parse(const char *spec, integ_route_spec **out, size_t *n, char *err,
                       size_t errlen);

/* Is action one of the edge's own (integ_routes_parse refuses them)? */
bool integ_action_builtin(const char *action);

/* A client frame: a JSON object with a string "action". 0 with *frame (a
 * new reference, the caller's) and *action (points into it); -1 for
 * anything else (not JSON, not an object, no string action). */
int integ_frame_parse(const char *buf, size_t len, json_t **frame, const char **action);

/* Who sends: what the worker gets as "identity". */
typedef struct integ_identity {
    const char *source_ip;
    const char *user_agent;   /* NULL -> JSON null */
    const char *user;         /* NULL or "" -> JSON null */
    const char *context_json; /* JSON text (an authorizer's context), NULL -> JSON null */
} integ_identity;

/* The body of a sync request and of an async frame stored in DW_ROUTE:
 * {"action","connectionId","requestId","identity":{"sourceIp","userAgent",
 * "user","context"},"body":<frame>} (compact JSON, malloc'd, *len set).
 * frame is borrowed. NULL when out of memory. */
char *integ_request_body(const char *action, const char *conn_id, const char *request_id,
                         const integ_identity *id, json_t *frame, size_t *len);

/* A worker's answer to a sync request. */
typedef enum {
    INTEG_REPLY_OK = 0, /* {"reply": X}: text is what the sender gets */
    INTEG_REPLY_ERROR,  /* {"error": "<text>"}: text is the worker's reason */
    INTEG_REPLY_BAD,    /* anything else: text is why it is not a reply */
} integ_reply_kind;

typedef struct integ_reply {
    integ_reply_kind kind;
    char *text; /* malloc'd (OK: a string reply as it is, anything else as
                 * compact JSON; ERROR: the reason) */
    size_t text_len;
    bool text_json; /* OK: text is JSON (the reply was not a string) */
} integ_reply;

/* Decode a worker's reply (bytes from outside: fuzzed). 0, or -1 only when
 * out of memory. Free with integ_reply_free. */
int integ_reply_decode(const char *data, size_t len, integ_reply *out);
void integ_reply_free(integ_reply *r);

/* Frames for the sender (malloc'd, *len set; NULL when out of memory).
 * ref: the v1 request's ref as JSON text, or NULL. */
/* v1: {"type":"reply","action","ref","data"}: data is the reply's JSON
 * (text_json) or the string. */
char *integ_v1_reply(const char *action, const char *ref, const char *text, size_t text_len,
                     bool text_json, size_t *len);
/* v1: {"type":"ack","action","seq","id"?,"ref"}: an async frame is stored
 * as DW_ROUTE sequence seq; id: the client's id (NULL: none). */
char *integ_v1_ack(const char *action, uint64_t seq, const char *id, const char *ref, size_t *len);

/* v1: {"type":"error","code":"integration_failed","message","action",
 * "requestId","ref"}. */
char *integ_v1_error(const char *action, const char *request_id, const char *message,
                     const char *ref, size_t *len);

#endif
