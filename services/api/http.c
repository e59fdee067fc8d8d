#include "http.h"

#include <libwebsockets.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "aws.h"
#include "counters.h"
#include "rooms.h"
#include "dw/log.h"
#include "dw/util.h"

/* The tick bounds how long lws_service sleeps, so dw_stop is seen. */
#define TICK_US (250 * LWS_US_PER_MS)
/* Stopping: how long the listener still reads requests that were sent
 * before it closes (api_http_finish), and the tick meanwhile, which bounds
 * each pass of the loop as TICK_US does while running. */
#define FINISH_GRACE_MS 100
#define FINISH_TICK_US (10 * LWS_US_PER_MS)
/* An Authorization header longer than this cannot hold our token. */
#define AUTH_HEADER_MAX 1024
/* Room publish headers (rooms.h): the sender's name, the idempotency key. */
#define HDR_FROM "x-dw-from:"
#define HDR_KEY "idempotency-key:"

struct api_http {
    api_http_config cfg;
    struct lws_context *ctx;
    lws_sorted_usec_list_t tick;

    pthread_mutex_t lock; /* guards done */
    api_job *done;        /* finished jobs, newest first */

    /* lws thread only */
    size_t inflight; /* requests taken and not yet answered (or closed) */
    bool stopping;   /* api_http_finish: the pool is gone, new requests get 503 */
};

typedef enum {
    SS_IDLE,    /* between requests */
    SS_BODY,    /* reading the request body */
    SS_WAITING, /* the job is at the pool */
    SS_HEADERS, /* the response headers are due */
    SS_PAYLOAD, /* the response body is due */
} sess_state;

typedef struct http_sess {
    struct lws *wsi;
    sess_state state;
    api_op op; /* API_OP_COUNT: not an operation */
    int64_t start_ns;
    char conn_id[API_CONN_ID_MAX + 1];
    api_publish_req pub; /* POST /@rooms/{room}/messages: what the headers said */
    bool body_json;      /* ... and its body is JSON (Content-Type) */
    const char *allow;   /* 405: the methods this path takes */
    unsigned pre_status; /* an answer decided from the headers, sent after the body */
    const char *pre_msg;
    char pre_buf[192]; /* pre_msg's text when it is made here */
    bool keep_body;    /* POST being read for a job (not discarded) */
    uint8_t *body;
    size_t body_len, body_cap;
    api_job *job;     /* at the pool or in h->done; its owner is this session */
    bool close_after; /* close instead of keep-alive (the body was not read) */
    unsigned status;
    char *resp;
    size_t resp_len;
} http_sess;

static void sess_reset(http_sess *s)
{
    free(s->body);
    free(s->resp);
    api_publish_req_clear(&s->pub);
    struct lws *wsi = s->wsi;
    memset(s, 0, sizeof *s);
    s->wsi = wsi;
    s->op = API_OP_COUNT;
}

/* Queue a response; it is written when the socket is writable. body is
 * taken (may be NULL). */
static void respond(http_sess *s, unsigned status, char *body, size_t len)
{
    free(s->resp);
    s->status = status;
    s->resp = body;
    s->resp_len = body ? len : 0;
    s->state = SS_HEADERS;
    api_counters_answer(s->op, status, s->start_ns);
    lws_callback_on_writable(s->wsi);
}

static void respond_error(http_sess *s, unsigned status, const char *msg, bool with_id)
{
    size_t len = 0;
    char *body = api_error_json(msg, with_id ? s->conn_id : NULL, &len);
    respond(s, status, body, len);
}

static void respond_result(http_sess *s, const api_job *job)
{
    const api_result *res = &job->res;
    if (job->op == API_OP_PUBLISH) {
        if (res->status != 200) {
            respond_error(s, res->status, res->error, false);
            return;
        }
        size_t len = 0;
        char *body = api_publish_ok_json(job->pub.room, res->seq, res->duplicate, &len);
        if (body)
            respond(s, 200, body, len);
        else
            respond_error(s, 500, "out of memory", false);
        return;
    }
    if (res->status == 200 && res->info) {
        size_t len = 0;
        char *body = api_info_json(res->info, &len);
        if (body)
            respond(s, 200, body, len);
        else
            respond_error(s, 500, "out of memory", false);
    } else if (res->status == 200 || res->status == 204) {
        respond(s, res->status, NULL, 0);
    } else {
        respond_error(s, res->status, res->status == 410 ? "Gone" : res->error, res->status == 410);
    }
}

