#include "dw/pull.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dw/bus.h"
#include "dw/log.h"
#include "dw/util.h"

struct dw_pull {
    natsConnection *nc;
    natsSubscription *sub; /* <inbox>.*: one subject per request */
    char inbox[192];
    char next_subj[320];
    uint64_t req_id;      /* the request in flight, 0 for none */
    int req_left;         /* messages it may still deliver */
    int64_t req_until_ms; /* dw_mono_ns clock: over by then, heard or not */
    int64_t expires_ms;   /* how long one request waits at the server */
};

static int64_t mono_ms(void)
{
    return dw_mono_ns() / 1000000;
}

void dw_pull_close(dw_pull *p)
{
    if (!p) return;
    if (p->sub) {
        natsSubscription_Unsubscribe(p->sub);
        natsSubscription_Destroy(p->sub);
    }
    free(p);
}

natsStatus dw_pull_open(dw_pull **out, natsConnection *nc, const char *stream, const char *consumer,
                        int64_t expires_ms)
{
    char wild[200];
    *out = NULL;
    dw_pull *p = calloc(1, sizeof *p);
    if (!p) return NATS_NO_MEMORY;
    p->nc = nc;
    p->expires_ms = expires_ms > 0 ? expires_ms : 1;
    int n = snprintf(p->next_subj, sizeof p->next_subj, "$JS.API.CONSUMER.MSG.NEXT.%s.%s", stream,
                     consumer);
    if (dw_bus_new_inbox(p->inbox, sizeof p->inbox) || n <= 0 || (size_t)n >= sizeof p->next_subj) {
        free(p);
        return NATS_ERR;
    }
    snprintf(wild, sizeof wild, "%s.*", p->inbox);
    /* In flight is bounded by the consumer's MaxAckPending, far below the
     * subscription's default pending limits: nothing is dropped. */
    natsStatus s = natsConnection_SubscribeSync(&p->sub, nc, wild);
    if (s != NATS_OK) {
        p->sub = NULL;
        dw_pull_close(p);
        return s;
    }
    *out = p;
    return NATS_OK;
}

static natsStatus pull_request(dw_pull *p, int batch)
{
    char reply[sizeof p->inbox + 24], body[96];
    uint64_t id = p->req_id + 1;
    if (!id) id = 1;
    snprintf(reply, sizeof reply, "%s.%" PRIu64, p->inbox, id);
    /* The server answers what is there at once and the rest as it comes,
     * until batch messages or expires; then (if short) a 408. */
    int n = snprintf(body, sizeof body, "{\"batch\":%d,\"expires\":%" PRId64 "}", batch,
                     p->expires_ms * 1000000);
    natsStatus s = natsConnection_PublishRequest(p->nc, p->next_subj, reply, body, n);
    if (s != NATS_OK) return s;
    p->req_id = id;
    p->req_left = batch;
    /* Over at its expiry, heard or not. nats-server 2.9 does not always
     * say: a request found expired when a new message arrives is dropped
     * without a 408 (consumer.go, nextWaiting, v2.9.10). Waiting a grace
     * second for that status stalled the consumer under a steady flow:
     * registry applies and dispatcher fetches paused up to 1.5 s. A late
     * 408 is ignored (not the current request); late deliveries are taken
     * like any other. */
    p->req_until_ms = mono_ms() + p->expires_ms;
    return NATS_OK;
}

static int is_delivery(natsMsg *m)
{
    const char *r = natsMsg_GetReply(m);
    return r && !strncmp(r, "$JS.ACK.", 8);
}

/* A status message (no reply): what it says about the request it answers.
 * NATS_OK to keep going (a heartbeat, an earlier request), NATS_TIMEOUT
 * when the current request is over without error (404, 408), NATS_ERR
 * when the consumer cannot be read (409: deleted, ...). */
