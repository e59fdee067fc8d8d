/* The edge's plain HTTP answers (httpserve.c). lws thread only. */
#ifndef EDGE_HTTPSERVE_H
#define EDGE_HTTPSERVE_H

struct edge;
struct edge_session;
struct lws;

/* LWS_CALLBACK_HTTP for uri: answer it (or start serving a file). The
 * callback's return value. */
int httpserve(struct edge *e, struct lws *wsi, struct edge_session *s, const char *uri);

#endif
