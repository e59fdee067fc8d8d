#include "bench.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "dw/log.h"
#include "dw/util.h"
#include "wsc.h"

#define NS 1000000000LL
#define MS 1000000LL
#define RBUF_SIZE (1u << 20)      /* one read takes everything a socket holds */
#define MAX_FRAME (RBUF_SIZE / 2) /* a frame must fit in one read buffer */
#define MAX_HANDSHAKE 8192
#define OUT_HIGH (1u << 20) /* stop producing for a sender past this */
#define SEND_BATCH 4096     /* messages per sender per loop pass */
#define SYNC_EVERY (200 * MS)
#define MAX_EVENTS 1024

#define CHURN_CLOSE_WAIT (2 * NS) /* for the server's answer to our close */

enum { C_NEW, C_CONNECTING, C_HANDSHAKE, C_OPEN, C_CLOSING, C_DEAD };

struct bconn {
    int fd;
    uint8_t state;
    uint8_t synced;
    uint8_t receiver;
    uint8_t pollout;
    uint8_t churn; /* a churn slot: opened and closed during the run */
    uint32_t url;
    uint32_t gen;   /* churn: bumped at each reuse of the slot */
    int64_t t_open; /* churn: when the handshake completed */
    char key[WSC_KEY_LEN + 1];
    unsigned char *carry; /* partial frame (or handshake) left by the last read */
    uint32_t carry_len, carry_cap;
    unsigned char *frag; /* a fragmented text message being reassembled */
    uint32_t frag_len, frag_cap;
    int frag_on;
    unsigned char *out; /* bytes the kernel has not taken yet */
    uint32_t out_off, out_len, out_cap;
};

/* xorshift64*: masks need to vary, not to be secret (RFC 6455 masking only
 * keeps intermediaries from being confused; the key is in the frame). */
static inline uint32_t rng_next(bench *b)
{
    uint64_t x = b->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    b->rng = x;
    return (uint32_t)((x * 0x2545F4914F6CDD1Dull) >> 32);
}

static int grow(unsigned char **buf, uint32_t *cap, size_t need)
{
    if (need <= *cap) return 0;
    size_t n = *cap ? *cap : 256;
    while (n < need)
        n *= 2;
    if (n > UINT32_MAX) return -1;
    unsigned char *p = realloc(*buf, n);
    if (!p) return -1;
    *buf = p;
    *cap = (uint32_t)n;
    return 0;
}

/* ---- connection state ---------------------------------------------------- */

static void conn_dead(bench *b, bconn *c, uint64_t *counter)
{
    if (c->state == C_DEAD || c->state == C_NEW) return;
    int opening = c->state == C_CONNECTING || c->state == C_HANDSHAKE;
    if (c->churn) {
        if (opening)
            b->churn_connecting--;
        else
            b->churn_open--;
    } else if (opening) {
        b->connecting--;
        b->nfailed++;
    } else {
        b->nalive--;
    }
    if (counter && b->phase != P_DONE) (*counter)++;
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    c->state = C_DEAD;
    free(c->carry);
    free(c->frag);
    free(c->out);
    c->carry = c->frag = c->out = NULL;
    c->carry_len = c->carry_cap = c->frag_len = c->frag_cap = 0;
    c->out_off = c->out_len = c->out_cap = 0;
    if (c->churn) b->churn_free[b->churn_nfree++] = (uint32_t)(c - b->conns);
}

static void conn_pollout(bench *b, bconn *c, uint32_t idx, int on)
{
    if (c->pollout == on) return;
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.u32 = idx};
    epoll_ctl(b->ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->pollout = (uint8_t)on;
}

/* Room for n more bytes at the end of the output queue. */
static unsigned char *conn_out_reserve(bconn *c, size_t n)
{
    if (c->out_off && c->out_off == c->out_len) c->out_off = c->out_len = 0;
    if (c->out_off && c->out_len + n > c->out_cap) {
        memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
        c->out_len -= c->out_off;
        c->out_off = 0;
    }
    if (grow(&c->out, &c->out_cap, (size_t)c->out_len + n)) return NULL;
    return c->out + c->out_len;
}

