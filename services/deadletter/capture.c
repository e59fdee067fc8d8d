/* The index of DW_DLQ, and capturing what JetStream stopped redelivering. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dw/bus.h"
#include "dw/dlq.h"
#include "dw/log.h"
#include "dw/util.h"
#include "dw/wire.h"
#include "advisory.h"
#include "dw/dlq_record.h"
#include "svc.h"

#define ADVISORY_BATCH 64
#define ADVISORY_ACK_WAIT_MS 30000

/* --- the index: every entry of DW_DLQ, whoever wrote it --- */

static void on_dlq_entry(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    dlq_svc *svc = closure;
    jsMsgMetaData *meta = NULL;

    if (natsMsg_GetMetaData(&meta, msg) != NATS_OK) {
        DW_WARN("DW_DLQ entry without metadata", "subject=%s", natsMsg_GetSubject(msg));
        natsMsg_Destroy(msg);
        return;
    }
    Dw__DeadLetter *dl =
        dlq_record_unpack(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg));
    uint64_t id = meta->Sequence.Stream;
    size_t bytes = dl ? dl->payload.len : 0;
    int from_dispatcher = dl && !strcmp(dl->source, DLQ_SOURCE_DISPATCHER);
    if (!dl)
        DW_WARN("DW_DLQ entry is not a dead letter", "id=%" PRIu64 " subject=%s bytes=%d", id,
                natsMsg_GetSubject(msg), natsMsg_GetDataLength(msg));

    pthread_mutex_lock(&svc->mu);
    int counted = atomic_load(&svc->caught_up);
    int added =
        dlq_index_add(svc->ix, id, meta->Timestamp / 1000000, natsMsg_GetSubject(msg), dl, bytes);
    if (added < 0) DW_ERROR("index: out of memory", "id=%" PRIu64, id);
    /* Entries that were there before we started are history, not captures. */
    if (added == 1 && counted)
        dw_metric_inc(from_dispatcher ? svc->m.captured_dispatcher : svc->m.captured_advisory);
    if (!counted && meta->NumPending == 0) {
        atomic_store(&svc->caught_up, 1);
        DW_INFO("DW_DLQ index loaded", "entries=%zu", dlq_index_count(svc->ix));
    }
    pthread_mutex_unlock(&svc->mu);
    jsMsgMetaData_Destroy(meta);
    natsMsg_Destroy(msg);
}

int capture_index_start(dlq_svc *svc)
{
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = DW_STREAM_DLQ;
    so.Ordered = true;
    jsErrCode jerr = 0;
    natsStatus s = js_Subscribe(&svc->dlq_sub, svc->js, DW_SUBJ_DLQ_PREFIX ">", on_dlq_entry, svc,
                                NULL, &so, &jerr);
    /* Entries carry payloads; flow control paces the server, never drop. */
    if (s == NATS_OK) s = natsSubscription_SetPendingLimits(svc->dlq_sub, -1, -1);
    if (s != NATS_OK) {
        DW_ERROR("DW_DLQ subscribe failed", "status=%s jserr=%d last=\"%s\"", natsStatus_GetText(s),
                 (int)jerr, nats_GetLastError(NULL));
        return -1;
    }
    /* An empty stream delivers nothing that could say "caught up". */
    jsStreamInfo *si = NULL;
    s = js_GetStreamInfo(&si, svc->js, DW_STREAM_DLQ, NULL, &jerr);
    if (s == NATS_OK && si->State.Msgs == 0 && !atomic_exchange(&svc->caught_up, 1))
        DW_INFO("DW_DLQ index loaded", "entries=%d", 0);
    jsStreamInfo_Destroy(si);
    return s == NATS_OK ? 0 : -1;
}

/* --- advisories --- */

