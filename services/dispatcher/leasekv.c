#include "leasekv.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dw/bus.h"
#include "dw/log.h"
#include "dw/util.h"
#include "lease.h"

#define MAX_INSTANCES 256
#define NAME_MAX_LEN 96
/* The pre-partition consumer: its ack floor still counts after an upgrade. */
#define LEGACY_CONSUMER DW_DISPATCHER_DURABLE
#define FLOOR_WRITE_EVERY_MS 5000
/* Heartbeat keys of instances dead this many TTLs are removed. */
#define GC_AFTER_TTLS 30

typedef struct inst {
    char id[LEASE_INSTANCE_MAX + 1];
    int64_t stamp_ms;
} inst;

typedef struct kpart {
    /* What the bucket says (from the watcher, or our own writes). */
    int exists;
    char owner[LEASE_INSTANCE_MAX + 1];
    uint64_t floor_kv;
    uint64_t rev;
    /* Ours. */
    int held;      /* taken (compare-and-set succeeded) */
    int ready;     /* its consumer is set up */
    int releasing; /* on_release called, waiting for leasekv_drained */
    uint32_t gen;
    uint64_t floor_written;
    int64_t floor_written_ms;
    atomic_uint_fast64_t floor; /* from the dispatcher's loop */
    atomic_bool reset, drained;
} kpart;

struct leasekv {
    leasekv_cfg cfg;
    char me[LEASE_INSTANCE_MAX + 1];
    natsConnection *nc;
    jsCtx *js;
    kvStore *kv;
    kvWatcher *w;
    int64_t my_echo_ms; /* when our own heartbeat last came back (mono) */
    /* The watcher was (re)opened and our own heartbeat has not come back
     * through it yet. Its echo completes the view (a watcher's first
     * values come in stream order, and our heartbeat is the newest), so the
     * next tick runs then rather than a TTL/4 later: a fresh dispatcher
     * takes its partitions at once. */
    bool echo_pending;
    bool tick_now;
    inst insts[MAX_INSTANCES];
    size_t n_insts;
    kpart parts[DW_MSG_PARTITIONS];
    int64_t hb_ok_start_ms; /* mono: start of the last heartbeat that succeeded */
    pthread_t thread;
    int started;
    atomic_bool stop;
    atomic_size_t owned;
    int64_t last_warn_ms;
};

static int64_t mono_ms(void)
{
    return dw_mono_ns() / 1000000;
}

static void part_key(char *buf, size_t len, uint32_t p)
{
    snprintf(buf, len, "p.%u", p);
}

/* "dwp-<partition>-<instance>-<gen>": each setup a name of its own, so a
 * delivery says by its ack subject which setup it belongs to. */
static void consumer_name(char *buf, size_t len, uint32_t p, const char *inst_id, uint32_t gen)
{
    snprintf(buf, len, "dwp-%u-%s-%u", p, inst_id, gen);
}

/* ---- the view of the bucket ---- */

static inst *inst_get(leasekv *lk, const char *id, size_t idlen)
{
    if (idlen == 0 || idlen > LEASE_INSTANCE_MAX) return NULL;
    for (size_t i = 0; i < lk->n_insts; i++)
        if (strlen(lk->insts[i].id) == idlen && !memcmp(lk->insts[i].id, id, idlen))
            return &lk->insts[i];
    if (lk->n_insts == MAX_INSTANCES) return NULL;
    inst *in = &lk->insts[lk->n_insts++];
    memcpy(in->id, id, idlen);
    in->id[idlen] = '\0';
    in->stamp_ms = 0;
    return in;
}

static void inst_remove(leasekv *lk, const char *id, size_t idlen)
{
    for (size_t i = 0; i < lk->n_insts; i++)
        if (strlen(lk->insts[i].id) == idlen && !memcmp(lk->insts[i].id, id, idlen)) {
            lk->insts[i] = lk->insts[--lk->n_insts];
            return;
        }
}