/* Hand the queued bytes to the kernel; wait for EPOLLOUT if it is full. */
static int conn_flush(bench *b, bconn *c, uint32_t idx)
{
    while (c->out_off < c->out_len) {
        ssize_t w = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (w > 0) {
            c->out_off += (uint32_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            conn_pollout(b, c, idx, 1);
            return 0;
        }
        conn_dead(b, c, &b->err.closed);
        return -1;
    }
    c->out_off = c->out_len = 0;
    conn_pollout(b, c, idx, 0);
    return 0;
}

static int conn_send_frame(bench *b, uint32_t idx, unsigned opcode, const void *p, size_t len)
{
    bconn *c = &b->conns[idx];
    unsigned char *dst = conn_out_reserve(c, wsc_masked_size(len));
    if (!dst) {
        b->err.oom++;
        return -1;
    }
    c->out_len += (uint32_t)wsc_frame_masked(dst, opcode, p, len, rng_next(b));
    return conn_flush(b, c, idx);
}

/* ---- connecting ---------------------------------------------------------- */

static void conn_start(bench *b, uint32_t idx)
{
    bconn *c = &b->conns[idx];
    const bench_url *u = &b->urls[c->url];
    c->fd = socket(u->family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    c->state = C_CONNECTING;
    if (c->churn)
        b->churn_connecting++;
    else
        b->connecting++;
    if (c->fd < 0) {
        if (b->err.connect == 0)
            DW_WARN("socket failed", "conn=%u err=\"%s\"", idx, strerror(errno));
        conn_dead(b, c, &b->err.connect);
        return;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (b->cfg->source_ips > 1 && u->family == AF_INET) {
        /* Several source addresses, each with its own ~28k ephemeral ports.
         * IP_BIND_ADDRESS_NO_PORT defers the port choice to connect(), so
         * ports are shared across destinations as without bind(). */
        setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        struct sockaddr_in src = {.sin_family = AF_INET};
        src.sin_addr.s_addr = htonl(0x7f000001u + (uint32_t)(idx % (uint64_t)b->cfg->source_ips));
        if (bind(c->fd, (struct sockaddr *)&src, sizeof src)) {
            if (b->err.connect == 0)
                DW_WARN("bind failed", "conn=%u err=\"%s\"", idx, strerror(errno));
            conn_dead(b, c, &b->err.connect);
            return;
        }
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = idx};
    if (epoll_ctl(b->ep, EPOLL_CTL_ADD, c->fd, &ev)) {
        conn_dead(b, c, &b->err.connect);
        return;
    }
    c->pollout = 1;
    if (connect(c->fd, (const struct sockaddr *)&u->addr, u->addrlen) && errno != EINPROGRESS) {
        if (b->err.connect == 0)
            DW_WARN("connect failed", "conn=%u err=\"%s\"", idx, strerror(errno));
        conn_dead(b, c, &b->err.connect);
    }
}

/* The TCP connection is up: send the opening handshake. */
static void conn_connected(bench *b, uint32_t idx)
{
    bconn *c = &b->conns[idx];
    int soerr = 0;
    socklen_t sl = sizeof soerr;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) || soerr) {
        if (b->err.connect == 0)
            DW_WARN("connect failed", "conn=%u err=\"%s\"", idx, strerror(soerr));
        conn_dead(b, c, &b->err.connect);
        return;
    }
    if (wsc_key_new(c->key)) {
        DW_ERROR("csprng failed", "%s", "");
        conn_dead(b, c, &b->err.handshake);
        return;
    }
    const bench_url *u = &b->urls[c->url];
    char req[512];
    size_t n = wsc_request(req, sizeof req, u->hostport, u->path, c->key,
                           b->cfg->rooms ? "dynamowave.v1" : NULL);
    c->state = C_HANDSHAKE;
    ssize_t w = send(c->fd, req, n, MSG_NOSIGNAL);
    if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
        conn_dead(b, c, &b->err.connect);
        return;
    }
    if (w < 0) w = 0;
    if ((size_t)w < n) {
        unsigned char *dst = conn_out_reserve(c, n - (size_t)w);
        if (!dst) {
            conn_dead(b, c, &b->err.oom);
            return;
        }
        memcpy(dst, req + w, n - (size_t)w);
        c->out_len += (uint32_t)(n - (size_t)w);
        return; /* EPOLLOUT stays on */
    }
    conn_pollout(b, c, idx, 0);
}

/* ---- receiving ----------------------------------------------------------- */

/* Decimal digits up to ':' or the end; returns the position after them. */
static const unsigned char *parse_u64(const unsigned char *p, const unsigned char *end, uint64_t *v)
{
    uint64_t x = 0;
    const unsigned char *s = p;
    while (p < end && *p >= '0' && *p <= '9')
        x = x * 10 + (uint64_t)(*p++ - '0');
    *v = x;
    return p == s ? NULL : p;
}

/* The benchmark's own text: "b:<run>:<sender>:<seq>:<ns>..." or a sync
 * probe "s:<run>:<n>". 0, or -1 when it is not ours. */