/* Worker thread: hand the finished job to the lws thread. */
static void job_done(api_job *job)
{
    api_http *h = job->origin;
    pthread_mutex_lock(&h->lock);
    job->next = h->done;
    h->done = job;
    pthread_mutex_unlock(&h->lock);
    lws_cancel_service(h->ctx);
}

static void take_done(api_http *h)
{
    pthread_mutex_lock(&h->lock);
    api_job *job = h->done;
    h->done = NULL;
    pthread_mutex_unlock(&h->lock);
    while (job) {
        api_job *next = job->next;
        http_sess *s = job->owner;
        if (s) {
            s->job = NULL;
            respond_result(s, job);
        } else {
            /* The client left before the answer; the operation still ran. */
            api_counters_answer(job->op, job->res.status, job->start_ns);
        }
        api_job_free(job);
        job = next;
    }
}

static void submit(api_http *h, http_sess *s)
{
    api_job *job = NULL;
    if (h->stopping) { /* (the pool has stopped: it is not asked) */
        s->close_after = true;
        respond_error(s, 503, "Service Unavailable: the api service is stopping", false);
        return;
    }
    if (s->op == API_OP_PUBLISH) {
        char err[192];
        int status = api_publish_set_body(&s->pub, (const char *)s->body, s->body_len, s->body_json,
                                          h->cfg.max_message, err, sizeof err);
        free(s->body);
        s->body = NULL;
        s->body_len = s->body_cap = 0;
        if (status) {
            respond_error(s, (unsigned)status, err, false);
            return;
        }
        job = api_job_new_publish(&s->pub);
    } else {
        job = api_job_new(s->op, s->conn_id, s->body, s->body_len);
    }
    free(s->body);
    s->body = NULL;
    s->body_len = s->body_cap = 0;
    if (!job) {
        respond_error(s, 500, "out of memory", false);
        return;
    }
    job->origin = h;
    job->owner = s;
    job->done = job_done;
    job->start_ns = s->start_ns;
    if (api_pool_submit(h->cfg.pool, job)) {
        api_job_free(job);
        respond_error(s, 503, "too many requests in progress", false);
        return;
    }
    s->job = job;
    s->state = SS_WAITING;
}

/* A custom header's value into buf: its length, 0 when absent, -1 when
 * longer than cap - 1. */
static int custom_header(struct lws *wsi, const char *name, char *buf, size_t cap)
{
    int nlen = (int)strlen(name);
    int n = lws_hdr_custom_length(wsi, name, nlen);
    if (n <= 0) return 0;
    if ((size_t)n >= cap || lws_hdr_custom_copy(wsi, buf, (int)cap, name, nlen) < 0) return -1;
    return n;
}

/* X-DW-From, Idempotency-Key and Content-Type of a room publish into
 * s->pub / s->body_json. 0, or -1 with the reason in s->pre_buf. */
static int publish_headers(struct lws *wsi, http_sess *s)
{
    char v[API_FROM_MAX + 2], ct[128];
    int n = custom_header(wsi, HDR_FROM, v, sizeof v);
    if (n < 0 ||
        (n > 0 && api_publish_set_from(&s->pub, v, (size_t)n, s->pre_buf, sizeof s->pre_buf))) {
        if (n < 0)
            snprintf(s->pre_buf, sizeof s->pre_buf, "X-DW-From: at most %d bytes", API_FROM_MAX);
        return -1;
    }
    if (n == 0)
        api_publish_set_from(&s->pub, API_FROM_DEFAULT, strlen(API_FROM_DEFAULT), s->pre_buf,
                             sizeof s->pre_buf);
    n = custom_header(wsi, HDR_KEY, v, sizeof v);
    if (n < 0 ||
        (n > 0 && api_publish_set_key(&s->pub, v, (size_t)n, s->pre_buf, sizeof s->pre_buf))) {
        if (n < 0)
            snprintf(s->pre_buf, sizeof s->pre_buf, "Idempotency-Key: at most %d characters",
                     API_KEY_MAX);
        return -1;
    }
    int clen = lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_CONTENT_TYPE);
    s->body_json = clen > 0 && (size_t)clen < sizeof ct &&
                   lws_hdr_copy(wsi, ct, sizeof ct, WSI_TOKEN_HTTP_CONTENT_TYPE) > 0 &&
                   !strncasecmp(ct, "application/json", 16) &&
                   (ct[16] == '\0' || ct[16] == ';' || ct[16] == ' ');
    return 0;
}

