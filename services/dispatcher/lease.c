#include "lease.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int64_t lease_now(const lease_instance *inst, size_t n)
{
    int64_t now = 0;
    for (size_t i = 0; i < n; i++)
        if (inst[i].stamp_ms > now) now = inst[i].stamp_ms;
    return now;
}

int lease_live(const lease_instance *i, int64_t now_ms, int64_t ttl_ms)
{
    return i->stamp_ms > 0 && now_ms - i->stamp_ms <= ttl_ms;
}

/* Rendezvous weight of (instance, partition): FNV-1a over both, mixed. */
static uint64_t weight(const char *id, uint32_t p)
{
    uint64_t h = 1469598103934665603ULL;
    for (const unsigned char *s = (const unsigned char *)id; *s; s++) {
        h ^= *s;
        h *= 1099511628211ULL;
    }
    for (int i = 0; i < 4; i++) {
        h ^= (p >> (8 * i)) & 0xff;
        h *= 1099511628211ULL;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return h;
}

const char *lease_preferred(const lease_instance *inst, size_t n, uint32_t p, int64_t now_ms,
                            int64_t ttl_ms)
{
    const char *best = NULL;
    uint64_t best_w = 0;
    for (size_t i = 0; i < n; i++) {
        if (!lease_live(&inst[i], now_ms, ttl_ms)) continue;
        uint64_t w = weight(inst[i].id, p);
        /* Ties (never in practice) go to the smaller id, the same everywhere. */
        if (!best || w > best_w || (w == best_w && strcmp(inst[i].id, best) < 0)) {
            best = inst[i].id;
            best_w = w;
        }
    }
    return best;
}

static const lease_instance *find(const lease_instance *inst, size_t n, const char *id)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(inst[i].id, id)) return &inst[i];
    return NULL;
}

void lease_plan(const char *me, int me_live, const lease_instance *inst, size_t n_inst,
                int64_t ttl_ms, const lease_part *parts, const uint8_t *held, size_t n_parts,
                lease_action *out)
{
    int64_t now = lease_now(inst, n_inst);
    for (size_t p = 0; p < n_parts; p++) {
        const lease_part *lp = &parts[p];
        const char *owner = lp->exists && lp->owner ? lp->owner : "";
        int ours = *owner && !strcmp(owner, me);
        if (!me_live) {
            out[p] = held[p] ? LEASE_LOST : LEASE_NONE;
            continue;
        }
        const char *pref = lease_preferred(inst, n_inst, (uint32_t)p, now, ttl_ms);
        int preferred = pref && !strcmp(pref, me);
        if (held[p] && !ours) {
            out[p] = LEASE_LOST; /* someone else holds it (or it was released) */
        } else if (ours) {
            /* Ours in the bucket: keep it while preferred, or while the
             * preferred one is not live (nobody else would take it). Not
             * held (we dropped it, e.g. after a reconnect): take it again. */
            if (preferred || !pref)
                out[p] = held[p] ? LEASE_KEEP : LEASE_ACQUIRE;
            else
                out[p] = LEASE_RELEASE;
        } else {
            const lease_instance *oi = *owner ? find(inst, n_inst, owner) : NULL;
            int owner_live = oi && lease_live(oi, now, ttl_ms);
            out[p] = !owner_live && preferred ? LEASE_ACQUIRE : LEASE_NONE;
        }
    }
}

int lease_value(char *buf, size_t len, const char *owner, uint64_t floor)
{
    int n = snprintf(buf, len, "%s %" PRIu64, owner ? owner : "", floor);
    return n > 0 && (size_t)n < len ? 0 : -1;
}

int lease_parse(const char *val, size_t val_len, char *owner, size_t owner_len, uint64_t *floor)
{
    *floor = 0;
    if (owner_len) owner[0] = '\0';
    size_t i = 0;
    while (i < val_len && val[i] != ' ')
        i++;
    if (i >= owner_len) return -1;
    memcpy(owner, val, i);
    owner[i] = '\0';
    for (size_t k = 0; k < i; k++)
        if ((unsigned char)owner[k] <= ' ' || owner[k] == '.' || owner[k] == '*' ||
            owner[k] == '>')
            return -1;
    if (i == val_len) return 0; /* no floor: 0 */
    uint64_t f = 0;
    size_t digits = 0;
    for (i++; i < val_len; i++, digits++) {
        if (val[i] < '0' || val[i] > '9' || digits >= 19) return -1;
        f = f * 10 + (uint64_t)(val[i] - '0');
    }
    *floor = f;
    return 0;
}
