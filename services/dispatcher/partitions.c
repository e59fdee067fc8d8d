/* The dispatcher's partitions (dispatch_int.h): what the lease thread
 * says (ready, lost, give back), a pull request always waiting at each
 * partition's consumer (the next one goes out before the current one
 * expires), and each delivery into the ordering core; a gap, a delivery out
 * of order, a refused pull or a vanished consumer reads the partition again
 * from its floor; after a reconnect or a silence, a partition asks its
 * consumer how far it delivered. Loop thread, except part__on_pull and part__on_info (nats.c)
 * and the lease callbacks (the lease thread), which only post events. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "dispatch_int.h"
#include "dw/log.h"
#include "dw/dlq_record.h"
#include "dw/pull.h"

/* ---- nats.c callbacks ---- */

/* The consumer token of a JetStream ack subject: "$JS.ACK.<stream>.<consumer>.
 * <delivered>.<sseq>.<dseq>.<ts>.<pending>", or with a domain and account
 * hash after "$JS.ACK." (12 tokens, nats-server 2.10 and later). */
static int ack_consumer(const char *reply, const char **start, size_t *len)
{
    const char *tok[16];
    size_t n = 0;
    const char *p = reply;
    if (strncmp(p, "$JS.ACK.", 8)) return -1;
    for (const char *q = p; n < 16; q++) {
        tok[n++] = q;
        q = strchr(q, '.');
        if (!q) break;
    }
    size_t ci = n == 9 ? 3 : n >= 11 ? 5 : 0;
    if (!ci) return -1;
    *start = tok[ci];
    *len = (size_t)(tok[ci + 1] - tok[ci] - 1);
    return 0;
}

/* A delivery names its consumer (dwp-<p>-<instance>-<gen>) in its ack
 * subject; a status comes to the request's own subject "<inbox>.<p>.<gen>.<id>"
 * (a delivery's subject is the message's own). */
void part__on_pull(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    dispatcher *d = closure;
    const char *subj = natsMsg_GetSubject(msg), *reply = natsMsg_GetReply(msg);
    size_t plen = strlen(d->pull_inbox);
    unsigned long p = 0, gen = 0;
    unsigned long long id = 0;
    const char *cons = NULL;
    size_t clen = 0;
    int ok = 0;
    if (reply && !ack_consumer(reply, &cons, &clen)) {
        const char *dash = clen > 4 ? memrchr(cons, '-', clen) : NULL;
        ok = sscanf(cons, "dwp-%lu-", &p) == 1 && dash && sscanf(dash + 1, "%lu", &gen) == 1;
    } else if (subj && !strncmp(subj, d->pull_inbox, plen) && subj[plen] == '.') {
        ok = sscanf(subj + plen + 1, "%lu.%lu.%llu", &p, &gen, &id) == 3;
    }
    loop_ev *e = ok && p < DW_MSG_PARTITIONS ? dispatch__ev_new(d, EV_PULL) : NULL;
    if (e) {
        e->p = (uint32_t)p;
        e->gen = (uint32_t)gen;
        e->req = id; /* 0 for a delivery */
        e->msg = msg;
        dispatch__post(d, e);
        return;
    }
    DW_DEBUG("pull delivery not ours", "subject=%s reply=%s", subj ? subj : "", reply ? reply : "");
    natsMsg_Destroy(msg);
}

/* A consumer info reply, on <info_inbox>.<partition>.<gen>. */
void part__on_info(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    dispatcher *d = closure;
    const char *subj = natsMsg_GetSubject(msg);
    size_t plen = strlen(d->info_inbox);
    unsigned long p = 0, gen = 0;
    loop_ev *e = NULL;
    if (subj && !strncmp(subj, d->info_inbox, plen) && subj[plen] == '.' &&
        sscanf(subj + plen + 1, "%lu.%lu", &p, &gen) == 2 && p < DW_MSG_PARTITIONS &&
        (e = dispatch__ev_new(d, EV_INFO))) {
        e->p = (uint32_t)p;
        e->gen = (uint32_t)gen;
        e->msg = msg;
        dispatch__post(d, e);
        return;
    }
    natsMsg_Destroy(msg);
}

