/* Connection id -> session, for the lws thread. Ids are DW_ID_LEN chars.
 * Open addressing with backward-shift deletion; grows at 50% load.
 *
 * Ownership: ids are copied in; values are borrowed (the sessions are
 * lws's per-connection data): the map never frees one, and a session must
 * be taken out (connmap_del) before lws frees it. lws thread only. */
#ifndef EDGE_CONNMAP_H
#define EDGE_CONNMAP_H

#include <stddef.h>
#include <stdint.h>

#include "dw/util.h"

typedef struct connmap_slot {
    char id[DW_ID_LEN];
    void *value; /* NULL = empty slot */
} connmap_slot;

typedef struct edge_connmap {
    connmap_slot *slots;
    size_t nslots, count;
} edge_connmap;

/* value must not be NULL. Replaces an existing entry. 0 or -1 (memory). */
int connmap_put(edge_connmap *m, const char *id, void *value);
/* NULL when absent. id need not be NUL-terminated; len must be DW_ID_LEN. */
void *connmap_get(const edge_connmap *m, const char *id, size_t len);
void connmap_del(edge_connmap *m, const char *id);
void connmap_free(edge_connmap *m);

#endif