static int on_payload(bench *b, uint32_t idx, const unsigned char *p, size_t len, int64_t now)
{
    bconn *c = &b->conns[idx];
    const unsigned char *end = p + len;
    if (len >= 11 && p[1] == ':' && p[10] == ':' && (p[0] == 'b' || p[0] == 's')) {
        if (memcmp(p + 2, b->run, 8)) {
            b->foreign++;
            return 0;
        }
        if (p[0] == 's') {
            if (!c->synced) {
                c->synced = 1;
                b->nsynced++;
            }
            return 0;
        }
        uint64_t sender, seq, ts;
        const unsigned char *q = parse_u64(p + 11, end, &sender);
        if (q && q < end && *q == ':')
            q = parse_u64(q + 1, end, &seq);
        else
            q = NULL;
        if (q && q < end && *q == ':')
            q = parse_u64(q + 1, end, &ts);
        else
            q = NULL;
        if (!q || sender >= b->nsenders || seq >= b->senders[sender].sent) {
            b->err.bogus++;
            return 0;
        }
        if (!c->receiver) return 0;
        int r =
            seqset_add(&b->seen[(size_t)idx * b->nsenders + sender], seq, b->senders[sender].sent);
        if (r < 0) {
            b->err.oom++;
        } else if (r == 0) {
            b->dup++;
        } else {
            b->delivered++;
            hist_add(&b->hist, now > (int64_t)ts ? (uint64_t)(now - (int64_t)ts) : 0);
            b->t_last_delivery = now;
        }
        return 0;
    }
    return -1;
}

/* The room a measured connection joins with --rooms. */
static uint32_t room_of(const bench *b, uint32_t idx)
{
    return (uint32_t)(idx % (uint64_t)b->cfg->rooms);
}

/* The string value of "key":"..." in a JSON object whose strings have no
 * escapes (all the server sends us), or NULL. */
static const unsigned char *json_str(const unsigned char *p, size_t len, const char *key,
                                     size_t *vlen)
{
    const unsigned char *v = memmem(p, len, key, strlen(key));
    if (!v) return NULL;
    v += strlen(key);
    const unsigned char *q = memchr(v, '"', len - (size_t)(v - p));
    if (!q) return NULL;
    *vlen = (size_t)(q - v);
    return v;
}

/* dynamowave.v1 frames: hello -> join our room; joined -> ready; message
 * -> its data is our payload; acks and presence events (join, leave) ->
 * nothing to do. */
static int on_v1(bench *b, uint32_t idx, const unsigned char *p, size_t len, int64_t now)
{
    bconn *c = &b->conns[idx];
    size_t tlen = 0, dlen = 0;
    const unsigned char *type = json_str(p, len < 32 ? len : 32, "{\"type\":\"", &tlen);
    if (!type) return -1;
    if (tlen == 7 && !memcmp(type, "message", 7)) {
        const unsigned char *data = json_str(p, len, ",\"data\":\"", &dlen);
        return data ? on_payload(b, idx, data, dlen, now) : -1;
    }
    if ((tlen == 3 && !memcmp(type, "ack", 3)) || (tlen == 4 && !memcmp(type, "join", 4)) ||
        (tlen == 5 && !memcmp(type, "leave", 5)))
        return 0;
    if (tlen == 5 && !memcmp(type, "hello", 5)) {
        if (c->churn) return 0; /* churn connections join nothing */
        char join[64];
        int n =
            snprintf(join, sizeof join, "{\"action\":\"join\",\"room\":\"r%u\"}", room_of(b, idx));
        conn_send_frame(b, idx, WSC_OP_TEXT, join, (size_t)n);
        return 0;
    }
    if (tlen == 6 && !memcmp(type, "joined", 6)) {
        if (!c->synced) {
            c->synced = 1;
            b->nsynced++;
        }
        return 0;
    }
    return -1;
}

static void on_text(bench *b, uint32_t idx, const unsigned char *p, size_t len, int64_t now)
{
    if ((b->cfg->rooms ? on_v1 : on_payload)(b, idx, p, len, now) == 0) return;
    b->err.other_frames++;
    if (b->err.other_frames <= 3)
        DW_WARN("unexpected text from server", "conn=%u text=\"%.*s\"", idx,
                (int)(len > 200 ? 200 : len), (const char *)p);
}

/* Handle every complete frame in buf; returns the bytes used, or -1 when
 * the connection is gone. */