/* ---- lease thread callbacks ---- */

void part__lease_ready(void *arg, uint32_t p, uint32_t gen, const char *consumer, uint64_t floor)
{
    loop_ev *e = dispatch__ev_new(arg, EV_READY);
    if (!e) return;
    e->p = p;
    e->gen = gen;
    e->floor = floor;
    snprintf(e->consumer, sizeof e->consumer, "%s", consumer);
    dispatch__post(arg, e);
}

void part__lease_lost(void *arg, uint32_t p)
{
    loop_ev *e = dispatch__ev_new(arg, EV_LOST);
    if (!e) return;
    e->p = p;
    dispatch__post(arg, e);
}

void part__lease_release(void *arg, uint32_t p)
{
    loop_ev *e = dispatch__ev_new(arg, EV_RELEASE);
    if (!e) return;
    e->p = p;
    dispatch__post(arg, e);
}

/* ---- the loop: partitions and pulls ---- */

void part__drop(dispatcher *d, uint32_t p, int new_state)
{
    part *pt = &d->parts[p];
    size_t n = order_drop_partition(d->ord, p);
    if (n) DW_INFO("partition dropped", "partition=%u messages=%zu", p, n);
    pt->state = new_state;
    pt->pulling = 0;
    pt->checking = 0;
}

/* Read partition p again from its floor (gap, reconnect, consumer gone). */
void part__reset(dispatcher *d, uint32_t p, const char *why)
{
    if (d->parts[p].state != P_READY) return;
    DW_WARN("partition read again from its floor", "partition=%u why=%s", p, why);
    dw_metric_inc(d->m->resets);
    part__drop(d, p, P_RESETTING);
    leasekv_reset(d->lk, p);
}

/* Ask partition p's consumer how far it delivered ($JS.API.CONSUMER.INFO,
 * answered on <info_inbox>.<p>.<gen>); why: CHECK_RECONNECT or
 * CHECK_SILENT. Reading it again from its floor under a new consumer would
 * always be right, but a consumer setup takes 0.3-6.5 s on a cluster with a
 * node down, and the reconnect is usually that node's death. */
void part__check(dispatcher *d, uint32_t p, int why, int64_t now)
{
    part *pt = &d->parts[p];
    if (pt->state != P_READY) return;
    const char *consumer =
        pt->next_subj + strlen("$JS.API.CONSUMER.MSG.NEXT.") + strlen(DW_STREAM_MSG) + 1;
    char subj[256], reply[224];
    snprintf(subj, sizeof subj, "$JS.API.CONSUMER.INFO.%s.%s", DW_STREAM_MSG, consumer);
    snprintf(reply, sizeof reply, "%s.%u.%u", d->info_inbox, p, pt->gen);
    pt->pulling = 0; /* the request out may be lost: ask again now */
    pt->wait_since = 0;
    if (natsConnection_PublishRequest(d->nc, subj, reply, NULL, 0) != NATS_OK) {
        if (why == CHECK_RECONNECT) part__reset(d, p, "reconnected");
        return;
    }
    pt->checking = why;
    pt->check_until = now + CHECK_WAIT_MS;
}

/* The consumer's info after a reconnect: it delivered no more than we
 * got (nothing was lost), or the partition is read again from its floor
 * (something was lost, the consumer is gone or has no leader). */
