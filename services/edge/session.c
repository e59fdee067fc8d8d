/* One connection's write path (session.h): the outbound queue with its
 * cap (a slow reader is closed, not buffered without end), the close, and
 * the writeable callback that puts every queued frame into one write. */
#include <libwebsockets.h>
#include <stdlib.h>
#include <string.h>

#include "dw/log.h"
#include "edge.h"

static void want_write(edge_session *s)
{
    if (!s->want_write) {
        s->want_write = true;
        lws_callback_on_writable(s->wsi);
    }
}

void session_close(edge_session *s, uint16_t code, const char *reason)
{
    if (s->state == SESS_CLOSING) return;
    s->state = SESS_CLOSING;
    s->close_code = code;
    s->close_reason = reason;
    s->linger = true;
    linger_close_started(s->wsi, !s->rx_paused_until_ms);
    s->want_write = false;
    want_write(s);
}

/* A reader that does not keep up is closed, not buffered without end: one
 * slow client must not grow the edge or delay the others. */
static bool over_outbound_cap(edge *e, edge_session *s, size_t add)
{
    if (s->out.bytes + add <= (size_t)e->cfg->max_outbound) return false;
    if (s->state != SESS_CLOSING) {
        dw_metric_inc(e->m->closed_slow);
        DW_INFO("slow reader closed", "conn=%s queued=%zu", s->id, s->out.bytes);
        outbox_clear(&s->out);
        session_close(s, LWS_CLOSE_STATUS_POLICY_VIOLATION, "slow reader: too much data queued");
    }
    return true;
}

int session_send_text(edge *e, edge_session *s, const char *text, size_t len)
{
    if (over_outbound_cap(e, s, len + 10)) return 0;
    edge_frame *f = frame_text(text, len);
    if (!f) return -1;
    int rc = outbox_push(&s->out, f);
    frame_unref(f);
    if (!rc) want_write(s);
    return rc;
}

int session_on_writeable(edge *e, edge_session *s)
{
    s->want_write = false;
    if (s->state == SESS_CLOSING) {
        /* lws calls back again while it waits for the client's answer to
         * the close frame: closing once more would end that wait (and the
         * lingering read) at once. */
        if (s->close_handed) return 0;
        s->close_handed = true;
        const char *r = s->close_reason ? s->close_reason : "";
        lws_close_reason(s->wsi, (enum lws_close_status)s->close_code, (unsigned char *)r,
                         strlen(r));
        return -1;
    }
    /* The oldest frame of this pass: one observation per pass, not per
     * frame, keeps the cost off the fan-out path. */
    if (s->out.count) {
        const edge_frame *oldest = s->out.ring[s->out.head];
        if (oldest->born_ns)
            dw_metric_observe_ns(e->m->stage_written, dw_mono_ns() - oldest->born_ns);
    }
    edge_frame *big;
    size_t n = outbox_fill(&s->out, e->wbuf + LWS_PRE, (size_t)e->cfg->write_coalesce, &big);
    int w;
    if (big) {
        /* Already framed, and the frame keeps LWS_PRE of headroom. */
        w = lws_write(s->wsi, big->bytes, big->len, LWS_WRITE_RAW);
        outbox_pop(&s->out);
    } else if (n) {
        /* Whole frames back to back, one call: lws sends them as they are,
         * and keeps any unsent tail itself until the socket drains. */
        w = lws_write(s->wsi, e->wbuf + LWS_PRE, n, LWS_WRITE_RAW);
    } else {
        return 0;
    }
    if (w < 0) return -1;
    dw_metric_inc(e->m->writes);
    if (s->out.count) want_write(s);
    return 0;
}

void session_deliver(edge *e, edge_session *s, edge_frame *f)
{
    if (s->state != SESS_READY || over_outbound_cap(e, s, f->len)) return;
    if (outbox_push(&s->out, f)) {
        session_close(s, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, "out of memory");
        return;
    }
    dw_metric_add(e->m->deliveries, f->msgs);
    want_write(s);
}