static long on_frames(bench *b, uint32_t idx, const unsigned char *buf, size_t n, int64_t now)
{
    bconn *c = &b->conns[idx];
    size_t off = 0;
    while (off < n) {
        wsc_frame f;
        long k = wsc_frame_parse(buf + off, n - off, MAX_FRAME, &f);
        if (k == 0) break;
        if (k < 0) {
            DW_WARN("malformed frame from server", "conn=%u", idx);
            conn_dead(b, c, &b->err.protocol);
            return -1;
        }
        off += (size_t)k;
        switch (f.opcode) {
        case WSC_OP_TEXT:
        case WSC_OP_CONT:
            if (f.opcode == WSC_OP_TEXT && f.fin && !c->frag_on) {
                on_text(b, idx, f.payload, f.len, now);
                break;
            }
            if ((f.opcode == WSC_OP_TEXT) == (c->frag_on != 0)) {
                conn_dead(b, c, &b->err.protocol);
                return -1;
            }
            if (f.opcode == WSC_OP_TEXT) {
                c->frag_on = 1;
                c->frag_len = 0;
            }
            if (c->frag_len + f.len > MAX_FRAME ||
                grow(&c->frag, &c->frag_cap, c->frag_len + f.len)) {
                conn_dead(b, c, &b->err.protocol);
                return -1;
            }
            memcpy(c->frag + c->frag_len, f.payload, f.len);
            c->frag_len += (uint32_t)f.len;
            if (f.fin) {
                c->frag_on = 0;
                on_text(b, idx, c->frag, c->frag_len, now);
            }
            break;
        case WSC_OP_BINARY: b->err.other_frames++; break;
        case WSC_OP_PING:
            if (conn_send_frame(b, idx, WSC_OP_PONG, f.payload, f.len)) return -1;
            break;
        case WSC_OP_PONG: break;
        case WSC_OP_CLOSE:
            if (b->err.closed == 0 && b->phase != P_DONE)
                DW_WARN("server closed a connection", "conn=%u code=%d", idx,
                        f.len >= 2 ? f.payload[0] << 8 | f.payload[1] : 0);
            conn_dead(b, c, &b->err.closed);
            return -1;
        default: conn_dead(b, c, &b->err.protocol); return -1;
        }
    }
    return (long)off;
}

/* Queue a churn connection for its next step. The rings hold twice the
 * slots, more than the rate limit lets through in one hold period, so they
 * do not fill; if one ever did, the connection would just stay open. */
static void churn_push(churn_ring *r, uint32_t idx, uint32_t gen, int64_t t)
{
    if (r->count == r->cap) return;
    r->e[(r->head + r->count) % r->cap] = (churn_entry){idx, gen, t};
    r->count++;
}

static void conn_opened(bench *b, bconn *c, int64_t now)
{
    c->state = C_OPEN;
    if (c->churn) {
        b->churn_connecting--;
        b->churn_open++;
        b->churn_opened++;
        c->t_open = now;
        churn_push(&b->churn_opening, (uint32_t)(c - b->conns), c->gen, now);
        return;
    }
    b->connecting--;
    b->nalive++;
    b->nopened++;
    b->t_last_open = now;
}

static void conn_readable(bench *b, uint32_t idx)
{
    bconn *c = &b->conns[idx];
    if (c->state == C_CLOSING) {
        /* Our close frame is out: discard until the server's close ends
         * the TCP connection. */
        ssize_t r;
        while ((r = recv(c->fd, b->rbuf, b->rbuf_cap, 0)) > 0)
            ;
        if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            b->churn_closed++;
            conn_dead(b, c, NULL);
        }
        return;
    }
    for (int round = 0; round < 4; round++) {
        if (c->state != C_OPEN && c->state != C_HANDSHAKE) return;
        size_t have = c->carry_len;
        if (have) memcpy(b->rbuf, c->carry, have);
        size_t room = b->rbuf_cap - have;
        ssize_t r = recv(c->fd, b->rbuf + have, room, 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                conn_dead(b, c, c->state == C_OPEN ? &b->err.closed : &b->err.handshake);
            return;
        }
        if (r == 0) {
            if (c->state == C_OPEN && b->err.closed == 0 && b->phase != P_DONE)
                DW_WARN("server closed a connection", "conn=%u", idx);
            conn_dead(b, c, c->state == C_OPEN ? &b->err.closed : &b->err.handshake);
            return;
        }
        int64_t now = dw_mono_ns();
        size_t total = have + (size_t)r, used = 0;
        c->carry_len = 0;
        if (c->state == C_HANDSHAKE) {
            size_t hl = 0;
            int ok = wsc_response((const char *)b->rbuf, total, c->key, &hl);
            if (ok < 0 || (ok == 0 && total >= MAX_HANDSHAKE)) {
                if (b->err.handshake == 0) {
                    size_t sl = 0;
                    while (sl < total && sl < 120 && b->rbuf[sl] != '\r' && b->rbuf[sl] != '\n')
                        sl++;
                    DW_WARN("handshake refused", "conn=%u status=\"%.*s\"", idx, (int)sl,
                            (const char *)b->rbuf);
                }
                conn_dead(b, c, &b->err.handshake);
                return;
            }
            if (ok == 0) {
                used = 0;
                goto keep;
            }
            used = hl;
            conn_opened(b, c, now);
        }
        long k = on_frames(b, idx, b->rbuf + used, total - used, now);
        if (k < 0) return;
        used += (size_t)k;
    keep:
        if (used < total) {
            if (grow(&c->carry, &c->carry_cap, total - used)) {
                conn_dead(b, c, &b->err.oom);
                return;
            }
            memcpy(c->carry, b->rbuf + used, total - used);
            c->carry_len = (uint32_t)(total - used);
        }
        if ((size_t)r < room) return; /* the socket is drained */
    }
}

