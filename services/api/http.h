/* The HTTP management listener: POST/GET/DELETE /@connections/{id} the way
 * API Gateway serves them, on its own port. One libwebsockets context on
 * the caller's thread (api_http_service in a loop); operations run on the
 * worker pool, and their results come back through a mutex-protected list
 * and lws_cancel_service, so the lws thread never waits on NATS. */
#ifndef API_HTTP_H
#define API_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "auth.h"
#include "pool.h"

typedef struct api_http_config {
    const char *host; /* address to listen on ("" = all) */
    int port;
    size_t max_message;   /* POST bodies above this: 413 */
    const api_auth *auth; /* borrowed */
    api_pool *pool;       /* borrowed; must outlive the listener's jobs */
} api_http_config;

typedef struct api_http api_http;

/* Listen. cfg is copied; its pointers are borrowed. 0 or -1 (logged). */
int api_http_start(api_http **out, const api_http_config *cfg);

/* Serve for a while (at most ~250 ms, so a stop request is seen). Returns
 * -1 when the context failed. Call from one thread only. */
int api_http_service(api_http *h);

/* Stopping, after api_pool_stop (which answered the jobs it had): serve
 * for up to ms more, so that the answers of requests already taken are
 * written; requests that come meanwhile (or were sent and not yet read)
 * get 503 and the connection is closed. Returns the requests still
 * unanswered. NULL-safe (0). */
size_t api_http_finish(api_http *h, int64_t ms);

/* Close every connection and free; jobs still at the pool must have been
 * finished first (api_pool_stop). NULL-safe. */
void api_http_destroy(api_http *h);

#endif