void part__on_info_reply(dispatcher *d, loop_ev *e)
{
    part *pt = &d->parts[e->p];
    if (pt->state != P_READY || e->gen != pt->gen || !pt->checking) return;
    int why = pt->checking;
    pt->checking = CHECK_NONE;
    json_t *root =
        json_loadb(natsMsg_GetData(e->msg), (size_t)natsMsg_GetDataLength(e->msg), 0, NULL);
    json_t *dseq = json_object_get(json_object_get(root, "delivered"), "consumer_seq");
    json_t *err = json_object_get(json_object_get(root, "error"), "err_code");
    if (why == CHECK_SILENT && !json_is_integer(dseq)) {
        /* 10014: consumer not found. Anything else (no leader now, no
         * answer) says nothing a new consumer would change. */
        if (json_is_integer(err) && json_integer_value(err) == 10014)
            part__reset(d, e->p, "silent:consumer_not_found");
        else
            DW_WARN("partition's pulls unanswered; its consumer gave no info", "partition=%u",
                    e->p);
    } else if (!json_is_integer(dseq)) {
        part__reset(d, e->p, "reconnected:no_consumer_info");
    } else if ((uint64_t)json_integer_value(dseq) > pt->last_dseq) {
        char reason[96];
        snprintf(reason, sizeof reason, "%s:delivered_%" PRIu64 "_got_%" PRIu64,
                 why == CHECK_SILENT ? "silent" : "reconnected", (uint64_t)json_integer_value(dseq),
                 pt->last_dseq);
        part__reset(d, e->p, reason);
    }
    json_decref(root);
}

void part__pull(dispatcher *d, uint32_t p, int64_t now)
{
    part *pt = &d->parts[p];
    size_t held = order_held(d->ord, p);
    if (held >= d->per_part_cap || order_held_total(d->ord) >= (size_t)d->cfg.max_held) return;
    size_t room = d->per_part_cap - held;
    int batch = (int)(room < (size_t)d->cfg.fetch_batch ? room : (size_t)d->cfg.fetch_batch);
    char reply[224], body[96];
    uint64_t id = ++d->next_pull_id;
    snprintf(reply, sizeof reply, "%s.%u.%u.%" PRIu64, d->pull_inbox, p, pt->gen, id);
    int n = snprintf(body, sizeof body, "{\"batch\":%d,\"expires\":%" PRId64 "}", batch,
                     d->cfg.fetch_wait_ms * 1000000);
    if (natsConnection_PublishRequest(d->nc, pt->next_subj, reply, body, n) != NATS_OK) return;
    pt->pulling = 1;
    pt->pull_id = id;
    pt->pull_left = batch;
    pt->pull_until = now + d->cfg.fetch_wait_ms + PULL_GRACE_MS;
    if (!pt->wait_since) pt->wait_since = now;
    int64_t ahead =
        d->cfg.fetch_wait_ms / 2 < PULL_RENEW_MS ? d->cfg.fetch_wait_ms / 2 : PULL_RENEW_MS;
    pt->pull_renew = now + d->cfg.fetch_wait_ms - ahead;
}

void part__tick(dispatcher *d, uint32_t p, int64_t now)
{
    part *pt = &d->parts[p];
    if (pt->checking && now >= pt->check_until) {
        int why = pt->checking;
        pt->checking = CHECK_NONE;
        if (why == CHECK_RECONNECT) {
            part__reset(d, p, "reconnected:consumer_info_timeout");
            return;
        }
        DW_WARN("partition's pulls unanswered; its consumer's info too", "partition=%u", p);
        pt->wait_since = now; /* ask again after another silence */
    }
    if (!pt->checking && pt->wait_since && now - pt->wait_since >= PULL_SILENT_MS) {
        if (natsConnection_Status(d->nc) != NATS_CONN_STATUS_CONNECTED) {
            pt->wait_since = now; /* nothing could answer: the reconnect checks */
        } else {
            DW_WARN("partition's pulls unanswered; asking its consumer",
                    "partition=%u silent_ms=%" PRId64, p, now - pt->wait_since);
            part__check(d, p, CHECK_SILENT, now);
            if (pt->state != P_READY) return;
        }
    }
    if (pt->pulling && now >= pt->pull_until) pt->pulling = 0;
    if (!pt->pulling || now >= pt->pull_renew) part__pull(d, p, now);
}

static char **replay_edges(natsMsg *nm, size_t *n, int *has)
{
    const char *only = NULL;
    char **ids = NULL;
    *n = 0;
    *has = 0;
    if (natsMsgHeader_Get(nm, DW_HDR_REPLAY_EDGES, &only) == NATS_OK && only && *only) {
        *has = 1;
        if (dlq_edges_parse(only, &ids, n)) *n = 0;
    }
    return ids;
}