/* The headers are read: decide what the request gets. */
static int on_http(api_http *h, struct lws *wsi, http_sess *s, const char *path)
{
    char *uri = NULL;
    int uri_len = 0;
    if (s->state != SS_IDLE) h->inflight--; /* (a request before was never finished) */
    sess_reset(s);
    s->wsi = wsi;
    s->start_ns = dw_mono_ns();
    s->state = SS_WAITING; /* (until the paths below say what comes next) */
    h->inflight++;         /* until finish() or the close */

    int method = lws_http_get_uri_and_method(wsi, &uri, &uri_len);
    bool known = true;
    switch (method) {
    case LWSHUMETH_GET: s->op = API_OP_GET; break;
    case LWSHUMETH_POST: s->op = API_OP_POST; break;
    case LWSHUMETH_DELETE: s->op = API_OP_DELETE; break;
    default: known = false; break;
    }

    /* Content-Length, or a body lws cannot frame for us (chunked). */
    char num[32];
    int cl_len = lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_CONTENT_LENGTH);
    bool chunked = lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_TRANSFER_ENCODING) > 0;
    unsigned long long clen = 0;
    bool clen_bad = false;
    if (cl_len > 0) {
        char *end = NULL;
        if (cl_len >= (int)sizeof num ||
            lws_hdr_copy(wsi, num, sizeof num, WSI_TOKEN_HTTP_CONTENT_LENGTH) < 0)
            clen_bad = true;
        else
            clen = strtoull(num, &end, 10);
        if (!clen_bad && (end == num || *end)) clen_bad = true;
    }

    /* Authorization before anything else: nothing about the API shows to a
     * caller without the token. */
    char auth[AUTH_HEADER_MAX + 1];
    int auth_len = lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_AUTHORIZATION);
    api_auth_result ar;
    if (auth_len <= 0)
        ar = api_auth_check(h->cfg.auth, NULL);
    else if (auth_len > AUTH_HEADER_MAX ||
             lws_hdr_copy(wsi, auth, sizeof auth, WSI_TOKEN_HTTP_AUTHORIZATION) < 0)
        ar = h->cfg.auth->enabled ? API_AUTH_WRONG : API_AUTH_OK;
    else
        ar = api_auth_check(h->cfg.auth, auth);

    int route = api_route_parse(path, s->conn_id);
    int rooms =
        route == API_ROUTE_OK ? API_ROOMS_NOT_FOUND : api_rooms_route_parse(path, s->pub.room);
    s->allow = "GET, POST, DELETE";
    if (rooms != API_ROOMS_NOT_FOUND) {
        /* POST /@rooms/{room}/messages: only POST; the rest of the request
         * (sender, key, body) is checked here and after the body. */
        route = API_ROUTE_OK;
        s->allow = "POST";
        known = method == LWSHUMETH_POST;
        if (known) s->op = API_OP_PUBLISH;
    }
    if (ar == API_AUTH_MISSING) {
        s->pre_status = 401;
        s->pre_msg = "Unauthorized: send Authorization: Bearer <token>";
    } else if (ar == API_AUTH_WRONG) {
        s->pre_status = 403;
        s->pre_msg = "Forbidden";
    } else if (route == API_ROUTE_NOT_FOUND) {
        s->pre_status = 404;
        s->pre_msg = "Not Found";
    } else if (!known) {
        s->pre_status = 405;
        s->pre_msg = s->allow[0] == 'P' ? "Method Not Allowed: POST"
                                        : "Method Not Allowed: GET, POST or DELETE";
    } else if (route == API_ROUTE_TOO_LONG) {
        s->pre_status = 410;
        s->pre_msg = "Gone";
    } else if (rooms == API_ROOMS_BAD_ROOM) {
        s->pre_status = 400;
        s->pre_msg = "Bad Request: room: 1-64 of A-Z a-z 0-9 - _ . (a '.' may not start, end or "
                     "repeat)";
    } else if (s->op == API_OP_PUBLISH && publish_headers(wsi, s)) {
        s->pre_status = 400;
        s->pre_msg = s->pre_buf;
    }
    if (!known) s->op = API_OP_COUNT;

    /* Bodies lws does not frame, or that are too large to read (whatever
     * the method), are not read: answer and close the connection after. */
    if (chunked || clen_bad || clen > h->cfg.max_message) {
        s->close_after = true;
        if (s->pre_status)
            respond_error(s, s->pre_status, s->pre_msg, false);
        else if (chunked)
            respond_error(s, 411, "Length Required: send the body with a Content-Length", false);
        else if (clen_bad)
            respond_error(s, 400, "Bad Request: Content-Length", false);
        else
            respond_error(s, 413, "Payload Too Large", false);
        return 0;
    }

    if (clen > 0) {
        /* The rest arrives as LWS_CALLBACK_HTTP_BODY. */
        s->state = SS_BODY;
        s->keep_body = !s->pre_status && (s->op == API_OP_POST || s->op == API_OP_PUBLISH);
        if (s->keep_body) {
            s->body = malloc((size_t)clen);
            if (!s->body) {
                s->close_after = true;
                respond_error(s, 500, "out of memory", false);
                return 0;
            }
            s->body_cap = (size_t)clen;
        }
        return 0;
    }
    /* No body to wait for (lws reports none without a Content-Length). */
    if (s->pre_status)
        respond_error(s, s->pre_status, s->pre_msg, s->pre_status == 410);
    else
        submit(h, s);
    return 0;
}

