/* The connect authorizer's gate: reads request heads before lws, asks the
 * authorizer, writes refusals, hands the rest back (authz_gate.h). */
#include "authz_gate.h"

#include <errno.h>
#include <fcntl.h>
#include <libwebsockets.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dw/log.h"
#include "dw/util.h"
#include "edge.h"
#include "event.h"

#define SUBJECT_PREFIX "dw.authz."
/* Sockets the gate holds at once (reading heads or asking) */
#define GATE_MAX_HELD(max_pending) ((max_pending)*4 + 64)

typedef enum { GC_READING, GC_ASKING } gate_state;

typedef struct gate_conn {
    struct gate_conn *next;
    int fd;
    gate_state state;
    uint64_t id; /* the request's inbox token while ASKING */
    char *buf;
    size_t len, cap;
    int64_t deadline_ns; /* head, then reply */
    int64_t asked_ns;
    char ip[48];
} gate_conn;

typedef struct gate_reply {
    struct gate_reply *next;
    uint64_t id;
    bool no_responders;
    size_t len;
    char data[];
} gate_reply;

struct authz_gate {
    authz_gate_config cfg;
    char *subject;
    authz_forward fwd;
    natsConnection *nc;
    natsSubscription *sub;
    char inbox[96]; /* _INBOX.edge.authz.<edge_id>. + id */
    pthread_t thread;
    bool started;
    int wake[2];
    atomic_bool stop;
    pthread_mutex_t mu; /* intake and replies */
    gate_conn *intake;
    gate_reply *replies;
    /* gate thread only */
    gate_conn *conns;
    uint32_t nconns;  /* in conns */
    uint32_t nasking; /* authorizer requests in flight */
    uint64_t next_id;
};

static atomic_uint held; /* sockets the gate holds (any thread reads) */

bool authz_subject_valid(const char *subject)
{
    size_t n = strlen(subject), p = strlen(SUBJECT_PREFIX);
    if (n <= p || strncmp(subject, SUBJECT_PREFIX, p)) return false;
    for (size_t i = p; i < n; i++) {
        char c = subject[i];
        if (c == '*' || c == '>' || c == ' ' || c == '\t' || (unsigned char)c < 0x21) return false;
        if (c == '.' && (i == p || i + 1 == n || subject[i + 1] == '.')) return false;
    }
    return true;
}

static void wake(authz_gate *g)
{
    char c = 1;
    ssize_t r = write(g->wake[1], &c, 1);
    (void)r; /* a full pipe already wakes the thread */
}

/* ---- answers the gate writes itself ------------------------------------- */

static void refuse(authz_gate *g, gate_conn *c, unsigned status, const char *why)
{
    char buf[256];
    size_t n = authz_refusal(status, buf, sizeof buf);
    /* A fresh socket's send buffer is empty: this short answer fits; if it
     * does not, the client is gone or hostile and gets the close. */
    ssize_t w = n ? send(c->fd, buf, n, MSG_NOSIGNAL | MSG_DONTWAIT) : 0;
    (void)w;
    DW_INFO("upgrade refused", "code=%u why=\"%s\" ip=%s", status, why, c->ip);
    (void)g;
    /* Closing a socket with unread bytes sends a reset, which may reach
     * the client before it read the answer: end our side first and read
     * what has come (bounded), then close. */
    shutdown(c->fd, SHUT_WR);
    for (int i = 0; i < 16 && recv(c->fd, buf, sizeof buf, MSG_DONTWAIT) > 0; i++) {
    }
    close(c->fd);
    c->fd = -1;
}

static void conn_free(authz_gate *g, gate_conn *c)
{
    if (c->state == GC_ASKING) g->nasking--;
    if (c->fd >= 0) close(c->fd);
    free(c->buf);
    free(c);
    atomic_fetch_sub(&held, 1);
}

static void adopt_free(dw_mail *m)
{
    edge_event *ev = (edge_event *)m;
    authz_adopt *a = ev->authz;
    if (a) {
        if (a->fd >= 0) close(a->fd);
        free(a->buf);
        authz_decision_free(&a->decision);
        free(a);
    }
    ev->authz = NULL;
    edge_event_free(m);
}