/* ---- sending ------------------------------------------------------------- */

static char *put_u64(char *p, uint64_t v)
{
    char tmp[20];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        *p++ = tmp[--n];
    return p;
}

static const char msg_head[] = "{\"action\":\"sendmessage\",\"data\":\"";
static const char msg_head_v1[] = "{\"action\":\"sendmessage\",\"room\":\"r";
static const char msg_tail[] = "\"}";

/* The sendmessage JSON carrying "b:<run>:<sender>:<seq>:<ns>[:<padding>]"
 * (or "s:<run>:<n>" for a sync probe) into b->msg; returns its length. */
static size_t build_msg(bench *b, char kind, uint64_t sender, uint64_t seq, int64_t ns)
{
    char *p = b->msg;
    if (b->cfg->rooms) { /* {"action":"sendmessage","room":"r<k>","data":"... */
        memcpy(p, msg_head_v1, sizeof msg_head_v1 - 1);
        p = put_u64(p + sizeof msg_head_v1 - 1, room_of(b, b->senders[sender].conn));
        memcpy(p, "\",\"data\":\"", 10);
        p += 10;
    } else {
        memcpy(p, msg_head, sizeof msg_head - 1);
        p += sizeof msg_head - 1;
    }
    char *data = p;
    *p++ = kind;
    *p++ = ':';
    memcpy(p, b->run, 8);
    p += 8;
    *p++ = ':';
    if (kind == 'b') {
        p = put_u64(p, sender);
        *p++ = ':';
        p = put_u64(p, seq);
        *p++ = ':';
        p = put_u64(p, (uint64_t)ns);
        size_t dlen = (size_t)(p - data);
        if ((size_t)b->cfg->size > dlen + 1) {
            *p++ = ':';
            size_t pad = (size_t)b->cfg->size - dlen - 1;
            memset(p, 'x', pad);
            p += pad;
        }
    } else {
        p = put_u64(p, seq);
    }
    memcpy(p, msg_tail, sizeof msg_tail - 1);
    p += sizeof msg_tail - 1;
    return (size_t)(p - b->msg);
}

static void sender_send(bench *b, uint32_t si, uint64_t n, int64_t now)
{
    bsender *s = &b->senders[si];
    bconn *c = &b->conns[s->conn];
    if (c->state != C_OPEN || !n) return;
    if (c->out_len - c->out_off > OUT_HIGH) {
        b->send_blocked++;
        return;
    }
    for (uint64_t i = 0; i < n; i++) {
        size_t len = build_msg(b, 'b', si, s->sent, now);
        unsigned char *dst = conn_out_reserve(c, wsc_masked_size(len));
        if (!dst) {
            b->err.oom++;
            break;
        }
        c->out_len += (uint32_t)wsc_frame_masked(dst, WSC_OP_TEXT, b->msg, len, rng_next(b));
        s->sent++;
        b->sent++;
    }
    conn_flush(b, c, s->conn);
}

static void send_pass(bench *b, int64_t now)
{
    const bench_config *cfg = b->cfg;
    for (uint32_t si = 0; si < b->nsenders; si++) {
        bsender *s = &b->senders[si];
        uint64_t n;
        if (cfg->rate) {
            /* One evenly spaced stream: message k of the aggregate is due at
             * k / rate and belongs to sender k % senders. (Giving every
             * sender the same phase would make them send in bursts of
             * `senders` messages, which a server coalesces into one write
             * per socket, and the latency measured would flatter it.) */
            double k = (double)(now - b->t_send0) / (double)NS * (double)cfg->rate;
            uint64_t due = k >= si ? (uint64_t)((k - si) / b->nsenders) + 1 : 0;
            n = due > s->sent ? due - s->sent : 0;
        } else {
            /* In flight: sent, and not yet back at the sender itself. */
            uint64_t back = seqset_count(&b->seen[(size_t)s->conn * b->nsenders + si]);
            uint64_t inflight = s->sent - back;
            n = inflight < (uint64_t)cfg->window ? (uint64_t)cfg->window - inflight : 0;
        }
        if (n > SEND_BATCH) n = SEND_BATCH;
        sender_send(b, si, n, now);
    }
}

