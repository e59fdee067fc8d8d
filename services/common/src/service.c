#include "dw/service.h"

#include <inttypes.h>
#include <stdio.h>
#include <unistd.h>

#include "dw/bus.h"
#include "dw/log.h"
#include "dw/metrics.h"
#include "dw/ping.h"
#include "dw/status.h"

#define SETUP_RETRY_FIRST_MS 100
#define SETUP_RETRY_MAX_MS 2000
/* Draining: the server's answer to what we published last (acks). At
 * most this, and never past the stop's deadline. */
#define DRAIN_TIMEOUT_MS 5000
/* Tearing down nats.c's threads at the very end. */
#define CLOSE_WAIT_MS 2000

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
 * connected (a drain while NATS is away would wait for nothing), and
 * within what is left of the stop's budget. What could not go out is
 * logged. */
static void drain(natsConnection *nc)
{
    dw_stop_step("draining the NATS connection");
    if (natsConnection_Status(nc) != NATS_CONN_STATUS_CONNECTED) {
        int unsent = natsConnection_Buffered(nc);
        if (unsent > 0)
            DW_WARN("NATS not connected: publishes not sent are given up", "bytes=%d", unsent);
        return;
    }
    int64_t wait_ms = dw_stop_left_ms(DRAIN_TIMEOUT_MS);
    natsStatus ns = wait_ms > 0 ? natsConnection_DrainTimeout(nc, wait_ms) : NATS_TIMEOUT;
    if (ns != NATS_OK) {
        DW_WARN("NATS connection not drained", "status=%s", natsStatus_GetText(ns));
        return;
    }
    /* (nats.c's drain runs on its own thread and closes when done.) */
    int64_t deadline = dw_mono_ns() + wait_ms * 1000000LL;
    while (!natsConnection_IsClosed(nc) && dw_mono_ns() < deadline)
        nats_Sleep(10);
    if (!natsConnection_IsClosed(nc))
        DW_WARN("NATS connection not drained in time: what it still had is given up",
                "wait_ms=%" PRId64, wait_ms);
}

/* The stop's backstop (dw/service.h): waits for a stop, then for its
 * budget; closes the connection DW_STOP_RESERVE_MS before the end and
 * ends the process at the end, unless the stop finished first. */
static void *watchdog_main(void *arg)
{
    dw_service *s = arg;
    pthread_mutex_lock(&s->wd_mu);
    /* The signal handler cannot signal a condition variable: look often. */
    while (!s->wd_done && !dw_stop)
        dw_cond_wait_until(&s->wd_cv, &s->wd_mu, dw_mono_ns() + 250 * 1000000LL);
    int64_t since = dw_stop_since_ns() ? dw_stop_since_ns() : dw_mono_ns();
    int64_t budget = dw_stop_timeout_ms();
    int64_t close_at = since + (budget - DW_STOP_RESERVE_MS) * 1000000LL;
    int64_t exit_at = since + budget * 1000000LL;
    while (!s->wd_done && dw_mono_ns() < close_at)
        dw_cond_wait_until(&s->wd_cv, &s->wd_mu, close_at);
    if (!s->wd_done && s->nc) {
        const char *step = dw_stop_step_now();
        DW_WARN("stop deadline: closing the NATS connection, what still waits for NATS is given "
                "up",
                "shutdown_timeout_ms=%" PRId64 " step=\"%s\"", budget, step ? step : "");
        natsConnection_Close(s->nc);
    }
    while (!s->wd_done && dw_mono_ns() < exit_at)
        dw_cond_wait_until(&s->wd_cv, &s->wd_mu, exit_at);
    if (!s->wd_done) {
        const char *step = dw_stop_step_now();
        DW_ERROR("stop did not finish within its budget: exiting now",
                 "shutdown_timeout_ms=%" PRId64 " step=\"%s\"", budget, step ? step : "");
        _exit(1);
    }
    pthread_mutex_unlock(&s->wd_mu);
    return NULL;
}

static int watchdog_start(dw_service *s)
{
    if (pthread_mutex_init(&s->wd_mu, NULL)) return -1;
    if (dw_cond_init_mono(&s->wd_cv)) {
        pthread_mutex_destroy(&s->wd_mu);
        return -1;
    }
    s->wd_done = false;
    if (pthread_create(&s->watchdog, NULL, watchdog_main, s)) {
        pthread_cond_destroy(&s->wd_cv);
        pthread_mutex_destroy(&s->wd_mu);
        return -1;
    }
    s->wd_started = true;
    return 0;
}

