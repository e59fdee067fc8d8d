#include "dw/dlq_streams.h"

#include "dw/dlq.h"
#include "dw/log.h"

void dlq_stream_opts_default(dlq_stream_opts *o)
{
    o->dedup_window_s = 3600;
    o->advisory_max_age_s = 7LL * 24 * 3600;
    o->replicas = 1;
}

static natsStatus ensure_one(jsCtx *js, jsStreamConfig *cfg, int update)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_AddStream(&si, js, cfg, NULL, &jerr);
    /* Exists (maybe configured otherwise, or created a moment ago by the
     * other writer, which reports as a subject overlap). */
    if (s != NATS_OK && (jerr == JSStreamNameExistErr || jerr == JSStreamSubjectOverlapErr)) {
        jsStreamInfo_Destroy(si);
        si = NULL;
        if (update)
            s = js_UpdateStream(&si, js, cfg, NULL, &jerr);
        else
            s = NATS_OK;
    }
    if (s != NATS_OK)
        DW_ERROR("stream setup failed", "stream=%s status=%s jserr=%d last=\"%s\"", cfg->Name,
                 natsStatus_GetText(s), (int)jerr, nats_GetLastError(NULL));
    jsStreamInfo_Destroy(si);
    return s;
}

natsStatus dlq_streams_ensure(jsCtx *js, const dlq_stream_opts *o, int update)
{
    jsStreamConfig cfg;
    const char *dlq_subj[] = {DW_SUBJ_DLQ_PREFIX ">"};
    /* The dispatcher's consumer on DW_MSG, and the async routes' consumers. */
    const char *adv_subj[] = {DW_SUBJ_ADV_MAX_DELIVERIES, DW_SUBJ_ADV_MAX_DELIVERIES_ROUTE};

    jsStreamConfig_Init(&cfg);
    cfg.Name = DW_STREAM_DLQ;
    cfg.Subjects = dlq_subj;
    cfg.SubjectsLen = 1;
    cfg.Storage = js_FileStorage;
    cfg.Retention = js_LimitsPolicy;
    cfg.MaxAge = 0; /* until replayed or purged */
    /* Should a limit ever be set, refuse new dead letters rather than
     * silently dropping old ones. */
    cfg.Discard = js_DiscardNew;
    cfg.Duplicates = o->dedup_window_s * 1000000000LL;
    cfg.Replicas = o->replicas;
    natsStatus s = ensure_one(js, &cfg, update);
    if (s != NATS_OK) return s;

    jsStreamConfig_Init(&cfg);
    cfg.Name = DW_STREAM_DLQ_ADVISORIES;
    cfg.Subjects = adv_subj;
    cfg.SubjectsLen = 2;
    cfg.Storage = js_FileStorage;
    cfg.Retention = js_WorkQueuePolicy;
    cfg.MaxAge = o->advisory_max_age_s * 1000000000LL;
    cfg.Replicas = o->replicas;
    return ensure_one(js, &cfg, update);
}
