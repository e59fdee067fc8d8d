#include "status_routes.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dw/bus.h"
#include "dw/util.h"

int routes_ask(dwctl *ctl, routes_report *rr)
{
    memset(rr, 0, sizeof *rr);
    natsStatus s = natsInbox_Create(&rr->inbox);
    if (s == NATS_OK) s = natsConnection_SubscribeSync(&rr->sub, ctl->nc, rr->inbox);
    if (s == NATS_OK)
        s = natsConnection_PublishRequest(ctl->nc, DW_SUBJ_OPS_ROUTES, rr->inbox, NULL, 0);
    return s == NATS_OK ? 0 : -1;
}

static route_row *row_of(routes_report *rr, const char *action, const char *mode)
{
    for (size_t i = 0; i < rr->n; i++)
        if (!strcmp(rr->rows[i].action, action) && !strcmp(rr->rows[i].mode, mode))
            return &rr->rows[i];
    if (rr->n == rr->cap) {
        size_t cap = rr->cap ? rr->cap * 2 : 8;
        route_row *g = realloc(rr->rows, cap * sizeof *g);
        if (!g) {
            rr->oom = true;
            return NULL;
        }
        rr->rows = g;
        rr->cap = cap;
    }
    route_row *r = &rr->rows[rr->n++];
    memset(r, 0, sizeof *r);
    snprintf(r->action, sizeof r->action, "%s", action);
    snprintf(r->mode, sizeof r->mode, "%s", mode);
    snprintf(r->last, sizeof r->last, "none");
    r->listening = -1;
    return r;
}

static void add_answer(routes_report *rr, natsMsg *m)
{
    json_t *root = json_loadb(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), 0, NULL);
    json_t *routes = json_object_get(root, "routes");
    if (json_is_array(routes)) rr->edges++;
    size_t i;
    json_t *o;
    json_array_foreach(routes, i, o)
    {
        const char *action = json_string_value(json_object_get(o, "action"));
        const char *mode = json_string_value(json_object_get(o, "mode"));
        route_row *r = action && mode ? row_of(rr, action, mode) : NULL;
        if (!r) continue;
        r->edges++;
        r->requests += json_integer_value(json_object_get(o, "requests"));
        r->errors += json_integer_value(json_object_get(o, "errors"));
        r->timeouts += json_integer_value(json_object_get(o, "timeouts"));
        const char *last = json_string_value(json_object_get(o, "last"));
        int64_t last_ms = json_integer_value(json_object_get(o, "lastMs"));
        if (last && strcmp(last, "none") && last_ms >= r->last_ms) {
            snprintf(r->last, sizeof r->last, "%s", last);
            r->last_ms = last_ms;
        }
    }
    json_decref(root);
}

void routes_collect(routes_report *rr, int64_t deadline_ns, const jsConsumerInfoList *consumers)
{
    for (;;) {
        /* Past the deadline: what is queued already (the edges answer at once). */
        int64_t left_ms = (deadline_ns - dw_mono_ns()) / 1000000;
        if (left_ms < 1) left_ms = 1;
        if (!rr->sub) break;
        natsMsg *m = NULL;
        if (natsSubscription_NextMsg(&m, rr->sub, left_ms) != NATS_OK) break;
        add_answer(rr, m);
        natsMsg_Destroy(m);
    }
    for (size_t i = 0; i < rr->n; i++) {
        route_row *r = &rr->rows[i];
        if (!strcmp(r->mode, "async")) {
            char name[96];
            snprintf(name, sizeof name, "%s%s", DW_ROUTE_DURABLE_PREFIX, r->action);
            r->listening = 0;
            for (int c = 0; consumers && c < consumers->Count; c++) {
                const jsConsumerInfo *ci = consumers->List[c];
                if (!ci->Name || strcmp(ci->Name, name)) continue;
                r->consumer = true;
                r->pending = (int64_t)ci->NumPending;
                r->ack_pending = ci->NumAckPending;
                r->waiting = ci->NumWaiting;
                r->listening = ci->NumWaiting > 0;
            }
        } else if (!strcmp(r->last, "reply") || !strcmp(r->last, "error") ||
                   !strcmp(r->last, "bad_reply")) {
            r->listening = 1;
        } else if (!strcmp(r->last, "no_responders")) {
            r->listening = 0;
        }
    }
}

json_t *routes_json(const routes_report *rr)
{
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < rr->n; i++) {
        const route_row *r = &rr->rows[i];
        json_t *o = json_pack(
            "{s:o, s:s, s:I, s:I, s:I, s:I, s:s, s:o}", "action", dwctl_json_str(r->action), "mode",
            r->mode, "edges", (json_int_t)r->edges, "requests", (json_int_t)r->requests, "errors",
            (json_int_t)r->errors, "timeouts", (json_int_t)r->timeouts, "last", r->last,
            "listening", r->listening < 0 ? json_null() : json_boolean(r->listening));
        if (o && !strcmp(r->mode, "async")) {
            json_object_set_new(o, "consumer", json_boolean(r->consumer));
            json_object_set_new(o, "numPending", json_integer(r->pending));
            json_object_set_new(o, "numAckPending", json_integer(r->ack_pending));
            json_object_set_new(o, "numWaiting", json_integer(r->waiting));
        }
        json_array_append_new(arr, o);
    }
    return arr;
}

void routes_text(const routes_report *rr)
{
    if (!rr->n) {
        printf("\nroutes      none (no edge answered with DW_ROUTES)\n");
        return;
    }
    static const char *const h[] = {"ROUTE",  "MODE",     "EDGES", "REQUESTS",
                                    "ERRORS", "TIMEOUTS", "LAST",  "LISTENING"};
    dwctl_table t;
    if (dwctl_table_init(&t, 8, h)) return;
    for (size_t i = 0; i < rr->n; i++) {
        const route_row *r = &rr->rows[i];
        char e[16], q[32], er[32], to[32], buf[80];
        snprintf(e, sizeof e, "%d", r->edges);
        snprintf(q, sizeof q, "%lld", (long long)r->requests);
        snprintf(er, sizeof er, "%lld", (long long)r->errors);
        snprintf(to, sizeof to, "%lld", (long long)r->timeouts);
        const char *listening = r->listening < 0 ? "?" : r->listening ? "yes" : "NO";
        if (!strcmp(r->mode, "async") && !r->consumer) listening = "NO (no consumer)";
        const char *row[] = {
            dwctl_term_safe(r->action, buf, sizeof buf), r->mode, e, q, er, to, r->last, listening};
        if (dwctl_table_add(&t, row)) break;
    }
    printf("\n");
    dwctl_table_print(&t, stdout);
    dwctl_table_free(&t);
}

void routes_free(routes_report *rr)
{
    natsSubscription_Destroy(rr->sub);
    natsInbox_Destroy(rr->inbox);
    free(rr->rows);
    memset(rr, 0, sizeof *rr);
}
