/* What other threads tell the lws thread: events posted to the edge's
 * mailbox (dw/mailbox.h) by nats.c callbacks (bridge.c) and job workers
 * (jobs.c), taken and handled on the lws thread (bus_events.c). An event
 * owns what it points to and carries its destructor (ev->mail.destroy), so
 * the mailbox and the loop free any event without knowing where it came
 * from. */
#ifndef EDGE_EVENT_H
#define EDGE_EVENT_H

#include <stdbool.h>
#include <stdint.h>

#include "dw/bus.h"
#include "dw/mailbox.h"
#include "dw/util.h"

typedef enum {
    EDGE_EV_CONNECT_ACK, /* the connect event of conn_id is durable (or failed) */
    EDGE_EV_DISCONNECT_ACK,
    EDGE_EV_MSG_ACK,        /* a chat message of conn_id is durable (or failed) */
    EDGE_EV_DELIVERY,       /* the dispatcher hands us messages to write */
    EDGE_EV_CONN_REQUEST,   /* info / post / close for one connection (@connections) */
    EDGE_EV_EDGE_DOWN_SELF, /* this edge was declared down: close its connections */
    EDGE_EV_JOB_DONE,       /* a join / history / presence job finished (jobs.h) */
    EDGE_EV_PRESENCE,       /* someone joined or left a room (presence events) */
    EDGE_EV_AUTHZ,          /* a socket back from the authorizer's gate (authz_gate.h) */
    EDGE_EV_ROUTE, /* a route's answer: a worker's reply, or an async frame's ack (integ.h) */
} edge_event_kind;

typedef struct edge_event {
    dw_mail mail; /* first member: the mailbox's link and the destructor */
    edge_event_kind kind;
    char conn_id[DW_ID_LEN + 1];
    char msg_id[64];
    uint64_t seq; /* stream sequence on success */
    bool ok;
    char error[96];                /* why not, when !ok */
    Dw__Delivery *delivery;        /* EDGE_EV_DELIVERY: owned */
    char *reply;                   /* EDGE_EV_DELIVERY, _CONN_REQUEST: reply subject, owned */
    size_t answered_bytes;         /* EDGE_EV_DELIVERY answered on arrival: its size */
    Dw__ConnRequest *conn_request; /* EDGE_EV_CONN_REQUEST: owned */
    Dw__ConnEvent *conn_event;     /* EDGE_EV_PRESENCE: owned */
    struct edge_job *job;          /* EDGE_EV_JOB_DONE: owned; jobs.c sets the destructor */
    struct authz_adopt *authz;     /* EDGE_EV_AUTHZ: owned; authz_gate.c sets the destructor */
    struct integ_answer *route;    /* EDGE_EV_ROUTE: owned; integ.c sets the destructor */
} edge_event;

/* A zeroed event of this kind whose destructor is edge_event_free; NULL
 * when out of memory. */
edge_event *edge_event_new(edge_event_kind kind);

/* The default destructor: frees the protobuf messages, the reply subject
 * and the event (not a job: an event carrying one has jobs.c's
 * destructor). */
void edge_event_free(dw_mail *m);

#endif
