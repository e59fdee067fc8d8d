#include "ratelimit.h"

#include <arpa/inet.h>
#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>

#define NS_PER_S 1000000000ull
#define NS_PER_MS 1000000ull
#define NONE UINT32_MAX

/* ---- token bucket ---- */

void rl_bucket_init(rl_bucket *b, uint64_t rate, uint64_t burst, int64_t now_ns)
{
    /* Both capped at 1e9 so that level (<= burst * 1e9) and a refill step
     * (< need + rate) stay below 2^63. */
    if (rate > RL_BURST_MAX) rate = RL_BURST_MAX;
    if (burst < 1) burst = 1;
    if (burst > RL_BURST_MAX) burst = RL_BURST_MAX;
    b->rate = rate;
    b->burst = burst;
    b->level = burst * NS_PER_S;
    b->last_ns = now_ns;
}

static void refill(rl_bucket *b, int64_t now_ns)
{
    if (now_ns <= b->last_ns) return;
    uint64_t elapsed = (uint64_t)now_ns - (uint64_t)b->last_ns;
    uint64_t full = b->burst * NS_PER_S;
    b->last_ns = now_ns;
    if (b->level >= full) return;
    uint64_t need = full - b->level;
    uint64_t to_full = (need + b->rate - 1) / b->rate;
    if (elapsed >= to_full)
        b->level = full;
    else
        b->level += elapsed * b->rate;
}

int64_t rl_take(rl_bucket *b, int64_t now_ns, uint64_t n)
{
    if (b->rate == 0) return 0;
    if (n > b->burst) return RL_NEVER;
    refill(b, now_ns);
    uint64_t cost = n * NS_PER_S;
    if (b->level >= cost) {
        b->level -= cost;
        return 0;
    }
    uint64_t wait_ns = (cost - b->level + b->rate - 1) / b->rate;
    uint64_t ms = (wait_ns + NS_PER_MS - 1) / NS_PER_MS;
    return ms < 1 ? 1 : (int64_t)ms;
}

uint64_t rl_available(rl_bucket *b, int64_t now_ns)
{
    if (b->rate == 0) return b->burst;
    refill(b, now_ns);
    return b->level / NS_PER_S;
}

/* ---- per source IP ---- */

typedef struct rl_ipentry {
    rl_ip key;
    rl_bucket bucket;
    uint32_t conns;
    uint32_t prev, next; /* idle list links while conns == 0 */
} rl_ipentry;

int rl_ip_parse(const char *text, rl_ip *out)
{
    struct in_addr a4;
    if (!text) return -1;
    if (inet_pton(AF_INET, text, &a4) == 1) {
        memset(out->b, 0, 10);
        out->b[10] = 0xff;
        out->b[11] = 0xff;
        memcpy(out->b + 12, &a4, 4);
        return 0;
    }
    if (inet_pton(AF_INET6, text, out->b) == 1) return 0;
    return -1;
}

void rl_iptable_config_default(rl_iptable_config *c)
{
    c->max_entries = RL_IP_TABLE_MAX;
    c->max_conns = RL_IP_MAX_CONNS;
    c->conn_rate = RL_IP_CONN_RATE;
    c->conn_burst = RL_IP_CONN_BURST;
    c->v6_prefix = RL_IP_V6_PREFIX;
}

const char *rl_verdict_str(rl_verdict v)
{
    switch (v) {
    case RL_ALLOW: return "allowed";
    case RL_DENY_CONCURRENT: return "too many connections from this address";
    case RL_DENY_RATE: return "new connections from this address too fast";
    case RL_DENY_TABLE_FULL: return "address table full";
    }
    return "unknown";
}

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                   \
    do {                                                                                           \
        v0 += v1, v1 = ROTL(v1, 13), v1 ^= v0, v0 = ROTL(v0, 32);                                  \
        v2 += v3, v3 = ROTL(v3, 16), v3 ^= v2;                                                     \
        v0 += v3, v3 = ROTL(v3, 21), v3 ^= v0;                                                     \
        v2 += v1, v1 = ROTL(v1, 17), v1 ^= v2, v2 = ROTL(v2, 32);                                  \
    } while (0)

