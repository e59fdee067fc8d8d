#include "apply.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dw/bus.h"
#include "dw/log.h"
#include "dw/util.h"

/* After this long of failing fetches (while connected), the consumer is
 * assumed lost (server storage wiped, consumer deleted) and recreated. */
#define REG_RECREATE_AFTER_MS 5000

void reg_apply_opts_default(reg_apply_opts *o)
{
    memset(o, 0, sizeof *o);
    o->replica_id = "r0";
    o->batch = 256;
    o->fetch_wait_ms = 500;
    o->stop = &dw_stop;
}

int reg_apply_payload(reg_store *st, uint64_t seq, const void *data, size_t len)
{
    return reg_apply_payload_at(st, seq, 0, data, len);
}

int reg_apply_payload_at(reg_store *st, uint64_t seq, int64_t ts_ms, const void *data, size_t len)
{
    Dw__ConnEvent *ev = dw__conn_event__unpack(NULL, len, data ? data : (const void *)"");
    if (!ev)
        DW_WARN("undecodable conn event skipped", "seq=%llu len=%zu", (unsigned long long)seq, len);
    int rc = reg_store_apply_at(st, seq, ts_ms, ev);
    dw__conn_event__free_unpacked(ev, NULL);
    return rc;
}

/* ---- pull requests by hand -------------------------------------------
 *
 * natsSubscription_Fetch and _FetchRequest of nats.c 3.4.1 write past
 * their own message array: a fetch that starts with messages already
 * queued (late deliveries of a pull request an earlier fetch stopped
 * waiting for) lowers req->Batch by their count and then collects while
 * count != req->Batch, so with more than half a batch queued it never
 * stops at the batch and stores message pointers beyond the calloc'd
 * array. The heap is corrupt from then on ("double free or corruption",
 * "malloc(): unaligned fastbin chunk" later, anywhere); a slow server
 * makes late deliveries common. So the registry pulls by hand: requests
 * to $JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer> with a reply inbox of
 * its own, read from a plain subscription into an array it bounds. */

#define PULL_GRACE_MS 1000 /* a request is over this long after it expired */

typedef struct reg_pull {
    natsConnection *nc;
    natsSubscription *sub; /* <inbox>.*: one subject per request */
    char inbox[192];
    char next_subj[256];
    uint64_t req_id;      /* the request in flight, 0 for none */
    int req_left;         /* messages it may still deliver */
    int64_t req_until_ms; /* dw_mono_ns clock: over by then, heard or not */
    int64_t expires_ms;   /* how long one request waits at the server */
} reg_pull;

static int64_t mono_ms(void)
{
    return dw_mono_ns() / 1000000;
}

/* A fresh inbox under this process's inbox prefix: the one dw_bus_connect
 * sets from DW_NATS_USER (dw_bus_options_env), the only part of _INBOX
 * its NATS user may subscribe to (deploy/nats/auth.conf). */
static int pull_inbox(char *buf, size_t len)
{
    natsInbox *nb = NULL;
    if (natsInbox_Create(&nb) != NATS_OK) return -1;
    const char *user = getenv("DW_NATS_USER");
    int token = user && *user;
    for (const char *c = user; token && *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
              *c == '-' || *c == '_'))
            token = 0;
    /* nb is "_INBOX.<nuid>" */
    const char *nuid = strchr(nb, '.');
    int n = token ? snprintf(buf, len, "_INBOX.%s.%s", user, nuid ? nuid + 1 : nb)
                  : snprintf(buf, len, "%s", nb);
    natsInbox_Destroy(nb);
    return (n > 0 && (size_t)n < len) ? 0 : -1;
}

static void pull_close(reg_pull *p)
{
    if (p->sub) {
        natsSubscription_Unsubscribe(p->sub);
        natsSubscription_Destroy(p->sub);
    }
    p->sub = NULL;
    p->req_id = 0;
}

/* Subscribe a fresh inbox for consumer's deliveries. A new inbox per
 * consumer: nothing queued for an earlier one (a recreated consumer starts
 * over from the table's position) may be taken for its messages. */
