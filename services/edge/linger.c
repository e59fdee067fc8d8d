#include "linger.h"

#include <errno.h>
#include <fcntl.h>
#include <libwebsockets.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "dw/util.h"
#include "wsclose.h"

int linger_init(edge_linger *l, int64_t ms, int64_t bytes, int64_t max, bool own)
{
    memset(l, 0, sizeof *l);
    l->ms = ms;
    l->bytes = (size_t)bytes;
    l->max = (size_t)max;
    l->own = own && ms > 0 && max > 0;
    if (l->max) {
        l->v = calloc(l->max, sizeof *l->v);
        if (!l->v) return -1;
    }
    const char *help = "sockets the edge kept reading after sending its close frame, by how "
                       "the lingering ended (full: none, the table was full)";
    l->started = dw_counter("dw_edge_linger_started_total", NULL,
                            "sockets the edge kept reading after sending its close frame");
    l->ended_eof = dw_counter("dw_edge_linger_ended_total", "end=\"eof\"", help);
    l->ended_time = dw_counter("dw_edge_linger_ended_total", "end=\"time\"", help);
    l->ended_bytes = dw_counter("dw_edge_linger_ended_total", "end=\"bytes\"", help);
    l->refused_full = dw_counter("dw_edge_linger_ended_total", "end=\"full\"", help);
    l->gauge = dw_gauge("dw_edge_lingering_sockets", NULL, "sockets lingering now");
    return 0;
}

void linger_stop(edge_linger *l)
{
    for (size_t i = 0; i < l->n; i++)
        close(l->v[i].fd);
    l->n = 0;
    l->stopped = true;
    dw_metric_set(l->gauge, 0);
}

void linger_free(edge_linger *l)
{
    if (!l) return;
    linger_stop(l);
    free(l->v);
    l->v = NULL;
    l->max = 0;
}

void linger_close_started(struct lws *wsi, bool read)
{
    /* lws only reads a connection whose receive flow is on; one not yet
     * registered would not be read while lws waits for the client's
     * close, and what the client writes meanwhile would back up until that
     * wait ends in a reset. What arrives from here on is discarded
     * (session state SESS_CLOSING). */
    if (read) lws_rx_flow_control(wsi, 1);
    /* lws replaces this with its own 5 s once it starts sending the close
     * frame; until then, a client that does not read (the frame waits
     * behind a partly sent one) cannot hold the connection. */
    lws_set_timeout(wsi, PENDING_TIMEOUT_CLOSE_SEND, LINGER_CLOSE_SEND_S);
}

int linger_peer_close(struct lws *wsi, const void *in, size_t len)
{
    /* lws has already turned most bad codes into 1002 in place; what it
     * lets through (codes >= 5000, a 1-byte payload, a reason that is not
     * UTF-8 since the edge validates UTF-8 itself) is refused here. */
    uint16_t code = wsclose_check(in, len);
    if (!code) return 0;
    const char *why = code == 1007 ? "close reason is not UTF-8" : "invalid close frame";
    lws_close_reason(wsi, (enum lws_close_status)code, (unsigned char *)why, strlen(why));
    return -1;
}

