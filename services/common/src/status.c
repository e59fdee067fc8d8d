#include "dw/status.h"

#include <libwebsockets.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "dw/log.h"
#include "dw/metrics.h"

struct dw_status {
    struct lws_context *ctx;
    pthread_t thread;
    atomic_bool stop;
    bool (*ready)(void *);
    void *arg;
};

typedef struct status_req {
    char *body;
    size_t len, sent;
} status_req;

static int respond(struct lws *wsi, status_req *r, unsigned int code, const char *ctype, char *body,
                   size_t len)
{
    unsigned char hdr[LWS_PRE + 512], *start = hdr + LWS_PRE, *p = start, *end = hdr + sizeof hdr;
    r->body = body;
    r->len = len;
    r->sent = 0;
    if (lws_add_http_common_headers(wsi, code, ctype, len, &p, end) ||
        lws_finalize_write_http_header(wsi, start, &p, end))
        return 1;
    lws_callback_on_writable(wsi);
    return 0;
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                    size_t len)
{
    status_req *r = user;
    dw_status *st = lws_context_user(lws_get_context(wsi));
    switch (reason) {
    case LWS_CALLBACK_HTTP: {
        const char *uri = in;
        if (!strcmp(uri, "/healthz")) return respond(wsi, r, 200, "text/plain", strdup("ok\n"), 3);
        if (!strcmp(uri, "/readyz")) {
            bool ok = st->ready ? st->ready(st->arg) : true;
            return respond(wsi, r, ok ? 200 : 503, "text/plain",
                           strdup(ok ? "ready\n" : "not ready\n"), ok ? 6 : 10);
        }
        if (!strcmp(uri, "/metrics")) {
            size_t n = 0;
            char *text = dw_metrics_render(&n);
            if (!text) return 1;
            return respond(wsi, r, 200, "text/plain; version=0.0.4", text, n);
        }
        return respond(wsi, r, 404, "text/plain", strdup("not found\n"), 10);
    }
    case LWS_CALLBACK_HTTP_WRITEABLE: {
        if (!r->body) return 0;
        /* Write in chunks; lws wants LWS_PRE of headroom before each. */
        unsigned char buf[LWS_PRE + 8192];
        size_t n = r->len - r->sent;
        if (n > 8192) n = 8192;
        memcpy(buf + LWS_PRE, r->body + r->sent, n);
        r->sent += n;
        int final = r->sent == r->len;
        if (lws_write(wsi, buf + LWS_PRE, n, final ? LWS_WRITE_HTTP_FINAL : LWS_WRITE_HTTP) !=
            (int)n)
            return 1;
        if (!final) {
            lws_callback_on_writable(wsi);
            return 0;
        }
        free(r->body);
        r->body = NULL;
        return lws_http_transaction_completed(wsi) ? -1 : 0;
    }
    case LWS_CALLBACK_CLOSED_HTTP:
        free(r->body);
        r->body = NULL;
        return 0;
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
