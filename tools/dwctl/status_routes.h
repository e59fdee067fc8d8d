/* dwctl status: the routes to user code (DW_ROUTES on the edges). Every
 * edge with routes answers dw.ops.routes with its routes' counters and how
 * each one's last request ended; the rows here add them up per route.
 * Whether a worker is listening:
 *   async  a worker has a pull request waiting on route-<action> (the
 *          consumer's NumWaiting; workers keep one open while idle);
 *   sync   NATS has no way to ask who serves dw.rpc.<action> without
 *          sending it a request, so: yes when the newest request on any edge
 *          was answered by a worker (a reply, or its error), no when it got
 *          "no responders", unknown ("?") before any request and after a
 *          timeout (a slow worker and no worker look alike).
 * Single-threaded (dwctl's). */
#ifndef DWCTL_STATUS_ROUTES_H
#define DWCTL_STATUS_ROUTES_H

#include <jansson.h>
#include <nats/nats.h>
#include <stdbool.h>
#include <stdint.h>

#include "dwctl.h"

typedef struct route_row {
    char action[72];
    char mode[8];
    int64_t requests, errors, timeouts;
    char last[24]; /* the newest outcome across edges */
    int64_t last_ms;
    int edges;     /* edges that have the route */
    int listening; /* 1 yes, 0 no, -1 cannot tell */
    bool consumer; /* async: route-<action> exists */
    int64_t pending, ack_pending, waiting;
} route_row;

typedef struct routes_report {
    natsSubscription *sub;
    natsInbox *inbox;
    route_row *rows;
    size_t n, cap;
    int edges; /* edges that answered */
    bool oom;
} routes_report;

/* Ask every edge (the answers are read by routes_collect). 0 or -1. */
int routes_ask(dwctl *ctl, routes_report *rr);
/* Read the answers until deadline_ns (dw_mono_ns), then judge "listening"
 * with DW_ROUTE's consumers (may be NULL). */
void routes_collect(routes_report *rr, int64_t deadline_ns, const jsConsumerInfoList *consumers);
json_t *routes_json(const routes_report *rr);
void routes_text(const routes_report *rr);
void routes_free(routes_report *rr);

#endif
