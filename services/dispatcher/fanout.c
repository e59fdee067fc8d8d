#include "fanout.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dw/bus.h"
#include "edges.h"

int64_t fanout_retry_delay(const fanout_retry *policy, uint64_t attempt)
{
    /* max_deliver 0 means the consumer retries forever. */
    if (policy->max_deliver > 0 && attempt >= policy->max_deliver) return -1;
    int64_t cap = policy->max_ms > 0 ? policy->max_ms : INT64_MAX;
    int64_t d = policy->base_ms > 0 ? policy->base_ms : 0;
    /* Double attempt - 1 times, stopping at the cap (no overflow however
     * large attempt grows). */
    for (uint64_t a = 1; a < attempt && d < cap; a++)
        d = d > cap / 2 ? cap : d * 2;
    return d < cap ? d : cap;
}

int64_t fanout_retry_total_ms(const fanout_retry *policy)
{
    int64_t total = 0;
    if (policy->max_deliver == 0) return 0;
    for (uint64_t a = 1; a < policy->max_deliver; a++) {
        int64_t d = fanout_retry_delay(policy, a);
        if (d < 0 || total > INT64_MAX - d) break;
        total += d;
    }
    return total;
}

/* --- small name -> index hash (FNV-1a, open addressing, value = index + 1) --- */

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}

/* Find name in the index; names(i) gives the name of entry i. Returns the
 * slot: *slot is 0 when absent (insert there), index + 1 when present. */
static size_t *idx_slot(size_t *idx, size_t cap, const char *name,
                        const char *(*names)(const fanout_batch *, size_t), const fanout_batch *b)
{
    size_t mask = cap - 1;
    for (size_t i = (size_t)hash_str(name) & mask;; i = (i + 1) & mask) {
        if (!idx[i] || !strcmp(names(b, idx[i] - 1), name)) return &idx[i];
    }
}

/* Grow the index so it stays at most half full with n + 1 entries. */
static int idx_reserve(size_t **idx, size_t *cap, size_t n,
                       const char *(*names)(const fanout_batch *, size_t), const fanout_batch *b)
{
    if (*cap && (n + 1) * 2 <= *cap) return 0;
    size_t ncap = *cap ? *cap * 2 : 64;
    while ((n + 1) * 2 > ncap)
        ncap *= 2;
    size_t *nidx = calloc(ncap, sizeof *nidx);
    if (!nidx) return -1;
    for (size_t i = 0; i < n; i++)
        *idx_slot(nidx, ncap, names(b, i), names, b) = i + 1;
    free(*idx);
    *idx = nidx;
    *cap = ncap;
    return 0;
}

static const char *room_name(const fanout_batch *b, size_t i)
{
    return b->rooms[i].name;
}

static const char *edge_name(const fanout_batch *b, size_t i)
{
    return b->edges[i].id;
}

static int grow(void **v, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap) return 0;
    size_t ncap = *cap ? *cap * 2 : 16;
    while (ncap < need)
        ncap *= 2;
    void *nv = realloc(*v, ncap * elem);
    if (!nv) return -1;
    *v = nv;
    *cap = ncap;
    return 0;
}

/* --- batch --- */

void fanout_batch_init(fanout_batch *b)
{
    memset(b, 0, sizeof *b);
}

void fanout_batch_clear(fanout_batch *b)
{
    if (!b) return;
    for (size_t i = 0; i < b->n_msgs; i++) {
        fanout_msg *m = &b->msgs[i];
        if (m->chat) dw__chat_message__free_unpacked(m->chat, NULL);
        free(m->failed);
        free(m->failed_how);
        free(m->skip);
        for (size_t k = 0; k < m->n_skip_names; k++)
            free(m->skip_names[k]);
        free(m->skip_names);
        for (size_t k = 0; k < m->n_only_names; k++)
            free(m->only_names[k]);
        free(m->only_names);
    }
    for (size_t i = 0; i < b->n_rooms; i++) {
        free(b->rooms[i].msgs);
        free(b->rooms[i].edges);
    }
    for (size_t i = 0; i < b->n_edges; i++) {
        free(b->edges[i].id);
        free(b->edges[i].msgs);
    }
    free(b->msgs);
    free(b->rooms);
    free(b->edges);
    free(b->deliveries);
    free(b->room_idx);
    free(b->edge_idx);
    memset(b, 0, sizeof *b);
}