static natsStatus pull_open(reg_pull *p, natsConnection *nc, const char *stream,
                            const char *consumer, int64_t expires_ms)
{
    char wild[sizeof p->inbox + 2];
    memset(p, 0, sizeof *p);
    p->nc = nc;
    p->expires_ms = expires_ms > 0 ? expires_ms : 1;
    if (pull_inbox(p->inbox, sizeof p->inbox)) return NATS_ERR;
    snprintf(wild, sizeof wild, "%s.*", p->inbox);
    int n = snprintf(p->next_subj, sizeof p->next_subj, "$JS.API.CONSUMER.MSG.NEXT.%s.%s", stream,
                     consumer);
    if (n <= 0 || (size_t)n >= sizeof p->next_subj) return NATS_ERR;
    natsStatus s = natsConnection_SubscribeSync(&p->sub, nc, wild);
    /* In flight is bounded by the consumer's MaxAckPending, far below the
     * default limits: nothing is dropped as a slow consumer. */
    if (s != NATS_OK) p->sub = NULL;
    return s;
}

static natsStatus pull_request(reg_pull *p, int batch)
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
    p->req_until_ms = mono_ms() + p->expires_ms + PULL_GRACE_MS;
    return NATS_OK;
}

static int is_delivery(natsMsg *m)
{
    const char *r = natsMsg_GetReply(m);
    return r && !strncmp(r, "$JS.ACK.", 8);
}

/* A status message (no reply): what it says about the request it answers.
 * Returns NATS_OK to keep going (heartbeat, an earlier request), NATS_TIMEOUT
 * when the current request is over without error (404, 408), another status
 * when the consumer cannot be read (409: deleted, ...). */
static natsStatus pull_status(reg_pull *p, natsMsg *m)
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

/* Up to batch deliveries into msgs (*n of them, owned by the caller):
 * whatever is queued, else the first to arrive within wait_ms plus what
 * came with it. NATS_OK with *n > 0, NATS_TIMEOUT with none, or an error
 * (NATS_NO_RESPONDERS: no such consumer or stream; NATS_ERR: refused). */
static natsStatus pull_fetch(reg_pull *p, int batch, int64_t wait_ms, natsMsg **msgs, int *n)
{
    int64_t deadline = mono_ms() + wait_ms;
    natsStatus s = NATS_OK;
    *n = 0;
    for (;;) {
        /* Everything queued, without waiting. */
        while (*n < batch) {
            natsMsg *m = NULL;
            s = natsSubscription_NextMsg(&m, p->sub, 0);
            if (s != NATS_OK) break;
            if (is_delivery(m)) {
                msgs[(*n)++] = m;
                p->req_left--;
                continue;
            }
            s = pull_status(p, m);
            natsMsg_Destroy(m);
            if (s != NATS_OK && s != NATS_TIMEOUT) break;
            s = NATS_OK;
        }
        if (*n > 0) return NATS_OK;
        if (s != NATS_OK && s != NATS_TIMEOUT) {
            if (s == NATS_NO_RESPONDERS) p->req_id = 0;
            return s;
        }

        int64_t now = mono_ms();
        if (p->req_id && (p->req_left <= 0 || now >= p->req_until_ms)) p->req_id = 0;
        if (!p->req_id && (s = pull_request(p, batch)) != NATS_OK) return s;
        if (now >= deadline) return NATS_TIMEOUT;

        natsMsg *m = NULL;
        s = natsSubscription_NextMsg(&m, p->sub, deadline - now);
        if (s == NATS_NO_RESPONDERS) p->req_id = 0;
        if (s != NATS_OK) return s;
        if (is_delivery(m)) {
            msgs[(*n)++] = m;
            p->req_left--;
            continue; /* and whatever came with it */
        }
        s = pull_status(p, m);
        natsMsg_Destroy(m);
        if (s != NATS_OK && s != NATS_TIMEOUT) return s;
        /* Over (404/408) or not ours: ask again until the deadline. */
    }
}

