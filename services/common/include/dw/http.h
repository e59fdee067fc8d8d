/* Answering a plain HTTP request with libwebsockets, for the status port
 * (dw/status.h) and the edge's own /healthz, /readyz and /metrics: the
 * headers at once, then the body in chunks on writeable callbacks.
 *
 * The body belongs to the request (a dw_http_body in the connection's user
 * data) until it is written or the connection closes. lws thread only. */
#ifndef DW_HTTP_H
#define DW_HTTP_H

#include <stdbool.h>
#include <stddef.h>

struct lws;

typedef struct dw_http_body {
    char *data; /* malloc'd */
    size_t len, sent;
} dw_http_body;

/* Send the headers (code, content type, length, Cache-Control: no-store)
 * and queue body (malloc'd; taken, also on failure). NULL body means out
 * of memory. 0, or 1: close the connection (lws callback return). */
int dw_http_respond(struct lws *wsi, dw_http_body *b, unsigned code, const char *ctype, char *body,
                    size_t len);
/* dw_http_respond with a copy of text, as text/plain. */
int dw_http_text(struct lws *wsi, dw_http_body *b, unsigned code, const char *text);
/* dw_http_respond with the metrics (dw_metrics_render), Prometheus' type. */
int dw_http_metrics(struct lws *wsi, dw_http_body *b);

/* LWS_CALLBACK_HTTP_WRITEABLE: write the next chunk. Returns what the
 * callback returns: 0 (more to come, or nothing queued), -1 or 1 to close
 * (after the last chunk: close_after, or lws says the transaction ends the
 * connection). */
int dw_http_write(struct lws *wsi, dw_http_body *b, bool close_after);

/* LWS_CALLBACK_CLOSED_HTTP: drop what was not written. NULL-safe. */
void dw_http_body_free(dw_http_body *b);

#endif
