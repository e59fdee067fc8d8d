#include "inbox.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dw/log.h"
#include "dw/util.h"

struct inbox {
    natsConnection *nc;
    natsSubscription *sub;
    char prefix[128]; /* "_INBOX.<nuid>" */
    size_t prefix_len;

    pthread_mutex_t mu;
    pthread_cond_t cv; /* CLOCK_MONOTONIC, like dw_mono_ns */
    uint64_t round;    /* current round; 0 = none open */
    natsMsg **slots;
    unsigned char *skipped;
    size_t n, cap;
    size_t expected, got;
};

static void on_reply(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    inbox *ib = closure;
    const char *subj = natsMsg_GetSubject(msg);
    uint64_t round = 0;
    size_t slot = 0;
    int matched = 0;

    if (subj && !strncmp(subj, ib->prefix, ib->prefix_len) && subj[ib->prefix_len] == '.') {
        char *end = NULL;
        round = strtoull(subj + ib->prefix_len + 1, &end, 10);
        if (end && *end == '-') {
            char *end2 = NULL;
            slot = (size_t)strtoull(end + 1, &end2, 10);
            matched = end2 && *end2 == '\0' && end2 != end + 1;
        }
    }
    pthread_mutex_lock(&ib->mu);
    if (matched && round == ib->round && slot < ib->n && !ib->slots[slot] && !ib->skipped[slot]) {
        ib->slots[slot] = msg;
        msg = NULL;
        if (++ib->got >= ib->expected) pthread_cond_signal(&ib->cv);
    }
    pthread_mutex_unlock(&ib->mu);
    if (msg) {
        /* A reply after its round's deadline: the round already decided. */
        DW_DEBUG("late reply dropped", "subject=%s", subj ? subj : "");
        natsMsg_Destroy(msg);
    }
}

void inbox_sub_close(natsSubscription *sub)
{
    if (!sub) return;
    /* Unsubscribe alone can return while a callback still runs; drain
     * completes only after the last one returned. */
    if (natsSubscription_Drain(sub) == NATS_OK)
        natsSubscription_WaitForDrainCompletion(sub, 5000);
    else
        natsSubscription_Unsubscribe(sub);
    natsSubscription_Destroy(sub);
}

int inbox_create(inbox **out, natsConnection *nc)
{
    natsInbox *name = NULL;
    inbox *ib = calloc(1, sizeof *ib);
    int mu_ok = 0, cv_ok = 0;

    if (!ib) return -1;
    ib->nc = nc;
    if (pthread_mutex_init(&ib->mu, NULL)) goto error;
    mu_ok = 1;
    cv_ok = !dw_cond_init_mono(&ib->cv);
    if (!cv_ok) goto error;
    if (natsInbox_Create(&name) != NATS_OK) goto error;
    snprintf(ib->prefix, sizeof ib->prefix, "%s", name);
    natsInbox_Destroy(name);
    ib->prefix_len = strlen(ib->prefix);

    char wildcard[160];
    snprintf(wildcard, sizeof wildcard, "%s.*", ib->prefix);
    natsStatus s = natsConnection_Subscribe(&ib->sub, nc, wildcard, on_reply, ib);
    /* Replies to a whole batch can arrive at once: never drop them as a
     * slow consumer (a batch is bounded by FETCH_BATCH x edges anyway). */
    if (s == NATS_OK) s = natsSubscription_SetPendingLimits(ib->sub, -1, -1);
    if (s != NATS_OK) {
        DW_ERROR("inbox subscribe failed", "status=%s", natsStatus_GetText(s));
        goto error;
    }
    *out = ib;
    return 0;

error:
    natsSubscription_Destroy(ib->sub);
    if (cv_ok) pthread_cond_destroy(&ib->cv);
    if (mu_ok) pthread_mutex_destroy(&ib->mu);
    free(ib);
    return -1;
}

static void free_slots(inbox *ib)
{
    for (size_t i = 0; i < ib->n; i++) {
        natsMsg_Destroy(ib->slots[i]);
        ib->slots[i] = NULL;
    }
}

void inbox_destroy(inbox *ib)
{
    if (!ib) return;
    inbox_sub_close(ib->sub);
    free_slots(ib);
    free(ib->slots);
    free(ib->skipped);
    pthread_cond_destroy(&ib->cv);
    pthread_mutex_destroy(&ib->mu);
    free(ib);
}

int inbox_begin(inbox *ib, size_t n)
{
    pthread_mutex_lock(&ib->mu);
    free_slots(ib);
    if (n > ib->cap) {
        natsMsg **slots = realloc(ib->slots, n * sizeof *slots);
        if (slots) ib->slots = slots;
        unsigned char *sk = slots ? realloc(ib->skipped, n) : NULL;
        if (sk) ib->skipped = sk;
        if (!slots || !sk) {
            ib->n = 0;
            pthread_mutex_unlock(&ib->mu);
            return -1;
        }
        ib->cap = n;
    }
    if (n) {
        memset(ib->slots, 0, n * sizeof *ib->slots);
        memset(ib->skipped, 0, n);
    }
    ib->n = n;
    ib->expected = n;
    ib->got = 0;
    ib->round++;
    pthread_mutex_unlock(&ib->mu);
    return 0;
}

void inbox_reply_subject(const inbox *ib, size_t slot, char *buf, size_t len)
{
    /* round is only written by the thread that owns the rounds. */
    snprintf(buf, len, "%s.%" PRIu64 "-%zu", ib->prefix, ib->round, slot);
}

void inbox_skip(inbox *ib, size_t slot)
{
    pthread_mutex_lock(&ib->mu);
    if (slot < ib->n && !ib->skipped[slot]) {
        ib->skipped[slot] = 1;
        ib->expected--;
        natsMsg_Destroy(ib->slots[slot]);
        if (ib->slots[slot]) {
            ib->slots[slot] = NULL;
            ib->got--;
        }
    }
    pthread_mutex_unlock(&ib->mu);
}

size_t inbox_wait(inbox *ib, int64_t deadline_ns)
{
    pthread_mutex_lock(&ib->mu);
    while (ib->got < ib->expected && dw_mono_ns() < deadline_ns)
        dw_cond_wait_until(&ib->cv, &ib->mu, deadline_ns);
    size_t got = ib->got;
    pthread_mutex_unlock(&ib->mu);
    return got;
}

natsMsg *inbox_take(inbox *ib, size_t slot)
{
    pthread_mutex_lock(&ib->mu);
    natsMsg *m = NULL;
    if (slot < ib->n) {
        m = ib->slots[slot];
        ib->slots[slot] = NULL;
    }
    pthread_mutex_unlock(&ib->mu);
    return m;
}

void inbox_end(inbox *ib)
{
    pthread_mutex_lock(&ib->mu);
    free_slots(ib);
    ib->n = 0;
    ib->expected = ib->got = 0;
    /* A new number, so replies to the closed round no longer match. */
    ib->round++;
    pthread_mutex_unlock(&ib->mu);
}
