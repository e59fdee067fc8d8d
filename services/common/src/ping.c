#include "dw/ping.h"

#include <stdlib.h>
#include <string.h>

#include "dw/log.h"

struct dw_ping {
    natsConnection *nc;
    natsSubscription *sub;
    char *service;
    char *instance;
    bool (*ready)(void *);
    void *arg;
};

static void on_ping(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    dw_ping *p = closure;
    const char *reply = natsMsg_GetReply(msg);
    natsMsg *pong = NULL;
    if (reply && natsMsg_Create(&pong, reply, NULL, NULL, 0) == NATS_OK) {
        bool ok = p->ready ? p->ready(p->arg) : true;
        natsStatus s = natsMsgHeader_Set(pong, DW_PING_HDR_SERVICE, p->service);
        if (s == NATS_OK) s = natsMsgHeader_Set(pong, DW_PING_HDR_INSTANCE, p->instance);
        if (s == NATS_OK) s = natsMsgHeader_Set(pong, DW_PING_HDR_VERSION, DW_VERSION);
        if (s == NATS_OK) s = natsMsgHeader_Set(pong, DW_PING_HDR_READY, ok ? "true" : "false");
        if (s == NATS_OK) s = natsConnection_PublishMsg(nc, pong);
        if (s != NATS_OK) DW_DEBUG("ping not answered", "status=%s", natsStatus_GetText(s));
    }
    natsMsg_Destroy(pong);
    natsMsg_Destroy(msg);
}

int dw_ping_start(dw_ping **out, natsConnection *nc, const char *service, const char *instance,
                  bool (*ready)(void *), void *arg)
{
    dw_ping *p = calloc(1, sizeof *p);
    *out = NULL;
    if (!p) return -1;
    p->nc = nc;
    p->ready = ready;
    p->arg = arg;
    p->service = strdup(service);
    p->instance = strdup(instance);
    if (!p->service || !p->instance) goto error;
    if (natsConnection_Subscribe(&p->sub, nc, DW_SUBJ_OPS_PING, on_ping, p) != NATS_OK) goto error;
    *out = p;
    return 0;
error:
    dw_ping_stop(p);
    return -1;
}

void dw_ping_stop(dw_ping *p)
{
    if (!p) return;
    if (p->sub) {
        /* A drain returns once no on_ping runs any more, so p outlives the
         * callbacks; it needs the server, without which unsubscribing is
         * all there is to do. */
        if (natsConnection_Status(p->nc) != NATS_CONN_STATUS_CONNECTED ||
            natsSubscription_Drain(p->sub) != NATS_OK ||
            natsSubscription_WaitForDrainCompletion(p->sub, 2000) != NATS_OK)
            natsSubscription_Unsubscribe(p->sub);
    }
    natsSubscription_Destroy(p->sub);
    free(p->service);
    free(p->instance);
    free(p);
}