/* Ack one delivery: a JetStream ack is an empty-ish reply to its $JS.ACK
 * subject (published, not natsMsg_Ack: the message is not bound to a
 * nats.c JetStream subscription). */
static void pull_ack(natsConnection *nc, natsMsg *m)
{
    const char *r = natsMsg_GetReply(m);
    if (r) natsConnection_Publish(nc, r, "+ACK", 4);
}

/* Warn when the stream is behind the table: DW_CONN was deleted and
 * recreated, and events with sequences we already applied would be skipped. */
static void check_stream(jsCtx *js, uint64_t applied)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    if (js_GetStreamInfo(&si, js, DW_STREAM_CONN, NULL, &jerr) != NATS_OK) return;
    if (si->State.LastSeq < applied)
        DW_ERROR("DW_CONN is behind the table: was the stream reset? wipe the table to rebuild",
                 "stream_last_seq=%llu applied_seq=%llu", (unsigned long long)si->State.LastSeq,
                 (unsigned long long)applied);
    jsStreamInfo_Destroy(si);
}

/* Delete and recreate this replica's durable so that it starts right after
 * what the table holds, whatever the consumer's previous position was. */
static natsStatus consumer_start(natsConnection *nc, jsCtx *js, const reg_apply_opts *o,
                                 uint64_t applied, reg_pull *pull)
{
    char durable[64];
    jsErrCode jerr = 0;
    snprintf(durable, sizeof durable, "registry-%s", o->replica_id);

    natsStatus s = js_DeleteConsumer(js, DW_STREAM_CONN, durable, NULL, &jerr);
    if (s != NATS_OK && s != NATS_NOT_FOUND && jerr != JSConsumerNotFoundErr) {
        DW_WARN("consumer delete failed", "durable=%s status=%s jserr=%d", durable,
                natsStatus_GetText(s), (int)jerr);
        return s;
    }

    jsConsumerConfig cc;
    jsConsumerConfig_Init(&cc);
    cc.Durable = durable;
    cc.FilterSubject = "dw.conn.>";
    cc.AckPolicy = js_AckExplicit;
    cc.AckWait = 30LL * 1000000000LL;
    cc.MaxAckPending = (int64_t)o->batch * 8;
    if (applied > 0) {
        cc.DeliverPolicy = js_DeliverByStartSequence;
        cc.OptStartSeq = applied + 1;
    } else {
        cc.DeliverPolicy = js_DeliverAll;
    }
    jerr = 0;
    s = js_AddConsumer(NULL, js, DW_STREAM_CONN, &cc, NULL, &jerr);
    if (s != NATS_OK) {
        DW_WARN("consumer create failed", "durable=%s status=%s jserr=%d last=\"%s\"", durable,
                natsStatus_GetText(s), (int)jerr, nats_GetLastError(NULL));
        return s;
    }

    s = pull_open(pull, nc, DW_STREAM_CONN, durable, o->fetch_wait_ms);
    if (s != NATS_OK) {
        DW_WARN("consumer subscribe failed", "durable=%s status=%s", durable,
                natsStatus_GetText(s));
        pull_close(pull);
        return s;
    }
    check_stream(js, applied);
    DW_INFO("consumer started", "durable=%s start_seq=%llu", durable,
            (unsigned long long)(applied + 1));
    return NATS_OK;
}

static int stopping(const reg_apply_opts *o)
{
    return *o->stop || (o->pause && *o->pause);
}

/* (Re)start the consumer, retrying until it works or we are told to stop. */
static int consumer_start_retry(natsConnection *nc, jsCtx *js, reg_store *st,
                                const reg_apply_opts *o, reg_pull *pull)
{
    int64_t backoff = 100;
    while (!stopping(o)) {
        if (consumer_start(nc, js, o, reg_store_applied_seq(st), pull) == NATS_OK) return 0;
        nats_Sleep(backoff);
        if (backoff < 2000) backoff *= 2;
    }
    return -1;
}