int capture_advisories_start(dlq_svc *svc)
{
    jsConsumerConfig cc;
    jsConsumerConfig_Init(&cc);
    cc.Durable = DW_DLQ_ADVISORY_DURABLE;
    cc.AckPolicy = js_AckExplicit;
    cc.AckWait = (int64_t)ADVISORY_ACK_WAIT_MS * 1000000;
    cc.DeliverPolicy = js_DeliverAll;

    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_AddConsumer(&ci, svc->js, DW_STREAM_DLQ_ADVISORIES, &cc, NULL, &jerr);
    if (s != NATS_OK && jerr != 0) {
        jsConsumerInfo_Destroy(ci);
        ci = NULL;
        s = js_UpdateConsumer(&ci, svc->js, DW_STREAM_DLQ_ADVISORIES, &cc, NULL, &jerr);
    }
    if (s == NATS_OK && ci && ci->NumPending)
        DW_INFO("advisories waiting", "count=%" PRIu64, ci->NumPending);
    jsConsumerInfo_Destroy(ci);
    if (s != NATS_OK) {
        DW_ERROR("advisory consumer setup failed", "status=%s jserr=%d last=\"%s\"",
                 natsStatus_GetText(s), (int)jerr, nats_GetLastError(NULL));
        return -1;
    }
    /* By hand, not js_PullSubscribe + natsSubscription_Fetch (dw/pull.h). */
    s = dw_pull_open(&svc->adv_pull, svc->nc, DW_STREAM_DLQ_ADVISORIES, DW_DLQ_ADVISORY_DURABLE,
                     svc->cfg.fetch_wait_ms);
    if (s != NATS_OK) {
        DW_ERROR("advisory subscribe failed", "status=%s last=\"%s\"", natsStatus_GetText(s),
                 nats_GetLastError(NULL));
        return -1;
    }
    return 0;
}

/* The original of stream sequence seq: 1 found (*out is the caller's),
 * 0 gone (expired or deleted), -1 JetStream did not answer. */
static int fetch_original_of(dlq_svc *svc, const char *stream, uint64_t seq, natsMsg **out)
{
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = svc->cfg.publish_wait_ms;
    jsErrCode jerr = 0;
    natsStatus s = js_GetMsg(out, svc->js, stream, seq, &jo, &jerr);
    if (s == NATS_OK) return 1;
    *out = NULL;
    if (jerr == JSNoMessageFoundErr || s == NATS_NOT_FOUND) return 0;
    DW_WARN("advisory: original not fetched, retrying later",
            "stream=%s seq=%" PRIu64 " status=%s jserr=%d", stream, seq, natsStatus_GetText(s),
            (int)jerr);
    return -1;
}

static int fetch_original(dlq_svc *svc, uint64_t seq, natsMsg **out)
{
    return fetch_original_of(svc, DW_STREAM_MSG, seq, out);
}

/* Publish one dead letter with its Nats-Msg-Id; 0 when stored (or already
 * there), -1 to try again later. */
static int store_dead_letter(dlq_svc *svc, const Dw__DeadLetter *dl, const char *dlq_subj,
                             const char *msg_id, const char *what)
{
    size_t blen = 0;
    uint8_t *buf = dlq_record_pack(dl, &blen);
    if (!buf) {
        DW_ERROR("advisory: cannot encode the dead letter", "seq=%" PRIu64, dl->stream_seq);
        return -1;
    }
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MsgId = msg_id;
    po.MaxWait = svc->cfg.publish_wait_ms;
    jsPubAck *pa = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_Publish(&pa, svc->js, dlq_subj, buf, (int)blen, &po, &jerr);
    int rc = -1;
    if (s != NATS_OK) {
        DW_WARN("advisory: dead letter not written, retrying later",
                "seq=%" PRIu64 " status=%s jserr=%d", dl->stream_seq, natsStatus_GetText(s),
                (int)jerr);
    } else if (pa->Duplicate) {
        DW_INFO("advisory: already dead-lettered (duplicate)", "seq=%" PRIu64, dl->stream_seq);
        dw_metric_inc(svc->m.advisory_dups);
        rc = 0;
    } else {
        DW_ERROR(what, "seq=%" PRIu64 " subject=%s deliveries=%u bytes=%zu dlq_id=%" PRIu64 "%s",
                 dl->stream_seq, *dl->subject ? dl->subject : "-", dl->attempts, dl->payload.len,
                 pa->Sequence, *dl->subject ? "" : " original=gone");
        /* In the index at once, so that a repeated advisory finds it. */
        Dw__DeadLetter *copy = dlq_record_unpack(buf, blen);
        size_t bytes = copy ? copy->payload.len : 0;
        pthread_mutex_lock(&svc->mu);
        if (copy && dlq_index_add(svc->ix, pa->Sequence, dw_now_ms(), dlq_subj, copy, bytes) == 1)
            dw_metric_inc(svc->m.captured_advisory);
        pthread_mutex_unlock(&svc->mu);
        rc = 0;
    }
    jsPubAck_Destroy(pa);
    free(buf);
    return rc;
}

