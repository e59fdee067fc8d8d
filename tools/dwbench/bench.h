/* dwbench: the load generator's configuration, state and run loop.
 *
 * One thread, one epoll set, non-blocking sockets. Each connection reads
 * into one large shared buffer and parses every frame that arrived in one
 * go; only a partial frame at the end of a read is kept per connection. */
#ifndef DWBENCH_BENCH_H
#define DWBENCH_BENCH_H

#include <stdint.h>

#include "hist.h"
#include "procstat.h"
#include "stages.h"
#include "seqset.h"
#include "url.h"

typedef struct bench_config {
    char *url; /* also repeatable on the command line */
    int64_t connections;
    int64_t senders;
    int64_t rate;             /* aggregate msgs/s; 0 = closed loop with window */
    int64_t window;           /* in-flight messages per sender when rate = 0 */
    int64_t duration;         /* seconds of sending (or holding with idle) */
    int64_t drain;            /* max seconds to wait for stragglers */
    int64_t connect_rate;     /* new connections per second; 0 = unlimited */
    int64_t connect_inflight; /* handshakes in progress at once */
    int64_t connect_timeout;  /* seconds for connecting + readiness */
    int64_t source_ips;       /* spread over 127.0.0.1..127.0.0.N */
    int64_t size;             /* data bytes per message (0 = just the header) */
    int64_t churn;            /* extra connections opened and closed per second */
    int64_t churn_hold_ms;    /* how long each churn connection stays open */
    int64_t rooms;            /* 0: plain protocol, one room; N: dynamowave.v1, N rooms */
    char *pid;                /* NAME=PID, also repeatable */
    char *metrics;            /* /metrics URLs whose stage histograms to report */
    int idle;
    int sync;
    char *scenario;
    char *json_out;
    char *log_level;
} bench_config;

typedef struct bench_proc {
    char name[64];
    int pid;
    procstat start, send, end;
} bench_proc;

typedef struct bench_errors {
    uint64_t connect;      /* socket/connect failed or timed out */
    uint64_t handshake;    /* not a valid 101 with the right accept */
    uint64_t closed;       /* an open connection was closed or reset */
    uint64_t protocol;     /* a malformed frame from the server */
    uint64_t not_ready;    /* open, but never received a sync message */
    uint64_t bogus;        /* our run id with an impossible sender or seq */
    uint64_t other_frames; /* text the benchmark did not send (error replies) */
    uint64_t oom;
} bench_errors;

enum { P_CONNECT, P_SYNC, P_SEND, P_DRAIN, P_HOLD, P_DONE };

typedef struct bconn bconn;
typedef struct bsender {
    uint32_t conn;
    uint64_t sent;
} bsender;

typedef struct churn_entry {
    uint32_t idx, gen;
    int64_t t;
} churn_entry;

typedef struct churn_ring { /* FIFO of churn connections by due time */
    churn_entry *e;
    uint32_t cap, head, count;
} churn_ring;

typedef struct bench {
    const bench_config *cfg;
    bench_url *urls;
    uint32_t nurls;
    bench_proc *procs;
    uint32_t nprocs;
    bench_proc self;     /* dwbench itself: is the load generator the limit? */
    char **metrics_urls; /* --metrics endpoints (borrowed) */
    size_t nmetrics;
    stage_set *stages_send, *stages_end; /* when measuring starts / at the end */

    int ep;
    bconn *conns;
    uint32_t nconns;
    bsender *senders;
    uint32_t nsenders;
    seqset *seen; /* nconns x nsenders, receivers only */
    unsigned char *rbuf;
    size_t rbuf_cap;
    char *msg; /* scratch for one message's JSON */
    size_t msg_cap;
    char run[9]; /* this run's id: messages of other runs are foreign */
    uint64_t rng;
    int phase;
    int interrupted;

    uint32_t next_start, connecting, nalive, nopened, nfailed, nsynced, nreceivers;
    int64_t t_start, t_last_open, t_connected, t_ready, t_send0, t_send_end, t_deadline;
    int64_t t_last_delivery, t_end, next_sync;
    uint64_t sync_sent;
    uint32_t sync_rot;

    uint64_t sent, delivered, dup, foreign, send_blocked;
    uint32_t *room_receivers; /* --rooms: receivers per room */

    /* churn: slots nconns .. nconns + nchurn - 1 of conns */
    uint32_t nchurn;
    uint32_t *churn_free;
    uint32_t churn_nfree;
    churn_ring churn_opening, churn_closing;
    int64_t t_churn0;
    uint64_t churn_started, churn_opened, churn_closed, churn_close_timeouts, churn_starved;
    uint32_t churn_connecting, churn_open;
    bench_errors err;
    bench_hist hist;
} bench;

/* Run the whole benchmark as configured; the figures stay in b for the
 * report. 0, or -1 when it could not start (the reason is logged). */
int bench_run(bench *b);

/* Deliveries the messages sent so far should make: each to every receiver
 * of its sender's room (with one room, every receiver). */
uint64_t bench_expected(const bench *b);

/* Release what bench_run allocated. */
void bench_free(bench *b);

#endif