/* Apply and ack one fetched message. Returns -1 only on a store failure. */
static int apply_msg(natsConnection *nc, reg_store *st, const reg_apply_opts *o, natsMsg *msg,
                     uint64_t *last)
{
    jsMsgMetaData *meta = NULL;
    if (natsMsg_GetMetaData(&meta, msg) != NATS_OK) {
        DW_WARN("message without JetStream metadata skipped", "subject=%s",
                natsMsg_GetSubject(msg));
        return 0;
    }
    uint64_t seq = meta->Sequence.Stream;
    int64_t ts_ms = meta->Timestamp / 1000000;
    jsMsgMetaData_Destroy(meta);

    if (*last && seq > *last + 1)
        DW_INFO("gap in DW_CONN sequences (expired or deleted events)", "from=%llu to=%llu",
                (unsigned long long)*last, (unsigned long long)seq);
    int rc = reg_apply_payload_at(st, seq, ts_ms, natsMsg_GetData(msg),
                                  (size_t)natsMsg_GetDataLength(msg));
    if (rc < 0) return -1; /* not acked: it is redelivered to whoever resumes */
    /* The ack only keeps the consumer's window moving; the table's own
     * applied_seq is what a restart resumes from, so a lost ack is harmless. */
    pull_ack(nc, msg);
    if (seq > *last) *last = seq;
    if (rc == 1 && o->on_progress) o->on_progress(o->progress_arg, seq);
    return 0;
}

int reg_apply_run(natsConnection *nc, jsCtx *js, reg_store *st, const reg_apply_opts *o)
{
    reg_pull pull = {0};
    int64_t failing_since = 0;
    uint64_t last = reg_store_applied_seq(st);
    int rc = 0, batch = o->batch > 0 ? o->batch : 1;
    natsMsg **msgs = calloc((size_t)batch, sizeof *msgs);

    if (!msgs) return -1;
    if (consumer_start_retry(nc, js, st, o, &pull)) {
        free(msgs);
        return 0;
    }
    while (!stopping(o)) {
        int n = 0;
        natsStatus s = pull_fetch(&pull, batch, o->fetch_wait_ms, msgs, &n);
        if (s == NATS_TIMEOUT) {
            failing_since = 0;
            if (o->on_idle) o->on_idle(o->progress_arg);
            continue;
        }
        if (s != NATS_OK) {
            int64_t now = dw_mono_ns() / 1000000;
            if (!failing_since) {
                failing_since = now;
                DW_WARN("fetch failed", "status=%s", natsStatus_GetText(s));
            }
            if (now - failing_since > REG_RECREATE_AFTER_MS &&
                natsConnection_Status(nc) == NATS_CONN_STATUS_CONNECTED) {
                DW_WARN("recreating the consumer", "status=%s", natsStatus_GetText(s));
                pull_close(&pull);
                failing_since = 0;
                if (consumer_start_retry(nc, js, st, o, &pull)) break;
                continue;
            }
            nats_Sleep(100); /* disconnected: nats.c reconnects in the background */
            continue;
        }
        failing_since = 0;
        for (int i = 0; i < n; i++) {
            if (rc == 0) rc = apply_msg(nc, st, o, msgs[i], &last);
            natsMsg_Destroy(msgs[i]);
        }
        if (rc) break;
    }
    pull_close(&pull);
    free(msgs);
    natsConnection_FlushTimeout(nc, 1000); /* send the last acks */
    return rc;
}

/* ---- replay for a restore --------------------------------------------- */

static char *errf(const char *what, natsStatus s, jsErrCode jerr)
{
    char msg[512];
    snprintf(msg, sizeof msg, "%s: %s (jetstream error %d)", what, natsStatus_GetText(s),
             (int)jerr);
    return strdup(msg);
}

/* The replay's pull subscription: an ephemeral consumer starting at from_seq. */
static natsStatus replay_subscribe(jsCtx *js, uint64_t from_seq, natsSubscription **sub,
                                   jsErrCode *jerr)
{
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = DW_STREAM_CONN;
    so.Config.DeliverPolicy = js_DeliverByStartSequence;
    so.Config.OptStartSeq = from_seq;
    so.Config.AckPolicy = js_AckNone;
    so.Config.MaxAckPending = -1;
    *sub = NULL;
    return js_PullSubscribe(sub, js, "dw.conn.>", NULL, NULL, &so, jerr);
}

