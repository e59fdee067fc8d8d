#include "apply.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dw/bus.h"
#include "dw/log.h"
#include "dw/pull.h"
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

static Dw__ConnEvent *decode_event(uint64_t seq, const void *data, size_t len);

int reg_apply_payload_at(reg_store *st, uint64_t seq, int64_t ts_ms, const void *data, size_t len)
{
    Dw__ConnEvent *ev = decode_event(seq, data, len);
    int rc = reg_store_apply_at(st, seq, ts_ms, ev);
    dw__conn_event__free_unpacked(ev, NULL);
    return rc;
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
                                 uint64_t applied, dw_pull **pull)
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

    /* By hand, not js_PullSubscribe + natsSubscription_Fetch (dw/pull.h). */
    s = dw_pull_open(pull, nc, DW_STREAM_CONN, durable, o->fetch_wait_ms);
    if (s != NATS_OK) {
        DW_WARN("consumer subscribe failed", "durable=%s status=%s", durable,
                natsStatus_GetText(s));
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
                                const reg_apply_opts *o, dw_pull **pull)
{
    int64_t backoff = 100;
    while (!stopping(o)) {
        if (consumer_start(nc, js, o, reg_store_applied_seq(st), pull) == NATS_OK) return 0;
        nats_Sleep(backoff);
        if (backoff < 2000) backoff *= 2;
    }
    return -1;
}

/* Apply the events after the table's applied sequence and before upto,
 * read one by one from the stream (js_GetMsg): deliveries the consumer
 * made that never reached us. In a cluster that happens when the
 * registry's NATS node dies or the consumer's leader changes with
 * deliveries on their way ('409 Leadership Change'): the next delivery
 * comes with a later sequence, and without this the lost ones would be
 * skipped for good, since the table ignores sequences at or below what it
 * applied (seen: a replica 4 connect/disconnect events short of the other
 * at the same applied_seq). Events the stream no longer has (expired) are
 * passed over. 0 when everything before upto is applied, 1 when the stream
 * did not answer (the caller reads the consumer again from the table), -1
 * when the store failed. */
static int fill_gap(jsCtx *js, reg_store *st, const reg_apply_opts *o, uint64_t upto,
                    uint64_t *last)
{
    uint64_t from = reg_store_applied_seq(st) + 1;
    if (upto <= from) return 0;
    if (upto - from > 16) {
        /* Most likely expired events (a table older than the stream's
         * start): only what the stream still has is read. */
        jsStreamInfo *si = NULL;
        jsErrCode jerr = 0;
        if (js_GetStreamInfo(&si, js, DW_STREAM_CONN, NULL, &jerr) != NATS_OK) return 1;
        if (si->State.FirstSeq > from) from = si->State.FirstSeq;
        jsStreamInfo_Destroy(si);
        if (upto <= from) return 0;
    }
    DW_WARN("DW_CONN events not delivered: reading them from the stream", "from=%llu to=%llu",
            (unsigned long long)from, (unsigned long long)(upto - 1));
    for (uint64_t seq = from; seq < upto; seq++) {
        natsMsg *m = NULL;
        jsErrCode jerr = 0;
        natsStatus s = js_GetMsg(&m, js, DW_STREAM_CONN, seq, NULL, &jerr);
        if (s == NATS_NOT_FOUND || jerr == JSNoMessageFoundErr) continue;
        if (s != NATS_OK) {
            DW_WARN("DW_CONN event not readable", "seq=%llu status=%s jserr=%d",
                    (unsigned long long)seq, natsStatus_GetText(s), (int)jerr);
            return 1;
        }
        int rc = reg_apply_payload_at(st, seq, natsMsg_GetTime(m) / 1000000, natsMsg_GetData(m),
                                      (size_t)natsMsg_GetDataLength(m));
        natsMsg_Destroy(m);
        if (rc < 0) return -1;
        if (seq > *last) *last = seq;
        if (rc == 1 && o->on_progress) o->on_progress(o->progress_arg, seq);
    }
    return 0;
}

/* Apply and ack one fetched message. Returns -1 on a store failure, 1 when
 * events before it are missing and could not be read (the message is left
 * unacked: the caller reads the consumer again from the table). */
