#include "admit.h"

#include <libwebsockets.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dw/log.h"
#include "edge.h"

int admit_init(edge *e, char *err, size_t errlen)
{
    const edge_config *c = e->cfg;
    edge_admit *a = &e->admit;
    const char *why = NULL;
    int64_t now = dw_mono_ns();

    if (!strcmp(c->auth, "jwt")) {
        a->jwt = true;
        auth_jwt_config_default(&a->jwt_cfg);
        if (!c->jwt_secret_file[0] && !c->jwt_jwks_file[0]) {
            snprintf(err, errlen, "DW_AUTH=jwt needs DW_JWT_SECRET_FILE, DW_JWT_JWKS_FILE or both");
            return -1;
        }
        if (c->jwt_jwks_file[0]) {
            if (auth_jwks_open(&a->jwks, c->jwt_jwks_file, &why)) {
                snprintf(err, errlen, "DW_JWT_JWKS_FILE: %s", why);
                return -1;
            }
            if (auth_jwks_watch_sighup(a->jwks))
                DW_WARN("cannot watch for SIGHUP: the JWKS file is read at start only", "%s", "");
            a->jwt_cfg.jwks = a->jwks;
        }
        if (c->jwt_secret_file[0] &&
            auth_load_secret(c->jwt_secret_file, &a->secret, &a->secret_len, &why)) {
            snprintf(err, errlen, "DW_JWT_SECRET_FILE: %s", why);
            return -1;
        }
        if (c->jwt_secret_prev_file[0] &&
            auth_load_secret(c->jwt_secret_prev_file, &a->secret_prev, &a->secret_prev_len, &why)) {
            snprintf(err, errlen, "DW_JWT_SECRET_PREV_FILE: %s", why);
            return -1;
        }
        a->jwt_cfg.secret = a->secret;
        a->jwt_cfg.secret_len = a->secret_len;
        a->jwt_cfg.secret_prev = a->secret_prev;
        a->jwt_cfg.secret_prev_len = a->secret_prev_len;
        a->jwt_cfg.audience = c->jwt_audience[0] ? c->jwt_audience : NULL;
        a->jwt_cfg.leeway_s = c->jwt_leeway_s;
    } else if (strcmp(c->auth, "none")) {
        snprintf(err, errlen, "DW_AUTH must be none or jwt, not '%s'", c->auth);
        return -1;
    }
    if (c->deny_cidrs[0] && nf_denylist_parse(c->deny_cidrs, &a->deny, &why)) {
        snprintf(err, errlen, "DW_DENY_CIDRS: %s", why);
        return -1;
    }
    if (c->origins[0] && nf_origins_parse(c->origins, &a->origins, &why)) {
        snprintf(err, errlen, "DW_ORIGINS: %s", why);
        return -1;
    }
    rl_bucket_init(&a->edge_msgs, (uint64_t)c->edge_msg_rate, (uint64_t)c->edge_msg_burst, now);
    rl_bucket_init(&a->edge_conns, (uint64_t)c->edge_conn_rate, (uint64_t)c->edge_conn_burst, now);
    rl_iptable_config ic;
    rl_iptable_config_default(&ic);
    ic.max_conns = (uint32_t)c->ip_max_conns;
    ic.conn_rate = (uint32_t)c->ip_conn_rate;
    ic.conn_burst = (uint32_t)c->ip_conn_burst;
    uint8_t seed[16];
    if (RAND_bytes(seed, sizeof seed) != 1 || rl_iptable_init(&a->ips, &ic, seed)) {
        snprintf(err, errlen, "cannot set up the per-IP table");
        return -1;
    }
    rl_strike_policy_default(&a->strikes);
    a->strikes.max_strikes = (uint32_t)c->strikes;
    return 0;
}

void admit_free(edge *e)
{
    edge_admit *a = &e->admit;
    auth_secret_free(a->secret, a->secret_len);
    auth_secret_free(a->secret_prev, a->secret_prev_len);
    auth_jwks_free(a->jwks);
    nf_denylist_free(&a->deny);
    nf_origins_free(&a->origins);
    rl_iptable_free(&a->ips);
    memset(a, 0, sizeof *a);
}

bool admit_network(edge *e, int fd)
{
    if (!e->admit.deny.n) return true;
    char ip[64];
    if (!lws_get_peer_simple_fd(fd, ip, sizeof ip)) return false;
    if (nf_denylist_match(&e->admit.deny, ip)) {
        dw_metric_inc(e->m->rejected_deny);
        return false;
    }
    return true;
}

