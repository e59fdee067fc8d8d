#include "hold.h"

#include <string.h>

const char *hold_cause_name(hold_cause c)
{
    switch (c) {
    case HOLD_STALL: return "stall";
    case HOLD_OUTAGE: return "outage";
    case HOLD_NONE: break;
    }
    return "none";
}

static int64_t ms_since(int64_t now_ns, int64_t then_ns)
{
    return then_ns > 0 && now_ns > then_ns ? (now_ns - then_ns) / 1000000 : 0;
}

hold_judgement hold_judge(const hold_inputs *in)
{
    hold_judgement j = {HOLD_NONE, 0, false};
    int64_t stall_ms = ms_since(in->now_ns, in->last_drain_ns);
    int64_t lost_ms = ms_since(in->now_ns, in->lost_ns);
    bool lost_long = in->lost_ns > 0 && lost_ms >= in->heartbeat_ms;
    /* A loss that is over before a heartbeat interval missed nothing; a
     * longer one is acted on now (if it is still going on, the hold waits
     * for the connection to come back). */
    j.clear_lost = in->lost_ns > 0 && (in->connected || lost_long);
    if (!in->nready) return j;
    if (in->last_drain_ns > 0 && stall_ms >= in->heartbeat_ms) {
        j.cause = HOLD_STALL;
        j.gap_ms = stall_ms;
    } else if (lost_long) {
        j.cause = HOLD_OUTAGE;
        j.gap_ms = lost_ms;
    }
    return j;
}

void hold_init(edge_hold *h)
{
    memset(h, 0, sizeof *h);
    h->tail = &h->head;
}

uint64_t hold_begin(edge_hold *h, hold_cause cause, int64_t gap_ms, int64_t now_ns)
{
    if (!h->on) {
        h->on = true;
        h->since_ns = now_ns;
        h->held_total = 0;
        h->cause = cause;
        h->gap_ms = gap_ms;
    } else if (gap_ms > h->gap_ms) {
        h->cause = cause;
        h->gap_ms = gap_ms;
    }
    h->clock_ns = now_ns;
    return ++h->gen;
}

uint64_t hold_next_gen(edge_hold *h)
{
    return ++h->gen;
}

void hold_push(edge_hold *h, dw_mail *m, size_t bytes)
{
    m->next = NULL;
    *h->tail = m;
    h->tail = &m->next;
    h->n++;
    h->bytes += bytes;
    h->held_total++;
}

dw_mail *hold_end(edge_hold *h)
{
    dw_mail *list = h->head;
    h->on = false;
    h->head = NULL;
    h->tail = &h->head;
    h->n = h->bytes = 0;
    return list;
}

bool hold_expired(edge_hold *h, int64_t now_ns, bool connected, int64_t max_ms)
{
    if (!h->on) return false;
    if (!connected) {
        h->clock_ns = now_ns;
        return false;
    }
    return now_ns - h->clock_ns >= max_ms * 1000000;
}

void hold_free(edge_hold *h)
{
    dw_mail_free_list(hold_end(h));
}