bool linger_on_drop(edge_linger *l, struct lws *wsi, linger_closer who)
{
    if (who == LINGER_BY_EDGE) return true; /* lws sends our close frame as usual */
    if (who == LINGER_BY_PEER || l->stopped) return false;
    int fd = lws_get_socket_fd(wsi);
    if (fd < 0) return false;
    if (!lws_get_close_length(wsi)) {
        /* No close reason. Either the client is gone (end of stream,
         * reset: nothing to say), or lws failed a frame it gives no reason
         * for (a control frame over 125 bytes) and would close without a
         * close frame: say 1002. */
        char c;
        ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) return false;
        static const char why[] = "protocol error";
        lws_close_reason(wsi, LWS_CLOSE_STATUS_PROTOCOL_ERR, (unsigned char *)why, sizeof why - 1);
    }
    /* lws failed the connection from inside its parser, which dropped the
     * rest of what it had read: while it waits to send the close frame it
     * reads on, misreads a client's further frames, and closes without
     * sending it (a client writing on after a bad frame got no 1002 in 20
     * of 20 runs over plain TCP). So the close frame goes out now, as raw
     * bytes, followed by the end of our side of the stream; lws's own copy
     * then fails to send and lws closes, and the socket lingers. */
    size_t len = (size_t)lws_get_close_length(wsi);
    unsigned char buf[LWS_PRE + 2 + 125];
    if (len > 125) len = 125;
    buf[LWS_PRE] = 0x88; /* FIN, close */
    buf[LWS_PRE + 1] = (unsigned char)len;
    memcpy(buf + LWS_PRE + 2, lws_get_close_payload(wsi), len);
    if (lws_write(wsi, buf + LWS_PRE, 2 + len, LWS_WRITE_RAW) < 0) return false;
    /* Partly sent: lws holds the rest and must finish it (then its own
     * close frame follows, which clients ignore after the first). */
    if (!lws_partial_buffered(wsi)) shutdown(fd, SHUT_WR);
    return true;
}

enum { DRAIN_MORE, DRAIN_EOF, DRAIN_BYTES };

/* Read and discard what is queued, up to *budget bytes. */
static int drain(int fd, size_t *budget)
{
    static char sink[16384]; /* lws thread only */
    for (;;) {
        if (!*budget) return DRAIN_BYTES;
        size_t want = *budget < sizeof sink ? *budget : sizeof sink;
        ssize_t n = recv(fd, sink, want, MSG_DONTWAIT);
        if (n > 0) {
            *budget -= (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return DRAIN_MORE;
        return DRAIN_EOF; /* end of stream, or an error such as a reset */
    }
}

static void ended(edge_linger *l, int how)
{
    dw_metric_inc(how == DRAIN_EOF     ? l->ended_eof
                  : how == DRAIN_BYTES ? l->ended_bytes
                                       : l->ended_time);
}

void linger_adopt(edge_linger *l, struct lws *wsi)
{
    if (l->stopped) return;
    int fd = lws_get_socket_fd(wsi);
    if (fd < 0) return;
    if (!l->own) {
        /* libev: the socket closes when this returns; what is queued now at
         * least does not turn that close into a reset. */
        size_t budget = l->bytes;
        drain(fd, &budget);
        return;
    }
    if (l->n == l->max) {
        dw_metric_inc(l->refused_full);
        return;
    }
    int d = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (d < 0) return; /* out of descriptors: lws closes it as before */
    linger_keep(l, d);
}

void linger_keep(edge_linger *l, int fd)
{
    if (l->stopped || l->n == l->max) {
        dw_metric_inc(l->refused_full);
        close(fd);
        return;
    }
    /* The close frame is out (or never will be): tell the client we are
     * done writing, then read what it still sends. lws may have done the
     * shutdown already; a second one changes nothing. */
    shutdown(fd, SHUT_WR);
    dw_metric_inc(l->started);
    size_t budget = l->bytes;
    int how = drain(fd, &budget);
    if (how != DRAIN_MORE) {
        ended(l, how);
        close(fd);
        return;
    }
    l->v[l->n++] = (edge_linger_sock){fd, dw_mono_ns() + l->ms * 1000000, budget};
    dw_metric_set(l->gauge, (int64_t)l->n);
}

void linger_service(edge_linger *l)
{
    if (!l->n) return;
    int64_t now = dw_mono_ns();
    for (size_t i = 0; i < l->n;) {
        edge_linger_sock *s = &l->v[i];
        int how = drain(s->fd, &s->budget);
        if (how == DRAIN_MORE && now < s->deadline_ns) {
            i++;
            continue;
        }
        /* Done, or out of time or bytes: a client still sending gets a
         * reset now, long after its close frame. */
        ended(l, how);
        close(s->fd);
        l->v[i] = l->v[--l->n];
    }
    dw_metric_set(l->gauge, (int64_t)l->n);
}