static natsStatus pull_status(dw_pull *p, natsMsg *m)
{
    const char *code = NULL, *desc = NULL, *subj = natsMsg_GetSubject(m);
    const char *dot = subj ? strrchr(subj, '.') : NULL;
    uint64_t id = dot ? strtoull(dot + 1, NULL, 10) : 0;
    natsMsgHeader_Get(m, "Status", &code);
    if (!code || !strcmp(code, "100") || !p->req_id || id != p->req_id) return NATS_OK;
    p->req_id = 0;
    if (!strcmp(code, "404") || !strcmp(code, "408")) return NATS_TIMEOUT;
    natsMsgHeader_Get(m, "Description", &desc);
    DW_WARN("pull request refused", "consumer_subject=%s status=%s description=\"%s\"",
            p->next_subj, code, desc ? desc : "");
    return NATS_ERR;
}

/* One message from the inbox: a delivery goes to msgs, a status is read. */
static natsStatus take(dw_pull *p, natsMsg *m, natsMsg **msgs, int *n)
{
    if (is_delivery(m)) {
        msgs[(*n)++] = m;
        p->req_left--;
        return NATS_OK;
    }
    natsStatus s = pull_status(p, m);
    natsMsg_Destroy(m);
    return s == NATS_TIMEOUT ? NATS_OK : s;
}

natsStatus dw_pull_fetch(dw_pull *p, natsMsg **msgs, int batch, int64_t wait_ms, int *n)
{
    int64_t deadline = mono_ms() + wait_ms;
    natsStatus s = NATS_OK;
    *n = 0;
    if (batch < 1) return NATS_INVALID_ARG;
    for (;;) {
        /* Everything queued, without waiting. */
        while (*n < batch) {
            natsMsg *m = NULL;
            if (natsSubscription_NextMsg(&m, p->sub, 0) != NATS_OK) break;
            if ((s = take(p, m, msgs, n)) != NATS_OK) return *n ? NATS_OK : s;
        }
        if (*n > 0) return NATS_OK;

        int64_t now = mono_ms();
        if (p->req_id && (p->req_left <= 0 || now >= p->req_until_ms)) p->req_id = 0;
        if (!p->req_id && (s = pull_request(p, batch)) != NATS_OK) return s;
        if (now >= deadline) return NATS_TIMEOUT;

        /* Wait no longer than the request lasts: then ask again. */
        int64_t until = p->req_until_ms < deadline ? p->req_until_ms : deadline;
        natsMsg *m = NULL;
        s = natsSubscription_NextMsg(&m, p->sub, until > now ? until - now : 1);
        if (s == NATS_TIMEOUT && until < deadline) continue;
        if (s == NATS_NO_RESPONDERS) p->req_id = 0;
        if (s != NATS_OK) return s;
        if ((s = take(p, m, msgs, n)) != NATS_OK) return s;
        /* A delivery: take whatever came with it. A status: ask again
         * until the deadline. */
    }
}

static natsStatus reply(natsConnection *nc, natsMsg *m, const char *body)
{
    const char *r = natsMsg_GetReply(m);
    if (!r || strncmp(r, "$JS.ACK.", 8)) return NATS_INVALID_ARG;
    return natsConnection_PublishString(nc, r, body);
}

natsStatus dw_pull_ack(natsConnection *nc, natsMsg *m)
{
    return reply(nc, m, "+ACK");
}

natsStatus dw_pull_ack_sync(natsConnection *nc, natsMsg *m, int64_t timeout_ms)
{
    const char *r = natsMsg_GetReply(m);
    natsMsg *resp = NULL;
    if (!r || strncmp(r, "$JS.ACK.", 8)) return NATS_INVALID_ARG;
    natsStatus s = natsConnection_RequestString(&resp, nc, r, "+ACK", timeout_ms);
    natsMsg_Destroy(resp);
    return s;
}

natsStatus dw_pull_nak(natsConnection *nc, natsMsg *m, int64_t delay_ms)
{
    char body[64];
    if (delay_ms <= 0) return reply(nc, m, "-NAK");
    snprintf(body, sizeof body, "-NAK {\"delay\":%" PRId64 "}", delay_ms * 1000000);
    return reply(nc, m, body);
}

natsStatus dw_pull_term(natsConnection *nc, natsMsg *m)
{
    return reply(nc, m, "+TERM");
}

natsStatus dw_pull_progress(natsConnection *nc, natsMsg *m)
{
    return reply(nc, m, "+WPI");
}
