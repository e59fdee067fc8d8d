/* Admission and throttling at the edge: who may connect (deny list, TLS
 * requirement, Origin allow-list, URL size, connection rates per edge and
 * per source IP, JWT) and who may send how much (token buckets per
 * connection and per edge, with strikes that end in a 1008 close).
 * lws thread only. The policies themselves are in ratelimit.c, auth.c and
 * netfilter.c; this module applies them to edge sessions. */
#ifndef EDGE_ADMIT_H
#define EDGE_ADMIT_H

#include <stdbool.h>
#include <stdint.h>

#include "auth.h"
#include "netfilter.h"
#include "ratelimit.h"

struct edge;
struct edge_session;
struct lws;

typedef struct edge_admit {
    bool jwt; /* AUTH=jwt */
    auth_jwt_config jwt_cfg;
    uint8_t *secret, *secret_prev;
    size_t secret_len, secret_prev_len;
    auth_jwks *jwks; /* JWT_JWKS_FILE, reread on SIGHUP (auth.h) */
    nf_denylist deny;
    nf_origins origins;
    rl_bucket edge_msgs, edge_conns;
    rl_iptable ips;
    rl_strike_policy strikes;
} edge_admit;

/* From the edge's config; 0, or -1 with a message in err. */
int admit_init(struct edge *e, char *err, size_t errlen);
void admit_free(struct edge *e);

/* LWS_CALLBACK_FILTER_NETWORK_CONNECTION: false drops the TCP connection. */
bool admit_network(struct edge *e, int fd);

/* LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION: 0 admits (and fills the
 * session's identity, source IP and its per-IP count), otherwise the HTTP
 * status to refuse with; *why says why (static text). */
unsigned admit_upgrade(struct edge *e, struct lws *wsi, struct edge_session *s, const char **why);

/* Undo admit_upgrade's per-IP count when the connection ends. */
void admit_release(struct edge *e, struct edge_session *s);

/* One inbound message: 0 when allowed, else the milliseconds until it
 * would be; *close is set when the connection has run out of strikes. */
int64_t admit_message(struct edge *e, struct edge_session *s, bool *close);

/* May this connection use this room (the JWT's "rooms" claim)? */
bool admit_room(const struct edge_session *s, const char *room);

#endif
