/* dwbench-baseline-ws: the no-bus baseline. One libwebsockets process that
 * takes the AWS sample's {"action":"sendmessage","data":...} and writes data
 * to every connection, through the edge's own write path (edge_core: route
 * parsing, one shared frame per message, per-connection queues of frame
 * references, every queued frame for a socket in one lws_write). What the
 * edge reaches divided by what this reaches is what the bus costs. */
#include <libwebsockets.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dw/config.h"
#include "dw/log.h"
#include "dw/util.h"
#include "frame.h"
#include "outbox.h"
#include "routes.h"

typedef struct bl_config {
    char *host;
    int64_t port;
    int64_t max_message;
    int64_t write_coalesce;
    char *event_lib;
    int validity;
    int64_t rx_buffer;
    char *log_level;
} bl_config;

#define F(name, type, field, def, min, max, help)                                                  \
    {                                                                                              \
        name, type, offsetof(bl_config, field), def, min, max, help                                \
    }

static const dw_cfg_field fields[] = {
    F("HOST", DW_CFG_STR, host, "127.0.0.1", 0, 0, "address to listen on"),
    F("PORT", DW_CFG_INT, port, "8090", 1, 65535, "WebSocket port"),
    F("MAX_MESSAGE", DW_CFG_INT, max_message, "131072", 1, 16 * 1024 * 1024,
      "largest message a client may send, bytes"),
    F("WRITE_COALESCE", DW_CFG_INT, write_coalesce, "65536", 4096, 16 * 1024 * 1024,
      "bytes of queued frames written to a socket in one call (as the edge)"),
    F("EVENT_LIB", DW_CFG_STR, event_lib, "poll", 0, 0,
      "lws event loop: poll (lws's own, as the edge), ev (libev: epoll) or uv (libuv)"),
    F("VALIDITY", DW_CFG_BOOL, validity, "0", 0, 0,
      "keep lws's default idle-validity timer per connection (0: none, as the edge; lws 4.1 "
      "keeps timers in one sorted list, so each one costs O(connections) to arm)"),
    F("RX_BUFFER", DW_CFG_INT, rx_buffer, "1024", 0, 1024 * 1024,
      "lws per-connection receive buffer (the protocol's rx_buffer_size; the edge uses 1024)"),
    F("LOG_LEVEL", DW_CFG_STR, log_level, "info", 0, 0, "debug, info, warn or error"),
};
#define NFIELDS (sizeof fields / sizeof fields[0])

typedef struct bl_session {
    struct lws *wsi;
    edge_outbox out;
    uint32_t idx; /* position in the server's list; UINT32_MAX when not in it */
    bool want_write;
    bool closing;
    char *rx; /* reassembly of a fragmented message */
    size_t rx_len;
} bl_session;

typedef struct bl_server {
    const bl_config *cfg;
    struct lws_context *ctx;
    bl_session **sessions;
    uint32_t count, cap;
    unsigned char *wbuf; /* LWS_PRE + write_coalesce */
    lws_sorted_usec_list_t tick;
    int evlib; /* running on libev/libuv instead of lws's poll() */
    uint64_t msgs_in, deliveries, writes;
} bl_server;

static bl_server *the_server;

static void want_write(bl_session *s)
{
    if (!s->want_write) {
        s->want_write = true;
        lws_callback_on_writable(s->wsi);
    }
}

static void enqueue(bl_session *s, edge_frame *f)
{
    if (s->closing) return;
    if (outbox_push(&s->out, f)) {
        s->closing = true;
        want_write(s);
        return;
    }
    want_write(s);
}

static void broadcast(bl_server *sv, const char *data, size_t len)
{
    /* One frame for everyone; each queue holds a reference. */
    edge_frame *f = frame_text(data, len);
    if (!f) return;
    for (uint32_t i = 0; i < sv->count; i++)
        enqueue(sv->sessions[i], f);
    sv->deliveries += sv->count;
    frame_unref(f);
}

static void on_message(bl_server *sv, bl_session *s, const char *buf, size_t len)
{
    edge_request req;
    sv->msgs_in++;
    if (routes_parse(buf, len, &req)) {
        s->closing = true;
        want_write(s);
        return;
    }
    if (req.route == ROUTE_SENDMESSAGE) {
        broadcast(sv, req.data, req.data_len);
    } else {
        static const char reply[] = "Use the sendmessage route to send a message.";
        edge_frame *f = frame_text(reply, sizeof reply - 1);
        if (f) {
            enqueue(s, f);
            frame_unref(f);
        }
    }
    routes_request_free(&req);
}

