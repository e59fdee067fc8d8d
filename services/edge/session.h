/* One WebSocket connection as the edge holds it. Owned by lws (it is the
 * per-session user data); only the lws thread touches it. */
#ifndef EDGE_SESSION_H
#define EDGE_SESSION_H

#include <stdbool.h>
#include <stdint.h>

#include "dw/bus.h"
#include "dw/http.h"
#include "dw/util.h"
#include "outbox.h"
#include "ratelimit.h"
#include "rooms.h"
#include "utf8.h"

struct lws;

typedef enum {
    SESS_HTTP = 0, /* a plain HTTP request, not a WebSocket */
    SESS_PENDING,  /* upgraded; connect event published, not yet durable */
    SESS_READY,    /* connect event acked: takes part in chat */
    SESS_CLOSING,  /* close requested; waiting for the writable callback */
} edge_session_state;

typedef struct edge_pending_rx {
    struct edge_pending_rx *next;
    size_t len;
    char data[];
} edge_pending_rx;

/* A v1 sendmessage waiting for its JetStream ack: acks for one connection
 * come back in publish order, so this is a FIFO. */
typedef struct edge_pending_ack {
    struct edge_pending_ack *next;
    uint64_t n;      /* the message counter in its id */
    int64_t sent_ns; /* published (dw_mono_ns), for the "stored" stage */
    char room[DW_ROOM_MAX + 1];
    char client_id[65];
    char *ref;
} edge_pending_ack;

typedef struct edge_session {
    struct lws *wsi;
    char id[DW_ID_LEN + 1];
    char ip[48];
    char *user_agent; /* NULL: the client sent none */
    char user[129];   /* user id: JWT sub, ?name=, or anon-xxxxxxxx */
    bool user_stable; /* the user id survives a reconnect (not anon-): the
                       * idempotency key of a v1 send may name it */
    edge_pending_ack *acks, *acks_tail;
    uint32_t nacks;
    /* admission and throttling (admit.c) */
    rl_ip ip_key;
    bool ip_counted;
    bool has_allowed_rooms; /* the JWT limits the rooms */
    char **allowed_rooms;
    size_t n_allowed_rooms;
    /* The connect authorizer's context (DW_AUTHORIZER): compact JSON object
     * text, NULL when there was none; owned, freed with the session. Route
     * requests carry it as identity.context. */
    char *authz_context_json;
    rl_bucket msgs;
    rl_strikes strikes;
    size_t frame_bytes;         /* of the frame being received */
    int64_t rx_paused_until_ms; /* a flooder is not read from until then */
    int64_t connected_at_ms;
    int64_t last_active_ms;
    uint64_t msg_counter;
    uint16_t routes_inflight; /* route requests awaiting their answer (integ.c) */
    edge_outbox out;
    char *rx; /* the message being reassembled */
    size_t rx_len, rx_cap;
    edge_pending_rx *pending; /* whole messages received before READY */
    uint32_t npending;
    edge_membership *rooms;
    uint16_t nrooms, rooms_cap;
    uint8_t state;
    bool counted;                      /* ready once: counted in e->nready until it is gone */
    uint64_t conn_seq;                 /* DW_CONN sequence of its acked connect event */
    bool v1;                           /* speaks dynamowave.v1 */
    const struct edge_protocol *proto; /* v1 or plain AWS (protocol.h); set when established */
    bool connect_published;
    bool want_write;
    uint16_t close_code;
    const char *close_reason;
    bool close_handed; /* lws has the close reason and sends the frame */
    bool linger;       /* a close frame was sent: linger after lws lets go */
    bool peer_closed;  /* the client's close frame came (lws echoes it) */
    utf8_state utf8;   /* of the text message being received */
    /* HTTP requests only */
    dw_http_body http; /* the answer being written */
    bool http_close;   /* close after this answer (no keep-alive) */
} edge_session;

/* The write path (session.c). lws thread only. */
struct edge;
struct edge_frame;
/* Close with code and reason (static text): the close frame goes out on
 * the next writeable callback; a second call does nothing. */
void session_close(edge_session *s, uint16_t code, const char *reason);
/* Queue a text frame (copied); a session over DW_MAX_OUTBOUND is closed
 * instead (1008) and 0 returned. 0, or -1 when out of memory. */
int session_send_text(struct edge *e, edge_session *s, const char *text, size_t len);
/* Queue a shared frame (a reference is taken) to a ready session. */
void session_deliver(struct edge *e, edge_session *s, struct edge_frame *f);
/* LWS_CALLBACK_SERVER_WRITEABLE: write everything queued in one call, or
 * send the close. The callback's return value. */
int session_on_writeable(struct edge *e, edge_session *s);

#endif
