/* edge: holds the WebSocket connections (the API Gateway of DynamoWave). */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "dw/log.h"
#include "dw/service.h"
#include "edge.h"
#include "integ.h"

#define F(name, type, field, def, min, max, help)                                                  \
    {                                                                                              \
        name, type, offsetof(edge_config, field), def, min, max, help                              \
    }

static const dw_cfg_field fields[] = {
    DW_SERVICE_ROW_NATS_URL(edge_config, svc),
    F("HOST", DW_CFG_STR, host, "", 0, 0, "address to listen on (empty: all)"),
    F("PORT", DW_CFG_INT, port, "8080", 1, 65535, "WebSocket and HTTP port"),
    F("EDGE_ID", DW_CFG_STR, edge_id, "", 0, 0,
      "this edge's id, 16 chars [A-Za-z0-9_-] (empty: random at each start)"),
    F("MAX_MESSAGE", DW_CFG_INT, max_message, "131072", 1, 16 * 1024 * 1024,
      "largest message a client may send, bytes (close 1009 above)"),
    F("MAX_PENDING_RX", DW_CFG_INT, max_pending_rx, "32", 1, 10000,
      "messages held per connection until its connect event is durable"),
    F("PUBLISH_TIMEOUT_MS", DW_CFG_INT, publish_timeout_ms, "5000", 100, 600000,
      "how long to wait for a JetStream ack"),
    F("PUBLISH_MAX_PENDING", DW_CFG_INT, publish_max_pending, "65536", 1, 10000000,
      "JetStream publishes in flight before new ones are refused"),
    F("SHUTDOWN_EDGE_DOWN", DW_CFG_BOOL, shutdown_edge_down, "1", 0, 1,
      "on stop, one edge_down event for all connections instead of a disconnect each "
      "(the NATS user must be allowed to publish dw.conn.edge_down; else one by one)"),
    F("SHUTDOWN_WAIT_MS", DW_CFG_INT, shutdown_wait_ms, "3000", 100, 60000,
      "on stop, how long to wait for the edge_down event to be stored (at most; the whole stop "
      "keeps to SHUTDOWN_TIMEOUT_MS)"),
    F("EVENT_LOOP", DW_CFG_STR, event_loop, "poll", 0, 0,
      "socket event loop: poll (lws's own poll(): O(connections) per pass), or libev (epoll: "
      "~40% less CPU per new connection, ~20% more per delivery)"),
    F("HEARTBEAT_MS", DW_CFG_INT, heartbeat_ms, "2000", 100, 60000,
      "how often the edge tells the dispatcher it is alive"),
    F("DEDUP_WINDOW", DW_CFG_INT, dedup_window, "65536", 1, 10000000,
      "recent message sequences remembered to drop redeliveries"),
    F("WRITE_COALESCE", DW_CFG_INT, write_coalesce, "65536", 4096, 16 * 1024 * 1024,
      "bytes of queued frames written to a socket in one call"),
    F("MAX_ROOMS", DW_CFG_INT, max_rooms, "128", 1, 10000, "rooms one v1 connection may join"),
    F("RESUME_MAX", DW_CFG_INT, resume_max, "10000", 0, 1000000,
      "missed messages replayed on a v1 resume (more: recovered=false)"),
    F("JOB_THREADS", DW_CFG_INT, job_threads, "2", 1, 64,
      "threads for v1 joins, history and presence (bus round trips)"),
    F("MAX_PENDING_ACKS", DW_CFG_INT, max_pending_acks, "1024", 1, 1000000,
      "v1 messages per connection awaiting their JetStream ack"),
    F("WEB_DIR", DW_CFG_STR, web_dir, DW_WEB_DIR_DEFAULT, 0, 0, "directory of the chat page"),
    F("TLS_CERT", DW_CFG_STR, tls_cert, "", 0, 0, "PEM certificate: serve wss:// and https://"),
    F("TLS_KEY", DW_CFG_STR, tls_key, "", 0, 0, "PEM private key of TLS_CERT"),
    F("REQUIRE_TLS", DW_CFG_BOOL, require_tls, "0", 0, 1,
      "refuse plain ws:// upgrades with 426 (health probes stay plain)"),
    F("AUTH", DW_CFG_STR, auth, "none", 0, 0,
      "none, or jwt: require a JWT (HS256, RS256 or ES256) to connect"),
    F("JWT_SECRET_FILE", DW_CFG_STR, jwt_secret_file, "", 0, 0, "HS256 secret (>= 32 bytes)"),
    F("JWT_JWKS_FILE", DW_CFG_STR, jwt_jwks_file, "", 0, 0,
      "JWKS file with the public keys of RS256/ES256 tokens; reread on SIGHUP"),
    F("JWT_SECRET_PREV_FILE", DW_CFG_STR, jwt_secret_prev_file, "", 0, 0,
      "the previous secret, still accepted during a rotation"),
    F("JWT_AUDIENCE", DW_CFG_STR, jwt_audience, "", 0, 0,
      "required aud claim (empty: not checked)"),
    F("JWT_LEEWAY_S", DW_CFG_INT, jwt_leeway_s, "30", 0, 3600, "clock skew allowed on exp and nbf"),
    F("MSG_RATE", DW_CFG_INT, msg_rate, "10", 0, 1000000000,
      "messages/s per connection (0: unlimited)"),
    F("MSG_BURST", DW_CFG_INT, msg_burst, "20", 1, 1000000000, "burst per connection"),
    F("EDGE_MSG_RATE", DW_CFG_INT, edge_msg_rate, "10000", 0, 1000000000,
      "inbound messages/s for the whole edge (0: unlimited)"),
    F("EDGE_MSG_BURST", DW_CFG_INT, edge_msg_burst, "5000", 1, 1000000000, "burst for the edge"),
    F("EDGE_CONN_RATE", DW_CFG_INT, edge_conn_rate, "500", 0, 1000000000,
      "new connections/s for the whole edge (0: unlimited)"),
    F("EDGE_CONN_BURST", DW_CFG_INT, edge_conn_burst, "500", 1, 1000000000,
      "burst of new connections"),
    F("IP_MAX_CONNS", DW_CFG_INT, ip_max_conns, "100", 0, 1000000,
      "open connections per source IP (0: unlimited)"),
    F("IP_CONN_RATE", DW_CFG_INT, ip_conn_rate, "20", 0, 1000000,
      "new connections/s per source IP (0: unlimited)"),
    F("IP_CONN_BURST", DW_CFG_INT, ip_conn_burst, "50", 1, 1000000, "burst per source IP"),
    F("STRIKES", DW_CFG_INT, strikes, "5", 1, 1000,
      "rate-limit warnings (1 s apart, within 60 s) before a 1008 close"),
    F("MAX_FRAME", DW_CFG_INT, max_frame, "32768", 125, 16 * 1024 * 1024,
      "largest WebSocket frame, bytes (close 1009 above)"),
    F("MAX_URL", DW_CFG_INT, max_url, "4096", 64, 65536, "longest request URL, bytes (414)"),
    F("MAX_HEADER", DW_CFG_INT, max_header, "8192", 1024, 65535, "all request headers, bytes"),
    F("IDLE_TIMEOUT_S", DW_CFG_INT, idle_timeout_s, "600", 0, 86400,
      "close after this long without a frame from the client (0: never)"),
    F("MAX_LIFETIME_S", DW_CFG_INT, max_lifetime_s, "7200", 0, 604800,
      "close connections older than this, 1001 (0: never)"),
    F("HANDSHAKE_TIMEOUT_S", DW_CFG_INT, handshake_timeout_s, "10", 1, 300,
      "time allowed for the HTTP request and upgrade (slowloris)"),
    F("MAX_OUTBOUND", DW_CFG_INT, max_outbound, "1048576", 4096, 1073741824,
      "bytes queued to one slow reader before it is closed"),
    F("LINGER_MS", DW_CFG_INT, linger_ms, "2000", 0, 60000,
      "after a close frame and libwebsockets' wait for the answer, keep reading and discarding "
      "for up to this long before closing TCP (0: no lingering; poll loop only)"),
    F("LINGER_BYTES", DW_CFG_INT, linger_bytes, "1048576", 0, 1073741824,
      "the most a lingering client may send before its socket is closed anyway"),
    F("LINGER_MAX", DW_CFG_INT, linger_max, "1024", 0, 100000,
      "sockets lingering at once; beyond, closing sockets close at once"),
    F("ORIGINS", DW_CFG_STR, origins, "", 0, 0,
      "allowed Origin values, comma-separated (empty: any)"),
    F("DENY_CIDRS", DW_CFG_STR, deny_cidrs, "", 0, 0,
      "source ranges refused, comma-separated CIDRs"),
    F("AUTHORIZER", DW_CFG_STR, authorizer, "", 0, 0,
      "connect authorizer: NATS subject under dw.authz. asked before each upgrade "
      "(docs/integrations.md; empty: none)"),
    F("AUTHORIZER_TIMEOUT_MS", DW_CFG_INT, authorizer_timeout_ms, "2000", 10, 60000,
      "how long to wait for the authorizer; then the upgrade is refused with 503"),
    F("AUTHORIZER_MAX_PENDING", DW_CFG_INT, authorizer_max_pending, "1024", 1, 100000,
      "authorizer requests in flight at once; beyond: 503 (and at most 4x this + 64 sockets "
      "still sending their request head)"),
    F("AUTHORIZER_HEADERS", DW_CFG_STR, authorizer_headers,
      "authorization,cookie,origin,host,user-agent,sec-websocket-protocol,x-forwarded-for,"
      "x-forwarded-proto,x-request-id",
      0, 0, "request headers forwarded to the authorizer, comma-separated (docs/security.md)"),
    F("ROUTES", DW_CFG_STR, routes, "", 0, 0,
      "routes to your workers, comma-separated action:mode, mode sync (NATS request to "
      "dw.rpc.<action>) or async (stored in DW_ROUTE, dw.route.<action>); e.g. "
      "echo:sync,audit:async (docs/integrations.md)"),
    F("ROUTE_TIMEOUT_MS", DW_CFG_INT, route_timeout_ms, "5000", 10, 600000,
      "how long a sync route waits for its worker's reply"),
    F("ROUTE_MAX_INFLIGHT", DW_CFG_INT, route_max_inflight, "16", 1, 10000,
      "route requests per connection awaiting their answer (more: rate-limit error)"),
    F("ROUTE_MAX_DELIVER", DW_CFG_INT, route_max_deliver, "5", 1, 64,
      "async routes: attempts per frame before it goes to DW_DLQ"),
    F("ROUTE_BACKOFF_MS", DW_CFG_INT, route_backoff_ms, "30000", 100, 3600000,
      "async routes: a worker has this long to ack (or send in-progress) before a redelivery; "
      "each further redelivery waits twice as long (at most 10 min)"),
    DW_SERVICE_ROW_LOG_LEVEL(edge_config, svc),
    DW_SERVICE_ROW_SHUTDOWN_TIMEOUT(edge_config, svc),
};
#define NFIELDS (sizeof fields / sizeof fields[0])