static int on_receive(bl_server *sv, bl_session *s, const void *in, size_t len)
{
    bool first = lws_is_first_fragment(s->wsi),
         final = lws_is_final_fragment(s->wsi) && !lws_remaining_packet_payload(s->wsi);
    if (first && final && !s->rx) {
        on_message(sv, s, in, len); /* the common case: no copy */
        return 0;
    }
    if (first) s->rx_len = 0;
    if (s->rx_len + len > (size_t)sv->cfg->max_message) return -1;
    if (!s->rx && !(s->rx = malloc((size_t)sv->cfg->max_message))) return -1;
    memcpy(s->rx + s->rx_len, in, len);
    s->rx_len += len;
    if (final) {
        on_message(sv, s, s->rx, s->rx_len);
        free(s->rx);
        s->rx = NULL;
        s->rx_len = 0;
    }
    return 0;
}

static int on_writeable(bl_server *sv, bl_session *s)
{
    s->want_write = false;
    if (s->closing) return -1;
    edge_frame *big;
    size_t n = outbox_fill(&s->out, sv->wbuf + LWS_PRE, (size_t)sv->cfg->write_coalesce, &big);
    int w;
    if (big) {
        w = lws_write(s->wsi, big->bytes, big->len, LWS_WRITE_RAW);
        outbox_pop(&s->out);
    } else if (n) {
        w = lws_write(s->wsi, sv->wbuf + LWS_PRE, n, LWS_WRITE_RAW);
    } else {
        return 0;
    }
    if (w < 0) return -1;
    sv->writes++;
    if (s->out.count) want_write(s);
    return 0;
}

static int on_established(bl_server *sv, bl_session *s, struct lws *wsi)
{
    memset(s, 0, sizeof *s);
    s->wsi = wsi;
    s->idx = UINT32_MAX;
    if (sv->count == sv->cap) {
        uint32_t nc = sv->cap ? sv->cap * 2 : 1024;
        bl_session **n = realloc(sv->sessions, nc * sizeof *n);
        if (!n) return -1;
        sv->sessions = n;
        sv->cap = nc;
    }
    s->idx = sv->count;
    sv->sessions[sv->count++] = s;
    return 0;
}

static void on_closed(bl_server *sv, bl_session *s)
{
    if (s->idx != UINT32_MAX && s->idx < sv->count && sv->sessions[s->idx] == s) {
        bl_session *last = sv->sessions[--sv->count];
        sv->sessions[s->idx] = last;
        last->idx = s->idx;
    }
    s->idx = UINT32_MAX;
    outbox_clear(&s->out);
    free(s->rx);
    s->rx = NULL;
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                    size_t len)
{
    bl_server *sv = the_server;
    bl_session *s = user;
    switch (reason) {
    case LWS_CALLBACK_ESTABLISHED: return on_established(sv, s, wsi);
    case LWS_CALLBACK_RECEIVE: return on_receive(sv, s, in, len);
    case LWS_CALLBACK_SERVER_WRITEABLE: return on_writeable(sv, s);
    case LWS_CALLBACK_CLOSED: on_closed(sv, s); return 0;
    default: return lws_callback_http_dummy(wsi, reason, user, in, len);
    }
}

/* Not const: rx_buffer_size comes from the config (by default the edge's,
 * so that RSS compares too), and so does tx_packet_size. */