static char *header(struct lws *wsi, enum lws_token_indexes h, char *buf, size_t len)
{
    int n = lws_hdr_total_length(wsi, h);
    if (n <= 0 || (size_t)n >= len) return NULL;
    if (lws_hdr_copy(wsi, buf, (int)len, h) < 0) return NULL;
    return buf;
}

static unsigned check_jwt(edge *e, struct lws *wsi, edge_session *s, const char **why)
{
    /* Header buffers are bounded by the edge's header cap. */
    char query[4096], authz[AUTH_TOKEN_MAX + 16], protos[AUTH_TOKEN_MAX + 64];
    char token[AUTH_TOKEN_MAX + 1];
    auth_request_view rq = {
        .query = header(wsi, WSI_TOKEN_HTTP_URI_ARGS, query, sizeof query),
        .authorization = header(wsi, WSI_TOKEN_HTTP_AUTHORIZATION, authz, sizeof authz),
        .protocols = header(wsi, WSI_TOKEN_PROTOCOL, protos, sizeof protos),
    };
    size_t tlen = 0;
    if (auth_token_from_request(&rq, token, sizeof token, &tlen, why) <= 0)
        return 401; /* 0: no token, < 0: a malformed one */
    auth_identity id;
    if (auth_jwt_verify(&e->admit.jwt_cfg, token, tlen, dw_now_ms() / 1000, &id, why)) return 401;
    snprintf(s->user, sizeof s->user, "%s", id.user_id);
    if (id.has_rooms) {
        /* The session takes the room list over. */
        s->allowed_rooms = id.rooms;
        s->n_allowed_rooms = id.nrooms;
        s->has_allowed_rooms = true;
        id.rooms = NULL;
        id.nrooms = 0;
    }
    auth_identity_free(&id);
    return 0;
}

unsigned admit_upgrade(edge *e, struct lws *wsi, edge_session *s, const char **why)
{
    const edge_config *c = e->cfg;
    edge_admit *a = &e->admit;
    int64_t now = dw_mono_ns();

    if (lws_hdr_total_length(wsi, WSI_TOKEN_GET_URI) +
            lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_URI_ARGS) >
        c->max_url) {
        *why = "url too long";
        return 414;
    }
    if (c->require_tls && !lws_is_ssl(wsi)) {
        *why = "TLS required: use wss://";
        return 426;
    }
    if (a->origins.n) {
        char origin[512];
        if (!header(wsi, WSI_TOKEN_ORIGIN, origin, sizeof origin) ||
            !nf_origins_match(&a->origins, origin)) {
            *why = "origin not allowed";
            return 403;
        }
    }
    if (rl_take(&a->edge_conns, now, 1)) {
        *why = "edge connection rate";
        return 429;
    }
    lws_get_peer_simple(wsi, s->ip, sizeof s->ip);
    if (rl_ip_parse(s->ip, &s->ip_key) == 0) {
        int64_t retry = 0;
        rl_verdict v = rl_ip_conn_open(&a->ips, &s->ip_key, now, &retry);
        if (v != RL_ALLOW) {
            *why = rl_verdict_str(v);
            return 429;
        }
        s->ip_counted = true;
    }
    if (a->jwt) {
        unsigned code = check_jwt(e, wsi, s, why);
        if (code) {
            admit_release(e, s);
            return code;
        }
    }
    rl_bucket_init(&s->msgs, (uint64_t)c->msg_rate, (uint64_t)c->msg_burst, now);
    return 0;
}

void admit_release(edge *e, edge_session *s)
{
    if (s->ip_counted) {
        rl_ip_conn_close(&e->admit.ips, &s->ip_key);
        s->ip_counted = false;
    }
    for (size_t i = 0; i < s->n_allowed_rooms; i++)
        free(s->allowed_rooms[i]);
    free(s->allowed_rooms);
    s->allowed_rooms = NULL;
    s->n_allowed_rooms = 0;
}

int64_t admit_message(edge *e, edge_session *s, bool *close)
{
    int64_t now = dw_mono_ns();
    int64_t wait = rl_take(&s->msgs, now, 1);
    if (!wait) wait = rl_take(&e->admit.edge_msgs, now, 1);
    *close = false;
    if (wait) *close = rl_strike(&s->strikes, &e->admit.strikes, now) == RL_STRIKE_CLOSE;
    return wait;
}

bool admit_room(const edge_session *s, const char *room)
{
    if (!s->has_allowed_rooms) return true;
    for (size_t i = 0; i < s->n_allowed_rooms; i++)
        if (!strcmp(s->allowed_rooms[i], room)) return true;
    return false;
}