static int on_body(http_sess *s, const void *in, size_t len)
{
    if (s->state != SS_BODY || !s->keep_body) return 0;
    if (len > s->body_cap - s->body_len) return -1; /* more than Content-Length said */
    memcpy(s->body + s->body_len, in, len);
    s->body_len += len;
    return 0;
}

static void on_body_done(api_http *h, http_sess *s)
{
    if (s->state != SS_BODY) return;
    if (s->pre_status)
        respond_error(s, s->pre_status, s->pre_msg, s->pre_status == 410);
    else
        submit(h, s);
}

static int finish(http_sess *s)
{
    api_http *h = lws_context_user(lws_get_context(s->wsi));
    if (s->state != SS_IDLE) h->inflight--;
    bool close_after = s->close_after;
    free(s->resp);
    s->resp = NULL;
    s->resp_len = 0;
    s->state = SS_IDLE;
    if (close_after) return -1;
    return lws_http_transaction_completed(s->wsi) ? -1 : 0;
}

static int add_header(struct lws *wsi, const char *name, const char *value, unsigned char **p,
                      unsigned char *end)
{
    return lws_add_http_header_by_name(wsi, (const unsigned char *)name,
                                       (const unsigned char *)value, (int)strlen(value), p, end);
}

static int on_writeable(struct lws *wsi, http_sess *s)
{
    if (s->state == SS_HEADERS) {
        unsigned char buf[LWS_PRE + 1024];
        unsigned char *start = buf + LWS_PRE, *p = start, *end = buf + sizeof buf;
        const char *etype = api_error_type(s->status);
        if (s->status == 204) {
            /* No body and, by RFC 9110, no Content-Length: the common
             * helper would add "connection: close" for want of a length. */
            if (lws_add_http_header_status(wsi, 204, &p, end)) return -1;
        } else if (lws_add_http_common_headers(wsi, s->status, "application/json", s->resp_len, &p,
                                               end)) {
            return -1;
        }
        if (etype && add_header(wsi, "x-amzn-ErrorType:", etype, &p, end)) return -1;
        if (s->status == 401 && add_header(wsi, "WWW-Authenticate:", "Bearer", &p, end)) return -1;
        if (s->status == 405 &&
            add_header(wsi, "Allow:", s->allow ? s->allow : "GET, POST, DELETE", &p, end))
            return -1;
        if (lws_finalize_write_http_header(wsi, start, &p, end)) return -1;
        if (!s->resp_len) return finish(s);
        s->state = SS_PAYLOAD;
        lws_callback_on_writable(wsi);
        return 0;
    }
    if (s->state == SS_PAYLOAD) {
        unsigned char *buf = malloc(LWS_PRE + s->resp_len);
        if (!buf) return -1;
        memcpy(buf + LWS_PRE, s->resp, s->resp_len);
        int n = lws_write(wsi, buf + LWS_PRE, s->resp_len, LWS_WRITE_HTTP_FINAL);
        free(buf);
        if (n < (int)s->resp_len) return -1;
        return finish(s);
    }
    return 0;
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                    size_t len)
{
    http_sess *s = user;
    api_http *h = lws_context_user(lws_get_context(wsi));
    switch (reason) {
    case LWS_CALLBACK_HTTP: return on_http(h, wsi, s, in);
    case LWS_CALLBACK_HTTP_BODY: return on_body(s, in, len);
    case LWS_CALLBACK_HTTP_BODY_COMPLETION: on_body_done(h, s); return 0;
    case LWS_CALLBACK_HTTP_WRITEABLE: return on_writeable(wsi, s);
    case LWS_CALLBACK_CLOSED_HTTP:
        if (s) {
            if (s->state != SS_IDLE && h) h->inflight--;
            s->state = SS_IDLE;
            /* The job finishes without us: take_done frees it. */
            if (s->job) s->job->owner = NULL;
            s->job = NULL;
            free(s->body);
            free(s->resp);
            s->body = NULL;
            s->resp = NULL;
            api_publish_req_clear(&s->pub);
        }
        return 0;
    case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
        if (h) take_done(h);
        return 0;
    default: return lws_callback_http_dummy(wsi, reason, user, in, len);
    }
}

