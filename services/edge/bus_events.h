/* The lws thread's side of the bus (bus_events.c). lws thread only. */
#ifndef EDGE_BUS_EVENTS_H
#define EDGE_BUS_EVENTS_H

#include <stddef.h>

#include "dw/bus.h"

struct edge;
struct edge_session;

/* Take every event from the edge's mailbox and act on it. */
void bus_events_drain(struct edge *e);
/* From the tick: publish again the disconnects whose backoff is over. */
void bus_events_retry_due(struct edge *e);
/* Forget the disconnects waiting for a retry (shutdown). */
void bus_events_free(struct edge *e);

/* A DISCONNECT of conn_id (asynchronous; its ack comes back as an event).
 * rooms and user only tell the other edges whom to announce as gone. */
void bus_publish_disconnect(struct edge *e, const char *conn_id, const char *user, char **rooms,
                            size_t nrooms, const char *reason);
/* The CONNECT of session s in ev, with these rooms (borrowed). */
void bus_connect_event(struct edge *e, struct edge_session *s, Dw__ConnEvent *ev, char **rooms,
                       size_t nrooms);

#endif
