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
#include "dw/log.h"
#include "dw/service.h"
#include "http.h"
#include "ops.h"
#include "pool.h"
#include "subjects.h"

/* Stopping: how long the answers of requests already taken may take to be
 * written (clients reading slowly). */
#define HTTP_FINISH_MS 2000

typedef struct api_config {
    dw_service_cfg svc; /* NATS_URL, STATUS_*, LOG_LEVEL, SHUTDOWN_TIMEOUT_MS */
    char *mgmt_host;
    int64_t mgmt_port;
    char *admin_token_file;
    int64_t max_message;
    int64_t workers;
    int64_t max_queue;
    int64_t registry_timeout_ms;
    int64_t edge_timeout_ms;
    int64_t publish_timeout_ms;
} api_config;

#define F(name, type, field, def, min, max, help)                                                  \
    {                                                                                              \
        name, type, offsetof(api_config, field), def, min, max, help                               \
    }

static const dw_cfg_field fields[] = {
    DW_SERVICE_ROW_NATS_URL(api_config, svc),
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
    DW_SERVICE_ROWS_STATUS(api_config, svc, "9091"),
    DW_SERVICE_ROW_LOG_LEVEL(api_config, svc),
    DW_SERVICE_ROW_SHUTDOWN_TIMEOUT(api_config, svc),
};
#define NFIELDS (sizeof fields / sizeof fields[0])

typedef struct api_app {
    api_config cfg;
    api_auth auth;
    api_ops ops;
    api_pool *pool;
    api_http *http;
    api_subjects *subjects;
    atomic_bool listening; /* set once subjects and http are up */
} api_app;

static bool api_ready(void *arg)
{
    api_app *a = arg;
    return atomic_load(&a->listening) && api_subjects_ready(a->subjects);
}

static int init(dw_service *s)
{
    api_app *a = s->arg;
    char err[512];
    if (api_auth_load(&a->auth, a->cfg.admin_token_file, err, sizeof err)) {
        fprintf(stderr, "api: ADMIN_TOKEN_FILE: %s\n", err);
        return 2;
    }
    /* Without a token, whoever reaches the port may post to and close any
     * connection: only this machine may reach it then. */
    if (!a->auth.enabled && !api_host_is_loopback(a->cfg.mgmt_host)) {
        fprintf(stderr,
                "api: refusing to listen on '%s' without a token: set DW_ADMIN_TOKEN_FILE, or "
                "DW_MGMT_HOST to a loopback address\n",
                a->cfg.mgmt_host);
        return 2;
    }
    api_counters_init();
    DW_INFO("auth", "auth=%s", a->auth.enabled ? "bearer" : "off");
    return 0;
}

static int run(dw_service *s)
{
    api_app *a = s->arg;
    const api_config *c = &a->cfg;
    a->ops.nc = s->nc;
    a->ops.js = s->js;
    a->ops.cfg.registry_timeout_ms = c->registry_timeout_ms;
    a->ops.cfg.edge_timeout_ms = c->edge_timeout_ms;
    a->ops.cfg.publish_timeout_ms = c->publish_timeout_ms;
    a->ops.cfg.max_message = (size_t)c->max_message;
    if (api_pool_start(&a->pool, &a->ops, (int)c->workers, (size_t)c->max_queue)) return 1;
    if (api_subjects_start(&a->subjects, s->nc, a->pool, (size_t)c->max_message)) return 1;
    api_http_config hc = {
        .host = c->mgmt_host,
        .port = (int)c->mgmt_port,
        .max_message = (size_t)c->max_message,
        .auth = &a->auth,
        .pool = a->pool,
    };
    if (api_http_start(&a->http, &hc)) return 1;
    atomic_store(&a->listening, true);
    DW_INFO("api listening", "host=%s port=%lld status_port=%lld", c->mgmt_host,
            (long long)c->mgmt_port, (long long)c->svc.status_port);

    bool was_ready = false;
    while (!dw_stop) {
        if (api_http_service(a->http) < 0) return 1;
        bool ready = api_ready(a);
        if (ready != was_ready) {
            DW_INFO(ready ? "ready" : "not ready", "instance=%s", s->instance);
            was_ready = ready;
        }
    }
    DW_INFO("stopping", "in_progress=%zu", api_pool_depth(a->pool));
    return 0;
}

/* No new requests, then finish (or 503) the ones taken and write their
 * answers, then free what their answers went through; within the stop's
 * budget (dw/util.h). */
static void stop(dw_service *s)
{
    api_app *a = s->arg;
    atomic_store(&a->listening, false);
    api_subjects_stop(a->subjects);
    dw_stop_step("api: finishing operations in progress");
    api_pool_stop(a->pool);
    a->pool = NULL;
    dw_stop_step("api: writing answers");
    size_t left = api_http_finish(a->http, dw_stop_left_ms(HTTP_FINISH_MS));
    if (left) DW_WARN("HTTP requests not answered before the close", "requests=%zu", left);
    api_http_destroy(a->http);
    a->http = NULL;
    api_subjects_free(a->subjects);
    a->subjects = NULL;
}

static void cleanup(dw_service *s)
{
    api_app *a = s->arg;
    api_auth_clear(&a->auth);
}

static const char summary[] =
    "DynamoWave api: the management API. POST, GET and DELETE /@connections/{id} over HTTP "
    "(AWS's shape) and over NATS (dw.api.connections.post|get|delete); POST "
    "/@rooms/{room}/messages and dw.api.rooms.publish (docs/integrations.md).";

int main(int argc, char **argv)
{
    static api_app app;
    /* init, setup, run, stop, cleanup, ready */
    static const dw_service_hooks hooks = {init, NULL, run, stop, cleanup, api_ready};
    dw_service s = DW_SERVICE("api", summary, fields, &app.cfg, &hooks, &app);
    return dw_service_main(&s, argc, argv);
}