/* An async route's frame that no worker acked in MaxDeliver attempts
 * (consumer route-<action> on DW_ROUTE): into DW_DLQ under
 * dw.dlq.$route.<action>, once ("dlq.route.<seq>"), with the reason and
 * the frame as stored, so that a replay sends it back to dw.route.<action>. */
static int capture_route(dlq_svc *svc, const dlq_advisory *adv)
{
    dw_metric_inc(svc->m.advisories);
    natsMsg *orig = NULL;
    int found = fetch_original_of(svc, DW_STREAM_ROUTE, adv->stream_seq, &orig);
    if (found < 0) return -1;
    const char *subject = found ? natsMsg_GetSubject(orig) : "";
    const char *action = found ? dlq_route_of_subject(subject) : NULL;
    char dlq_subj[160];
    if (!action || dlq_route_subject(dlq_subj, sizeof dlq_subj, action)) {
        if (found)
            DW_WARN("advisory: odd route subject", "seq=%" PRIu64 " subject=%s", adv->stream_seq,
                    subject);
        subject = "";
        found = 0;
        snprintf(dlq_subj, sizeof dlq_subj, "%s", DLQ_SUBJECT_LOST);
    }
    const char *orig_id = "";
    if (found && natsMsgHeader_Get(orig, DW_HDR_MSG_ID, &orig_id) != NATS_OK) orig_id = "";
    char reason[DLQ_REASON_MAX];
    snprintf(reason, sizeof reason, "%s:%s", DLQ_REASON_ROUTE, adv->consumer);

    Dw__DeadLetter dl;
    dw__dead_letter__init(&dl);
    dl.subject = (char *)subject;
    dl.stream_seq = adv->stream_seq;
    dl.msg_id = (char *)orig_id;
    if (found) {
        dl.payload.data = (uint8_t *)natsMsg_GetData(orig);
        dl.payload.len = (size_t)natsMsg_GetDataLength(orig);
    }
    dl.reason = reason;
    dl.attempts = (uint32_t)adv->deliveries;
    dl.last_failure_ms = dw_now_ms();
    dl.room = (char *)"";
    dl.source = DLQ_SOURCE_ADVISORY;
    char msg_id[DW_MSGID_MAX];
    dw_msgid_dlq_route(msg_id, sizeof msg_id, adv->stream_seq);
    int rc = store_dead_letter(svc, &dl, dlq_subj, msg_id, "async route frame dead-lettered");
    natsMsg_Destroy(orig); /* subject, orig_id and the payload point into it */
    return rc;
}

