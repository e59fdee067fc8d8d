/* dwctl's NATS side: one connection, no reconnects, bounded waits. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dw/bus.h"
#include "dwctl.h"

void dwctl_url_redacted(const char *url, char *buf, size_t len)
{
    /* Credentials (user:password or a token before the @) must not reach logs. */
    const char *scheme = strstr(url, "://");
    const char *host = scheme ? scheme + 3 : url;
    const char *at = strchr(host, '@');
    const char *slash = strchr(host, '/');
    if (at && (!slash || at < slash))
        snprintf(buf, len, "%.*s***%s", (int)(host - url), url, at);
    else
        snprintf(buf, len, "%s", url);
}

int dwctl_connect(dwctl *ctl)
{
    natsOptions *opts = NULL;
    char url[512];
    natsStatus s = natsOptions_Create(&opts);
    if (s == NATS_OK) s = dw_bus_set_servers(opts, ctl->cfg.nats_url);
    if (s == NATS_OK) s = natsOptions_SetName(opts, "dwctl");
    if (s == NATS_OK) s = natsOptions_SetTimeout(opts, ctl->cfg.timeout_ms);
    /* Fail fast: no background reconnects, no retry of the first connect. */
    if (s == NATS_OK) s = natsOptions_SetAllowReconnect(opts, false);
    /* The same DW_NATS_USER / DW_NATS_PASSWORD_FILE / DW_NATS_CA as the
     * services (deploy/nats/auth.conf has a dwctl user). */
    char err[512];
    if (s == NATS_OK && dw_bus_options_env(opts, err, sizeof err)) {
        natsOptions_Destroy(opts);
        dwctl_err("%s", err);
        ctl->nc = NULL;
        return DWCTL_FAIL;
    }
    if (s == NATS_OK) s = natsConnection_Connect(&ctl->nc, opts);
    natsOptions_Destroy(opts);
    if (s != NATS_OK) {
        const char *why = nats_GetLastError(NULL);
        /* nats.c prefixes its source position: "(conn.c:2088): No server ..." */
        const char *pos_end = why && *why == '(' ? strstr(why, "): ") : NULL;
        if (pos_end) why = pos_end + 3;
        dwctl_url_redacted(ctl->cfg.nats_url, url, sizeof url);
        dwctl_err("cannot reach NATS at %s: %s", url, why && *why ? why : natsStatus_GetText(s));
        ctl->nc = NULL;
        return DWCTL_FAIL;
    }

    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = ctl->cfg.timeout_ms;
    s = natsConnection_JetStream(&ctl->js, ctl->nc, &jo);
    if (s != NATS_OK) {
        dwctl_err("cannot create a JetStream context: %s", natsStatus_GetText(s));
        return DWCTL_FAIL;
    }
    return DWCTL_OK;
}

void dwctl_close(dwctl *ctl)
{
    jsCtx_Destroy(ctl->js);
    ctl->js = NULL;
    natsConnection_Destroy(ctl->nc);
    ctl->nc = NULL;
}

int dwctl_request_raw(dwctl *ctl, const char *subj, const void *data, size_t len, natsMsg **reply,
                      char *err, size_t errlen)
{
    *reply = NULL;
    natsStatus s =
        natsConnection_Request(reply, ctl->nc, subj, data, (int)len, ctl->cfg.timeout_ms);
    switch (s) {
    case NATS_OK: return DWCTL_OK;
    case NATS_NO_RESPONDERS:
        snprintf(err, errlen, "nothing answers on %s (is the service running?)", subj);
        break;
    case NATS_TIMEOUT:
        snprintf(err, errlen, "no reply on %s within %lld ms", subj,
                 (long long)ctl->cfg.timeout_ms);
        break;
    default: snprintf(err, errlen, "request on %s failed: %s", subj, natsStatus_GetText(s)); break;
    }
    natsMsg_Destroy(*reply);
    *reply = NULL;
    return DWCTL_FAIL;
}

int dwctl_request(dwctl *ctl, const char *subj, const ProtobufCMessage *req, natsMsg **reply,
                  char *err, size_t errlen)
{
    size_t len = 0;
    uint8_t *buf = dw_pb_pack(req, &len);
    *reply = NULL;
    if (!buf) {
        snprintf(err, errlen, "out of memory");
        return DWCTL_FAIL;
    }
    int rc = dwctl_request_raw(ctl, subj, buf, len, reply, err, errlen);
    free(buf);
    return rc;
}

natsStatus dwctl_dispatch_backlog(dwctl *ctl, dwctl_backlog *b)
{
    jsConsumerInfoList *cl = NULL;
    jsErrCode jerr = 0;
    memset(b, 0, sizeof *b);
    natsStatus s = js_Consumers(&cl, ctl->js, DW_STREAM_MSG, NULL, &jerr);
    if (s != NATS_OK) return s;
    unsigned char seen[DW_MSG_PARTITIONS] = {0};
    for (int c = 0; cl && c < cl->Count; c++) {
        const jsConsumerInfo *ci = cl->List[c];
        unsigned p = 0;
        if (!ci->Name || sscanf(ci->Name, "dwp-%u-", &p) != 1 || p >= DW_MSG_PARTITIONS) continue;
        if (!seen[p]) b->partitions++;
        seen[p] = 1;
        b->pending += ci->NumPending;
        b->ack_pending += ci->NumAckPending;
        b->redelivered += ci->NumRedelivered;
        b->waiting += ci->NumWaiting;
    }
    jsConsumerInfoList_Destroy(cl);
    return NATS_OK;
}