static void send_sync(bench *b)
{
    for (uint32_t tries = 0; tries < b->nconns; tries++) {
        uint32_t idx = b->sync_rot++ % b->nconns;
        if (b->conns[idx].state != C_OPEN) continue;
        size_t len = build_msg(b, 's', 0, b->sync_sent++, 0);
        conn_send_frame(b, idx, WSC_OP_TEXT, b->msg, len);
        return;
    }
}

/* ---- churn --------------------------------------------------------------- */

/* Open --churn connections per second in spare slots; close each one
 * (close frame 1000, then wait for the server's close) --churn-hold-ms after
 * its handshake. They are never receivers: they only load the connect and
 * disconnect paths while the measured connections carry the traffic. */
static void churn_pass(bench *b, int64_t now, int opening)
{
    const bench_config *cfg = b->cfg;
    if (opening) {
        uint64_t due = (uint64_t)((double)(now - b->t_churn0) / NS * (double)cfg->churn) + 1;
        while (b->churn_started < due && b->churn_nfree &&
               b->churn_connecting < (uint64_t)cfg->connect_inflight) {
            uint32_t idx = b->churn_free[--b->churn_nfree];
            bconn *c = &b->conns[idx];
            uint32_t gen = c->gen + 1;
            memset(c, 0, sizeof *c);
            c->fd = -1;
            c->churn = 1;
            c->gen = gen;
            c->url = idx % b->nurls;
            b->churn_started++;
            conn_start(b, idx);
        }
        if (b->churn_started < due && !b->churn_nfree) b->churn_starved++;
    }
    int64_t hold = cfg->churn_hold_ms * MS;
    while (b->churn_opening.count) {
        churn_entry e = b->churn_opening.e[b->churn_opening.head];
        bconn *c = &b->conns[e.idx];
        int live = c->gen == e.gen && c->state == C_OPEN;
        if (live && e.t + hold > now) break;
        b->churn_opening.head = (b->churn_opening.head + 1) % b->churn_opening.cap;
        b->churn_opening.count--;
        if (!live) continue;
        static const unsigned char normal[2] = {0x03, 0xe8}; /* 1000 */
        if (conn_send_frame(b, e.idx, WSC_OP_CLOSE, normal, sizeof normal)) continue;
        c->state = C_CLOSING;
        churn_push(&b->churn_closing, e.idx, e.gen, now + CHURN_CLOSE_WAIT);
    }
    while (b->churn_closing.count) {
        churn_entry e = b->churn_closing.e[b->churn_closing.head];
        bconn *c = &b->conns[e.idx];
        int live = c->gen == e.gen && c->state == C_CLOSING;
        if (live && e.t > now) break;
        b->churn_closing.head = (b->churn_closing.head + 1) % b->churn_closing.cap;
        b->churn_closing.count--;
        if (live) conn_dead(b, c, &b->churn_close_timeouts);
    }
}

/* ---- phases -------------------------------------------------------------- */

static void snapshot_procs(bench *b, int which)
{
    stage_set *set = which == 1 ? b->stages_send : which == 2 ? b->stages_end : NULL;
    if (set) {
        memset(set, 0, sizeof *set);
        for (size_t i = 0; i < b->nmetrics; i++)
            stages_scrape(set, b->metrics_urls[i]);
    }
    for (uint32_t i = 0; i <= b->nprocs; i++) {
        bench_proc *p = i < b->nprocs ? &b->procs[i] : &b->self;
        procstat *dst = which == 0 ? &p->start : which == 1 ? &p->send : &p->end;
        procstat_read(p->pid, dst);
    }
}

static void begin_run(bench *b, int64_t now)
{
    const bench_config *cfg = b->cfg;
    b->t_ready = now;
    for (uint32_t i = 0; i < b->nconns; i++) {
        bconn *c = &b->conns[i];
        if (c->state != C_OPEN) continue;
        if ((cfg->sync || cfg->rooms) && !c->synced) {
            b->err.not_ready++;
            continue;
        }
        c->receiver = 1;
        b->nreceivers++;
        if (cfg->rooms) b->room_receivers[room_of(b, i)]++;
    }
    DW_INFO("ready", "opened=%u failed=%u receivers=%u connect_s=%.3f ready_s=%.3f", b->nopened,
            b->nfailed, b->nreceivers, (double)(b->t_connected - b->t_start) / NS,
            (double)(b->t_ready - b->t_start) / NS);
    b->t_churn0 = now;
    if (cfg->idle) {
        b->phase = P_HOLD;
        b->t_deadline = now + cfg->duration * NS;
        snapshot_procs(b, 1);
        return;
    }
    uint32_t ns = (uint32_t)cfg->senders < b->nreceivers ? (uint32_t)cfg->senders : b->nreceivers;
    if (!ns) {
        DW_ERROR("no connection is ready to send", "%s", "");
        b->phase = P_DONE;
        return;
    }
    b->senders = calloc(ns, sizeof *b->senders);
    b->seen = calloc((size_t)b->nconns * ns, sizeof *b->seen);
    if (!b->senders || !b->seen) {
        b->err.oom++;
        b->phase = P_DONE;
        return;
    }
    b->nsenders = ns;
    for (uint32_t i = 0, k = 0; i < b->nconns && k < ns; i++)
        if (b->conns[i].receiver) b->senders[k++].conn = i;
    snapshot_procs(b, 1);
    b->t_send0 = dw_mono_ns();
    b->t_churn0 = b->t_send0;
    b->t_send_end = b->t_send0 + cfg->duration * NS;
    b->phase = P_SEND;
}