static void apply_entry(leasekv *lk, kvEntry *e)
{
    const char *key = kvEntry_Key(e);
    kvOperation op = kvEntry_Operation(e);
    if (!key) return;
    if (!strncmp(key, "d.", 2)) {
        const char *id = key + 2;
        if (op != kvOp_Put) {
            inst_remove(lk, id, strlen(id));
            return;
        }
        inst *in = inst_get(lk, id, strlen(id));
        if (!in) return;
        in->stamp_ms = kvEntry_Created(e) / 1000000;
        if (!strcmp(in->id, lk->me)) {
            lk->my_echo_ms = mono_ms();
            if (lk->echo_pending) {
                /* A fresh start took its partitions a whole tick (500 ms
                 * by default) late: messages sent meanwhile waited. */
                lk->echo_pending = false;
                lk->tick_now = true;
            }
        }
    } else if (!strncmp(key, "p.", 2)) {
        char *end = NULL;
        unsigned long p = strtoul(key + 2, &end, 10);
        if (!end || *end || p >= DW_MSG_PARTITIONS) return;
        kpart *kp = &lk->parts[p];
        if (kvEntry_Revision(e) < kp->rev) return; /* we already know newer */
        kp->exists = 1;
        kp->rev = kvEntry_Revision(e);
        char owner[LEASE_INSTANCE_MAX + 1];
        uint64_t floor = 0;
        if (op == kvOp_Put && !lease_parse(kvEntry_Value(e), (size_t)kvEntry_ValueLen(e), owner,
                                           sizeof owner, &floor)) {
            snprintf(kp->owner, sizeof kp->owner, "%s", owner);
            kp->floor_kv = floor;
        } else {
            kp->owner[0] = '\0';
        }
    }
}

static int watch_open(leasekv *lk)
{
    kvWatcher_Destroy(lk->w);
    lk->w = NULL;
    natsStatus s = kvStore_WatchAll(&lk->w, lk->kv, NULL);
    if (s != NATS_OK) {
        DW_WARN("lease bucket: watch failed", "status=%s", natsStatus_GetText(s));
        lk->w = NULL;
        return -1;
    }
    lk->my_echo_ms = mono_ms();
    lk->echo_pending = true;
    return 0;
}

/* ---- consumers ---- */

static uint64_t consumer_floor(leasekv *lk, const char *name, int *found)
{
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    *found = 0;
    if (js_GetConsumerInfo(&ci, lk->js, DW_STREAM_MSG, name, NULL, &jerr) != NATS_OK) return 0;
    *found = 1;
    uint64_t f = ci->AckFloor.Stream;
    jsConsumerInfo_Destroy(ci);
    return f;
}

/* Set up partition p's consumer: start after the highest floor anyone
 * left, then delete the other owners' consumers. 0 or -1 (logged). */
static int consumer_setup(leasekv *lk, uint32_t p, uint32_t gen, uint64_t *floor_out)
{
    kpart *kp = &lk->parts[p];
    char mine[NAME_MAX_LEN], prefix[32];
    consumer_name(mine, sizeof mine, p, lk->me, gen);
    snprintf(prefix, sizeof prefix, "dwp-%u-", p);
    uint64_t floor = kp->floor_kv;
    uint64_t ours = (uint64_t)atomic_load(&kp->floor);
    if (ours > floor) floor = ours;

    jsConsumerNamesList *names = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_ConsumerNames(&names, lk->js, DW_STREAM_MSG, NULL, &jerr);
    if (s != NATS_OK && s != NATS_NOT_FOUND) {
        DW_WARN("partition setup: consumer list failed", "partition=%u status=%s jserr=%d", p,
                natsStatus_GetText(s), (int)jerr);
        return -1;
    }
    for (int i = 0; names && i < names->Count; i++) {
        const char *n = names->List[i];
        if (strncmp(n, prefix, strlen(prefix)) && strcmp(n, LEGACY_CONSUMER)) continue;
        int found = 0;
        uint64_t f = consumer_floor(lk, n, &found);
        if (found && f > floor) floor = f;
    }

    char filter[48];
    dw_subj_msg_partition(filter, sizeof filter, p);
    jsConsumerConfig cc;
    jsConsumerConfig_Init(&cc);
    cc.Durable = mine;
    cc.FilterSubject = filter;
    cc.AckPolicy = js_AckExplicit;
    cc.AckWait = lk->cfg.ack_wait_ms * 1000000;
    cc.MaxDeliver = -1; /* the dispatcher counts attempts itself (order.h) */
    cc.MaxAckPending = lk->cfg.max_ack_pending;
    if (floor) {
        cc.DeliverPolicy = js_DeliverByStartSequence;
        cc.OptStartSeq = floor + 1;
    } else {
        cc.DeliverPolicy = js_DeliverAll;
    }
    jsConsumerInfo *ci = NULL;
    jerr = 0;
    s = js_AddConsumer(&ci, lk->js, DW_STREAM_MSG, &cc, NULL, &jerr);
    jsConsumerInfo_Destroy(ci);
    if (s != NATS_OK) {
        DW_WARN("partition setup: consumer create failed",
                "partition=%u consumer=%s status=%s jserr=%d last=\"%s\"", p, mine,
                natsStatus_GetText(s), (int)jerr, nats_GetLastError(NULL));
        jsConsumerNamesList_Destroy(names);
        return -1;
    }
    /* The fence: earlier owners can no longer fetch or ack. */
    for (int i = 0; names && i < names->Count; i++) {
        const char *n = names->List[i];
        if (strncmp(n, prefix, strlen(prefix)) || !strcmp(n, mine)) continue;
        if (js_DeleteConsumer(lk->js, DW_STREAM_MSG, n, NULL, &jerr) == NATS_OK)
            DW_INFO("former owner's consumer deleted", "partition=%u consumer=%s", p, n);
    }
    jsConsumerNamesList_Destroy(names);
    atomic_store(&kp->floor, floor);
    *floor_out = floor;
    return 0;
}

