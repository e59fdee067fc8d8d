/* dw.ops.dlq.list|show|replay|purge: what dwctl dlq asks for. */
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dw/bus.h"
#include "dw/dlq.h"
#include "dw/log.h"
#include "dw/wire.h"
#include "dw/dlq_record.h"
#include "svc.h"

/* Per request, at most this many ids (dwctl sends fewer). */
#define OPS_MAX_IDS 1024

int64_t svc_depth(dlq_svc *svc, int64_t wait_ms)
{
    jsStreamInfo *si = NULL;
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = wait_ms;
    natsStatus s = js_GetStreamInfo(&si, svc->js, DW_STREAM_DLQ, &jo, NULL);
    int64_t depth = s == NATS_OK ? (int64_t)si->State.Msgs : -1;
    jsStreamInfo_Destroy(si);
    if (depth >= 0) dw_metric_set(svc->m.depth, depth);
    return depth;
}

/* One DlqResult and the text its detail points to. */
typedef struct result_slot {
    Dw__DlqResult r;
    char detail[256];
} result_slot;

static void set_result(result_slot *rs, uint64_t id, Dw__DlqResult__Outcome o, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void set_result(result_slot *rs, uint64_t id, Dw__DlqResult__Outcome o, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(rs->detail, sizeof rs->detail, fmt, ap);
    va_end(ap);
    dw__dlq_result__init(&rs->r);
    rs->r.id = id;
    rs->r.outcome = o;
    rs->r.detail = rs->detail;
}

/* Fetch DW_DLQ entry id: 1 found (*out is the caller's), 0 no such entry,
 * -1 JetStream did not answer (why in err). */
static int get_entry(dlq_svc *svc, uint64_t id, natsMsg **out, char *err, size_t errlen)
{
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = svc->cfg.publish_wait_ms;
    jsErrCode jerr = 0;
    natsStatus s = js_GetMsg(out, svc->js, DW_STREAM_DLQ, id, &jo, &jerr);
    if (s == NATS_OK) return 1;
    *out = NULL;
    if (jerr == JSNoMessageFoundErr || s == NATS_NOT_FOUND) return 0;
    snprintf(err, errlen, "JetStream: %s (jserr %d)", natsStatus_GetText(s), (int)jerr);
    return -1;
}

/* Remove entry id from DW_DLQ and the index: 1 removed, 0 was not there,
 * -1 failed (why in err). */
static int delete_entry(dlq_svc *svc, uint64_t id, char *err, size_t errlen)
{
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = svc->cfg.publish_wait_ms;
    jsErrCode jerr = 0;
    natsStatus s = js_DeleteMsg(svc->js, DW_STREAM_DLQ, id, &jo, &jerr);
    int rc = 1;
    if (s != NATS_OK) {
        /* Deleting what is not there fails; tell that apart from a real failure. */
        natsMsg *m = NULL;
        char gerr[128];
        int there = get_entry(svc, id, &m, gerr, sizeof gerr);
        natsMsg_Destroy(m);
        if (there != 0) {
            snprintf(err, errlen, "JetStream: %s (jserr %d)", natsStatus_GetText(s), (int)jerr);
            return -1;
        }
        rc = 0;
    }
    pthread_mutex_lock(&svc->mu);
    dlq_index_remove(svc->ix, id);
    pthread_mutex_unlock(&svc->mu);
    return rc;
}

/* Republish entry id to its original subject, then remove it. The entry
 * goes only after JetStream acked the republish, so an interruption at any
 * point leaves it in DW_DLQ; the republish's Nats-Msg-Id is the same on
 * every run, so a rerun inside DW_MSG's duplicate window is dropped by
 * JetStream (and only then is the entry removed). */
static void replay_one(dlq_svc *svc, uint64_t id, result_slot *res)
{
    char err[256], msg_id[DW_MSGID_MAX], of[32];
    natsMsg *entry = NULL, *out = NULL;
    Dw__DeadLetter *dl = NULL;
    char *edges = NULL;
    jsPubAck *pa = NULL;

    int there = get_entry(svc, id, &entry, err, sizeof err);
    if (there <= 0) {
        if (there == 0)
            set_result(res, id, DW__DLQ_RESULT__OUTCOME__SKIPPED,
                       "no such entry (already replayed or purged)");
        else
            set_result(res, id, DW__DLQ_RESULT__OUTCOME__FAILED, "%s", err);
        goto done;
    }
    dl = dlq_record_unpack(natsMsg_GetData(entry), (size_t)natsMsg_GetDataLength(entry));
    if (!dl) {
        set_result(res, id, DW__DLQ_RESULT__OUTCOME__FAILED, "not a dead letter (purge it)");
        goto done;
    }
    if (!*dl->subject) {
        set_result(res, id, DW__DLQ_RESULT__OUTCOME__FAILED,
                   "nothing to replay: the original had left DW_MSG when it was captured");
        goto done;
    }
    if (dw_msgid_replay(msg_id, sizeof msg_id, dl->msg_id, dl->stream_seq, id) ||
        natsMsg_Create(&out, dl->subject, NULL, (const char *)dl->payload.data,
                       (int)dl->payload.len) != NATS_OK) {
        set_result(res, id, DW__DLQ_RESULT__OUTCOME__FAILED, "out of memory");
        goto done;
    }
    snprintf(of, sizeof of, "%" PRIu64, id);
    natsStatus s = natsMsgHeader_Set(out, DW_HDR_REPLAY_OF, of);
    /* A partial failure goes back only to the edges that never took it. */
    if (s == NATS_OK && dl->n_failed_edges) {
        if (!(edges = dlq_edges_join(dl->failed_edges, dl->n_failed_edges)))
            s = NATS_NO_MEMORY;
        else
            s = natsMsgHeader_Set(out, DW_HDR_REPLAY_EDGES, edges);
    }
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MsgId = msg_id;
    po.MaxWait = svc->cfg.publish_wait_ms;
    jsErrCode jerr = 0;
    if (s == NATS_OK) s = js_PublishMsg(&pa, svc->js, out, &po, &jerr);
    if (s != NATS_OK) {
        set_result(res, id, DW__DLQ_RESULT__OUTCOME__FAILED,
                   "republish to %s not acknowledged: %s (jserr %d)", dl->subject,
                   natsStatus_GetText(s), (int)jerr);
        goto done;
    }
    int dup = pa->Duplicate;

    if (svc->cfg.crash_after_replays > 0 &&
        ++svc->replays_done >= (uint64_t)svc->cfg.crash_after_replays) {
        /* Testing only: die the way kill -9 does, in the worst place. */
        DW_WARN("test crash after replay", "id=%" PRIu64, id);
        raise(SIGKILL);
    }

    int removed = delete_entry(svc, id, err, sizeof err);
    if (removed < 0) {
        set_result(res, id, DW__DLQ_RESULT__OUTCOME__FAILED,
                   "republished but not removed (%s): run the replay again", err);
    } else if (dup) {
        /* An interrupted earlier run had republished it already. */
        set_result(res, id, DW__DLQ_RESULT__OUTCOME__SKIPPED,
                   "already republished by an earlier replay; entry removed");
    } else {
        set_result(res, id, DW__DLQ_RESULT__OUTCOME__DONE, "republished to %s as seq %" PRIu64,
                   dl->subject, pa->Sequence);
        dw_metric_inc(svc->m.replayed);
        DW_INFO("replayed",
                "id=%" PRIu64 " subject=%s orig_seq=%" PRIu64 " new_seq=%" PRIu64 " edges=%s", id,
                dl->subject, dl->stream_seq, pa->Sequence, edges ? edges : "all");
    }

done:
    free(edges);
    jsPubAck_Destroy(pa);
    natsMsg_Destroy(out);
    if (dl) dw__dead_letter__free_unpacked(dl, NULL);
    natsMsg_Destroy(entry);
}

static void purge_one(dlq_svc *svc, uint64_t id, result_slot *res)
{
    char err[256];
    int removed = delete_entry(svc, id, err, sizeof err);
    if (removed > 0) {
        set_result(res, id, DW__DLQ_RESULT__OUTCOME__DONE, "removed");
        dw_metric_inc(svc->m.purged);
        DW_INFO("purged", "id=%" PRIu64, id);
    } else if (removed == 0) {
        set_result(res, id, DW__DLQ_RESULT__OUTCOME__SKIPPED,
                   "no such entry (already replayed or purged)");
    } else {
        set_result(res, id, DW__DLQ_RESULT__OUTCOME__FAILED, "%s", err);
    }
}

/* What a list shows for an entry whose bytes are not a record. */
static void invalid_letter(Dw__DeadLetter *dl)
{
    dw__dead_letter__init(dl);
    dl->reason = "invalid_record";
    dl->source = "";
}

/* Fill rp with one page of matching entries, packed into *out. The index
 * is brought in line with DW_DLQ first (entries another instance removed). */
static int do_list(dlq_svc *svc, const Dw__DlqRequest *rq, Dw__DlqReply *rp, uint8_t **out,
                   size_t *len)
{
    jsStreamInfo *si = NULL;
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = svc->cfg.publish_wait_ms;
    jo.Stream.Info.DeletedDetails = true;
    jsErrCode jerr = 0;
    natsStatus s = js_GetStreamInfo(&si, svc->js, DW_STREAM_DLQ, &jo, &jerr);
    if (s != NATS_OK) {
        rp->error = "DW_DLQ does not answer";
        return -1;
    }
    rp->depth = si->State.Msgs;
    dw_metric_set(svc->m.depth, (int64_t)si->State.Msgs);

    size_t limit = (size_t)svc->cfg.list_page;
    if (rq->limit && rq->limit < limit) limit = rq->limit;
    const dlq_index_entry **found = malloc(limit * sizeof *found);
    Dw__DlqEntry *ents = calloc(limit, sizeof *ents);
    Dw__DlqEntry **ptrs = calloc(limit, sizeof *ptrs);
    Dw__DeadLetter *invalid = calloc(limit, sizeof *invalid);
    int rc = -1;
    if (!found || !ents || !ptrs || !invalid) {
        rp->error = "out of memory";
        goto done;
    }
    dlq_filter f = {rq->room, rq->reason, rq->since_ms};
    size_t n = 0;
    int more = 0;

    pthread_mutex_lock(&svc->mu);
    dlq_index_reconcile(svc->ix, si->State.FirstSeq, si->State.Deleted,
                        si->State.DeletedLen > 0 ? (size_t)si->State.DeletedLen : 0);
    dlq_index_query(svc->ix, &f, rq->after_id, limit, found, &n, &more);
    size_t max = (size_t)natsConnection_GetMaxPayload(svc->nc);
    for (;;) {
        for (size_t i = 0; i < n; i++) {
            dw__dlq_entry__init(&ents[i]);
            ents[i].id = found[i]->id;
            ents[i].stored_ms = found[i]->stored_ms;
            ents[i].payload_bytes = (uint32_t)found[i]->payload_bytes;
            if (found[i]->dl) {
                ents[i].letter = found[i]->dl;
            } else {
                invalid_letter(&invalid[i]);
                ents[i].letter = &invalid[i];
            }
            ptrs[i] = &ents[i];
        }
        rp->ok = 1;
        rp->n_entries = n;
        rp->entries = ptrs;
        rp->more = more;
        /* A page must fit in one NATS message: halve until it does. */
        if (protobuf_c_message_get_packed_size(&rp->base) + 64 <= max || n <= 1) break;
        n /= 2;
        more = 1;
    }
    *out = dw_pb_pack(&rp->base, len);
    pthread_mutex_unlock(&svc->mu);
    rc = *out ? 0 : -1;
    if (rc) rp->error = "out of memory";

done:
    free(found);
    free(ents);
    free(ptrs);
    free(invalid);
    jsStreamInfo_Destroy(si);
    return rc;
}

static int do_show(dlq_svc *svc, const Dw__DlqRequest *rq, Dw__DlqReply *rp, uint8_t **out,
                   size_t *len, char *err, size_t errlen)
{
    natsMsg *m = NULL;
    if (!rq->n_ids) {
        rp->error = "show needs an id";
        return -1;
    }
    uint64_t id = rq->ids[0];
    int there = get_entry(svc, id, &m, err, errlen);
    if (there <= 0) {
        if (there == 0) snprintf(err, errlen, "no dead letter with id %" PRIu64, id);
        rp->error = err;
        return -1;
    }
    Dw__DeadLetter *dl = dlq_record_unpack(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m));
    Dw__DeadLetter invalid;
    Dw__DlqEntry e, *ep = &e;
    dw__dlq_entry__init(&e);
    e.id = id;
    e.stored_ms = natsMsg_GetTime(m) / 1000000;
    e.payload_bytes = dl ? (uint32_t)dl->payload.len : 0;
    if (dl) {
        e.letter = dl;
    } else {
        invalid_letter(&invalid);
        e.letter = &invalid;
    }
    rp->ok = 1;
    rp->n_entries = 1;
    rp->entries = &ep;
    *out = dw_pb_pack(&rp->base, len);
    rp->n_entries = 0;
    rp->entries = NULL;
    if (dl) dw__dead_letter__free_unpacked(dl, NULL);
    natsMsg_Destroy(m);
    return *out ? 0 : -1;
}