void part__on_msg(dispatcher *d, loop_ev *e, int64_t now)
{
    part *pt = &d->parts[e->p];
    natsMsg *nm = e->msg;

    e->msg = NULL;
    if (pt->state != P_READY || e->gen != pt->gen) {
        natsMsg_Destroy(nm); /* an earlier consumer's: its messages come again */
        return;
    }
    pt->wait_since = 0;
    const char *r = natsMsg_GetReply(nm);
    if (!r || strncmp(r, "$JS.ACK.", 8)) {
        /* A status: 404/408 end the request; 409 says why it was refused. */
        const char *code = NULL, *desc = NULL;
        natsMsgHeader_Get(nm, "Status", &code);
        natsMsgHeader_Get(nm, "Description", &desc);
        if (code && strcmp(code, "100") && e->req == pt->pull_id) {
            pt->pulling = 0;
            if (strcmp(code, "404") && strcmp(code, "408")) {
                DW_WARN("pull request refused", "partition=%u status=%s description=\"%s\"", e->p,
                        code, desc ? desc : "");
                if (desc && strstr(desc, "Deleted")) part__reset(d, e->p, "consumer_deleted");
            }
        } else if (natsMsg_IsNoResponders(nm) && e->req == pt->pull_id) {
            pt->pulling = 0;
            part__reset(d, e->p, "consumer_missing");
        }
        natsMsg_Destroy(nm);
        return;
    }
    jsMsgMetaData *meta = NULL;
    if (natsMsg_GetMetaData(&meta, nm) != NATS_OK) {
        natsMsg_Destroy(nm);
        return;
    }
    uint64_t dseq = meta->Sequence.Consumer, sseq = meta->Sequence.Stream;
    uint64_t delivered = meta->NumDelivered;
    int64_t stored_ns = meta->Timestamp;
    jsMsgMetaData_Destroy(meta);
    /* Deliveries answer the request out (one at a time per partition). */
    if (pt->pulling && --pt->pull_left <= 0) pt->pulling = 0;
    if (dseq != pt->last_dseq + 1) {
        /* A delivery went missing on the way (a reconnect, a request that
         * timed out as it was answered): what it carried would wait for
         * the ack wait and then come after later messages of its room. */
        natsMsg_Destroy(nm);
        char why[64];
        snprintf(why, sizeof why, "gap:%" PRIu64 "->%" PRIu64, pt->last_dseq, dseq);
        part__reset(d, e->p, why);
        return;
    }
    if (delivered == 1 && sseq <= pt->max_seen) {
        /* A first delivery of a message older than one we already got:
         * not the order one consumer delivers in. Seen on nats-server
         * 2.9 after a stopped node resumes believing it still leads the
         * consumer: two leaders answer the same pull request. Whatever
         * the cause, reading on could let a later message of a room reach
         * an edge before an earlier one (the edge then drops the earlier
         * as a repeat): read the partition again from its floor. */
        natsMsg_Destroy(nm);
        char why[80];
        snprintf(why, sizeof why, "order:%" PRIu64 "_after_%" PRIu64, sseq, pt->max_seen);
        part__reset(d, e->p, why);
        return;
    }
    pt->last_dseq = dseq;
    if (sseq > pt->max_seen) pt->max_seen = sseq;
    if (delivered > 1) {
        dw_metric_inc(d->m->redeliveries);
    } else {
        int64_t age = dw_now_ms() * 1000000 - stored_ns;
        dw_metric_observe_ns(d->m->stage_fetched, age > 0 ? age : 0);
    }
    size_t n_only = 0;
    int has_only = 0;
    char **only = replay_edges(nm, &n_only, &has_only);
    void *old = NULL;
    int rc = order_add(d->ord, e->p, sseq, nm, natsMsg_GetData(nm),
                       (size_t)natsMsg_GetDataLength(nm), only, n_only, has_only, now, &old);
    dlq_edges_free(only, n_only);
    if (rc == ORDER_DUPLICATE) {
        natsMsg_Destroy(old);
    } else if (rc < 0) {
        DW_ERROR("out of memory: message left to its redelivery", "seq=%" PRIu64, sseq);
        natsMsg_Destroy(nm);
        part__reset(d, e->p, "out_of_memory");
    }
}
