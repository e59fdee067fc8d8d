/* dw.ops.ping: "who runs, and is it ready?" for `dwctl status`.
 *
 * Every service that calls dw_ping_start answers each request on
 * dw.ops.ping (no queue group: every instance answers) with an empty body
 * and four headers, so that one request gathered for a short window lists
 * the running processes without a new message in the protobuf contract:
 *   Dw-Service: api           Dw-Instance: <id of this process>
 *   Dw-Version: 0.1.0         Dw-Ready: true | false */
#ifndef DW_PING_H
#define DW_PING_H

#include <nats/nats.h>
#include <stdbool.h>

#define DW_SUBJ_OPS_PING "dw.ops.ping"
#define DW_PING_HDR_SERVICE "Dw-Service"
#define DW_PING_HDR_INSTANCE "Dw-Instance"
#define DW_PING_HDR_VERSION "Dw-Version"
#define DW_PING_HDR_READY "Dw-Ready"

typedef struct dw_ping dw_ping;

/* Subscribe this process to dw.ops.ping. service and instance are copied.
 * ready(arg) runs on a nats.c thread for every ping: it must be thread-safe
 * (read an atomic); NULL means always ready. On success *out is the
 * caller's (dw_ping_stop). 0 or -1. */
int dw_ping_start(dw_ping **out, natsConnection *nc, const char *service, const char *instance,
                  bool (*ready)(void *), void *arg);

/* Unsubscribe and free; call before closing the connection. NULL-safe. */
void dw_ping_stop(dw_ping *p);

#endif