/* A decoded message we can deliver: it names a room and has an id. */
static int chat_usable(const Dw__ChatMessage *c)
{
    return c->id && *c->id && c->room && dw_room_valid(c->room, strlen(c->room));
}

static int room_add_msg(fanout_room *r, size_t msg)
{
    if (grow((void **)&r->msgs, &r->cap_msgs, r->n_msgs + 1, sizeof *r->msgs)) return -1;
    r->msgs[r->n_msgs++] = msg;
    return 0;
}

long fanout_add(fanout_batch *b, void *handle, const void *data, size_t len, uint64_t seq,
                uint64_t attempt)
{
    if (grow((void **)&b->msgs, &b->cap_msgs, b->n_msgs + 1, sizeof *b->msgs)) return -1;
    Dw__ChatMessage *chat = dw__chat_message__unpack(NULL, len, data);
    if (chat && !chat_usable(chat)) {
        dw__chat_message__free_unpacked(chat, NULL);
        chat = NULL;
    }
    size_t mi = b->n_msgs;
    fanout_msg *m = &b->msgs[mi];
    memset(m, 0, sizeof *m);
    m->handle = handle;
    m->chat = chat;
    m->seq = seq;
    m->attempt = attempt;
    if (!chat) {
        b->n_msgs++;
        return (long)mi;
    }

    if (idx_reserve(&b->room_idx, &b->room_idx_cap, b->n_rooms, room_name, b) ||
        grow((void **)&b->rooms, &b->cap_rooms, b->n_rooms + 1, sizeof *b->rooms))
        goto error;
    size_t *slot = idx_slot(b->room_idx, b->room_idx_cap, chat->room, room_name, b);
    size_t ri;
    if (*slot) {
        ri = *slot - 1;
    } else {
        ri = b->n_rooms;
        fanout_room *r = &b->rooms[ri];
        memset(r, 0, sizeof *r);
        r->name = chat->room; /* the first message of a room lives as long as the room */
        if (room_add_msg(r, mi)) goto error;
        b->n_rooms++;
        *slot = ri + 1;
        goto added;
    }
    if (room_add_msg(&b->rooms[ri], mi)) goto error;
added:
    if (chat->conn_seq > b->rooms[ri].min_seq) b->rooms[ri].min_seq = chat->conn_seq;
    m->room = ri;
    b->n_msgs++;
    return (long)mi;

error:
    dw__chat_message__free_unpacked(chat, NULL);
    return -1;
}

/* Append copies of ids to a name list. 0 or -1. */
static int names_add(char ***list, size_t *n, char *const *ids, size_t count)
{
    if (!count) return 0;
    char **g = realloc(*list, (*n + count) * sizeof *g);
    if (!g) return -1;
    *list = g;
    for (size_t i = 0; i < count; i++) {
        if (!(g[*n] = strdup(ids[i] ? ids[i] : ""))) return -1;
        (*n)++;
    }
    return 0;
}

static int names_have(char *const *list, size_t n, const char *id)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(list[i], id)) return 1;
    return 0;
}

int fanout_msg_skip(fanout_batch *b, size_t msg, char *const *edge_ids, size_t n)
{
    fanout_msg *m = &b->msgs[msg];
    return names_add(&m->skip_names, &m->n_skip_names, edge_ids, n);
}

int fanout_msg_only(fanout_batch *b, size_t msg, char *const *edge_ids, size_t n)
{
    fanout_msg *m = &b->msgs[msg];
    m->has_only = 1;
    return names_add(&m->only_names, &m->n_only_names, edge_ids, n);
}