/* replay / purge: one result per id, in order. */
static int do_each(dlq_svc *svc, const Dw__DlqRequest *rq, Dw__DlqReply *rp, int replay,
                   uint8_t **out, size_t *len)
{
    if (!rq->n_ids || rq->n_ids > OPS_MAX_IDS) {
        rp->error = rq->n_ids ? "too many ids in one request" : "no ids";
        return -1;
    }
    result_slot *res = calloc(rq->n_ids, sizeof *res);
    Dw__DlqResult **ptrs = calloc(rq->n_ids, sizeof *ptrs);
    if (!res || !ptrs) {
        free(res);
        free(ptrs);
        rp->error = "out of memory";
        return -1;
    }
    for (size_t i = 0; i < rq->n_ids; i++) {
        if (replay)
            replay_one(svc, rq->ids[i], &res[i]);
        else
            purge_one(svc, rq->ids[i], &res[i]);
        ptrs[i] = &res[i].r;
    }
    int64_t depth = svc_depth(svc, svc->cfg.publish_wait_ms);
    rp->ok = 1;
    rp->depth = depth > 0 ? (uint64_t)depth : 0;
    rp->n_results = rq->n_ids;
    rp->results = ptrs;
    *out = dw_pb_pack(&rp->base, len);
    rp->n_results = 0;
    rp->results = NULL;
    free(res);
    free(ptrs);
    return *out ? 0 : -1;
}