/* Hand c's socket and bytes back to the lws thread (c keeps neither). */
static void hand_back(authz_gate *g, gate_conn *c, authz_decision *d)
{
    edge_event *ev = edge_event_new(EDGE_EV_AUTHZ);
    authz_adopt *a = calloc(1, sizeof *a);
    if (!ev || !a) {
        free(ev);
        free(a);
        if (d) authz_decision_free(d);
        refuse(g, c, 503, "out of memory");
        return;
    }
    a->fd = c->fd;
    a->buf = c->buf;
    a->len = c->len;
    if (d) {
        a->decided = true;
        a->decision = *d;
        memset(d, 0, sizeof *d);
    }
    c->fd = -1;
    c->buf = NULL;
    ev->authz = a;
    ev->mail.destroy = adopt_free;
    dw_mailbox_post(g->cfg.mailbox, &ev->mail);
}

/* ---- the authorizer ------------------------------------------------------ */

static void on_reply(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    authz_gate *g = closure;
    const char *subj = natsMsg_GetSubject(msg);
    const char *dot = strrchr(subj, '.');
    uint64_t id = dot ? strtoull(dot + 1, NULL, 10) : 0;
    int len = natsMsg_GetDataLength(msg);
    if (len < 0 || (size_t)len > AUTHZ_MAX_REPLY) len = AUTHZ_MAX_REPLY + 1; /* a bad reply */
    size_t keep = (size_t)len > AUTHZ_MAX_REPLY ? 0 : (size_t)len;
    gate_reply *r = malloc(sizeof *r + keep + 1);
    if (r) {
        r->id = id;
        r->len = (size_t)len;
        const char *status = NULL;
        /* nats-server answers a request nobody listens to with status 503 */
        r->no_responders = len == 0 && natsMsgHeader_Get(msg, "Status", &status) == NATS_OK &&
                           status && !strcmp(status, "503");
        if (keep) memcpy(r->data, natsMsg_GetData(msg), keep);
        r->data[keep] = '\0';
        pthread_mutex_lock(&g->mu);
        r->next = g->replies;
        g->replies = r;
        pthread_mutex_unlock(&g->mu);
        wake(g);
    }
    natsMsg_Destroy(msg);
}

static void ask(authz_gate *g, gate_conn *c, const authz_head *h)
{
    struct edge_metrics *m = g->cfg.metrics;
    char *json = NULL;
    size_t len = 0;
    if (authz_request_build(h, c->ip, &g->fwd, &json, &len)) {
        dw_metric_inc(m->authz_errors_other);
        refuse(g, c, 503, "out of memory");
        return;
    }
    if (g->nasking >= g->cfg.max_pending) {
        dw_metric_inc(m->authz_errors_overload);
        refuse(g, c, 503, "too many pending authorizations");
        free(json);
        return;
    }
    c->id = ++g->next_id;
    char reply[128];
    snprintf(reply, sizeof reply, "%s%llu", g->inbox, (unsigned long long)c->id);
    dw_metric_inc(m->authz_requests);
    natsStatus st = natsConnection_PublishRequest(g->nc, g->subject, reply, json, (int)len);
    free(json);
    if (st != NATS_OK) {
        dw_metric_inc(m->authz_errors_other);
        refuse(g, c, 503, "authorizer request not sent");
        return;
    }
    c->state = GC_ASKING;
    g->nasking++;
    c->asked_ns = dw_mono_ns();
    c->deadline_ns = c->asked_ns + g->cfg.timeout_ms * 1000000LL;
}

static void on_answer(authz_gate *g, gate_conn *c, gate_reply *r)
{
    struct edge_metrics *m = g->cfg.metrics;
    dw_metric_observe_ns(m->authz_latency, dw_mono_ns() - c->asked_ns);
    if (r->no_responders) {
        dw_metric_inc(m->authz_errors_no_responders);
        refuse(g, c, 503, "no authorizer listening");
        return;
    }
    authz_decision d;
    const char *why = "";
    if (authz_reply_decode(r->data, r->len, &d, &why)) {
        dw_metric_inc(m->authz_errors_bad_reply);
        DW_WARN("bad authorizer reply", "err=\"%s\"", why);
        refuse(g, c, 503, "bad authorizer reply");
        return;
    }
    if (!d.allow) {
        dw_metric_inc(m->authz_denied);
        refuse(g, c, d.status, "the authorizer refused");
        authz_decision_free(&d);
        return;
    }
    dw_metric_inc(m->authz_allowed);
    hand_back(g, c, &d);
}

