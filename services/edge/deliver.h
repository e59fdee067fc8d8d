/* Writing what the dispatcher delivers (deliver.c). lws thread only. */
#ifndef EDGE_DELIVER_H
#define EDGE_DELIVER_H

struct edge;
struct edge_event;

/* An EDGE_EV_DELIVERY event: every item queued to its recipients, the
 * reply (gone connections) sent. */
void deliver_handle(struct edge *e, struct edge_event *ev);

#endif
