#include "dw/status.h"

#include <libwebsockets.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "dw/http.h"
#include "dw/log.h"

struct dw_status {
    struct lws_context *ctx;
    pthread_t thread;
    atomic_bool stop;
    bool (*ready)(void *);
    void *arg;
};

/* A request's answer (the per-connection user data). */
typedef dw_http_body status_req;

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                    size_t len)
{
    status_req *r = user;
    dw_status *st = lws_context_user(lws_get_context(wsi));
    switch (reason) {
    case LWS_CALLBACK_HTTP: {
        const char *uri = in;
        if (!strcmp(uri, "/healthz")) return dw_http_text(wsi, r, 200, "ok\n");
        if (!strcmp(uri, "/readyz")) {
            bool ok = st->ready ? st->ready(st->arg) : true;
            return dw_http_text(wsi, r, ok ? 200 : 503, ok ? "ready\n" : "not ready\n");
        }
        if (!strcmp(uri, "/metrics")) return dw_http_metrics(wsi, r);
        return dw_http_text(wsi, r, 404, "not found\n");
    }
    case LWS_CALLBACK_HTTP_WRITEABLE: return dw_http_write(wsi, r, false);
    case LWS_CALLBACK_CLOSED_HTTP: dw_http_body_free(r); return 0;
    default: return lws_callback_http_dummy(wsi, reason, user, in, len);
    }
}

static const struct lws_protocols status_protocols[] = {
    {"http", callback, sizeof(status_req), 0, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

static void *status_main(void *arg)
{
    dw_status *st = arg;
    while (!atomic_load(&st->stop))
        if (lws_service(st->ctx, 0) < 0) break;
    return NULL;
}

int dw_status_start(dw_status **out, const char *host, int port, bool (*ready)(void *), void *arg)
{
    *out = NULL;
    if (port <= 0) return 0;
    dw_status *st = calloc(1, sizeof *st);
    if (!st) return -1;
    st->ready = ready;
    st->arg = arg;
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.port = port;
    info.iface = host && *host ? host : NULL;
    info.protocols = status_protocols;
    info.user = st;
    info.options = LWS_SERVER_OPTION_DISABLE_IPV6;
    lws_set_log_level(LLL_ERR | LLL_WARN, NULL);
    st->ctx = lws_create_context(&info);
    if (!st->ctx) {
        DW_ERROR("status port not opened", "port=%d", port);
        free(st);
        return -1;
    }
    if (pthread_create(&st->thread, NULL, status_main, st)) {
        lws_context_destroy(st->ctx);
        free(st);
        return -1;
    }
    DW_INFO("status port open", "port=%d", port);
    *out = st;
    return 0;
}

void dw_status_stop(dw_status *st)
{
    if (!st) return;
    atomic_store(&st->stop, true);
    lws_cancel_service(st->ctx);
    pthread_join(st->thread, NULL);
    lws_context_destroy(st->ctx);
    free(st);
}