static void step(bench *b, int64_t now)
{
    const bench_config *cfg = b->cfg;
    switch (b->phase) {
    case P_CONNECT: {
        uint64_t allowed = b->nconns;
        if (cfg->connect_rate) {
            uint64_t r =
                (uint64_t)((double)(now - b->t_start) / NS * (double)cfg->connect_rate) + 1;
            if (r < allowed) allowed = r;
        }
        while (b->next_start < allowed && b->connecting < (uint64_t)cfg->connect_inflight)
            conn_start(b, b->next_start++);
        int timed_out = now > b->t_start + cfg->connect_timeout * NS;
        if ((b->next_start == b->nconns && !b->connecting) || timed_out) {
            if (timed_out) {
                for (uint32_t i = 0; i < b->nconns; i++) {
                    bconn *c = &b->conns[i];
                    if (c->state == C_CONNECTING || c->state == C_HANDSHAKE)
                        conn_dead(b, c, &b->err.connect);
                    else if (c->state == C_NEW)
                        b->err.connect++;
                }
                DW_WARN("connect timeout", "opened=%u of=%u", b->nopened, b->nconns);
            }
            b->t_connected = b->t_last_open ? b->t_last_open : now;
            DW_INFO("connected", "opened=%u failed=%u connect_s=%.3f", b->nopened, b->nfailed,
                    (double)(b->t_connected - b->t_start) / NS);
            /* v1: a connection is ready once its room answered joined. */
            if ((cfg->sync || cfg->rooms) && b->nalive) {
                b->phase = P_SYNC;
                b->next_sync = now;
            } else {
                begin_run(b, now);
            }
        }
        break;
    }
    case P_SYNC:
        if (b->nsynced >= b->nalive || now > b->t_start + cfg->connect_timeout * NS) {
            begin_run(b, now);
        } else if (now >= b->next_sync && !cfg->rooms) {
            send_sync(b);
            b->next_sync = now + SYNC_EVERY;
        }
        break;
    case P_SEND:
        if (now < b->t_send_end && b->nalive) {
            send_pass(b, now);
            churn_pass(b, now, 1);
            break;
        }
        DW_INFO("draining", "sent=%llu delivered=%llu", (unsigned long long)b->sent,
                (unsigned long long)b->delivered);
        b->phase = P_DRAIN;
        b->t_deadline = now + cfg->drain * NS;
        /* fall through */
    case P_DRAIN:
        churn_pass(b, now, 0);
        if (b->delivered >= bench_expected(b) || now >= b->t_deadline) b->phase = P_DONE;
        break;
    case P_HOLD:
        churn_pass(b, now, 1);
        if (now >= b->t_deadline) b->phase = P_DONE;
        break;
    }
}

static int wait_ms(const bench *b, int64_t now)
{
    switch (b->phase) {
    case P_CONNECT: return b->cfg->connect_rate ? 1 : 5;
    case P_SEND: return b->cfg->rate || b->cfg->churn ? 1 : 10;
    case P_HOLD: {
        int64_t left = (b->t_deadline - now) / MS + 1;
        int cap = b->cfg->churn ? 1 : 100;
        return left < cap ? (int)left : cap;
    }
    default: return 10;
    }
}

uint64_t bench_expected(const bench *b)
{
    if (!b->cfg->rooms) return b->sent * b->nreceivers;
    uint64_t n = 0;
    for (uint32_t s = 0; s < b->nsenders; s++)
        n += b->senders[s].sent * b->room_receivers[room_of(b, b->senders[s].conn)];
    return n;
}