int fanout_msg_skips(const fanout_batch *b, size_t msg, size_t edge)
{
    const fanout_msg *m = &b->msgs[msg];
    for (size_t i = 0; i < m->n_skip; i++)
        if (m->skip[i] == edge) return 1;
    return 0;
}

/* Resolve a message's skip/only names against its room's edges. */
static int resolve_skips(fanout_batch *b, fanout_msg *m, const fanout_room *r)
{
    free(m->skip);
    m->skip = NULL;
    m->n_skip = 0;
    if (!m->n_skip_names && !m->has_only) return 0;
    if (!(m->skip = malloc(r->n_edges * sizeof *m->skip))) return -1;
    for (size_t j = 0; j < r->n_edges; j++) {
        const char *id = b->edges[r->edges[j]].id;
        if (names_have(m->skip_names, m->n_skip_names, id) ||
            (m->has_only && !names_have(m->only_names, m->n_only_names, id)))
            m->skip[m->n_skip++] = r->edges[j];
    }
    return 0;
}

static long edge_intern(fanout_batch *b, const char *id)
{
    if (idx_reserve(&b->edge_idx, &b->edge_idx_cap, b->n_edges, edge_name, b) ||
        grow((void **)&b->edges, &b->cap_edges, b->n_edges + 1, sizeof *b->edges))
        return -1;
    size_t *slot = idx_slot(b->edge_idx, b->edge_idx_cap, id, edge_name, b);
    if (*slot) return (long)(*slot - 1);
    fanout_edge *e = &b->edges[b->n_edges];
    memset(e, 0, sizeof *e);
    if (!(e->id = strdup(id))) return -1;
    *slot = ++b->n_edges;
    return (long)(b->n_edges - 1);
}

int fanout_room_edges(fanout_batch *b, size_t room, char *const *edge_ids, size_t n)
{
    fanout_room *r = &b->rooms[room];
    free(r->edges);
    r->edges = NULL;
    r->n_edges = 0;
    r->answered = 1;
    r->error = NULL;
    if (n == 0) return 0;
    if (!(r->edges = malloc(n * sizeof *r->edges))) goto error;
    for (size_t i = 0; i < n; i++) {
        if (!edge_ids[i] || !edges_id_valid(edge_ids[i], strlen(edge_ids[i]))) continue;
        long e = edge_intern(b, edge_ids[i]);
        if (e < 0) goto error;
        int dup = 0;
        for (size_t j = 0; j < r->n_edges && !dup; j++)
            dup = r->edges[j] == (size_t)e;
        if (!dup) r->edges[r->n_edges++] = (size_t)e;
    }
    return 0;

error:
    /* Nothing can be delivered for this room without its edge list. */
    fanout_room_failed(b, room, "out_of_memory");
    return -1;
}

void fanout_room_failed(fanout_batch *b, size_t room, const char *reason)
{
    fanout_room *r = &b->rooms[room];
    free(r->edges);
    r->edges = NULL;
    r->n_edges = 0;
    r->answered = 1;
    r->error = reason ? reason : "registry";
}

/* --- plan: per-edge message lists and size-bounded requests --- */

static void item_init(Dw__DeliveryItem *it, const fanout_msg *m)
{
    dw__delivery_item__init(it);
    it->id = m->chat->id;
    it->room = m->chat->room;
    it->seq = m->seq;
    it->data = m->chat->data;
    it->from_user = m->chat->user_id;
    it->from_conn = m->chat->conn_id;
    it->ts_ms = m->chat->ts_ms;
    it->data_json = m->chat->data_json;
    it->exclude_sender = m->chat->exclude_sender;
    it->client_id = m->chat->client_id;
}

