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
/* On stop, give partitions back for at most this long. */
#define STOP_WRITES_MS 3000
/* Heartbeat keys of instances dead this many TTLs are removed. */
#define GC_AFTER_TTLS 30
/* Consumer setups run at once, at most: each waits for a raft group on a
 * JetStream cluster; one after the other, 8 partitions took 4-13 s. */
#define SETUP_THREADS 4

typedef struct inst {
    char id[LEASE_INSTANCE_MAX + 1];
    int64_t stamp_ms;
} inst;

typedef struct setup_job {
    uint32_t p, gen;
    uint64_t floor; /* the highest floor known when it was queued */
    int ok;
    uint64_t start; /* result: the floor it starts after */
} setup_job;

typedef struct kpart {
    /* What the bucket says (from the watcher, or our own writes). */
    int exists;
    char owner[LEASE_INSTANCE_MAX + 1];
    uint64_t floor_kv;
    uint64_t rev;
    /* Ours. */
    int held;       /* taken (compare-and-set succeeded) */
    int ready;      /* its consumer is set up */
    int releasing;  /* on_release called, waiting for leasekv_drained */
    int setting_up; /* a setup job (gen setup_gen) is out; never two at once */
    uint32_t gen;   /* of the consumer set up last */
    uint32_t setup_gen;
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
    /* The heartbeat's own handle, on a JetStream context that gives up
     * after ttl/2: a put the bucket does not answer (no leader) must not
     * hold the next one back by the default 5 s. */
    jsCtx *hb_js;
    kvStore *hb_kv;
    kvWatcher *w;
    int64_t my_echo_ms; /* when our own heartbeat last came back (mono) */
    /* Server stamps of our own heartbeats, as the watcher brings them back:
     * the last one, and until when we judge nobody dead (grace) after a
     * gap in them longer than the TTL (the bucket was away: nobody could
     * heartbeat, so old stamps say nothing about the others yet). */
    int64_t my_stamp_ms, grace_until_ms;
    int64_t last_late_warn_ms;
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
    /* mono: start of the last heartbeat that succeeded. Written by the
     * heartbeat thread, read by the lease thread. */
    atomic_int_fast64_t hb_ok_start_ms;
    pthread_t thread, hb_thread;
    int started, hb_started;
    atomic_bool stop;
    atomic_size_t owned;

    /* Consumer setups: the lease thread queues jobs, SETUP_THREADS run
     * them, results come back to the lease thread (all under smu). */
    pthread_mutex_t smu;
    pthread_cond_t scv;
    setup_job todo[DW_MSG_PARTITIONS], done[DW_MSG_PARTITIONS];
    size_t n_todo, n_done;
    pthread_t setup_threads[SETUP_THREADS];
    int n_setup_threads;
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
        int64_t stamp = kvEntry_Created(e) / 1000000;
        if (stamp <= in->stamp_ms) return; /* a watcher restart replays older values */
        in->stamp_ms = stamp;
        if (!strcmp(in->id, lk->me)) {
            lk->my_echo_ms = mono_ms();
            if (lk->my_stamp_ms && stamp - lk->my_stamp_ms > lk->cfg.ttl_ms)
                lk->grace_until_ms = stamp + lk->cfg.ttl_ms;
            lk->my_stamp_ms = stamp;
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

/* Whether server `name` holds a current copy of DW_MSG: its leader, or a
 * replica the leader reports current. 1 yes, 0 no, -1 not known. */
static int replica_current(leasekv *lk, const char *name)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    if (!name || !*name || js_GetStreamInfo(&si, lk->js, DW_STREAM_MSG, NULL, &jerr) != NATS_OK)
        return -1;
    int r = -1;
    jsClusterInfo *c = si->Cluster;
    if (!c)
        r = 1; /* one server: nothing to catch up */
    else if (c->Leader && !strcmp(c->Leader, name))
        r = 1;
    for (int i = 0; r == -1 && c && c->Leader && i < c->ReplicasLen; i++)
        if (c->Replicas[i]->Name && !strcmp(c->Replicas[i]->Name, name))
            r = c->Replicas[i]->Current && !c->Replicas[i]->Offline;
    jsStreamInfo_Destroy(si);
    return r;
}

/* A new consumer whose leader is on a node whose copy of DW_MSG is still
 * catching up (a node that was stopped and came back) is moved: on
 * nats-server 2.9 such a leader delivered past messages its store did not
 * have yet (test_cluster_faults, SIGSTOP: 23 messages of two partitions
 * never delivered, both consumers created at the resume with their
 * leader on the resumed node). Best effort: a few step-downs, then on. */
static void consumer_leader_current(leasekv *lk, const char *name)
{
    char subj[200];
    snprintf(subj, sizeof subj, "$JS.API.CONSUMER.LEADER.STEPDOWN.%s.%s", DW_STREAM_MSG, name);
    for (int tries = 0; tries < 5 && !atomic_load(&lk->stop); tries++) {
        jsConsumerInfo *ci = NULL;
        jsErrCode jerr = 0;
        if (js_GetConsumerInfo(&ci, lk->js, DW_STREAM_MSG, name, NULL, &jerr) != NATS_OK) return;
        char leader[128] = "";
        if (ci->Cluster && ci->Cluster->Leader)
            snprintf(leader, sizeof leader, "%s", ci->Cluster->Leader);
        jsConsumerInfo_Destroy(ci);
        if (replica_current(lk, leader) != 0) return;
        DW_WARN("partition consumer led from a copy of DW_MSG still catching up: moving it",
                "consumer=%s server=%s", name, leader);
        natsMsg *reply = NULL;
        natsConnection_Request(&reply, lk->nc, subj, NULL, 0, 2000);
        natsMsg_Destroy(reply);
        nats_Sleep(500);
    }
}

/* Set up partition p's consumer: start after the highest floor anyone
 * left, then delete the other owners' consumers. 0 or -1 (logged). */
/* On a setup thread: does partition p's key still name us? 1 yes, 0 no
 * (another owner, none, or the key is gone), -1 no answer. */
static int key_names_me(leasekv *lk, uint32_t p)
{
    char key[16], owner[LEASE_INSTANCE_MAX + 1];
    uint64_t floor = 0;
    kvEntry *e = NULL;
    part_key(key, sizeof key, p);
    natsStatus s = kvStore_Get(&e, lk->hb_kv, key);
    if (s == NATS_NOT_FOUND) return 0;
    if (s != NATS_OK) return -1;
    int mine =
        kvEntry_Operation(e) == kvOp_Put &&
        !lease_parse(kvEntry_Value(e), (size_t)kvEntry_ValueLen(e), owner, sizeof owner, &floor) &&
        !strcmp(owner, lk->me);
    kvEntry_Destroy(e);
    return mine;
}

static int consumer_setup(leasekv *lk, uint32_t p, uint32_t gen, uint64_t floor,
                          uint64_t *floor_out)
{
    kpart *kp = &lk->parts[p];
    char mine[NAME_MAX_LEN], prefix[32];
    consumer_name(mine, sizeof mine, p, lk->me, gen);
    snprintf(prefix, sizeof prefix, "dwp-%u-", p);
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
    consumer_leader_current(lk, mine);
    /* The fence deletes every other consumer of the partition: only while
     * the key still names us. A setup still running when we gave the
     * partition back (preferred elsewhere) once deleted the new owner's
     * live consumer here; that owner never noticed, and the partition went
     * unread for the rest of the run (the cluster suite's edge-drain test:
     * one room's 400 messages never delivered live). */
    if (key_names_me(lk, p) == 0) { /* (no answer: the bucket has no leader; go on) */
        DW_INFO("partition setup dropped: the lease no longer names us", "partition=%u", p);
        js_DeleteConsumer(lk->js, DW_STREAM_MSG, mine, NULL, &jerr);
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

/* After a compare-and-set on p failed: read the key. 1 when it names
 * another owner now (or none): p is not ours. 0 when it still names us, or
 * the bucket did not answer (no leader during an election, a reconnect):
 * nothing is known, try again later. */
static int cas_lost(leasekv *lk, uint32_t p)
{
    kpart *kp = &lk->parts[p];
    char key[16];
    kvEntry *e = NULL;
    part_key(key, sizeof key, p);
    natsStatus s = kvStore_Get(&e, lk->kv, key);
    if (s == NATS_NOT_FOUND) {
        /* Gone (deleted or purged): the next compare-and-set creates it. */
        kp->owner[0] = '\0';
        kp->exists = 0;
        kp->rev = 0;
        return 1;
    }
    if (s != NATS_OK) return 0;
    apply_entry(lk, e);
    kvEntry_Destroy(e);
    return strcmp(kp->owner, lk->me) != 0;
}

static void drop(leasekv *lk, uint32_t p, const char *why);

static void take(leasekv *lk, uint32_t p)
{
    kpart *kp = &lk->parts[p];
    /* One setup at a time per partition: two would delete each other's
     * consumers. The one out gives a fresh consumer from the floor anyway. */
    if (kp->setting_up) return;
    uint64_t floor = kp->floor_kv;
    uint64_t ours = (uint64_t)atomic_load(&kp->floor);
    if (ours > floor) floor = ours;
    if (!kp->held) {
        char was[LEASE_INSTANCE_MAX + 1];
        snprintf(was, sizeof was, "%s", kp->owner);
        if (cas(lk, p, lk->me, floor)) {
            /* Someone was faster, or our view of the key is behind (a
             * revision the watcher never brought: seen once in the cluster
             * suite, a partition given back and then left unread for 30 s
             * while both survivors failed the same compare-and-set every
             * tick). Read the key now: the next tick decides on its real
             * revision and owner. */
            if (!cas_lost(lk, p)) return; /* no answer, or still naming us: next tick */
            DW_DEBUG("partition take lost the race", "partition=%u owner=\"%s\" rev=%" PRIu64, p,
                     kp->owner, kp->rev);
            return;
        }
        kp->held = 1;
        kp->ready = 0;
        atomic_fetch_add(&lk->owned, 1);
        DW_INFO("partition taken", "partition=%u from=\"%s\"", p, was);
    } else if (strcmp(kp->owner, lk->me) || (cas(lk, p, lk->me, floor) && cas_lost(lk, p))) {
        /* Set up again (a reset, a setup that failed): not when the key
         * names someone else. A consumer of ours that was deleted means
         * someone else took the partition (their compare-and-set came
         * first), even if the watcher has not said so yet: without this
         * check the two would delete each other's consumers in turn. When
         * the bucket does not answer (no leader), nobody can take the key
         * either: the partition is set up again as the view says, rather
         * than left unread until the bucket is back. */
        drop(lk, p, "lease_changed");
        return;
    }
    /* A new name every setup attempt: deliveries of an earlier one (a
     * reset, a take-back) are told apart by their ack subjects, and a
     * setup that failed half-way leaves a consumer the next one deletes. */
    uint32_t gen = (kp->setup_gen > kp->gen ? kp->setup_gen : kp->gen) + 1;
    kp->setting_up = 1;
    kp->setup_gen = gen;
    pthread_mutex_lock(&lk->smu);
    lk->todo[lk->n_todo++] = (setup_job){.p = p, .gen = gen, .floor = floor};
    pthread_cond_signal(&lk->scv);
    pthread_mutex_unlock(&lk->smu);
}

/* A setup thread: runs queued consumer setups, hands the results back. */
static void *setup_main(void *arg)
{
    leasekv *lk = arg;
    pthread_mutex_lock(&lk->smu);
    while (!atomic_load(&lk->stop)) {
        if (!lk->n_todo) {
            pthread_cond_wait(&lk->scv, &lk->smu);
            continue;
        }
        setup_job j = lk->todo[0];
        memmove(lk->todo, lk->todo + 1, --lk->n_todo * sizeof lk->todo[0]);
        pthread_mutex_unlock(&lk->smu);
        j.ok = consumer_setup(lk, j.p, j.gen, j.floor, &j.start) == 0;
        pthread_mutex_lock(&lk->smu);
        lk->done[lk->n_done++] = j;
    }
    pthread_mutex_unlock(&lk->smu);
    return NULL;
}

/* On the lease thread: the setups that finished. A partition still ours
 * and waiting for that very setup becomes ready; a failed one is tried
 * again at the next tick (held, not ready); the consumer of a setup that
 * is not wanted any more (dropped, given back meanwhile) is deleted. */
static void setups_done(leasekv *lk)
{
    setup_job done[DW_MSG_PARTITIONS];
    pthread_mutex_lock(&lk->smu);
    size_t n = lk->n_done;
    memcpy(done, lk->done, n * sizeof done[0]);
    lk->n_done = 0;
    pthread_mutex_unlock(&lk->smu);
    for (size_t i = 0; i < n; i++) {
        setup_job *j = &done[i];
        kpart *kp = &lk->parts[j->p];
        char name[NAME_MAX_LEN];
        consumer_name(name, sizeof name, j->p, lk->me, j->gen);
        if (kp->setup_gen == j->gen) kp->setting_up = 0;
        if (!j->ok) continue;
        if (!kp->held || kp->ready || kp->releasing || kp->setup_gen != j->gen) {
            jsErrCode jerr = 0;
            js_DeleteConsumer(lk->js, DW_STREAM_MSG, name, NULL, &jerr);
            continue;
        }
        kp->ready = 1;
        kp->gen = j->gen;
        lk->cfg.on_ready(lk->cfg.arg, j->p, kp->gen, name, j->start);
    }
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
    /* Never below the floor the key had: a partition given back before
     * its consumer was set up has no floor of its own yet (0), and writing
     * that would send the next owner back to the start of the stream. */
    uint64_t floor = (uint64_t)atomic_load(&kp->floor);
    if (kp->floor_kv > floor) floor = kp->floor_kv;
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

static int64_t step_ms(const leasekv *lk)
{
    return lk->cfg.ttl_ms / 4 < 50 ? 50 : lk->cfg.ttl_ms / 4;
}

/* The heartbeat, on a thread of its own: setting up a partition's
 * consumer takes a few hundred ms on a JetStream cluster (a raft group is
 * created), and the lease thread sets up one after the other. A heartbeat
 * written between them would be late by all of them: others would judge
 * us dead and take what we are still setting up. */
static void *hb_main(void *arg)
{
    leasekv *lk = arg;
    char key[LEASE_INSTANCE_MAX + 8];
    int64_t last_warn = 0;
    snprintf(key, sizeof key, "d.%s", lk->me);
    while (!atomic_load(&lk->stop)) {
        int64_t t0 = mono_ms();
        uint64_t rev = 0;
        if (kvStore_PutString(&rev, lk->hb_kv, key, "1") == NATS_OK) {
            atomic_store(&lk->hb_ok_start_ms, t0);
        } else if (t0 - last_warn > 5000) {
            last_warn = t0;
            DW_WARN("lease heartbeat failed", "last=\"%s\"", nats_GetLastError(NULL));
        }
        for (int64_t until = t0 + step_ms(lk); !atomic_load(&lk->stop) && mono_ms() < until;)
            nats_Sleep(10);
    }
    return NULL;
}

static void tick(leasekv *lk)
{
    int64_t now = mono_ms();
    int64_t hb_ok = atomic_load(&lk->hb_ok_start_ms);
    int me_live = hb_ok && now - hb_ok < lk->cfg.ttl_ms * 3 / 4;
    /* Our heartbeat should come back through the watcher within a TTL of
     * being written: if it does not, the view is stale; start watching
     * again (the watcher's consumer may have been on a node that died: a
     * few seconds to replace). While the heartbeat itself fails, the
     * bucket is away and a new watcher would not see more: none is made
     * then (each is a consumer the cluster must create and delete). */
    int stale = !lk->w || (me_live && now - lk->my_echo_ms > lk->cfg.ttl_ms);
    if (stale) {
        if (lk->w) DW_WARN("lease bucket: watcher silent, restarting it", "%s", "");
        watch_open(lk);
    }
    /* A partition we hold whose setup failed or must be redone is tried
     * again whatever the bucket says now (take() looks at the key). */
    for (uint32_t p = 0; p < DW_MSG_PARTITIONS; p++) {
        kpart *kp = &lk->parts[p];
        if (kp->held && !kp->ready && !kp->setting_up && !kp->releasing) take(lk, p);
    }
    /* Nothing else is decided on a stale view or while our heartbeat
     * fails: no take, and no drop either. The bucket without a leader (its
     * node died, or a node that was stopped came back and forced an
     * election: 4-7 s on nats-server 2.9, once more than 40 s) stops
     * everyone's heartbeats alike, and dropping everything then only stalls
     * every room until the partitions are set up again. What we hold is
     * taken from us by the fence instead: a dispatcher that judges us dead
     * takes the key by compare-and-set and deletes our consumers, our next
     * pull is refused, and the set-up-again path finds the key not ours.
     * Until then we may send what we hold; the edges drop repeats, as after
     * a stall (docs/architecture.md). */
    if (stale || !me_live) {
        if (!me_live && hb_ok && now - lk->last_late_warn_ms > 5000) {
            lk->last_late_warn_ms = now; /* (not before the first heartbeat) */
            DW_WARN("lease heartbeat late: keeping the partitions held, taking none",
                    "held=%zu late_ms=%" PRId64, atomic_load(&lk->owned), now - hb_ok);
        }
        return;
    }

    lease_instance in[MAX_INSTANCES];
    for (size_t i = 0; i < lk->n_insts; i++)
        in[i] = (lease_instance){lk->insts[i].id, lk->insts[i].stamp_ms};
    /* Just after a gap in our own stamps (the bucket had no leader, or we
     * could not reach it), every instance we know counts as live until the
     * grace ends: the others need a TTL to heartbeat again before a stale
     * stamp means that they are gone. */
    int64_t snow = lease_now(in, lk->n_insts);
    if (snow < lk->grace_until_ms)
        for (size_t i = 0; i < lk->n_insts; i++)
            if (in[i].stamp_ms && in[i].stamp_ms < lk->grace_until_ms - lk->cfg.ttl_ms)
                in[i].stamp_ms = lk->grace_until_ms - lk->cfg.ttl_ms;
    lease_part parts[DW_MSG_PARTITIONS];
    uint8_t held[DW_MSG_PARTITIONS];
    lease_action act[DW_MSG_PARTITIONS];
    for (uint32_t p = 0; p < DW_MSG_PARTITIONS; p++) {
        parts[p] = (lease_part){lk->parts[p].exists, lk->parts[p].owner, lk->parts[p].rev};
        held[p] = (uint8_t)lk->parts[p].held;
    }
    lease_plan(lk->me, 1, in, lk->n_insts, lk->cfg.ttl_ms, parts, held, DW_MSG_PARTITIONS, act);
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
                    if (cas(lk, p, lk->me, f)) {
                        /* A bucket without a leader for a moment is no
                         * reason to drop a partition: only another owner. */
                        if (cas_lost(lk, p)) drop(lk, p, "lease_changed");
                    } else {
                        kp->floor_written = f;
                        kp->floor_written_ms = now;
                    }
                }
            }
            break;
        case LEASE_RELEASE:
            if (kp->setting_up) {
                /* Not while our setup runs: its fence would delete the
                 * next owner's consumer. It ends within the JetStream
                 * timeout; the partition is given back at a later tick. */
            } else if (!kp->ready) {
                give_back(lk, p);
            } else if (!kp->releasing) {
                kp->releasing = 1;
                DW_INFO("partition preferred elsewhere: draining it", "partition=%u", p);
                lk->cfg.on_release(lk->cfg.arg, p);
            }
            break;
        case LEASE_LOST: drop(lk, p, "taken"); break;
        }
    }

    /* Forget heartbeats of instances long dead (each start makes a new id). */
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
    int64_t next_tick = 0, step = step_ms(lk);
    while (!atomic_load(&lk->stop)) {
        int64_t now = mono_ms();
        if (now >= next_tick) {
            tick(lk);
            next_tick = mono_ms() + step;
        }
        setups_done(lk);
        int setting_up = 0;
        for (uint32_t p = 0; p < DW_MSG_PARTITIONS; p++) {
            kpart *kp = &lk->parts[p];
            setting_up |= kp->setting_up;
            if (kp->held && kp->releasing && atomic_load(&kp->drained)) give_back(lk, p);
            if (atomic_exchange(&kp->reset, false) && kp->held && !kp->releasing) {
                kp->ready = 0;
                take(lk, p);
            }
        }
        int64_t wait = next_tick - mono_ms();
        if (wait > (setting_up ? 10 : 100)) wait = setting_up ? 10 : 100;
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

/* Stop and join every thread that was started. */
static void threads_stop(leasekv *lk)
{
    atomic_store(&lk->stop, true);
    pthread_mutex_lock(&lk->smu);
    pthread_cond_broadcast(&lk->scv);
    pthread_mutex_unlock(&lk->smu);
    if (lk->started) pthread_join(lk->thread, NULL);
    if (lk->hb_started) pthread_join(lk->hb_thread, NULL);
    for (int i = 0; i < lk->n_setup_threads; i++)
        pthread_join(lk->setup_threads[i], NULL);
    lk->started = lk->hb_started = lk->n_setup_threads = 0;
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
    atomic_init(&lk->hb_ok_start_ms, 0);

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
    jsOptions hb_jo;
    jsOptions_Init(&hb_jo);
    hb_jo.Wait = cfg->ttl_ms / 2 > 100 ? cfg->ttl_ms / 2 : 100;
    if (natsConnection_JetStream(&lk->hb_js, nc, &hb_jo) != NATS_OK ||
        js_KeyValue(&lk->hb_kv, lk->hb_js, LEASEKV_BUCKET) != NATS_OK) {
        DW_WARN("lease bucket not available", "bucket=%s last=\"%s\"", LEASEKV_BUCKET,
                nats_GetLastError(NULL));
        kvStore_Destroy(lk->hb_kv);
        jsCtx_Destroy(lk->hb_js);
        kvStore_Destroy(lk->kv);
        free(lk);
        return -1;
    }
    pthread_mutex_init(&lk->smu, NULL);
    pthread_cond_init(&lk->scv, NULL);
    watch_open(lk);
    if (!pthread_create(&lk->hb_thread, NULL, hb_main, lk)) lk->hb_started = 1;
    while (lk->hb_started && lk->n_setup_threads < SETUP_THREADS &&
           !pthread_create(&lk->setup_threads[lk->n_setup_threads], NULL, setup_main, lk))
        lk->n_setup_threads++;
    if (!lk->n_setup_threads || pthread_create(&lk->thread, NULL, lease_main, lk)) {
        threads_stop(lk);
        kvWatcher_Destroy(lk->w);
        kvStore_Destroy(lk->hb_kv);
        jsCtx_Destroy(lk->hb_js);
        kvStore_Destroy(lk->kv);
        pthread_cond_destroy(&lk->scv);
        pthread_mutex_destroy(&lk->smu);
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
    threads_stop(lk);
    /* Give the partitions back so that others take them at once rather
     * than after our lease ages out (TTL), but not at any cost: with NATS
     * away each write would wait its whole timeout (16 partitions × 5 s),
     * and while the bucket has no leader likewise. At most STOP_WRITES_MS
     * in all; what is left ages out. */
    int connected = natsConnection_Status(lk->nc) == NATS_CONN_STATUS_CONNECTED;
    int64_t deadline = mono_ms() + dw_stop_left_ms(STOP_WRITES_MS);
    for (uint32_t p = 0; p < DW_MSG_PARTITIONS; p++) {
        if (!lk->parts[p].held) continue;
        if (!connected || mono_ms() >= deadline) {
            DW_WARN("partitions not given back (NATS away or slow): they pass on after the lease "
                    "TTL",
                    "from_partition=%u", p);
            break;
        }
        give_back(lk, p);
    }
    char key[LEASE_INSTANCE_MAX + 8];
    snprintf(key, sizeof key, "d.%s", lk->me);
    if (connected && mono_ms() < deadline) kvStore_Purge(lk->hb_kv, key, NULL);
    kvWatcher_Destroy(lk->w);
    kvStore_Destroy(lk->hb_kv);
    jsCtx_Destroy(lk->hb_js);
    kvStore_Destroy(lk->kv);
    pthread_cond_destroy(&lk->scv);
    pthread_mutex_destroy(&lk->smu);
    free(lk);
}