static void replay_unsubscribe(natsSubscription *sub)
{
    if (!sub) return;
    natsSubscription_Unsubscribe(sub);
    natsSubscription_Destroy(sub);
}

int reg_apply_replay(jsCtx *js, reg_store *st, uint64_t from_seq, uint64_t until_seq, int64_t to_ms,
                     volatile sig_atomic_t *stop, uint64_t *applied, char **err)
{
    enum { REPLAY_BATCH = 256 };
    natsSubscription *sub = NULL;
    jsErrCode jerr = 0;
    int rc = 0, done = 0;
    uint64_t next = from_seq ? from_seq : 1;
    *applied = 0;
    *err = NULL;
    if (next > until_seq) return 0; /* the starting point already holds everything */

    /* natsSubscription_Fetch overflows its array when it starts with more
     * than half a batch already queued (see pull_fetch). Only a fetch that
     * came back short can leave a request delivering behind it, so after
     * one the subscription is replaced by a new one starting at the next
     * sequence: every fetch starts with nothing queued. (No hand-rolled
     * pull here: it needs the connection, which this API does not get.) */
    while (!done && rc == 0) {
        if (stop && *stop) {
            *err = strdup("stopped");
            rc = -1;
            break;
        }
        if (!sub) {
            jerr = 0;
            natsStatus s = replay_subscribe(js, next, &sub, &jerr);
            if (s != NATS_OK) {
                *err = errf("cannot create the replay consumer", s, jerr);
                rc = -1;
                break;
            }
        }
        natsMsgList list = {0};
        jerr = 0;
        natsStatus s = natsSubscription_Fetch(&list, sub, REPLAY_BATCH, 1000, &jerr);
        if (s == NATS_TIMEOUT || s == NATS_NOT_FOUND) {
            /* Nothing more for us: the stream ends before until_seq (its
             * tail is what the consumer saw as pending, now zero). */
            jsConsumerInfo *ci = NULL;
            if (natsSubscription_GetConsumerInfo(&ci, sub, NULL, &jerr) == NATS_OK) {
                done = ci->NumPending == 0 && ci->NumAckPending == 0;
                jsConsumerInfo_Destroy(ci);
            }
            replay_unsubscribe(sub);
            sub = NULL;
            continue;
        }
        if (s != NATS_OK) {
            *err = errf("replay fetch failed", s, jerr);
            rc = -1;
            break;
        }
        for (int i = 0; i < list.Count && !done && rc == 0; i++) {
            natsMsg *msg = list.Msgs[i];
            jsMsgMetaData *meta = NULL;
            if (natsMsg_GetMetaData(&meta, msg) != NATS_OK) continue;
            uint64_t seq = meta->Sequence.Stream;
            int64_t ts_ms = meta->Timestamp / 1000000;
            uint64_t pending = meta->NumPending;
            jsMsgMetaData_Destroy(meta);
            /* Events are stored in time order: the first one after to_ms
             * ends the replay, and so does the end of the stream as it was. */
            if (ts_ms > to_ms || seq > until_seq) {
                done = 1;
                break;
            }
            if (reg_apply_payload_at(st, seq, ts_ms, natsMsg_GetData(msg),
                                     (size_t)natsMsg_GetDataLength(msg)) < 0) {
                *err = strdup("the new table failed to write");
                rc = -1;
                break;
            }
            (*applied)++;
            if (seq >= next) next = seq + 1;
            if (seq >= until_seq || pending == 0) done = 1;
        }
        int short_batch = list.Count < REPLAY_BATCH;
        natsMsgList_Destroy(&list);
        if (short_batch) {
            replay_unsubscribe(sub);
            sub = NULL;
        }
    }
    replay_unsubscribe(sub);
    return rc;
}