static void watchdog_stop(dw_service *s)
{
    if (!s->wd_started) return;
    pthread_mutex_lock(&s->wd_mu);
    s->wd_done = true;
    pthread_cond_signal(&s->wd_cv);
    pthread_mutex_unlock(&s->wd_mu);
    pthread_join(s->watchdog, NULL);
    pthread_cond_destroy(&s->wd_cv);
    pthread_mutex_destroy(&s->wd_mu);
    s->wd_started = false;
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
    dw_stop_set_timeout_ms(s->common->shutdown_timeout_ms > 0 ? s->common->shutdown_timeout_ms
                                                              : DW_STOP_TIMEOUT_DEFAULT_MS);
    if (s->hooks->init && (rc = s->hooks->init(s))) goto cleanup;
    rc = 1;
    if (!s->instance[0] && dw_id_random(s->instance)) {
        DW_ERROR("csprng failed", "%s", "");
        goto cleanup;
    }
    dw_signals_install(NULL, NULL);
    /* Before anything that could wait for NATS: a stop while connecting is
     * bounded too. */
    if (watchdog_start(s)) {
        DW_ERROR("cannot start the stop watchdog", "%s", "");
        goto cleanup;
    }
    s->nofile = dw_raise_nofile();
    DW_INFO("starting", "instance=%s version=%s nofile=%ld", s->instance, DW_VERSION, s->nofile);

    snprintf(s->ready_labels, sizeof s->ready_labels, "service=\"%s\"", s->name);
    dw_gauge_fn("dw_ready", s->ready_labels, "1 when the service is ready", ready_gauge, s);
    /* Metrics are a side show: a port in use must not stop the service. */
    if (!s->offline && s->common->status_port > 0 &&
        dw_status_start(&status, s->common->status_host, (int)s->common->status_port, is_ready, s))
        DW_ERROR("status port not available, running without it", "port=%" PRId64,
                 s->common->status_port);

    natsConnection *nc = NULL;
    natsStatus ns =
        dw_bus_connect(&nc, s->common->nats_url, s->conn_name[0] ? s->conn_name : s->name);
    pthread_mutex_lock(&s->wd_mu); /* (the watchdog may close it) */
    s->nc = nc;
    pthread_mutex_unlock(&s->wd_mu);
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
    dw_stop_step("setup");
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
    dw_stop_step("run");
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
    /* A run that ended on its own is a stop too: its budget starts now. */
    dw_stop_request();
    /* No one may ask ready() once the stop hook frees what it reads. */
    dw_stop_step("stop: ping and status port");
    dw_ping_stop(ping);
    dw_status_stop(status);
    dw_stop_step("stop hook");
    if (s->hooks->stop) s->hooks->stop(s);
    if (s->nc) drain(s->nc);
    dw_stop_step("closing the NATS connection");
    jsCtx_Destroy(s->js);
    s->js = NULL;
    pthread_mutex_lock(&s->wd_mu);
    nc = s->nc;
    s->nc = NULL; /* (the watchdog closes what is here) */
    pthread_mutex_unlock(&s->wd_mu);
    natsConnection_Destroy(nc);
cleanup:
    dw_stop_step("cleanup hook");
    if (s->hooks->cleanup) s->hooks->cleanup(s);
    if (dw_subs_undrained()) {
        /* Subscriptions left to the exit hold nats.c's teardown: it would
         * only wait out its timeout (the registry: 2 s while NATS was
         * away). */
        nats_Close();
    } else if (dw_stop_since_ns()) {
        /* nats.c's threads wind down: within what is left of the budget
         * (0 would wait without end). */
        int64_t left = dw_stop_left_ms(CLOSE_WAIT_MS) + DW_STOP_RESERVE_MS / 2;
        nats_CloseAndWait(left < CLOSE_WAIT_MS ? left : CLOSE_WAIT_MS);
    } else {
        nats_CloseAndWait(CLOSE_WAIT_MS);
    }
    watchdog_stop(s);
    dw_metrics_free();
    if (rc == 0) {
        int64_t since = dw_stop_since_ns();
        DW_INFO("stopped", "instance=%s stop_ms=%" PRId64, s->instance,
                since ? (dw_mono_ns() - since) / 1000000 : 0);
    }
    dw_config_free(s->cfg, s->fields, s->n_fields);
    return rc;
}