/* ---- reading heads --------------------------------------------------------- */

/* Read what is there; false when the gate is done with c (its socket
 * refused, closed or handed on): the caller frees it. */
static bool on_readable(authz_gate *g, gate_conn *c)
{
    for (;;) {
        if (c->len == c->cap) {
            if (c->cap >= g->cfg.max_head) break;
            size_t ncap = c->cap ? c->cap * 2 : 2048;
            if (ncap > g->cfg.max_head) ncap = g->cfg.max_head;
            char *n = realloc(c->buf, ncap);
            if (!n) {
                refuse(g, c, 503, "out of memory");
                return false;
            }
            c->buf = n;
            c->cap = ncap;
        }
        ssize_t r = recv(c->fd, c->buf + c->len, c->cap - c->len, MSG_DONTWAIT);
        if (r > 0) {
            c->len += (size_t)r;
            continue;
        }
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (r < 0 && errno == EINTR) continue;
        close(c->fd); /* the client went away (or reset) */
        c->fd = -1;
        return false;
    }
    authz_head h;
    int p = authz_head_parse(c->buf, c->len, &h);
    if (p == 1) {
        if (c->len < g->cfg.max_head) return true;
        refuse(g, c, 431, "request head too large");
        return false;
    }
    if (p < 0) {
        /* Not ours to judge: lws answers a malformed request as it always does. */
        hand_back(g, c, NULL);
        return false;
    }
    if (!h.websocket) {
        hand_back(g, c, NULL);
        return false;
    }
    ask(g, c, &h);
    return c->fd >= 0;
}

static void *gate_main(void *arg)
{
    authz_gate *g = arg;
    struct pollfd *pfd = NULL;
    gate_conn **pc = NULL;
    size_t pcap = 0;
    while (!atomic_load(&g->stop)) {
        /* new sockets, replies */
        pthread_mutex_lock(&g->mu);
        gate_conn *in = g->intake;
        g->intake = NULL;
        gate_reply *rs = g->replies;
        g->replies = NULL;
        pthread_mutex_unlock(&g->mu);
        while (in) {
            gate_conn *n = in->next;
            in->next = g->conns;
            g->conns = in;
            g->nconns++;
            in = n;
        }
        int64_t now = dw_mono_ns();
        while (rs) {
            gate_reply *n = rs->next;
            for (gate_conn **pp = &g->conns; *pp; pp = &(*pp)->next) {
                gate_conn *c = *pp;
                if (c->state != GC_ASKING || c->id != rs->id) continue;
                *pp = c->next;
                g->nconns--;
                on_answer(g, c, rs);
                conn_free(g, c);
                break;
            }
            free(rs);
            rs = n;
        }
        /* deadlines, and the poll set */
        if (pcap < (size_t)g->nconns + 1) {
            pcap = (size_t)g->nconns + 64;
            free(pfd);
            free(pc);
            pfd = malloc(pcap * sizeof *pfd);
            pc = malloc(pcap * sizeof *pc);
            if (!pfd || !pc) {
                DW_ERROR("authorizer gate out of memory", "%s", "");
                break;
            }
        }
        int64_t next = now + 1000000000LL;
        size_t np = 1;
        pfd[0] = (struct pollfd){.fd = g->wake[0], .events = POLLIN};
        for (gate_conn **pp = &g->conns; *pp;) {
            gate_conn *c = *pp;
            if (now >= c->deadline_ns) {
                *pp = c->next;
                g->nconns--;
                if (c->state == GC_ASKING) {
                    dw_metric_inc(g->cfg.metrics->authz_errors_timeout);
                    dw_metric_observe_ns(g->cfg.metrics->authz_latency, now - c->asked_ns);
                    refuse(g, c, 503, "authorizer timeout");
                } else {
                    refuse(g, c, 408, "request head timeout");
                }
                conn_free(g, c);
                continue;
            }
            if (c->deadline_ns < next) next = c->deadline_ns;
            if (c->state == GC_READING) {
                pfd[np] = (struct pollfd){.fd = c->fd, .events = POLLIN};
                pc[np++] = c;
            }
            pp = &c->next;
        }
        int ms = (int)((next - now + 999999) / 1000000);
        int n = poll(pfd, (nfds_t)np, ms < 0 ? 0 : ms);
        if (n < 0) continue;
        if (pfd[0].revents) {
            char drain[64];
            while (read(g->wake[0], drain, sizeof drain) > 0) {
            }
        }
        for (size_t i = 1; i < np; i++) {
            if (!pfd[i].revents) continue;
            gate_conn *c = pc[i];
            if (on_readable(g, c)) continue;
            /* done with: unlink it */
            for (gate_conn **pp = &g->conns; *pp; pp = &(*pp)->next)
                if (*pp == c) {
                    *pp = c->next;
                    g->nconns--;
                    break;
                }
            conn_free(g, c);
        }
    }
    free(pfd);
    free(pc);
    return NULL;
}

