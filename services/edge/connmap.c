#include "connmap.h"

#include <stdlib.h>
#include <string.h>

static size_t hash_id(const char *id, size_t mask)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a: ids are random already */
    for (size_t i = 0; i < DW_ID_LEN; i++)
        h = (h ^ (unsigned char)id[i]) * 1099511628211ull;
    return (size_t)h & mask;
}

static int grow(edge_connmap *m)
{
    size_t n = m->nslots ? m->nslots * 2 : 64;
    connmap_slot *s = calloc(n, sizeof *s);
    if (!s) return -1;
    for (size_t i = 0; i < m->nslots; i++) {
        if (!m->slots[i].value) continue;
        size_t j = hash_id(m->slots[i].id, n - 1);
        while (s[j].value)
            j = (j + 1) & (n - 1);
        s[j] = m->slots[i];
    }
    free(m->slots);
    m->slots = s;
    m->nslots = n;
    return 0;
}

int connmap_put(edge_connmap *m, const char *id, void *value)
{
    if ((m->count + 1) * 2 > m->nslots && grow(m)) return -1;
    size_t mask = m->nslots - 1, i = hash_id(id, mask);
    while (m->slots[i].value) {
        if (!memcmp(m->slots[i].id, id, DW_ID_LEN)) {
            m->slots[i].value = value;
            return 0;
        }
        i = (i + 1) & mask;
    }
    memcpy(m->slots[i].id, id, DW_ID_LEN);
    m->slots[i].value = value;
    m->count++;
    return 0;
}

void *connmap_get(const edge_connmap *m, const char *id, size_t len)
{
    if (!m->nslots || len != DW_ID_LEN) return NULL;
    size_t mask = m->nslots - 1, i = hash_id(id, mask);
    while (m->slots[i].value) {
        if (!memcmp(m->slots[i].id, id, DW_ID_LEN)) return m->slots[i].value;
        i = (i + 1) & mask;
    }
    return NULL;
}

void connmap_del(edge_connmap *m, const char *id)
{
    if (!m->nslots) return;
    size_t mask = m->nslots - 1, i = hash_id(id, mask);
    while (memcmp(m->slots[i].id, id, DW_ID_LEN) || !m->slots[i].value) {
        if (!m->slots[i].value) return;
        i = (i + 1) & mask;
    }
    m->count--;
    size_t j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (!m->slots[j].value) break;
        size_t k = hash_id(m->slots[j].id, mask);
        if ((i <= j) ? (i < k && k <= j) : (i < k || k <= j)) continue;
        m->slots[i] = m->slots[j];
        i = j;
    }
    m->slots[i].value = NULL;
}

void connmap_free(edge_connmap *m)
{
    free(m->slots);
    m->slots = NULL;
    m->nslots = m->count = 0;
}
