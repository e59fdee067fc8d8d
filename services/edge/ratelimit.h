/* Throttling at the edge: token buckets (per connection, whole edge), a
 * bounded per-source-IP table (concurrent and new connections), and the
 * strike policy that closes a client which keeps violating.
 * Pure: the caller passes the time (monotonic ns), so tests are exact.
 * Not thread-safe: the lws thread owns every bucket and the table. */
#ifndef EDGE_RATELIMIT_H
#define EDGE_RATELIMIT_H

#include <stdint.h>

/* Defaults (API Gateway's and Pusher's numbers); each has a config knob. */
#define RL_CONN_MSG_RATE 10 /* per connection: messages/s (Pusher) */
#define RL_CONN_MSG_BURST 20
#define RL_EDGE_MSG_RATE 10000 /* whole edge: inbound messages/s (API Gateway) */
#define RL_EDGE_MSG_BURST 5000
#define RL_EDGE_CONN_RATE 500 /* whole edge: new connections/s (API Gateway) */
#define RL_EDGE_CONN_BURST 500
#define RL_IP_MAX_CONNS 100 /* per source IP: concurrent connections */
#define RL_IP_CONN_RATE 20  /* per source IP: new connections/s */
#define RL_IP_CONN_BURST 50
#define RL_IP_TABLE_MAX 65536 /* source IPs remembered at once */
#define RL_IP_V6_PREFIX 64    /* IPv6 sources are counted per /64 */

/* Largest burst a bucket holds (keeps the fixed-point math in 64 bits). */
#define RL_BURST_MAX 1000000000u
/* rl_take()'s answer when n can never be taken (n > burst). */
#define RL_NEVER INT64_MAX

/* A token bucket: holds up to `burst` tokens, refilled at `rate` per
 * second. Levels are kept in token-nanoseconds so refills are exact. */
typedef struct rl_bucket {
    uint64_t rate;   /* tokens per second; 0 = unlimited */
    uint64_t burst;  /* capacity in tokens */
    uint64_t level;  /* tokens * 1e9 */
    int64_t last_ns; /* time of the last refill */
} rl_bucket;

/* Start full at now_ns. rate 0 disables the bucket (every take passes);
 * burst is clamped to 1..RL_BURST_MAX. */
void rl_bucket_init(rl_bucket *b, uint64_t rate, uint64_t burst, int64_t now_ns);

/* Take n tokens at now_ns. Returns 0 when taken, otherwise the milliseconds
 * (>= 1) until n tokens will be there, with nothing taken; RL_NEVER when
 * n > burst. A clock that steps back refills nothing. */
int64_t rl_take(rl_bucket *b, int64_t now_ns, uint64_t n);

/* Whole tokens available at now_ns (refills first); for metrics and tests. */
uint64_t rl_available(rl_bucket *b, int64_t now_ns);

/* ---- per source IP ---- */

/* An address as 16 bytes: IPv6 as is, IPv4 as ::ffff:a.b.c.d. */
typedef struct rl_ip {
    uint8_t b[16];
} rl_ip;

/* Parse "192.0.2.1", "2001:db8::1" or "::ffff:192.0.2.1": 0 or -1. */
int rl_ip_parse(const char *text, rl_ip *out);

typedef struct rl_iptable_config {
    uint32_t max_entries; /* table bound (RL_IP_TABLE_MAX) */
    uint32_t max_conns;   /* concurrent connections per IP; 0 = unlimited */
    uint32_t conn_rate;   /* new connections/s per IP; 0 = unlimited */
    uint32_t conn_burst;
    uint32_t v6_prefix; /* IPv6 addresses are keyed by this prefix (1..128) */
} rl_iptable_config;

/* Fills the RL_IP_* defaults. */
void rl_iptable_config_default(rl_iptable_config *c);

typedef enum {
    RL_ALLOW = 0,
    RL_DENY_CONCURRENT, /* the IP already holds max_conns connections */
    RL_DENY_RATE,       /* the IP opens connections too fast */
    RL_DENY_TABLE_FULL, /* every entry holds open connections: fail closed */
} rl_verdict;

const char *rl_verdict_str(rl_verdict v);

struct rl_ipentry;

/* Memory is fixed at init: max_entries entries plus an index of twice as
 * many slots. Entries without open connections are evicted least recently
 * used first when a new IP arrives and the table is full. */
typedef struct rl_iptable {
    rl_iptable_config cfg;
    struct rl_ipentry *e;
    uint32_t *slots;               /* open addressing: entry index + 1, 0 = empty */
    uint32_t nslots;               /* power of two, >= 2 * max_entries */
    uint32_t used;                 /* entries in the table */
    uint32_t free_head;            /* never-used entries are handed out in order */
    uint32_t idle_head, idle_tail; /* LRU list of entries without connections */
    uint64_t k0, k1;               /* SipHash key: peers cannot aim at one slot */
} rl_iptable;

/* seed: 16 bytes for the hash key, or NULL to draw them from the OS CSPRNG.
 * 0, or -1 (out of memory, bad config, no randomness). */
int rl_iptable_init(rl_iptable *t, const rl_iptable_config *c, const uint8_t *seed);
/* NULL-safe. */
void rl_iptable_free(rl_iptable *t);

/* A new connection from ip at now_ns: RL_ALLOW counts it (the caller must
 * call rl_ip_conn_close() exactly once when it ends), anything else counts
 * nothing. *retry_ms (may be NULL) gets the wait for RL_DENY_RATE. */
rl_verdict rl_ip_conn_open(rl_iptable *t, const rl_ip *ip, int64_t now_ns, int64_t *retry_ms);
/* The end of a connection that rl_ip_conn_open() allowed. */
void rl_ip_conn_close(rl_iptable *t, const rl_ip *ip);

/* Open connections of ip (0 when unknown); entries in use. */
uint32_t rl_ip_conns(const rl_iptable *t, const rl_ip *ip);
uint32_t rl_iptable_size(const rl_iptable *t);

/* ---- strikes: warn, then close ---- */

/* A client that is throttled gets a warning ("Too Many Requests"). One that
 * keeps at it is closed (1008). Violations closer together than strike_gap
 * count as one strike, so a single burst is one strike however many frames
 * it held; more than max_strikes strikes within window closes. */
typedef struct rl_strike_policy {
    uint32_t max_strikes;  /* default 5 */
    int64_t strike_gap_ns; /* default 1 s; 0 = every violation is a strike */
    int64_t window_ns;     /* default 60 s */
} rl_strike_policy;

void rl_strike_policy_default(rl_strike_policy *p);

/* Per connection; zero-initialise. */
typedef struct rl_strikes {
    uint32_t count;
    int64_t first_ns, last_ns;
} rl_strikes;

typedef enum { RL_STRIKE_WARN = 0, RL_STRIKE_CLOSE = 1 } rl_strike_action;

/* Record one violation at now_ns and say what to do about it. */
rl_strike_action rl_strike(rl_strikes *s, const rl_strike_policy *p, int64_t now_ns);

#endif
