/* Closing WebSocket connections so that the close frame arrives: the
 * closing handshake around libwebsockets 4.1, and the lingering close after
 * it (issue #19, docs/security.md "Closing").
 *
 * A server that closes a TCP connection while the client is still sending
 * makes the kernel answer with a reset; a client that is still writing then
 * fails its write and often never reads the close frame that was waiting
 * for it (a 200 KB message in 25 KB fragments ended with "no close frame"
 * instead of 1009). So after the close frame is out, the edge keeps reading
 * and discarding for a bounded time and number of bytes before the socket
 * is closed. The stages, and what lws 4.1 does in each:
 *
 *  1. The edge decides to close (session_close) -> linger_close_started:
 *     reading is switched back on for a connection not yet registered
 *     (lws reads nothing of a paused connection while it waits for the
 *     client's answer, and the client's writes would back up until that
 *     wait ends in a reset), and the close frame must be out within
 *     LINGER_CLOSE_SEND_S (a client that reads nothing would hold it).
 *  2. lws sends the close frame and waits up to 5 s (fixed in lws 4.1) for
 *     the client's, reading and discarding what else arrives.
 *  3. lws lets the connection go: on the client's close frame, after the 5
 *     s, or when it cannot parse what arrives. At LWS_CALLBACK_CLOSED,
 *     linger_adopt() takes a duplicate of the socket (lws's close() then no
 *     longer ends the TCP connection), shuts down its write side (FIN) and
 *     drains it until the client closes, `ms` pass or `bytes` arrive.
 *
 * The two other hooks make lws 4.1 send the close frames it would not:
 * linger_peer_close() checks a client's close frame (lws echoes codes >=
 * 5000 and 1-byte payloads), and linger_on_drop() sends the close frame of
 * a connection lws failed itself (RSV bits, reserved opcodes, continuation
 * rules, control frames over 125 bytes: 1002) before lws's parser, out of
 * step with the stream after the error, can lose it.
 *
 * Stage 3 needs the poll() loop: libev's epoll backend never removes a
 * closed descriptor from its epoll set (it counts on close() doing that),
 * so a duplicate would keep the registration alive and make libev rebuild
 * its whole epoll set on the next event. With DW_EVENT_LOOP=libev the edge
 * only drains what is already queued when lws lets go.
 *
 * Threads: the lws thread only. */
#ifndef EDGE_LINGER_H
#define EDGE_LINGER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dw/metrics.h"

struct lws;

/* Seconds to get the close frame out once the edge decided to close. */
#define LINGER_CLOSE_SEND_S 5

typedef struct edge_linger_sock {
    int fd;              /* our duplicate; lws closed its own */
    int64_t deadline_ns; /* dw_mono_ns() */
    size_t budget;       /* bytes we still read before giving up */
} edge_linger_sock;

typedef struct edge_linger {
    int64_t ms;   /* the longest a socket lingers after lws let it go */
    size_t bytes; /* the most it may send meanwhile */
    size_t max;   /* sockets lingering at once; more close at once */
    bool own;     /* keep sockets after lws (the poll loop only) */
    bool stopped; /* shutting down: nothing new lingers */
    edge_linger_sock *v;
    size_t n;
    dw_metric *started, *ended_eof, *ended_time, *ended_bytes, *refused_full, *gauge;
} edge_linger;

/* own: the loop is lws's poll() (see above). 0, or -1 out of memory. */
int linger_init(edge_linger *l, int64_t ms, int64_t bytes, int64_t max, bool own);

/* Before the lws context is destroyed: close every lingering socket now
 * and take no new ones (a stop must not wait for clients). */
void linger_stop(edge_linger *l);
void linger_free(edge_linger *l); /* after linger_stop; NULL-safe */

/* Stage 1, when the edge decides to close wsi (before lws sends anything).
 * read: switch reading back on if it was off. Not for a client paused for
 * flooding: lws reads 1 KB per loop pass and parses every frame, and
 * reading a flooder's backlog cost the other clients' latency (a good
 * client's p99 went from 20-50 ms to 90-1000 ms in test_security's abuse
 * test). Such a client still gets its close frame; if it keeps writing
 * without reading, lws resets it after its 5 s wait. */
void linger_close_started(struct lws *wsi, bool read);

/* LWS_CALLBACK_WS_PEER_INITIATED_CLOSE (in, len: the client's close
 * payload). 0: lws echoes it. -1: refused, lws closes with the code set
 * here (1002 or 1007) instead. */
int linger_peer_close(struct lws *wsi, const void *in, size_t len);

/* Who started the close of a connection lws is about to let go of. */
typedef enum {
    LINGER_BY_EDGE, /* session_close: lws sends the edge's close frame */
    LINGER_BY_PEER, /* the client's close frame, which lws echoed */
    LINGER_BY_LWS,  /* anything else: lws failed a frame, or the client went */
} linger_closer;

/* LWS_CALLBACK_WS_SERVER_DROP_PROTOCOL: lws is about to close wsi. For a
 * frame lws failed itself, sends the close frame at once (1002 when lws
 * gave no reason) and shuts down our side of the stream. Returns true when
 * a close frame went (or goes) out from the edge, i.e. when to linger. */
bool linger_on_drop(edge_linger *l, struct lws *wsi, linger_closer who);

/* LWS_CALLBACK_CLOSED of a connection the edge sent a close frame on. */
void linger_adopt(edge_linger *l, struct lws *wsi);

/* linger_adopt's second half, on a descriptor of our own (the duplicate;
 * a test's socket): shut down its write side, drain it now, and keep it in
 * the table if the client is still sending. Takes ownership of fd (closed
 * at once when the table is full or stopped). */
void linger_keep(edge_linger *l, int fd);

/* From the edge's tick: drain the lingering sockets, close finished ones. */
void linger_service(edge_linger *l);

#endif