int bench_run(bench *b)
{
    const bench_config *cfg = b->cfg;
    b->ep = epoll_create1(EPOLL_CLOEXEC);
    b->nconns = (uint32_t)cfg->connections;
    if (cfg->churn) {
        /* Enough slots for everything open, closing or connecting at once. */
        double slots = (double)cfg->churn * ((double)cfg->churn_hold_ms / 1000.0 +
                                             (double)CHURN_CLOSE_WAIT / NS + 1) +
                       16;
        b->nchurn = (uint32_t)slots;
        b->churn_free = malloc(b->nchurn * sizeof *b->churn_free);
        b->churn_opening.cap = b->churn_closing.cap = 2 * b->nchurn;
        b->churn_opening.e = malloc(b->churn_opening.cap * sizeof(churn_entry));
        b->churn_closing.e = malloc(b->churn_closing.cap * sizeof(churn_entry));
        if (!b->churn_free || !b->churn_opening.e || !b->churn_closing.e) {
            DW_ERROR("cannot start", "err=\"%s\"", strerror(errno));
            return -1;
        }
    }
    b->conns = calloc((size_t)b->nconns + b->nchurn, sizeof *b->conns);
    b->rbuf_cap = RBUF_SIZE;
    b->rbuf = malloc(b->rbuf_cap);
    b->msg_cap = 256 + (size_t)cfg->size;
    b->msg = malloc(b->msg_cap);
    if (cfg->rooms) b->room_receivers = calloc((size_t)cfg->rooms, sizeof *b->room_receivers);
    if (b->ep < 0 || !b->conns || !b->rbuf || !b->msg || (cfg->rooms && !b->room_receivers)) {
        DW_ERROR("cannot start", "err=\"%s\"", strerror(errno));
        return -1;
    }
    unsigned char rnd[12];
    if (RAND_bytes(rnd, sizeof rnd) != 1) {
        DW_ERROR("csprng failed", "%s", "");
        return -1;
    }
    snprintf(b->run, sizeof b->run, "%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2], rnd[3]);
    memcpy(&b->rng, rnd + 4, 8);
    b->rng |= 1;
    for (uint32_t i = 0; i < b->nconns; i++) {
        b->conns[i].fd = -1;
        b->conns[i].url = i % b->nurls;
    }
    for (uint32_t i = 0; i < b->nchurn; i++) {
        uint32_t idx = b->nconns + b->nchurn - 1 - i; /* lowest slot first */
        b->conns[idx].fd = -1;
        b->conns[idx].churn = 1;
        b->churn_free[b->churn_nfree++] = idx;
    }

    snapshot_procs(b, 0);
    b->t_start = dw_mono_ns();
    b->phase = P_CONNECT;
    struct epoll_event evs[MAX_EVENTS];
    while (b->phase != P_DONE) {
        int64_t now = dw_mono_ns();
        step(b, now);
        if (b->phase == P_DONE) break;
        if (dw_stop) {
            b->interrupted = 1;
            break;
        }
        int n = epoll_wait(b->ep, evs, MAX_EVENTS, getenv("DWB_SPIN") ? 0 : wait_ms(b, now));
        for (int i = 0; i < n; i++) {
            uint32_t idx = evs[i].data.u32;
            bconn *c = &b->conns[idx];
            uint32_t e = evs[i].events;
            if (c->state == C_CONNECTING) {
                if (e & (EPOLLOUT | EPOLLERR | EPOLLHUP)) conn_connected(b, idx);
                continue;
            }
            if (e & (EPOLLIN | EPOLLERR | EPOLLHUP)) conn_readable(b, idx);
            if ((e & EPOLLOUT) &&
                (c->state == C_OPEN || c->state == C_HANDSHAKE || c->state == C_CLOSING))
                conn_flush(b, c, idx);
        }
    }
    b->t_end = dw_mono_ns();
    snapshot_procs(b, 2);
    return 0;
}

void bench_free(bench *b)
{
    int was = b->phase;
    b->phase = P_DONE; /* closing now is not an error */
    for (uint32_t i = 0; b->conns && i < b->nconns + b->nchurn; i++)
        conn_dead(b, &b->conns[i], NULL);
    b->phase = was;
    for (size_t i = 0; b->seen && i < (size_t)b->nconns * b->nsenders; i++)
        seqset_free(&b->seen[i]);
    free(b->seen);
    free(b->senders);
    free(b->conns);
    free(b->rbuf);
    free(b->msg);
    free(b->churn_free);
    free(b->room_receivers);
    b->room_receivers = NULL;
    free(b->churn_opening.e);
    free(b->churn_closing.e);
    b->churn_free = NULL;
    b->churn_opening.e = b->churn_closing.e = NULL;
    if (b->ep >= 0) close(b->ep);
    b->seen = NULL;
    b->senders = NULL;
    b->conns = NULL;
    b->rbuf = NULL;
    b->msg = NULL;
    b->ep = -1;
}
