/* Route selection on the frame's "action" ($request.body.action in API
 * Gateway terms) and the replies that AWS clients expect. Pure functions:
 * no sockets, no bus; unit-tested and fuzzed. */
#ifndef EDGE_ROUTES_H
#define EDGE_ROUTES_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    ROUTE_DEFAULT = 0, /* not JSON, no action, or an action with no route */
    ROUTE_SENDMESSAGE,
    ROUTE_BAD_REQUEST, /* a known route with missing or bad fields */
} edge_route;

typedef struct edge_request {
    edge_route route;
    char *data; /* sendmessage: the text to deliver (malloc'd) */
    size_t data_len;
    const char *error; /* ROUTE_BAD_REQUEST: why (static string) */
} edge_request;

/* Parse one inbound text message. Never fails for bad input: bad input is
 * ROUTE_DEFAULT or ROUTE_BAD_REQUEST. Returns -1 only when out of memory.
 * Free with routes_request_free(). */
int routes_parse(const char *buf, size_t len, edge_request *out);
/* The same through jansson alone: routes_parse() gives this result for
 * every input (it reads the common form itself). For the tests. */
int routes_parse_json(const char *buf, size_t len, edge_request *out);
void routes_request_free(edge_request *r);

/* What the $default route tells a client about its connection. */
typedef struct edge_conn_info {
    const char *conn_id;
    const char *source_ip;
    const char *user_agent; /* NULL -> JSON null */
    int64_t connected_at_ms;
    int64_t last_active_ms;
} edge_conn_info;

/* "Use the sendmessage route to send a message. Your info: {...}" exactly
 * as the AWS sample's DefaultHandler writes it. malloc'd, NUL-terminated. */
char *routes_default_reply(const edge_conn_info *ci, size_t *len);

/* API Gateway's error body: {"message": "...", "connectionId":"...",
 * "requestId":"..."}. malloc'd. */
char *routes_error_reply(const char *message, const char *conn_id, const char *request_id,
                         size_t *len);

#endif
