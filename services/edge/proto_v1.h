/* The dynamowave.v1 client protocol (docs/protocol.md): parsing client
 * requests and building server frames. Pure functions: no sockets, no bus;
 * unit-tested and fuzzed. Every built frame is malloc'd JSON text. */
#ifndef EDGE_PROTO_V1_H
#define EDGE_PROTO_V1_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dw/bus.h"

#define V1_PROTOCOL "dynamowave.v1"
#define V1_CLIENT_ID_MAX 64
#define V1_USER_MAX 128
#define V1_HISTORY_MAX 100

typedef enum {
    V1_BAD = 0, /* error_code / error_msg say why */
    V1_JOIN,
    V1_LEAVE,
    V1_SEND,
    V1_HISTORY,
    V1_PRESENCE,
} v1_action;

typedef struct v1_request {
    v1_action action;
    char room[DW_ROOM_MAX + 1];
    bool has_since;
    uint64_t since;
    uint64_t before; /* 0: none */
    uint32_t limit;  /* history / presence page size */
    char after[V1_USER_MAX + 1];
    char *data; /* sendmessage: string content or JSON text */
    size_t data_len;
    bool data_json; /* data is JSON text, not a string's content */
    char client_id[V1_CLIENT_ID_MAX + 1];
    bool exclude_self;
    char *ref;              /* the request's "ref" as JSON text, or NULL */
    const char *error_code; /* V1_BAD */
    const char *error_msg;
} v1_request;

/* Parse one client frame. Bad input is V1_BAD, never a failure; -1 only when
 * out of memory. Free with v1_request_free(). */
int v1_parse(const char *buf, size_t len, v1_request *out);
void v1_request_free(v1_request *r);

/* A user name given on the URL (?name=): 1..64 of [A-Za-z0-9_.-]. */
bool v1_name_valid(const char *name, size_t len);

/* Server frames. ref: JSON text or NULL. Each returns malloc'd text and its
 * length in *len, or NULL when out of memory. */
char *v1_hello(const char *conn_id, const char *user, size_t *len);
/* Any other server frame: adds "ref" (JSON text, may be NULL) to o, then
 * dumps o and frees it (NULL o: NULL, for a failed json_pack). */
char *v1_finish(json_t *o, const char *ref, size_t *len);
char *v1_error(const char *code, const char *message, const char *ref, int64_t retry_after_ms,
               size_t *len);
char *v1_joined(const char *room, uint64_t seq, bool recovered, const char *ref, size_t *len);
char *v1_left(const char *room, const char *ref, size_t *len);
char *v1_ack(const char *id, const char *room, uint64_t seq, const char *ref, size_t *len);
char *v1_presence_event(const char *type, const char *room, const char *user, size_t *len);

/* A message object (json_t, new reference) and the same as a frame. */
typedef struct v1_msg {
    const char *room;
    uint64_t seq;
    const char *id;
    const char *from;
    const char *data;
    size_t data_len;
    bool data_json;
    int64_t ts_ms;
} v1_msg;
json_t *v1_message_obj(const v1_msg *m);
char *v1_message(const v1_msg *m, size_t *len);
/* The same through jansson alone (v1_message writes the common, all-ASCII
 * case itself, with the same bytes). For the tests. */
char *v1_message_json(const v1_msg *m, size_t *len);

/* {"type":"history",...}: takes the reference to messages (a JSON array). */
char *v1_history(const char *room, json_t *messages, bool more, const char *ref, size_t *len);
/* {"type":"presence",...} */
char *v1_presence(const char *room, const char *const *users, const uint32_t *conns, size_t n,
                  bool more, const char *ref, size_t *len);

#endif
