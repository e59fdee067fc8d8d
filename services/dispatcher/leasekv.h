/* The I/O side of partition leases (lease.h): a thread that heartbeats into
 * the KV bucket DW_DISPATCH, watches it, carries out lease_plan's actions
 * with compare-and-set, and sets up each partition's consumer when it is
 * taken.
 *
 * A partition's consumer is the durable "dwp-<partition>-<instance>-<gen>"
 * on DW_MSG (filter dw.msg.<partition>.>), created when we take the
 * partition (and again, under the next gen, when it must be read again),
 * starting after the highest floor any earlier owner left (its consumer's
 * ack floor, the floor in the lease value, or the pre-partition consumer
 * "dispatcher"); the earlier owners' consumers are deleted. A name of our
 * own is the fence: a stalled former owner that wakes up can neither fetch
 * (its consumer is gone) nor ack into ours.
 *
 * Threads, all its own: one writes the heartbeat every ttl/4 and nothing
 * else, so that slow consumer setups (a raft group each on a JetStream
 * cluster) never delay it; a few run consumer setups, several partitions at
 * once; the lease thread does the rest of the KV work and hands setups out
 * and their results back. The callbacks run on the lease thread and must
 * only hand the news over (partitions.c posts events). leasekv_floor,
 * _reset, _drained and _owned may be called from any thread. */
#ifndef DISPATCHER_LEASEKV_H
#define DISPATCHER_LEASEKV_H

#include <nats/nats.h>
#include <stddef.h>
#include <stdint.h>

#define LEASEKV_BUCKET "DW_DISPATCH"

typedef struct leasekv_cfg {
    const char *instance;    /* our id (copied) */
    int64_t ttl_ms;          /* a heartbeat older than this is dead */
    int replicas;            /* of the bucket, when we create it */
    int64_t ack_wait_ms;     /* partition consumers' AckWait */
    int64_t max_ack_pending; /* partition consumers' MaxAckPending */
    /* Partition p is ours: read it through consumer (gen numbers each
     * setup; deliveries of an older one must be ignored); floor: where it
     * starts (every message at or below it is settled). */
    void (*on_ready)(void *arg, uint32_t p, uint32_t gen, const char *consumer, uint64_t floor);
    /* Partition p is no longer ours: drop it at once. */
    void (*on_lost)(void *arg, uint32_t p);
    /* Partition p should go to another dispatcher: stop reading it, let its
     * requests in flight finish, drop it, then call leasekv_drained. */
    void (*on_release)(void *arg, uint32_t p);
    void *arg;
} leasekv_cfg;

typedef struct leasekv leasekv;

/* Creates (or opens) the bucket and starts the thread. nc and js are
 * borrowed and must outlive it. 0, or -1 (logged; try again later). */
int leasekv_start(leasekv **out, natsConnection *nc, jsCtx *js, const leasekv_cfg *cfg);

/* Everything of partition p at or below floor is settled (kept in the lease
 * value from time to time, for the next owner). */
void leasekv_floor(leasekv *lk, uint32_t p, uint64_t floor);
/* Partition p's consumer must be set up again from its floor (a gap in its
 * deliveries, a reconnect): on_ready follows with a new gen. */
void leasekv_reset(leasekv *lk, uint32_t p);
/* After on_release: p is dropped; the lease is given back. */
void leasekv_drained(leasekv *lk, uint32_t p);
/* Partitions held now (for metrics). */
size_t leasekv_owned(leasekv *lk);

/* Stop the thread: give back every partition held (its value becomes ""
 * with its floor, so a successor starts at once), remove our heartbeat,
 * and free. The caller has stopped using the partitions. NULL-safe. */
void leasekv_stop(leasekv *lk);

#endif