static void on_ops(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    dlq_svc *svc = closure;
    const char *subj = natsMsg_GetSubject(msg);
    const char *reply = natsMsg_GetReply(msg);
    Dw__DlqReply rp = DW__DLQ_REPLY__INIT;
    Dw__DlqRequest *rq = NULL;
    char err[320];
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = -1;

    if (!reply || !*reply) goto done; /* nobody to answer */
    rq = dw_pb_unpack(&dw__dlq_request__descriptor, msg);
    if (!rq) {
        rp.error = "the request is not a DlqRequest";
    } else if (!strcmp(subj, DW_SUBJ_DLQ_LIST)) {
        if (!atomic_load(&svc->caught_up))
            rp.error = "starting: the index of DW_DLQ is still loading, try again";
        else
            rc = do_list(svc, rq, &rp, &buf, &len);
    } else if (!strcmp(subj, DW_SUBJ_DLQ_SHOW)) {
        rc = do_show(svc, rq, &rp, &buf, &len, err, sizeof err);
    } else if (!strcmp(subj, DW_SUBJ_DLQ_REPLAY)) {
        rc = do_each(svc, rq, &rp, 1, &buf, &len);
    } else if (!strcmp(subj, DW_SUBJ_DLQ_PURGE)) {
        rc = do_each(svc, rq, &rp, 0, &buf, &len);
    } else {
        rp.error = "unknown operation";
    }
    if (rc) {
        free(buf);
        rp.ok = 0;
        rp.n_entries = 0;
        rp.n_results = 0;
        if (!rp.error) rp.error = "out of memory";
        buf = dw_pb_pack(&rp.base, &len);
    }
    if (buf) natsConnection_Publish(nc, reply, buf, (int)len);
done:
    free(buf);
    if (rq) dw__dlq_request__free_unpacked(rq, NULL);
    natsMsg_Destroy(msg);
}

int ops_start(dlq_svc *svc)
{
    natsStatus s = natsConnection_QueueSubscribe(&svc->ops_sub, svc->nc, "dw.ops.dlq.*",
                                                 DW_DLQ_QUEUE, on_ops, svc);
    if (s != NATS_OK) {
        DW_ERROR("ops subscribe failed", "status=%s", natsStatus_GetText(s));
        return -1;
    }
    return 0;
}
