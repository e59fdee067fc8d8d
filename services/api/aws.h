/* The AWS-shaped parts of the HTTP management API: where the connection id
 * is in a path, the GET body, error bodies and error type names. Pure
 * functions (no sockets, no bus), so they are unit-tested and fuzzed. */
#ifndef API_AWS_H
#define API_AWS_H

#include <stddef.h>

#include "dw/dw.pb-c.h"

/* Ids longer than this are not looked up: no connection has one. */
#define API_CONN_ID_MAX 128

enum {
    API_ROUTE_OK = 0,
    API_ROUTE_NOT_FOUND = -1, /* not an @connections path (404) */
    API_ROUTE_TOO_LONG = -2,  /* the id is longer than API_CONN_ID_MAX */
};

/* Find the connection id in a request path: "/@connections/<id>", or with
 * one stage segment in front ("/production/@connections/<id>", where AWS
 * SDKs put it when the endpoint keeps its stage). The path must be the one
 * lws hands to LWS_CALLBACK_HTTP: its parser has already percent-decoded it
 * (%3D is '=' by then), so decoding again would turn "%2541" into "A".
 * On API_ROUTE_OK id holds the id (id must hold API_CONN_ID_MAX + 1). */
int api_route_parse(const char *path, char *id);

/* The body of a successful GET, AWS's shape:
 *   {"ConnectedAt":"<ISO-8601 ms Z>","Identity":{"SourceIp":"...",
 *    "UserAgent":"..." or null},"LastActiveAt":"..."}
 * malloc'd (caller frees), NULL when out of memory. */
char *api_info_json(const Dw__ConnReply *info, size_t *len);

/* An error body {"message":"...","connectionId":"..."} (connectionId left
 * out when conn_id is NULL). Text that is not UTF-8 is sent with every byte
 * outside printable ASCII as '?'.
 * malloc'd (caller frees), NULL when out of memory. */
char *api_error_json(const char *message, const char *conn_id, size_t *len);

/* The x-amzn-ErrorType AWS SDKs map to exceptions (GoneException for 410),
 * or NULL when there is none for this status. */
const char *api_error_type(unsigned status);

#endif
