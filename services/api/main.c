/* api: the management API (API Gateway's management endpoint for
 * DynamoWave). POST/GET/DELETE /@connections/{id} and POST
 * /@rooms/{room}/messages over HTTP on its own port, the same over NATS
 * (dw.api.connections.*, dw.api.rooms.publish), and dw.ops.ping.
 * It owns no state: the registry says which edge holds a connection, the
 * edge touches the socket; a room message goes to DW_MSG like a client's. */
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "auth.h"
#include "counters.h"
#include "dw/bus.h"
#include "dw/config.h"
#include "dw/log.h"
#include "dw/metrics.h"
#include "dw/ping.h"
#include "dw/status.h"
#include "dw/util.h"
#include "http.h"
#include "ops.h"
#include "pool.h"
#include "subjects.h"

typedef struct api_config {
    char *nats_url;
    char *mgmt_host;
    int64_t mgmt_port;
    char *admin_token_file;
    int64_t max_message;
    int64_t workers;
    int64_t max_queue;
    int64_t registry_timeout_ms;
    int64_t edge_timeout_ms;
    int64_t publish_timeout_ms;
    char *status_host;
    int64_t status_port;
    char *log_level;
} api_config;

#define F(name, type, field, def, min, max, help)                                                  \
    {                                                                                              \
        name, type, offsetof(api_config, field), def, min, max, help                               \
    }

static const dw_cfg_field fields[] = {
    F("NATS_URL", DW_CFG_STR, nats_url, "nats://127.0.0.1:4222", 0, 0,
      "NATS server URLs, comma-separated: every node of a cluster"),
    F("MGMT_HOST", DW_CFG_STR, mgmt_host, "127.0.0.1", 0, 0,
      "address of the management listener (empty: all); without ADMIN_TOKEN_FILE only a "
      "loopback address is accepted"),
    F("MGMT_PORT", DW_CFG_INT, mgmt_port, "8081", 1, 65535,
      "management listener port (never the public WebSocket port)"),
    F("ADMIN_TOKEN_FILE", DW_CFG_STR, admin_token_file, "", 0, 0,
      "file holding the bearer token requests must carry (empty: no token, loopback only)"),
    F("MAX_MESSAGE", DW_CFG_INT, max_message, "131072", 1, 16 * 1024 * 1024,
      "largest message POST (a connection or a room) accepts, bytes (413 above)"),
    F("WORKERS", DW_CFG_INT, workers, "8", 1, 256, "operations run at the same time"),
    F("MAX_QUEUE", DW_CFG_INT, max_queue, "4096", 1, 1000000,
      "operations waiting for a worker before new ones get 503"),
    F("REGISTRY_TIMEOUT_MS", DW_CFG_INT, registry_timeout_ms, "1000", 10, 60000,
      "how long to wait for the registry to find a connection"),
    F("EDGE_TIMEOUT_MS", DW_CFG_INT, edge_timeout_ms, "1000", 10, 60000,
      "how long to wait for the edge holding it (503 after)"),
    F("PUBLISH_TIMEOUT_MS", DW_CFG_INT, publish_timeout_ms, "1000", 10, 60000,
      "how long to wait for JetStream to take a room message or the disconnect of a gone "
      "connection"),
    F("STATUS_HOST", DW_CFG_STR, status_host, "127.0.0.1", 0, 0,
      "address of the status port (empty: every address; containers set 0.0.0.0)"),
    F("STATUS_PORT", DW_CFG_INT, status_port, "9091", 0, 65535,
      "port of /healthz /readyz /metrics (0: none)"),
    F("LOG_LEVEL", DW_CFG_STR, log_level, "info", 0, 0, "debug, info, warn or error"),
};
#define NFIELDS (sizeof fields / sizeof fields[0])

typedef struct api_state {
    api_subjects *subjects;
    atomic_bool listening;
} api_state;

static bool api_ready(void *arg)
{
    api_state *st = arg;
    return atomic_load(&st->listening) && api_subjects_ready(st->subjects);
}