static int apply_msg(natsConnection *nc, jsCtx *js, reg_store *st, const reg_apply_opts *o,
                     natsMsg *msg, uint64_t *last)
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

    if (seq > reg_store_applied_seq(st) + 1) {
        int fr = fill_gap(js, st, o, seq, last);
        if (fr) return fr;
    }
    int rc = reg_apply_payload_at(st, seq, ts_ms, natsMsg_GetData(msg),
                                  (size_t)natsMsg_GetDataLength(msg));
    if (rc < 0) return -1; /* not acked: it is redelivered to whoever resumes */
    /* The ack only keeps the consumer's window moving; the table's own
     * applied_seq is what a restart resumes from, so a lost ack is harmless. */
    dw_pull_ack(nc, msg);
    if (seq > *last) *last = seq;
    if (rc == 1 && o->on_progress) o->on_progress(o->progress_arg, seq);
    return 0;
}

/* Decode one DW_CONN payload; NULL (logged) when it cannot be: it is then
 * applied as an empty change, so its sequence still advances. */
static Dw__ConnEvent *decode_event(uint64_t seq, const void *data, size_t len)
{
    Dw__ConnEvent *ev = dw__conn_event__unpack(NULL, len, data ? data : (const void *)"");
    if (!ev)
        DW_WARN("undecodable conn event skipped", "seq=%llu len=%zu", (unsigned long long)seq, len);
    return ev;
}

/* A run of fetched messages that follow the table without a gap, applied
 * as one (reg_store_apply_many) and then acked. */
typedef struct fetch_run {
    natsMsg **msgs;
    reg_apply_item *items;
    Dw__ConnEvent **evs;
    size_t n;
} fetch_run;

static int run_flush(natsConnection *nc, reg_store *st, const reg_apply_opts *o, fetch_run *r,
                     uint64_t *last)
{
    if (!r->n) return 0;
    int applied = reg_store_apply_many(st, r->items, r->n);
    for (size_t i = 0; i < r->n; i++) {
        /* Not acked when the store failed: redelivered to whoever resumes. */
        if (applied >= 0) dw_pull_ack(nc, r->msgs[i]);
        if (applied >= 0 && r->items[i].seq > *last) *last = r->items[i].seq;
        dw__conn_event__free_unpacked(r->evs[i], NULL);
    }
    uint64_t top = r->items[r->n - 1].seq;
    r->n = 0;
    if (applied < 0) return -1;
    /* Once per run, not per event: it wakes the emitter and the queries
     * waiting for a sequence. */
    if (applied > 0 && o->on_progress) o->on_progress(o->progress_arg, top);
    return 0;
}

/* Apply and ack msgs[0..n) (one fetch): runs that follow the table are
 * applied as one; a message after a gap goes through apply_msg, which
 * first reads what is missing from the stream. -1 on a store failure, 1
 * when events are missing and could not be read (as apply_msg). */
static int apply_fetched(natsConnection *nc, jsCtx *js, reg_store *st, const reg_apply_opts *o,
                         natsMsg **msgs, int n, fetch_run *r, uint64_t *last)
{
    r->n = 0;
    for (int i = 0; i < n; i++) {
        jsMsgMetaData *meta = NULL;
        if (natsMsg_GetMetaData(&meta, msgs[i]) != NATS_OK) {
            DW_WARN("message without JetStream metadata skipped", "subject=%s",
                    natsMsg_GetSubject(msgs[i]));
            continue;
        }
        uint64_t seq = meta->Sequence.Stream;
        int64_t ts_ms = meta->Timestamp / 1000000;
        jsMsgMetaData_Destroy(meta);
        uint64_t next = (r->n ? r->items[r->n - 1].seq : reg_store_applied_seq(st)) + 1;
        if (seq > next) {
            if (run_flush(nc, st, o, r, last)) return -1;
            int ar = apply_msg(nc, js, st, o, msgs[i], last);
            if (ar) return ar;
            continue;
        }
        size_t k = r->n++;
        r->msgs[k] = msgs[i];
        r->evs[k] =
            decode_event(seq, natsMsg_GetData(msgs[i]), (size_t)natsMsg_GetDataLength(msgs[i]));
        r->items[k] = (reg_apply_item){.seq = seq, .ts_ms = ts_ms, .ev = r->evs[k]};
    }
    return run_flush(nc, st, o, r, last);
}

/* The consumer is there (its info answers), or not known now: 1; it is
 * gone (deleted, the server's storage lost): 0. */
static int consumer_exists(jsCtx *js, const reg_apply_opts *o)
{
    char durable[64];
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    snprintf(durable, sizeof durable, "registry-%s", o->replica_id);
    natsStatus s = js_GetConsumerInfo(&ci, js, DW_STREAM_CONN, durable, NULL, &jerr);
    jsConsumerInfo_Destroy(ci);
    return !(s == NATS_NOT_FOUND || jerr == JSConsumerNotFoundErr);
}

