/* Partition leases: which dispatcher owns which DW_MSG partition, decided
 * from what the KV bucket DW_DISPATCH says. No NATS in here: leasekv.c
 * reads the bucket and carries out the plan (docs/architecture.md,
 * "Ordering").
 *
 * The bucket holds
 *   d.<instance>   every running dispatcher's heartbeat, rewritten every
 *                  ttl/4; an instance is live while the server stamp of
 *                  its last heartbeat is within ttl of the newest stamp we
 *                  know (our own last heartbeat's): one clock, the
 *                  server's, so no two machines' clocks are compared;
 *   p.<partition>  "<owner instance> <floor>": the partition's owner ("" when
 *                  released) and the DW_MSG sequence up to which it had
 *                  settled everything, changed only by compare-and-set on
 *                  the key's revision.
 * Each partition has one preferred owner among the live instances
 * (rendezvous hashing on instance id and partition): partitions spread
 * evenly and move as little as possible when dispatchers come and go. A
 * partition is taken when it is free or its owner is not live and we are
 * its preferred owner; given back (after draining) when another live
 * instance is preferred.
 *
 * Threads: none of its own; pure functions. */
#ifndef DISPATCHER_LEASE_H
#define DISPATCHER_LEASE_H

#include <stddef.h>
#include <stdint.h>

#define LEASE_INSTANCE_MAX 64

typedef struct lease_instance {
    const char *id;
    int64_t stamp_ms; /* server time of its last heartbeat */
} lease_instance;

typedef struct lease_part {
    int exists;        /* the key exists (a revision to compare against) */
    const char *owner; /* "" when free */
    uint64_t rev;
} lease_part;

typedef enum {
    LEASE_NONE = 0, /* not ours, nothing to do */
    LEASE_KEEP,     /* ours, stays ours */
    LEASE_ACQUIRE,  /* take it (compare-and-set on rev, or create) */
    LEASE_RELEASE,  /* ours but preferred elsewhere: drain, then write "" */
    LEASE_LOST,     /* we thought it was ours and it is not: drop it now */
} lease_action;

/* The newest server stamp among instances (our own heartbeat's, normally). */
int64_t lease_now(const lease_instance *inst, size_t n);

/* Whether instance i is live at now_ms (server clock): stamp within ttl_ms. */
int lease_live(const lease_instance *i, int64_t now_ms, int64_t ttl_ms);

/* The live instance preferred for partition p, or NULL when none is live. */
const char *lease_preferred(const lease_instance *inst, size_t n, uint32_t p, int64_t now_ms,
                            int64_t ttl_ms);

/* Decide for each of n_parts partitions. me: our instance id; me_live: we
 * renewed our heartbeat within ttl by our own clock (if not, everything we
 * hold is LOST and nothing is taken); held[p]: we hold partition p now
 * (taken and not dropped). out[p] gets the action. */
void lease_plan(const char *me, int me_live, const lease_instance *inst, size_t n_inst,
                int64_t ttl_ms, const lease_part *parts, const uint8_t *held, size_t n_parts,
                lease_action *out);

/* The value of a partition key: "<owner> <floor>" into buf. 0 or -1. */
int lease_value(char *buf, size_t len, const char *owner, uint64_t floor);
/* Parse a partition key's value: owner into owner (up to owner_len - 1
 * bytes; "" when free), *floor (0 when absent). 0, or -1 when malformed. */
int lease_parse(const char *val, size_t val_len, char *owner, size_t owner_len, uint64_t *floor);

#endif