int main(int argc, char **argv)
{
    api_config cfg;
    api_auth auth;
    api_state st;
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    api_pool *pool = NULL;
    api_http *http = NULL;
    dw_ping *ping = NULL;
    dw_status *status = NULL;
    api_ops ops;
    char err[512];
    char instance[DW_ID_LEN + 1] = "";
    int rc = 1;

    memset(&cfg, 0, sizeof cfg);
    memset(&auth, 0, sizeof auth);
    memset(&st, 0, sizeof st);
    int lr = dw_config_load(&cfg, fields, NFIELDS, argc, argv, "api",
                            "DynamoWave api: the management API. POST, GET and DELETE "
                            "/@connections/{id} over HTTP (AWS's shape) and over NATS "
                            "(dw.api.connections.post|get|delete); POST /@rooms/{room}/messages "
                            "and dw.api.rooms.publish (docs/integrations.md).");
    if (lr) {
        dw_config_free(&cfg, fields, NFIELDS);
        return lr > 0 ? 0 : 2;
    }
    dw_log_init("api", cfg.log_level);

    if (api_auth_load(&auth, cfg.admin_token_file, err, sizeof err)) {
        fprintf(stderr, "api: ADMIN_TOKEN_FILE: %s\n", err);
        rc = 2;
        goto done;
    }
    /* Without a token, whoever reaches the port may post to and close any
     * connection: only this machine may reach it then. */
    if (!auth.enabled && !api_host_is_loopback(cfg.mgmt_host)) {
        fprintf(stderr,
                "api: refusing to listen on '%s' without a token: set DW_ADMIN_TOKEN_FILE, or "
                "DW_MGMT_HOST to a loopback address\n",
                cfg.mgmt_host);
        rc = 2;
        goto done;
    }
    if (dw_id_random(instance)) {
        DW_ERROR("csprng failed", "%s", "");
        goto done;
    }
    long nofile = dw_raise_nofile();
    dw_signals_install(NULL, NULL);
    api_counters_init();
    DW_INFO("starting", "instance=%s version=%s nofile=%ld auth=%s", instance, DW_VERSION, nofile,
            auth.enabled ? "bearer" : "off");

    natsStatus s = dw_bus_connect(&nc, cfg.nats_url, "api");
    if (s != NATS_OK && s != NATS_NOT_YET_CONNECTED) {
        DW_ERROR("nats connect failed", "url=%s status=%s", cfg.nats_url, natsStatus_GetText(s));
        goto done;
    }
    if (natsConnection_JetStream(&js, nc, NULL) != NATS_OK) goto done;

    memset(&ops, 0, sizeof ops);
    ops.nc = nc;
    ops.js = js;
    ops.cfg.registry_timeout_ms = cfg.registry_timeout_ms;
    ops.cfg.edge_timeout_ms = cfg.edge_timeout_ms;
    ops.cfg.publish_timeout_ms = cfg.publish_timeout_ms;
    ops.cfg.max_message = (size_t)cfg.max_message;
    if (api_pool_start(&pool, &ops, (int)cfg.workers, (size_t)cfg.max_queue)) goto done;
    if (api_subjects_start(&st.subjects, nc, pool, (size_t)cfg.max_message)) goto done;
    if (dw_ping_start(&ping, nc, "api", instance, api_ready, &st)) goto done;

    api_http_config hc = {
        .host = cfg.mgmt_host,
        .port = (int)cfg.mgmt_port,
        .max_message = (size_t)cfg.max_message,
        .auth = &auth,
        .pool = pool,
    };
    if (api_http_start(&http, &hc)) goto done;
    atomic_store(&st.listening, true);
    if (dw_status_start(&status, cfg.status_host, (int)cfg.status_port, api_ready, &st)) goto done;
    DW_INFO("api listening", "host=%s port=%lld status_port=%lld", cfg.mgmt_host,
            (long long)cfg.mgmt_port, (long long)cfg.status_port);

    bool was_ready = false;
    while (!dw_stop) {
        if (api_http_service(http) < 0) goto done;
        bool ready = api_ready(&st);
        if (ready != was_ready) {
            api_counters_ready(ready);
            DW_INFO(ready ? "ready" : "not ready", "instance=%s", instance);
            was_ready = ready;
        }
    }
    DW_INFO("stopping", "in_progress=%zu", api_pool_depth(pool));
    rc = 0;

done:
    /* No new requests, then finish (or 503) the ones taken, then free what
     * their answers went through. */
    atomic_store(&st.listening, false);
    api_subjects_stop(st.subjects);
    api_pool_stop(pool);
    api_http_destroy(http);
    api_subjects_free(st.subjects);
    dw_ping_stop(ping);
    dw_status_stop(status);
    if (nc && natsConnection_Status(nc) == NATS_CONN_STATUS_CONNECTED)
        natsConnection_FlushTimeout(nc, 1000);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    nats_CloseAndWait(2000);
    dw_metrics_free();
    api_auth_clear(&auth);
    dw_config_free(&cfg, fields, NFIELDS);
    if (rc == 0) DW_INFO("stopped", "instance=%s", instance);
    return rc;
}
