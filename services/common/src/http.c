#include "dw/http.h"

#include <libwebsockets.h>
#include <stdlib.h>
#include <string.h>

#include "dw/metrics.h"

/* One chunk per writeable callback: lws wants LWS_PRE of headroom before it. */
#define CHUNK 8192

int dw_http_respond(struct lws *wsi, dw_http_body *b, unsigned code, const char *ctype, char *body,
                    size_t len)
{
    unsigned char hdr[LWS_PRE + 512], *start = hdr + LWS_PRE, *p = start, *end = hdr + sizeof hdr;
    free(b->data);
    b->data = body;
    b->len = len;
    b->sent = 0;
    if (!body) return 1;
    if (lws_add_http_common_headers(wsi, code, ctype, len, &p, end) ||
        lws_add_http_header_by_token(wsi, WSI_TOKEN_HTTP_CACHE_CONTROL, (unsigned char *)"no-store",
                                     8, &p, end) ||
        lws_finalize_write_http_header(wsi, start, &p, end))
        return 1;
    lws_callback_on_writable(wsi);
    return 0;
}

int dw_http_text(struct lws *wsi, dw_http_body *b, unsigned code, const char *text)
{
    return dw_http_respond(wsi, b, code, "text/plain; charset=utf-8", strdup(text), strlen(text));
}

int dw_http_metrics(struct lws *wsi, dw_http_body *b)
{
    size_t n = 0;
    char *text = dw_metrics_render(&n);
    return dw_http_respond(wsi, b, 200, "text/plain; version=0.0.4", text, n);
}

int dw_http_write(struct lws *wsi, dw_http_body *b, bool close_after)
{
    if (!b->data) return 0;
    unsigned char buf[LWS_PRE + CHUNK];
    size_t n = b->len - b->sent;
    if (n > CHUNK) n = CHUNK;
    memcpy(buf + LWS_PRE, b->data + b->sent, n);
    b->sent += n;
    int final = b->sent == b->len;
    if (lws_write(wsi, buf + LWS_PRE, n, final ? LWS_WRITE_HTTP_FINAL : LWS_WRITE_HTTP) != (int)n)
        return 1;
    if (!final) {
        lws_callback_on_writable(wsi);
        return 0;
    }
    dw_http_body_free(b);
    return close_after || lws_http_transaction_completed(wsi) ? -1 : 0;
}

void dw_http_body_free(dw_http_body *b)
{
    if (!b) return;
    free(b->data);
    b->data = NULL;
    b->len = b->sent = 0;
}