/* ---- lease writes ---- */

/* Compare-and-set partition p's value to (owner, floor). 0 or -1. */
static int cas(leasekv *lk, uint32_t p, const char *owner, uint64_t floor)
{
    kpart *kp = &lk->parts[p];
    char key[16], val[LEASE_INSTANCE_MAX + 32];
    part_key(key, sizeof key, p);
    if (lease_value(val, sizeof val, owner, floor)) return -1;
    uint64_t rev = 0;
    natsStatus s = kp->exists ? kvStore_Update(&rev, lk->kv, key, val, (int)strlen(val), kp->rev)
                              : kvStore_Create(&rev, lk->kv, key, val, (int)strlen(val));
    if (s != NATS_OK) return -1;
    /* Our own write is the newest we know, before the watcher echoes it. */
    kp->exists = 1;
    kp->rev = rev;
    snprintf(kp->owner, sizeof kp->owner, "%s", owner);
    kp->floor_kv = floor;
    return 0;
}

static void take(leasekv *lk, uint32_t p)
{
    kpart *kp = &lk->parts[p];
    uint64_t floor = kp->floor_kv;
    uint64_t ours = (uint64_t)atomic_load(&kp->floor);
    if (ours > floor) floor = ours;
    if (!kp->held) {
        char was[LEASE_INSTANCE_MAX + 1];
        snprintf(was, sizeof was, "%s", kp->owner);
        if (cas(lk, p, lk->me, floor)) return; /* someone was faster: the watcher will say */
        kp->held = 1;
        kp->ready = 0;
        atomic_fetch_add(&lk->owned, 1);
        DW_INFO("partition taken", "partition=%u from=\"%s\"", p, was);
    }
    uint64_t start = 0;
    /* A new name every setup: deliveries of an earlier one (a reset, a
     * take-back) are told apart by their ack subjects. */
    uint32_t gen = kp->gen + 1;
    if (consumer_setup(lk, p, gen, &start)) return; /* held, not ready: again next tick */
    kp->ready = 1;
    kp->gen = gen;
    char name[NAME_MAX_LEN];
    consumer_name(name, sizeof name, p, lk->me, gen);
    lk->cfg.on_ready(lk->cfg.arg, p, kp->gen, name, start);
}

static void drop(leasekv *lk, uint32_t p, const char *why)
{
    kpart *kp = &lk->parts[p];
    if (!kp->held) return;
    kp->held = kp->ready = kp->releasing = 0;
    atomic_store(&kp->drained, false);
    atomic_fetch_sub(&lk->owned, 1);
    DW_WARN("partition lost", "partition=%u owner=\"%s\" why=%s", p, kp->owner, why);
    lk->cfg.on_lost(lk->cfg.arg, p);
}

static void give_back(leasekv *lk, uint32_t p)
{
    kpart *kp = &lk->parts[p];
    uint64_t floor = (uint64_t)atomic_load(&kp->floor);
    if (cas(lk, p, "", floor))
        DW_WARN("partition release not written (the next owner waits for our heartbeat to age)",
                "partition=%u", p);
    else
        DW_INFO("partition given back", "partition=%u floor=%" PRIu64, p, floor);
    kp->held = kp->ready = kp->releasing = 0;
    atomic_store(&kp->drained, false);
    atomic_fetch_sub(&lk->owned, 1);
}

