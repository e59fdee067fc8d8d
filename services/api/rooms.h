/* Publishing to a room from a backend: POST /@rooms/{room}/messages over
 * HTTP and the JSON request dw.api.rooms.publish over NATS
 * (docs/integrations.md). What a request says, checked, as one struct;
 * the answers' JSON. Pure functions (no sockets, no bus): unit-tested and
 * fuzzed. The message itself goes to DW_MSG as a ChatMessage like a
 * client's (ops.c), so every member of the room gets it the way it gets a
 * chat message. */
#ifndef API_ROOMS_H
#define API_ROOMS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dw/bus.h"

/* The sender members see ("from") when the request names none. */
#define API_FROM_DEFAULT "server"
/* "from": 1..128 bytes of UTF-8 without control characters (a JWT's sub
 * has the same limits). */
#define API_FROM_MAX 128
/* Idempotency key: 1..64 of [A-Za-z0-9._:-]. */
#define API_KEY_MAX 64

typedef struct api_publish_req {
    char room[DW_ROOM_MAX + 1];
    char from[API_FROM_MAX + 1];
    char key[API_KEY_MAX + 1]; /* "" without one */
    char *data;                /* malloc'd (api_publish_req_clear): the text members get */
    size_t len;
    bool data_json; /* data is compact JSON text (the sender gave a non-string value) */
} api_publish_req;

void api_publish_req_clear(api_publish_req *r);

enum {
    API_ROOMS_OK = 0,
    API_ROOMS_NOT_FOUND = -1, /* not a /@rooms/{room}/messages path (404) */
    API_ROOMS_BAD_ROOM = -2,  /* the path's room is not a valid room name (400) */
};

/* The room in "/@rooms/<room>/messages" (also with one stage segment in
 * front, as for @connections). The path is what lws hands over, already
 * percent-decoded. room must hold DW_ROOM_MAX + 1 bytes. */
int api_rooms_route_parse(const char *path, char *room);

/* Each of these checks one field and copies it into r. 0, or an HTTP
 * status (400, 413) with the reason in err. */
int api_publish_set_from(api_publish_req *r, const char *from, size_t len, char *err,
                         size_t errlen);
int api_publish_set_key(api_publish_req *r, const char *key, size_t len, char *err, size_t errlen);

/* The HTTP body: as JSON when json (Content-Type application/json: a JSON
 * string is its text, any other value its compact JSON, data_json), else
 * as text (UTF-8). At most max bytes of message (413 above). 0 or a status
 * with err. */
int api_publish_set_body(api_publish_req *r, const char *body, size_t len, bool json, size_t max,
                         char *err, size_t errlen);

/* The NATS request, a JSON object:
 *   {"room": "general", "data": "hi" or any JSON value,
 *    "from": "moderator" (optional), "idempotencyKey": "k-1" (optional)}
 * Unknown fields are ignored. 0 or a status (400, 413) with err. */
int api_publish_parse_json(api_publish_req *r, const char *body, size_t len, size_t max, char *err,
                           size_t errlen);

/* The id of the message (ChatMessage.id and its Nats-Msg-Id): with a key
 * "api:k:<room>:<key>", so a retry within DW_MSG's duplicate window is
 * stored once (a key is a message's identity within its room); otherwise
 * "api:<random>" (dw_msgid_room_publish, dw/wire.h). 0 or -1. buf:
 * API_MSG_ID_MAX bytes. */
#define API_MSG_ID_MAX (DW_ROOM_MAX + API_KEY_MAX + 8)
int api_publish_msg_id(const api_publish_req *r, char *buf, size_t len);

/* Answers: {"room":"general","seq":58} (with "duplicate":true when the key
 * was seen), {"error":"...","status":400}. malloc'd, NULL when out of
 * memory. */
char *api_publish_ok_json(const char *room, uint64_t seq, bool duplicate, size_t *len);
char *api_publish_error_json(unsigned status, const char *error, size_t *len);

#endif
