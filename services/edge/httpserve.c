/* Plain HTTP on the edge's port: /healthz, /readyz, /metrics (libdw's
 * writer, dw/http.h) and the chat page's fixed files (served by lws from
 * WEB_DIR); no request bodies, bounded URLs (docs/security.md). */
#include <libwebsockets.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dw/http.h"
#include "dw/log.h"
#include "edge.h"
#include "httproute.h"
#include "httpserve.h"

static int http_text(struct lws *wsi, edge_session *s, unsigned int code, const char *text)
{
    s->state = SESS_HTTP;
    return dw_http_text(wsi, &s->http, code, text);
}

int httpserve(edge *e, struct lws *wsi, edge_session *s, const char *uri)
{
    size_t ulen = strlen(uri);
    int args = lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_URI_ARGS);
    if (ulen + (size_t)(args > 0 ? args : 0) > (size_t)e->cfg->max_url) {
        dw_metric_inc(e->m->rejected_url);
        return http_text(wsi, s, 414, "uri too long\n");
    }
    /* Nothing here takes a body. lws would read (and discard) one after
     * the answer, restarting its timeout at every chunk: a body sent a
     * byte at a time held a connection far past DW_HANDSHAKE_TIMEOUT_S.
     * Refuse it and close. */
    char cl[24];
    if (lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_TRANSFER_ENCODING) > 0 ||
        (lws_hdr_copy(wsi, cl, sizeof cl, WSI_TOKEN_HTTP_CONTENT_LENGTH) > 0 && strcmp(cl, "0"))) {
        s->http_close = true;
        return http_text(wsi, s, 413, "request bodies are not accepted\n");
    }
    httproute r = httproute_match(uri, ulen);
    switch (r.target) {
    case HTTPROUTE_HEALTHZ: return http_text(wsi, s, 200, "ok\n");
    case HTTPROUTE_READYZ:
        if (atomic_load(&e->stopping)) return http_text(wsi, s, 503, "not ready: stopping\n");
        return edge_ready(e) ? http_text(wsi, s, 200, "ready\n")
                             : http_text(wsi, s, 503, "not ready: bus\n");
    case HTTPROUTE_METRICS: s->state = SESS_HTTP; return dw_http_metrics(wsi, &s->http);
    case HTTPROUTE_FILE: {
        /* One of a fixed list of files, served by lws from WEB_DIR; a
         * file that resolves outside it (a symlink) is not served. */
        char path[PATH_MAX], root[PATH_MAX], real[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", e->cfg->web_dir, r.file);
        if (!realpath(e->cfg->web_dir, root) || !realpath(path, real) ||
            !httproute_inside(root, real)) {
            DW_WARN("static file not served: missing or outside the web root", "file=%s", r.file);
            return http_text(wsi, s, 404, "not found\n");
        }
        s->state = SESS_HTTP;
        int n = lws_serve_http_file(wsi, real, r.mime, NULL, 0);
        if (n < 0 || (n > 0 && lws_http_transaction_completed(wsi))) return -1;
        return 0;
    }
    case HTTPROUTE_NOT_FOUND: break;
    }
    return http_text(wsi, s, 404, "not found\n");
}