/* ---- start, stop, take --------------------------------------------------- */

int authz_gate_start(authz_gate **out, const authz_gate_config *cfg, natsConnection *nc, char *err,
                     size_t errlen)
{
    *out = NULL;
    authz_gate *g = calloc(1, sizeof *g);
    if (!g) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    g->cfg = *cfg;
    g->nc = nc;
    g->wake[0] = g->wake[1] = -1;
    pthread_mutex_init(&g->mu, NULL);
    g->subject = strdup(cfg->subject);
    if (!g->subject || authz_forward_parse(cfg->forward_headers, &g->fwd)) {
        snprintf(err, errlen, "DW_AUTHORIZER_HEADERS: a comma-separated list of header names");
        goto error;
    }
    if (pipe2(g->wake, O_NONBLOCK | O_CLOEXEC)) {
        snprintf(err, errlen, "pipe: %s", strerror(errno));
        goto error;
    }
    snprintf(g->inbox, sizeof g->inbox, "_INBOX.edge.authz.%s.", cfg->edge_id);
    char wild[128];
    snprintf(wild, sizeof wild, "%s*", g->inbox);
    if (natsConnection_Subscribe(&g->sub, nc, wild, on_reply, g) != NATS_OK) {
        snprintf(err, errlen, "cannot subscribe %s", wild);
        goto error;
    }
    if (pthread_create(&g->thread, NULL, gate_main, g)) {
        snprintf(err, errlen, "cannot start the authorizer thread");
        goto error;
    }
    g->started = true;
    *out = g;
    return 0;
error:
    authz_gate_stop(g);
    return -1;
}

void authz_gate_stop(authz_gate *g)
{
    if (!g) return;
    if (g->sub) {
        natsSubscription_Unsubscribe(g->sub);
        natsSubscription_Destroy(g->sub);
    }
    if (g->started) {
        atomic_store(&g->stop, true);
        wake(g);
        pthread_join(g->thread, NULL);
    }
    /* (no callback runs any more: the subscription is gone) */
    gate_conn *lists[2] = {g->conns, g->intake};
    for (int i = 0; i < 2; i++)
        while (lists[i]) {
            gate_conn *n = lists[i]->next;
            conn_free(g, lists[i]);
            lists[i] = n;
        }
    while (g->replies) {
        gate_reply *n = g->replies->next;
        free(g->replies);
        g->replies = n;
    }
    if (g->wake[0] >= 0) close(g->wake[0]);
    if (g->wake[1] >= 0) close(g->wake[1]);
    authz_forward_free(&g->fwd);
    free(g->subject);
    pthread_mutex_destroy(&g->mu);
    free(g);
}

bool authz_gate_take(authz_gate *g, int fd)
{
    int dup_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dup_fd < 0) return false;
    gate_conn *c = calloc(1, sizeof *c);
    if (!c) {
        close(dup_fd);
        return false;
    }
    c->fd = dup_fd;
    c->state = GC_READING;
    c->deadline_ns = dw_mono_ns() + g->cfg.head_timeout_ms * 1000000LL;
    if (!lws_get_peer_simple_fd(fd, c->ip, sizeof c->ip)) c->ip[0] = '\0';
    /* Sockets still sending their request head count too: a flood of
     * silent connections is refused at once, without reading. */
    if (atomic_fetch_add(&held, 1) + 1 > GATE_MAX_HELD(g->cfg.max_pending)) {
        dw_metric_inc(g->cfg.metrics->authz_errors_overload);
        refuse(g, c, 503, "too many pending authorizations");
        conn_free(g, c);
        return true;
    }
    pthread_mutex_lock(&g->mu);
    c->next = g->intake;
    g->intake = c;
    pthread_mutex_unlock(&g->mu);
    wake(g);
    return true;
}