int capture_advisory(dlq_svc *svc, const void *json, size_t len)
{
    dlq_advisory adv;
    if (dlq_advisory_parse(json, len, &adv)) {
        DW_WARN("not a max-deliveries advisory, dropped", "bytes=%zu", len);
        return 0;
    }
    if (!strcmp(adv.stream, DW_STREAM_ROUTE) &&
        !strncmp(adv.consumer, DW_ROUTE_DURABLE_PREFIX, strlen(DW_ROUTE_DURABLE_PREFIX)))
        return capture_route(svc, &adv);
    if (strcmp(adv.stream, DW_STREAM_MSG) || strcmp(adv.consumer, DW_DISPATCHER_DURABLE)) return 0;
    dw_metric_inc(svc->m.advisories);

    /* The dispatcher dead-letters what it gives up on itself; this path is
     * for what it could not (crashed on it, could not decode it, could not
     * write to DW_DLQ). First look in the index. */
    pthread_mutex_lock(&svc->mu);
    size_t have = dlq_index_count_stream_seq(svc->ix, adv.stream_seq);
    pthread_mutex_unlock(&svc->mu);
    if (have) {
        DW_INFO("advisory: already dead-lettered", "seq=%" PRIu64, adv.stream_seq);
        dw_metric_inc(svc->m.advisory_dups);
        return 0;
    }

    natsMsg *orig = NULL;
    int found = fetch_original(svc, adv.stream_seq, &orig);
    if (found < 0) return -1;

    const char *subject = found ? natsMsg_GetSubject(orig) : "";
    const char *room = found ? dlq_room_of_subject(subject) : "";
    const char *orig_id = "";
    char dlq_subj[512];
    if (found && natsMsgHeader_Get(orig, DW_HDR_MSG_ID, &orig_id) != NATS_OK) orig_id = "";
    if (!room || (found && dlq_subject(dlq_subj, sizeof dlq_subj, room))) {
        /* Not a chat subject (cannot be: DW_MSG holds dw.msg.>); keep it anyway. */
        DW_WARN("advisory: odd original subject", "seq=%" PRIu64 " subject=%s", adv.stream_seq,
                subject);
        room = "";
        subject = "";
        found = 0;
    }
    if (!found) snprintf(dlq_subj, sizeof dlq_subj, "%s", DLQ_SUBJECT_LOST);

    Dw__DeadLetter dl;
    dw__dead_letter__init(&dl);
    dl.subject = (char *)subject;
    dl.stream_seq = adv.stream_seq;
    dl.msg_id = (char *)orig_id;
    if (found) {
        dl.payload.data = (uint8_t *)natsMsg_GetData(orig);
        dl.payload.len = (size_t)natsMsg_GetDataLength(orig);
    }
    dl.reason = DLQ_REASON_POISON;
    dl.attempts = (uint32_t)adv.deliveries;
    dl.last_failure_ms = dw_now_ms();
    dl.room = (char *)room;
    dl.source = DLQ_SOURCE_ADVISORY;

    /* Let JetStream's duplicate window settle a race with the dispatcher's
     * own write, which uses the same Nats-Msg-Id. */
    char msg_id[DW_MSGID_MAX];
    dw_msgid_dlq(msg_id, sizeof msg_id, adv.stream_seq);
    int rc = store_dead_letter(svc, &dl, dlq_subj, msg_id, "poison message dead-lettered");
    natsMsg_Destroy(orig); /* subject, orig_id and the payload point into it */
    return rc;
}

int capture_advisories_poll(dlq_svc *svc)
{
    natsMsg *msgs[ADVISORY_BATCH];
    int n = 0;
    natsStatus s = dw_pull_fetch(svc->adv_pull, msgs, ADVISORY_BATCH, svc->cfg.fetch_wait_ms, &n);
    if (s == NATS_TIMEOUT) return 0;
    if (s != NATS_OK) return -1;
    int handled = 0;
    for (int i = 0; i < n; i++) {
        natsMsg *m = msgs[i];
        if (capture_advisory(svc, natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m)) == 0) {
            /* Acked only once the dead letter is durable (or was there). */
            dw_pull_ack_sync(svc->nc, m, svc->cfg.publish_wait_ms);
            handled++;
        } else {
            dw_pull_nak(svc->nc, m, 1000);
        }
        natsMsg_Destroy(m);
    }
    return handled;
}