/* After a reconnect: the last deliveries the consumer made may have been
 * lost on the way, and no later one may come to show the gap. What it
 * delivered beyond the table is read from the stream. 0, 1 (not now) or
 * -1 (store failure), as fill_gap. */
static int check_delivered(jsCtx *js, reg_store *st, const reg_apply_opts *o, uint64_t *last)
{
    char durable[64];
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    snprintf(durable, sizeof durable, "registry-%s", o->replica_id);
    if (js_GetConsumerInfo(&ci, js, DW_STREAM_CONN, durable, NULL, &jerr) != NATS_OK) return 1;
    uint64_t delivered = ci->Delivered.Stream;
    jsConsumerInfo_Destroy(ci);
    return fill_gap(js, st, o, delivered + 1, last);
}

static uint64_t reconnects(natsConnection *nc)
{
    natsStatistics *stats = NULL;
    uint64_t n = 0;
    if (natsStatistics_Create(&stats) == NATS_OK && natsConnection_GetStats(nc, stats) == NATS_OK)
        natsStatistics_GetCounts(stats, NULL, NULL, NULL, NULL, &n);
    natsStatistics_Destroy(stats);
    return n;
}

int reg_apply_run(natsConnection *nc, jsCtx *js, reg_store *st, const reg_apply_opts *o)
{
    dw_pull *pull = NULL;
    int64_t failing_since = 0;
    uint64_t last = reg_store_applied_seq(st);
    uint64_t seen_reconnects = reconnects(nc);
    int check = 0; /* a reconnect happened: look for lost deliveries */
    int rc = 0, batch = o->batch > 0 ? o->batch : 1;
    natsMsg **msgs = calloc((size_t)batch, sizeof *msgs);
    fetch_run run = {
        .msgs = calloc((size_t)batch, sizeof *run.msgs),
        .items = calloc((size_t)batch, sizeof *run.items),
        .evs = calloc((size_t)batch, sizeof *run.evs),
    };

    if (!msgs || !run.msgs || !run.items || !run.evs) {
        rc = -1;
        goto done;
    }
    if (consumer_start_retry(nc, js, st, o, &pull)) goto done;
    while (!stopping(o)) {
        uint64_t r = reconnects(nc);
        if (r != seen_reconnects) {
            seen_reconnects = r;
            check = 1;
        }
        if (check && natsConnection_Status(nc) == NATS_CONN_STATUS_CONNECTED) {
            int cr = check_delivered(js, st, o, &last);
            if (cr < 0) {
                rc = -1;
                break;
            }
            check = cr; /* not answered: again after the next fetch */
        }
        int n = 0;
        natsStatus s = dw_pull_fetch(pull, msgs, batch, o->fetch_wait_ms, &n);
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
                /* A consumer whose leader is being elected (4-7 s on a
                 * cluster) refuses pulls too: recreating it then (a delete
                 * and a create, each waiting for the same election) only
                 * adds to the wait. Only one that is gone is recreated. */
                if (consumer_exists(js, o)) {
                    failing_since = now;
                    check = 1; /* its leader may have changed: deliveries lost */
                    continue;
                }
                DW_WARN("recreating the consumer", "status=%s", natsStatus_GetText(s));
                dw_pull_close(pull);
                pull = NULL;
                failing_since = 0;
                if (consumer_start_retry(nc, js, st, o, &pull)) break;
                continue;
            }
            nats_Sleep(100); /* disconnected: nats.c reconnects in the background */
            continue;
        }
        failing_since = 0;
        int ar = apply_fetched(nc, js, st, o, msgs, n, &run, &last), restart = ar > 0;
        for (int i = 0; i < n; i++)
            natsMsg_Destroy(msgs[i]);
        if (ar < 0) rc = -1;
        if (rc) break;
        if (restart) {
            /* Events missing and the stream not answering: read the
             * consumer again from what the table holds. */
            dw_pull_close(pull);
            pull = NULL;
            if (consumer_start_retry(nc, js, st, o, &pull)) break;
        }
    }
    dw_pull_close(pull);
    /* Send the last acks: within the stop's budget, and only while NATS is
     * there (acks lost are only redeliveries, which the table skips). */
    int64_t flush_ms = dw_stop_left_ms(1000);
    if (flush_ms > 0 && natsConnection_Status(nc) == NATS_CONN_STATUS_CONNECTED)
        natsConnection_FlushTimeout(nc, flush_ms);
done:
    free(msgs);
    free(run.msgs);
    free(run.items);
    free(run.evs);
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
                     atomic_int *stop, uint64_t *applied, char **err)
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
     * than half a batch already queued (dw/pull.h). Only a fetch that
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