/* ---- the lws thread's side ----------------------------------------------- */

/* The decision whose socket lws is adopting right now: lws may run the
 * upgrade's filter inside lws_adopt_socket_vhost_readbuf, before we know
 * the new wsi. Afterwards it is the wsi's opaque user data until taken. */
static authz_decision *adopting;
static int adopting_fd = -1;

void authz_on_adopt(edge *e, edge_event *ev)
{
    authz_adopt *a = ev->authz;
    authz_decision *d = NULL;
    /* Stopping (the gate is gone, the context is being destroyed): the
     * event's destructor closes the socket. */
    if (!e->authz || !e->ctx) return;
    if (a->decided) {
        d = malloc(sizeof *d);
        if (!d) return; /* the event's destructor closes the socket */
        *d = a->decision;
        memset(&a->decision, 0, sizeof a->decision);
        a->decided = false;
    }
    struct lws_vhost *vh = lws_get_vhost_by_name(e->ctx, "default");
    int fd = a->fd;
    a->fd = -1; /* lws owns it from here (it closes it on a failure) */
    adopting = d;
    adopting_fd = fd;
    struct lws *wsi = vh ? lws_adopt_socket_vhost_readbuf(vh, fd, a->buf, a->len) : NULL;
    if (!vh) close(fd);
    if (adopting) {
        /* not taken yet: lws had no header table free, or the client's
         * request went no further */
        if (wsi)
            lws_set_opaque_user_data(wsi, adopting);
        else {
            authz_decision_free(adopting);
            free(adopting);
        }
    }
    adopting = NULL;
    adopting_fd = -1;
}

bool authz_on_upgrade(edge *e, struct lws *wsi, authz_decision *out)
{
    (void)e;
    authz_decision *d = lws_get_opaque_user_data(wsi);
    if (d) {
        lws_set_opaque_user_data(wsi, NULL);
    } else if (adopting && adopting_fd == lws_get_socket_fd(wsi)) {
        d = adopting;
        adopting = NULL;
    }
    if (!d) return false;
    *out = *d;
    free(d);
    return true;
}

void authz_on_destroy(struct lws *wsi)
{
    authz_decision *d = lws_get_opaque_user_data(wsi);
    if (!d) return;
    lws_set_opaque_user_data(wsi, NULL);
    authz_decision_free(d);
    free(d);
}

int authz_edge_start(edge *e, natsConnection *nc)
{
    const edge_config *c = e->cfg;
    if (!c->authorizer[0]) return 0;
    if (!authz_subject_valid(c->authorizer)) {
        DW_ERROR("bad configuration", "err=\"%s\"",
                 "DW_AUTHORIZER must be a subject under dw.authz. (no wildcards)");
        return -1;
    }
    if (c->tls_cert[0]) {
        DW_ERROR("bad configuration", "err=\"%s\"",
                 "DW_AUTHORIZER needs plain ws:// at the edge: terminate TLS in front of it");
        return -1;
    }
    authz_gate_config ac = {
        .subject = c->authorizer,
        .timeout_ms = c->authorizer_timeout_ms,
        .head_timeout_ms = c->handshake_timeout_s * 1000,
        .max_head = (size_t)(c->max_header + c->max_url),
        .max_pending = (uint32_t)c->authorizer_max_pending,
        .forward_headers = c->authorizer_headers,
        .edge_id = e->edge_id,
        .mailbox = &e->mailbox,
        .metrics = e->m,
    };
    char err[256];
    if (authz_gate_start(&e->authz, &ac, nc, err, sizeof err)) {
        DW_ERROR("cannot start the connect authorizer", "err=\"%s\"", err);
        return -1;
    }
    return 0;
}

bool authz_on_accept(edge *e, int fd)
{
    if (!e->cfg->authorizer[0]) return false;
    /* The gate reads the request head first and hands the socket back;
     * lws closes its copy. (No gate, while stopping: no connection.) */
    if (!e->authz || !authz_gate_take(e->authz, fd)) dw_metric_inc(e->m->authz_errors_other);
    return true;
}