static struct lws_protocols protocols[] = {
    {"dwbench-baseline", callback, sizeof(bl_session), 1024, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

/* Bounds the loop's sleep so that a stop request is seen promptly. */
static void tick(lws_sorted_usec_list_t *sul)
{
    bl_server *sv = (bl_server *)(void *)((char *)sul - offsetof(bl_server, tick));
    if (dw_stop && sv->evlib) {
        /* The event library's loop only ends through its SIGINT watcher
         * (see on_lws_signal); route SIGTERM there too. */
        raise(SIGINT);
        return;
    }
    lws_sul_schedule(sv->ctx, 0, &sv->tick, tick, 100 * 1000);
}

/* With an event library, lws watches SIGINT in the loop and calls this. */
static void on_lws_signal(void *handle, int signum)
{
    dw_stop = 1;
    if (the_server && the_server->ctx) lws_context_destroy(the_server->ctx);
}

static void lws_log_bridge(int level, const char *line)
{
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        n--;
    dw_log(level == LLL_ERR ? DW_LOG_ERROR : DW_LOG_WARN, "lws", "detail=\"%.*s\"", (int)n, line);
}

int main(int argc, char **argv)
{
    bl_config cfg;
    memset(&cfg, 0, sizeof cfg);
    int rc = dw_config_load(&cfg, fields, NFIELDS, argc, argv, "dwbench-baseline-ws",
                            "The no-bus baseline: a single libwebsockets process that "
                            "broadcasts every sendmessage to every connection through the "
                            "edge's coalesced write path.");
    if (rc) {
        dw_config_free(&cfg, fields, NFIELDS);
        return rc > 0 ? 0 : 2;
    }
    dw_log_init("baseline-ws", cfg.log_level);
    long nofile = dw_raise_nofile();
    dw_signals_install(NULL, NULL);

    bl_server sv;
    memset(&sv, 0, sizeof sv);
    sv.cfg = &cfg;
    the_server = &sv;
    int ret = 1;
    sv.wbuf = malloc(LWS_PRE + (size_t)cfg.write_coalesce);
    if (!sv.wbuf) goto out;

    lws_set_log_level(LLL_ERR | LLL_WARN, lws_log_bridge);
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.port = (int)cfg.port;
    info.iface = cfg.host[0] ? cfg.host : NULL;
    protocols[0].rx_buffer_size = (size_t)cfg.rx_buffer;
    /* lws 4.1 cuts every send to tx_packet_size, and when that is 0 to
     * rx_buffer_size: a 1 KB receive buffer would split one coalesced write
     * into many send() calls (and the reader into as many reads). */
    protocols[0].tx_packet_size = (size_t)cfg.write_coalesce;
    info.protocols = protocols;
    info.options = LWS_SERVER_OPTION_DISABLE_IPV6;
    info.pt_serv_buf_size = 32 * 1024;
    info.max_http_header_data = 4096;
    if (!strcmp(cfg.event_lib, "ev") || !strcmp(cfg.event_lib, "uv")) {
        info.options |= cfg.event_lib[0] == 'e' ? LWS_SERVER_OPTION_LIBEV : LWS_SERVER_OPTION_LIBUV;
        info.signal_cb = on_lws_signal;
        info.pcontext = &sv.ctx;
        sv.evlib = 1;
    } else if (strcmp(cfg.event_lib, "poll")) {
        fprintf(stderr, "dwbench-baseline-ws: --event-lib is poll, ev or uv\n");
        goto out;
    }
    /* No ping/hangup timers: a policy whose hangup is 0 arms none. */
    static const lws_retry_bo_t no_validity = {0};
    if (!cfg.validity) info.retry_and_idle_policy = &no_validity;
    sv.ctx = lws_create_context(&info);
    if (!sv.ctx) {
        DW_ERROR("cannot listen", "host=%s port=%lld", cfg.host, (long long)cfg.port);
        goto out;
    }
    lws_sul_schedule(sv.ctx, 0, &sv.tick, tick, 100 * 1000);
    DW_INFO("listening", "host=%s port=%lld nofile=%ld", cfg.host, (long long)cfg.port, nofile);
    /* With an event library lws_service() runs the loop until the context
     * is destroyed (on_lws_signal); with poll() it is one pass. */
    while (!dw_stop && sv.ctx)
        if (lws_service(sv.ctx, 0) < 0 || sv.evlib) break;
    DW_INFO("stopping", "connections=%u msgs_in=%llu deliveries=%llu writes=%llu", sv.count,
            (unsigned long long)sv.msgs_in, (unsigned long long)sv.deliveries,
            (unsigned long long)sv.writes);
    ret = 0;
out:
    if (sv.ctx) {
        lws_sul_cancel(&sv.tick);
        lws_context_destroy(sv.ctx);
    }
    the_server = NULL;
    free(sv.sessions);
    free(sv.wbuf);
    dw_config_free(&cfg, fields, NFIELDS);
    return ret;
}