static size_t varint_len(size_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

/* Bytes one item adds to a packed Dw__Delivery (tag + length + body). */
static size_t item_wire_size(const fanout_msg *m)
{
    Dw__DeliveryItem it;
    item_init(&it, m);
    size_t body = protobuf_c_message_get_packed_size(&it.base);
    return 1 + varint_len(body) + body;
}

typedef struct seq_ref {
    uint64_t seq;
    size_t msg;
} seq_ref;

static int cmp_seq(const void *a, const void *b)
{
    const seq_ref *x = a, *y = b;
    if (x->seq != y->seq) return x->seq < y->seq ? -1 : 1;
    return x->msg < y->msg ? -1 : x->msg > y->msg;
}

int fanout_plan(fanout_batch *b, size_t max_bytes)
{
    seq_ref *order = NULL;
    size_t *sizes = NULL;
    size_t n_order = 0, n_req = 0;

    b->planned = 0;
    if (b->n_msgs && (!(order = malloc(b->n_msgs * sizeof *order)) ||
                      !(sizes = calloc(b->n_msgs, sizeof *sizes))))
        goto error;

    /* Every message bound for at least one edge, in stream order, so each
     * edge gets each room's messages in seq order. */
    for (size_t i = 0; i < b->n_msgs; i++) {
        fanout_msg *m = &b->msgs[i];
        if (!m->chat) continue;
        const fanout_room *r = &b->rooms[m->room];
        free(m->failed);
        free(m->failed_how);
        m->failed = NULL;
        m->failed_how = NULL;
        m->n_failed = 0;
        if (r->error || r->n_edges == 0) continue;
        if (!(m->failed = malloc(r->n_edges * sizeof *m->failed)) ||
            !(m->failed_how = malloc(r->n_edges * sizeof *m->failed_how)) || resolve_skips(b, m, r))
            goto error;
        if (m->n_skip == r->n_edges) continue; /* every edge has it, or may not get it */
        order[n_order].seq = m->seq;
        order[n_order].msg = i;
        n_order++;
    }
    if (n_order > 1) qsort(order, n_order, sizeof *order, cmp_seq);

    /* Count first, so each edge's list is allocated once. */
    for (size_t e = 0; e < b->n_edges; e++) {
        free(b->edges[e].msgs);
        b->edges[e].msgs = NULL;
        b->edges[e].n_msgs = 0;
    }
    for (size_t k = 0; k < n_order; k++) {
        const fanout_room *r = &b->rooms[b->msgs[order[k].msg].room];
        for (size_t j = 0; j < r->n_edges; j++)
            if (!fanout_msg_skips(b, order[k].msg, r->edges[j])) b->edges[r->edges[j]].n_msgs++;
    }
    for (size_t e = 0; e < b->n_edges; e++) {
        if (b->edges[e].n_msgs && !(b->edges[e].msgs = malloc(b->edges[e].n_msgs * sizeof(size_t))))
            goto error;
        b->edges[e].n_msgs = 0;
    }
    for (size_t k = 0; k < n_order; k++) {
        size_t mi = order[k].msg;
        const fanout_room *r = &b->rooms[b->msgs[mi].room];
        for (size_t j = 0; j < r->n_edges; j++) {
            if (fanout_msg_skips(b, mi, r->edges[j])) continue;
            fanout_edge *e = &b->edges[r->edges[j]];
            e->msgs[e->n_msgs++] = mi;
        }
        sizes[mi] = item_wire_size(&b->msgs[mi]);
    }

    /* Requests: cut each edge's list where the next item would pass max_bytes. */
    for (int pass = 0; pass < 2; pass++) {
        n_req = 0;
        for (size_t e = 0; e < b->n_edges; e++) {
            const fanout_edge *ed = &b->edges[e];
            size_t first = 0, bytes = 0;
            for (size_t k = 0; k < ed->n_msgs; k++) {
                size_t sz = sizes[ed->msgs[k]];
                if (k > first && bytes + sz > max_bytes) {
                    if (pass)
                        b->deliveries[n_req] =
                            (fanout_delivery){e, first, k - first, FANOUT_PENDING};
                    n_req++;
                    first = k;
                    bytes = 0;
                }
                bytes += sz;
            }
            if (ed->n_msgs > first) {
                if (pass)
                    b->deliveries[n_req] =
                        (fanout_delivery){e, first, ed->n_msgs - first, FANOUT_PENDING};
                n_req++;
            }
        }
        if (!pass) {
            free(b->deliveries);
            b->deliveries = NULL;
            b->n_deliveries = 0;
            if (n_req && !(b->deliveries = malloc(n_req * sizeof *b->deliveries))) goto error;
        }
    }
    b->n_deliveries = n_req;
    b->planned = 1;
    free(order);
    free(sizes);
    return 0;

error:
    free(order);
    free(sizes);
    free(b->deliveries);
    b->deliveries = NULL;
    b->n_deliveries = 0;
    return -1;
}

int fanout_pack(const fanout_batch *b, size_t d, uint8_t **out, size_t *len)
{
    const fanout_delivery *dl = &b->deliveries[d];
    const fanout_edge *e = &b->edges[dl->edge];
    Dw__DeliveryItem *items = malloc(dl->count * sizeof *items);
    Dw__DeliveryItem **ptrs = malloc(dl->count * sizeof *ptrs);
    int rc = -1;

    *out = NULL;
    if (!items || !ptrs) goto done;
    for (size_t k = 0; k < dl->count; k++) {
        item_init(&items[k], &b->msgs[e->msgs[dl->first + k]]);
        ptrs[k] = &items[k];
    }
    Dw__Delivery del;
    dw__delivery__init(&del);
    del.n_items = dl->count;
    del.items = ptrs;
    if ((*out = dw_pb_pack(&del.base, len))) rc = 0;
done:
    free(items);
    free(ptrs);
    return rc;
}

void fanout_delivery_done(fanout_batch *b, size_t d, fanout_outcome outcome)
{
    b->deliveries[d].outcome = outcome;
}

/* --- verdicts --- */

static void retry(fanout_msg *m, const fanout_retry *policy, const char *reason)
{
    int64_t delay = fanout_retry_delay(policy, m->attempt);
    m->reason = reason;
    if (delay < 0) {
        m->verdict = FANOUT_GIVE_UP;
        m->delay_ms = 0;
    } else {
        m->verdict = FANOUT_NAK;
        m->delay_ms = delay;
    }
}

void fanout_decide(fanout_batch *b, const fanout_retry *policy)
{
    for (size_t i = 0; i < b->n_msgs; i++)
        b->msgs[i].n_failed = 0;
    if (b->planned) {
        for (size_t d = 0; d < b->n_deliveries; d++) {
            const fanout_delivery *dl = &b->deliveries[d];
            if (dl->outcome == FANOUT_OK || dl->outcome == FANOUT_GONE) continue;
            const fanout_edge *e = &b->edges[dl->edge];
            for (size_t k = 0; k < dl->count; k++) {
                fanout_msg *m = &b->msgs[e->msgs[dl->first + k]];
                /* failed has room for every edge of the room; an edge
                 * appears in at most one request per message. */
                m->failed_how[m->n_failed] = dl->outcome;
                m->failed[m->n_failed++] = dl->edge;
            }
        }
    }
    for (size_t i = 0; i < b->n_msgs; i++) {
        fanout_msg *m = &b->msgs[i];
        m->delay_ms = 0;
        m->reason = NULL;
        if (!m->chat) {
            /* Retried like any failure, but never given up here: on its
             * last attempt a 0 delay NAK lets the consumer reach MaxDeliver
             * and raise the advisory the deadletter service captures. */
            int64_t delay = fanout_retry_delay(policy, m->attempt);
            m->verdict = FANOUT_NAK;
            m->delay_ms = delay < 0 ? 0 : delay;
            m->reason = "undecodable";
            continue;
        }
        const fanout_room *r = &b->rooms[m->room];
        if (!r->answered)
            retry(m, policy, "registry_unanswered");
        else if (r->error)
            retry(m, policy, r->error);
        else if (r->n_edges == 0)
            m->verdict = FANOUT_ACK;
        else if (!b->planned)
            retry(m, policy, "not_planned");
        else if (m->n_failed)
            retry(m, policy, "edge_failed");
        else
            m->verdict = FANOUT_ACK;
    }
}
