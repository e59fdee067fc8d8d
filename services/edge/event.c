#include "event.h"

#include <stdlib.h>

edge_event *edge_event_new(edge_event_kind kind)
{
    edge_event *ev = calloc(1, sizeof *ev);
    if (!ev) return NULL;
    ev->mail.destroy = edge_event_free;
    ev->kind = kind;
    return ev;
}

void edge_event_free(dw_mail *m)
{
    edge_event *ev = (edge_event *)m;
    if (!ev) return;
    if (ev->delivery) dw__delivery__free_unpacked(ev->delivery, NULL);
    if (ev->conn_request) dw__conn_request__free_unpacked(ev->conn_request, NULL);
    if (ev->conn_event) dw__conn_event__free_unpacked(ev->conn_event, NULL);
    free(ev->reply);
    free(ev);
}
