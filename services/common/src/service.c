#include "dw/service.h"

#include <inttypes.h>
#include <stdio.h>

#include "dw/bus.h"
#include "dw/log.h"
#include "dw/metrics.h"
#include "dw/ping.h"
#include "dw/status.h"

#define SETUP_RETRY_FIRST_MS 100
#define SETUP_RETRY_MAX_MS 2000
/* Draining: the server's answer to what we published last (acks). */
#define DRAIN_TIMEOUT_MS 5000

static bool is_ready(void *arg)
{
    dw_service *s = arg;
    if (s->hooks->ready) return s->hooks->ready(s->arg);
    return atomic_load(&s->running);
}

static int64_t ready_gauge(void *arg)
{
    return is_ready(arg) ? 1 : 0;
}

/* Publishes go out and subscriptions end before the close; only when
 * connected (a drain while NATS is away would wait for nothing). */
static void drain(natsConnection *nc)
{
    if (natsConnection_Status(nc) != NATS_CONN_STATUS_CONNECTED) return;
    if (natsConnection_DrainTimeout(nc, DRAIN_TIMEOUT_MS) != NATS_OK) return;
    int64_t deadline = dw_mono_ns() + (DRAIN_TIMEOUT_MS + 1000) * 1000000LL;
    while (!natsConnection_IsClosed(nc) && dw_mono_ns() < deadline)
        nats_Sleep(10);
}

int dw_service_main(dw_service *s, int argc, char **argv)
{
    dw_status *status = NULL;
    dw_ping *ping = NULL;
    int rc = dw_config_load(s->cfg, s->fields, s->n_fields, argc, argv, s->name, s->summary);
    if (rc) {
        dw_config_free(s->cfg, s->fields, s->n_fields);
        return rc > 0 ? 0 : 2;
    }
    dw_log_init(s->name, s->common->log_level);
    if (s->hooks->init && (rc = s->hooks->init(s))) goto cleanup;
    rc = 1;
    if (!s->instance[0] && dw_id_random(s->instance)) {
        DW_ERROR("csprng failed", "%s", "");
        goto cleanup;
    }
    dw_signals_install(NULL, NULL);
    s->nofile = dw_raise_nofile();
    DW_INFO("starting", "instance=%s version=%s nofile=%ld", s->instance, DW_VERSION, s->nofile);

    snprintf(s->ready_labels, sizeof s->ready_labels, "service=\"%s\"", s->name);
    dw_gauge_fn("dw_ready", s->ready_labels, "1 when the service is ready", ready_gauge, s);
    /* Metrics are a side show: a port in use must not stop the service. */
    if (!s->offline && s->common->status_port > 0 &&
        dw_status_start(&status, s->common->status_host, (int)s->common->status_port, is_ready, s))
        DW_ERROR("status port not available, running without it", "port=%" PRId64,
                 s->common->status_port);

    natsStatus ns =
        dw_bus_connect(&s->nc, s->common->nats_url, s->conn_name[0] ? s->conn_name : s->name);
    if (ns == NATS_OK) {
        jsOptions jo;
        jsOptions_Init(&jo);
        if (s->js_wait_ms > 0) jo.Wait = s->js_wait_ms;
        ns = natsConnection_JetStream(&s->js, s->nc, &jo);
    }
    if (ns != NATS_OK) {
        DW_ERROR("nats connect failed", "url=%s status=%s", s->common->nats_url,
                 natsStatus_GetText(ns));
        goto stop;
    }
    /* dwctl status lists who runs; not being listed must not stop the
     * service, so a failure is only logged. */
    if (!s->offline && dw_ping_start(&ping, s->nc, s->name, s->instance, is_ready, s))
        DW_WARN("not answering dw.ops.ping", "%s", "");

    int64_t wait = SETUP_RETRY_FIRST_MS;
    while (s->hooks->setup && !dw_stop && s->hooks->setup(s)) {
        DW_WARN("setup failed, retrying", "retry_ms=%" PRId64, wait);
        nats_Sleep(wait);
        wait = wait * 2 < SETUP_RETRY_MAX_MS ? wait * 2 : SETUP_RETRY_MAX_MS;
    }
    if (dw_stop) {
        rc = 0; /* stopped before we were ready: still a clean stop */
        goto stop;
    }
    atomic_store(&s->running, true);
    if (s->hooks->run) {
        rc = s->hooks->run(s);
    } else {
        while (!dw_stop)
            nats_Sleep(100);
        rc = 0;
    }
    atomic_store(&s->running, false);
    DW_INFO("stopping", "instance=%s", s->instance);

stop:
    /* No one may ask ready() once the stop hook frees what it reads. */
    dw_ping_stop(ping);
    dw_status_stop(status);
    if (s->hooks->stop) s->hooks->stop(s);
    if (s->nc) drain(s->nc);
    jsCtx_Destroy(s->js);
    s->js = NULL;
    natsConnection_Destroy(s->nc);
    s->nc = NULL;
cleanup:
    if (s->hooks->cleanup) s->hooks->cleanup(s);
    nats_CloseAndWait(2000);
    dw_metrics_free();
    if (rc == 0) DW_INFO("stopped", "instance=%s", s->instance);
    dw_config_free(s->cfg, s->fields, s->n_fields);
    return rc;
}