/* ---- the thread ---- */

static void tick(leasekv *lk)
{
    int64_t t0 = mono_ms();
    char key[LEASE_INSTANCE_MAX + 8];
    snprintf(key, sizeof key, "d.%s", lk->me);
    uint64_t rev = 0;
    if (kvStore_PutString(&rev, lk->kv, key, "1") == NATS_OK)
        lk->hb_ok_start_ms = t0;
    else if (t0 - lk->last_warn_ms > 5000) {
        lk->last_warn_ms = t0;
        DW_WARN("lease heartbeat failed", "last=\"%s\"", nats_GetLastError(NULL));
    }
    int64_t now = mono_ms();
    int me_live = lk->hb_ok_start_ms && now - lk->hb_ok_start_ms < lk->cfg.ttl_ms * 3 / 4;
    /* Our heartbeat should come back through the watcher within a tick: if
     * it does not, the view is stale; start watching again. */
    if (!lk->w || now - lk->my_echo_ms > lk->cfg.ttl_ms) {
        if (lk->w) DW_WARN("lease bucket: watcher silent, restarting it", "%s", "");
        watch_open(lk);
        me_live = 0; /* decide nothing on a stale view */
    }

    lease_instance in[MAX_INSTANCES];
    for (size_t i = 0; i < lk->n_insts; i++)
        in[i] = (lease_instance){lk->insts[i].id, lk->insts[i].stamp_ms};
    lease_part parts[DW_MSG_PARTITIONS];
    uint8_t held[DW_MSG_PARTITIONS];
    lease_action act[DW_MSG_PARTITIONS];
    for (uint32_t p = 0; p < DW_MSG_PARTITIONS; p++) {
        parts[p] = (lease_part){lk->parts[p].exists, lk->parts[p].owner, lk->parts[p].rev};
        held[p] = (uint8_t)lk->parts[p].held;
    }
    lease_plan(lk->me, me_live, in, lk->n_insts, lk->cfg.ttl_ms, parts, held, DW_MSG_PARTITIONS,
               act);
    for (uint32_t p = 0; p < DW_MSG_PARTITIONS && !atomic_load(&lk->stop); p++) {
        kpart *kp = &lk->parts[p];
        switch (act[p]) {
        case LEASE_NONE: break;
        case LEASE_ACQUIRE: take(lk, p); break;
        case LEASE_KEEP:
            if (!kp->ready) {
                take(lk, p);
            } else {
                uint64_t f = (uint64_t)atomic_load(&kp->floor);
                if (f > kp->floor_written && now - kp->floor_written_ms >= FLOOR_WRITE_EVERY_MS) {
                    if (cas(lk, p, lk->me, f))
                        drop(lk, p, "lease_changed");
                    else {
                        kp->floor_written = f;
                        kp->floor_written_ms = now;
                    }
                }
            }
            break;
        case LEASE_RELEASE:
            if (!kp->ready) {
                give_back(lk, p);
            } else if (!kp->releasing) {
                kp->releasing = 1;
                DW_INFO("partition preferred elsewhere: draining it", "partition=%u", p);
                lk->cfg.on_release(lk->cfg.arg, p);
            }
            break;
        case LEASE_LOST: drop(lk, p, me_live ? "taken" : "heartbeat_failed"); break;
        }
    }

    /* Forget heartbeats of instances long dead (each start makes a new id). */
    int64_t snow = lease_now(in, lk->n_insts);
    for (size_t i = 0; i < lk->n_insts; i++) {
        if (!strcmp(lk->insts[i].id, lk->me) || !lk->insts[i].stamp_ms ||
            snow - lk->insts[i].stamp_ms < GC_AFTER_TTLS * lk->cfg.ttl_ms)
            continue;
        char k[LEASE_INSTANCE_MAX + 8];
        snprintf(k, sizeof k, "d.%s", lk->insts[i].id);
        kvStore_Purge(lk->kv, k, NULL);
    }
}