static uint64_t load_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* SipHash-2-4 of a 16-byte key: the source addresses are chosen by the
 * peers, so the index must not let them pick colliding slots. */
static uint64_t siphash16(uint64_t k0, uint64_t k1, const uint8_t in[16])
{
    uint64_t v0 = k0 ^ 0x736f6d6570736575ull, v1 = k1 ^ 0x646f72616e646f6dull;
    uint64_t v2 = k0 ^ 0x6c7967656e657261ull, v3 = k1 ^ 0x7465646279746573ull;
    for (int w = 0; w < 2; w++) {
        uint64_t m = load_le64(in + 8 * w);
        v3 ^= m;
        SIPROUND;
        SIPROUND;
        v0 ^= m;
    }
    uint64_t last = (uint64_t)16 << 56;
    v3 ^= last;
    SIPROUND;
    SIPROUND;
    v0 ^= last;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

static int is_v4_mapped(const rl_ip *ip)
{
    static const uint8_t prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    return memcmp(ip->b, prefix, sizeof prefix) == 0;
}

/* One key per IPv4 address, one per IPv6 prefix: a host with a /64 has
 * more addresses than the table has entries. */
static rl_ip key_of(const rl_iptable *t, const rl_ip *ip)
{
    rl_ip k = *ip;
    if (is_v4_mapped(ip) || t->cfg.v6_prefix >= 128) return k;
    uint32_t bits = t->cfg.v6_prefix;
    for (uint32_t i = 0; i < 16; i++) {
        if (bits >= 8) {
            bits -= 8;
        } else {
            k.b[i] &= (uint8_t)(0xff00u >> bits);
            bits = 0;
        }
    }
    return k;
}

static uint32_t home_slot(const rl_iptable *t, const rl_ip *k)
{
    return (uint32_t)siphash16(t->k0, t->k1, k->b) & (t->nslots - 1);
}

/* The slot holding k, or the empty slot where it would go. */
static uint32_t find_slot(const rl_iptable *t, const rl_ip *k)
{
    uint32_t mask = t->nslots - 1;
    uint32_t s = home_slot(t, k);
    while (t->slots[s] && memcmp(t->e[t->slots[s] - 1].key.b, k->b, 16) != 0)
        s = (s + 1) & mask;
    return s;
}

/* Backward-shift deletion keeps every probe chain unbroken without tombstones. */
static void slot_remove(rl_iptable *t, uint32_t s)
{
    uint32_t mask = t->nslots - 1;
    t->slots[s] = 0;
    uint32_t j = s;
    for (;;) {
        j = (j + 1) & mask;
        if (!t->slots[j]) return;
        uint32_t h = home_slot(t, &t->e[t->slots[j] - 1].key);
        /* Move j into the hole unless its home lies cyclically in (s, j]. */
        int stays = s <= j ? (h > s && h <= j) : (h > s || h <= j);
        if (!stays) {
            t->slots[s] = t->slots[j];
            t->slots[j] = 0;
            s = j;
        }
    }
}

static void idle_unlink(rl_iptable *t, uint32_t i)
{
    rl_ipentry *e = &t->e[i];
    if (e->prev != NONE)
        t->e[e->prev].next = e->next;
    else
        t->idle_head = e->next;
    if (e->next != NONE)
        t->e[e->next].prev = e->prev;
    else
        t->idle_tail = e->prev;
    e->prev = e->next = NONE;
}

static void idle_append(rl_iptable *t, uint32_t i)
{
    rl_ipentry *e = &t->e[i];
    e->prev = t->idle_tail;
    e->next = NONE;
    if (t->idle_tail != NONE)
        t->e[t->idle_tail].next = i;
    else
        t->idle_head = i;
    t->idle_tail = i;
}

int rl_iptable_init(rl_iptable *t, const rl_iptable_config *c, const uint8_t *seed)
{
    memset(t, 0, sizeof *t);
    if (c->max_entries == 0 || c->max_entries > (1u << 30) || c->v6_prefix == 0) return -1;
    t->cfg = *c;
    uint8_t key[16];
    if (seed)
        memcpy(key, seed, sizeof key);
    else if (RAND_bytes(key, sizeof key) != 1)
        return -1;
    t->k0 = load_le64(key);
    t->k1 = load_le64(key + 8);
    t->nslots = 1;
    while (t->nslots < 2 * c->max_entries)
        t->nslots <<= 1;
    t->e = calloc(c->max_entries, sizeof *t->e);
    t->slots = calloc(t->nslots, sizeof *t->slots);
    if (!t->e || !t->slots) goto error;
    t->idle_head = t->idle_tail = NONE;
    return 0;

error:
    rl_iptable_free(t);
    return -1;
}

void rl_iptable_free(rl_iptable *t)
{
    if (!t) return;
    free(t->e);
    free(t->slots);
    memset(t, 0, sizeof *t);
}

/* An entry for a new key: a never-used one, else the least recently used
 * entry without connections. NONE when every entry holds connections. */
static uint32_t entry_take(rl_iptable *t)
{
    if (t->free_head < t->cfg.max_entries) {
        t->used++;
        return t->free_head++;
    }
    uint32_t i = t->idle_head;
    if (i == NONE) return NONE;
    idle_unlink(t, i);
    slot_remove(t, find_slot(t, &t->e[i].key));
    return i;
}

rl_verdict rl_ip_conn_open(rl_iptable *t, const rl_ip *ip, int64_t now_ns, int64_t *retry_ms)
{
    rl_ip k = key_of(t, ip);
    uint32_t s = find_slot(t, &k);
    uint32_t i;
    if (t->slots[s]) {
        i = t->slots[s] - 1;
    } else {
        i = entry_take(t);
        if (i == NONE) return RL_DENY_TABLE_FULL;
        /* Eviction may have shifted slots: look for the hole again. */
        s = find_slot(t, &k);
        rl_ipentry *e = &t->e[i];
        e->key = k;
        e->conns = 0;
        rl_bucket_init(&e->bucket, t->cfg.conn_rate, t->cfg.conn_burst, now_ns);
        e->prev = e->next = NONE;
        idle_append(t, i);
        t->slots[s] = i + 1;
    }
    rl_ipentry *e = &t->e[i];
    if (t->cfg.max_conns && e->conns >= t->cfg.max_conns) return RL_DENY_CONCURRENT;
    int64_t wait = rl_take(&e->bucket, now_ns, 1);
    if (wait) {
        if (retry_ms) *retry_ms = wait;
        if (e->conns == 0) {
            /* Still busy knocking: keep it away from eviction. */
            idle_unlink(t, i);
            idle_append(t, i);
        }
        return RL_DENY_RATE;
    }
    if (e->conns++ == 0) idle_unlink(t, i);
    return RL_ALLOW;
}

void rl_ip_conn_close(rl_iptable *t, const rl_ip *ip)
{
    rl_ip k = key_of(t, ip);
    uint32_t s = find_slot(t, &k);
    if (!t->slots[s]) return;
    uint32_t i = t->slots[s] - 1;
    rl_ipentry *e = &t->e[i];
    if (e->conns == 0) return;
    if (--e->conns == 0) idle_append(t, i);
}

uint32_t rl_ip_conns(const rl_iptable *t, const rl_ip *ip)
{
    rl_ip k = key_of(t, ip);
    uint32_t s = find_slot(t, &k);
    return t->slots[s] ? t->e[t->slots[s] - 1].conns : 0;
}

uint32_t rl_iptable_size(const rl_iptable *t)
{
    return t->used;
}

/* ---- strikes ---- */

void rl_strike_policy_default(rl_strike_policy *p)
{
    p->max_strikes = 5;
    p->strike_gap_ns = (int64_t)NS_PER_S;
    p->window_ns = 60 * (int64_t)NS_PER_S;
}

rl_strike_action rl_strike(rl_strikes *s, const rl_strike_policy *p, int64_t now_ns)
{
    if (s->count && now_ns - s->first_ns >= p->window_ns) s->count = 0;
    if (s->count == 0) {
        s->count = 1;
        s->first_ns = s->last_ns = now_ns;
    } else if (now_ns - s->last_ns >= p->strike_gap_ns) {
        s->count++;
        s->last_ns = now_ns;
    }
    return s->count > p->max_strikes ? RL_STRIKE_CLOSE : RL_STRIKE_WARN;
}