static int init(dw_service *s)
{
    edge *e = s->arg;
    const edge_config *c = e->cfg;
    if (c->edge_id[0]) {
        if (!dw_id_valid(c->edge_id, strlen(c->edge_id))) {
            fprintf(stderr, "edge: DW_EDGE_ID must be 16 characters of [A-Za-z0-9_-]\n");
            return 2;
        }
        memcpy(e->edge_id, c->edge_id, DW_ID_LEN + 1);
    } else if (dw_id_random(e->edge_id)) {
        DW_ERROR("csprng failed", "%s", "");
        return 1;
    }
    snprintf(s->instance, sizeof s->instance, "%s", e->edge_id);
    if (edge_init(e)) return 1;
    integ_config ic = {
        .routes = c->routes,
        .timeout_ms = c->route_timeout_ms,
        .max_inflight = c->route_max_inflight,
        .max_deliver = c->route_max_deliver,
        .backoff_ms = c->route_backoff_ms,
        .publish_timeout_ms = c->publish_timeout_ms,
        .edge_id = e->edge_id,
        .mailbox = &e->mailbox,
    };
    char err[256];
    if (integ_create(&e->integ, &ic, err, sizeof err)) {
        fprintf(stderr, "edge: %s\n", err);
        return 2;
    }
    return 0;
}

static int run(dw_service *s)
{
    return edge_run(s->arg, s->nc) ? 1 : 0;
}

static void cleanup(dw_service *s)
{
    edge_free(s->arg);
}

static const char summary[] = "DynamoWave edge: holds the WebSocket connections, routes frames on "
                              "\"action\", publishes to NATS JetStream and writes deliveries.";

int main(int argc, char **argv)
{
    static edge_config cfg;
    static edge e;
    e.cfg = &cfg;
    /* init, setup, run, stop, cleanup, ready */
    static const dw_service_hooks hooks = {init, NULL, run, NULL, cleanup, edge_ready};
    dw_service s = DW_SERVICE("edge", summary, fields, &cfg, &hooks, &e);
    return dw_service_main(&s, argc, argv);
}