static void *lease_main(void *arg)
{
    leasekv *lk = arg;
    int64_t next_tick = 0, step = lk->cfg.ttl_ms / 4;
    if (step < 50) step = 50;
    while (!atomic_load(&lk->stop)) {
        int64_t now = mono_ms();
        if (now >= next_tick) {
            tick(lk);
            next_tick = mono_ms() + step;
        }
        for (uint32_t p = 0; p < DW_MSG_PARTITIONS; p++) {
            kpart *kp = &lk->parts[p];
            if (kp->held && kp->releasing && atomic_load(&kp->drained)) give_back(lk, p);
            if (atomic_exchange(&kp->reset, false) && kp->held && !kp->releasing) {
                kp->ready = 0;
                take(lk, p);
            }
        }
        int64_t wait = next_tick - mono_ms();
        if (wait > 100) wait = 100;
        if (wait < 1) wait = 1;
        kvEntry *e = NULL;
        natsStatus s = lk->w ? kvWatcher_Next(&e, lk->w, wait) : NATS_TIMEOUT;
        if (s == NATS_OK && e) {
            apply_entry(lk, e);
            kvEntry_Destroy(e);
            if (lk->tick_now) {
                lk->tick_now = false;
                next_tick = 0;
            }
        } else if (!lk->w || (s != NATS_OK && s != NATS_TIMEOUT)) {
            nats_Sleep(wait); /* no watcher: pace the loop; tick() reopens it */
        }
    }
    return NULL;
}

int leasekv_start(leasekv **out, natsConnection *nc, jsCtx *js, const leasekv_cfg *cfg)
{
    leasekv *lk = calloc(1, sizeof *lk);
    if (!lk) return -1;
    lk->cfg = *cfg;
    lk->nc = nc;
    lk->js = js;
    snprintf(lk->me, sizeof lk->me, "%s", cfg->instance);
    lk->cfg.instance = lk->me;
    for (uint32_t p = 0; p < DW_MSG_PARTITIONS; p++) {
        atomic_init(&lk->parts[p].floor, 0);
        atomic_init(&lk->parts[p].reset, false);
        atomic_init(&lk->parts[p].drained, false);
    }
    atomic_init(&lk->stop, false);
    atomic_init(&lk->owned, 0);

    kvConfig kc;
    kvConfig_Init(&kc);
    kc.Bucket = LEASEKV_BUCKET;
    kc.Description = "DynamoWave dispatcher partition leases";
    kc.History = 1;
    kc.StorageType = js_FileStorage;
    kc.Replicas = cfg->replicas > 0 ? cfg->replicas : 1;
    natsStatus s = js_KeyValue(&lk->kv, js, LEASEKV_BUCKET);
    if (s != NATS_OK) s = js_CreateKeyValue(&lk->kv, js, &kc);
    if (s != NATS_OK) {
        DW_WARN("lease bucket not available", "bucket=%s status=%s last=\"%s\"", LEASEKV_BUCKET,
                natsStatus_GetText(s), nats_GetLastError(NULL));
        free(lk);
        return -1;
    }
    watch_open(lk);
    if (pthread_create(&lk->thread, NULL, lease_main, lk)) {
        kvWatcher_Destroy(lk->w);
        kvStore_Destroy(lk->kv);
        free(lk);
        return -1;
    }
    lk->started = 1;
    *out = lk;
    return 0;
}

void leasekv_floor(leasekv *lk, uint32_t p, uint64_t floor)
{
    if (p >= DW_MSG_PARTITIONS) return;
    uint_fast64_t cur = atomic_load(&lk->parts[p].floor);
    while (floor > cur && !atomic_compare_exchange_weak(&lk->parts[p].floor, &cur, floor))
        ;
}

void leasekv_reset(leasekv *lk, uint32_t p)
{
    if (p < DW_MSG_PARTITIONS) atomic_store(&lk->parts[p].reset, true);
}

void leasekv_drained(leasekv *lk, uint32_t p)
{
    if (p < DW_MSG_PARTITIONS) atomic_store(&lk->parts[p].drained, true);
}

size_t leasekv_owned(leasekv *lk)
{
    return lk ? atomic_load(&lk->owned) : 0;
}

void leasekv_stop(leasekv *lk)
{
    if (!lk) return;
    atomic_store(&lk->stop, true);
    if (lk->started) pthread_join(lk->thread, NULL);
    for (uint32_t p = 0; p < DW_MSG_PARTITIONS; p++)
        if (lk->parts[p].held) give_back(lk, p);
    char key[LEASE_INSTANCE_MAX + 8];
    snprintf(key, sizeof key, "d.%s", lk->me);
    kvStore_Purge(lk->kv, key, NULL);
    kvWatcher_Destroy(lk->w);
    kvStore_Destroy(lk->kv);
    free(lk);
}