static const struct lws_protocols protocols[] = {
    {"http", callback, sizeof(http_sess), 0, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

static void tick(lws_sorted_usec_list_t *sul)
{
    api_http *h = lws_container_of(sul, api_http, tick);
    lws_sul_schedule(h->ctx, 0, &h->tick, tick, h->stopping ? FINISH_TICK_US : TICK_US);
}

static void lws_log_bridge(int level, const char *line)
{
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        n--;
    dw_log(level == LLL_ERR ? DW_LOG_ERROR : DW_LOG_WARN, "lws", "detail=\"%.*s\"", (int)n, line);
}

int api_http_start(api_http **out, const api_http_config *cfg)
{
    api_http *h = calloc(1, sizeof *h);
    *out = NULL;
    if (!h) return -1;
    h->cfg = *cfg;
    pthread_mutex_init(&h->lock, NULL);

    lws_set_log_level(LLL_ERR | LLL_WARN, lws_log_bridge);
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.port = cfg->port;
    info.iface = cfg->host && *cfg->host ? cfg->host : NULL;
    info.protocols = protocols;
    info.user = h;
    /* The URL limit (4096) plus the other headers. */
    info.max_http_header_data = 8192;
    if (!info.iface || !strchr(info.iface, ':')) info.options = LWS_SERVER_OPTION_DISABLE_IPV6;
    h->ctx = lws_create_context(&info);
    if (!h->ctx) {
        DW_ERROR("cannot listen", "host=%s port=%d", cfg->host, cfg->port);
        api_http_destroy(h);
        return -1;
    }
    lws_sul_schedule(h->ctx, 0, &h->tick, tick, TICK_US);
    *out = h;
    return 0;
}

int api_http_service(api_http *h)
{
    return lws_service(h->ctx, 0) < 0 ? -1 : 0;
}

size_t api_http_finish(api_http *h, int64_t ms)
{
    if (!h) return 0;
    h->stopping = true;
    int64_t now = dw_mono_ns(), until = now + ms * 1000000;
    /* Requests already on the wire (sent, not yet read) get their 503 too:
     * the loop runs a little while also with nothing in flight. */
    int64_t grace = now + (ms < FINISH_GRACE_MS ? ms : FINISH_GRACE_MS) * 1000000;
    take_done(h); /* (answers posted while the loop did not run) */
    /* The tick, now every 10 ms, bounds each pass. */
    lws_sul_schedule(h->ctx, 0, &h->tick, tick, FINISH_TICK_US);
    while ((h->inflight || dw_mono_ns() < grace) && dw_mono_ns() < until)
        if (lws_service(h->ctx, 0) < 0) break;
    return h->inflight;
}

void api_http_destroy(api_http *h)
{
    if (!h) return;
    if (h->ctx) {
        lws_sul_cancel(&h->tick);
        lws_context_destroy(h->ctx);
    }
    /* Answers nobody collected (the pool has stopped: no more come). */
    api_job *job = h->done;
    while (job) {
        api_job *next = job->next;
        api_job_free(job);
        job = next;
    }
    pthread_mutex_destroy(&h->lock);
    free(h);
}
