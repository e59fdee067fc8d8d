#include "index.h"

#include <stdlib.h>
#include <string.h>

#include "dw/dlq_record.h"

/* stream_seq -> number of entries, open addressing (linear probing,
 * backward-shift deletion, key 0 = empty: sequences start at 1). */
typedef struct seq_slot {
    uint64_t seq;
    size_t n;
} seq_slot;

struct dlq_index {
    dlq_index_entry *v; /* sorted by id */
    size_t n, cap;
    seq_slot *seqs;
    size_t seq_cap, seq_used; /* seq_cap: power of two */
};

static size_t seq_home(const dlq_index *ix, uint64_t seq)
{
    return (size_t)((seq * 0x9E3779B97F4A7C15ULL) >> 20) & (ix->seq_cap - 1);
}

static seq_slot *seq_find(const dlq_index *ix, uint64_t seq)
{
    if (!ix->seq_cap) return NULL;
    for (size_t i = seq_home(ix, seq);; i = (i + 1) & (ix->seq_cap - 1)) {
        if (ix->seqs[i].seq == seq) return &ix->seqs[i];
        if (!ix->seqs[i].seq) return NULL;
    }
}

static int seq_grow(dlq_index *ix)
{
    size_t ncap = ix->seq_cap ? ix->seq_cap * 2 : 256;
    seq_slot *old = ix->seqs;
    size_t ocap = ix->seq_cap;
    seq_slot *nv = calloc(ncap, sizeof *nv);
    if (!nv) return -1;
    ix->seqs = nv;
    ix->seq_cap = ncap;
    for (size_t i = 0; i < ocap; i++) {
        if (!old[i].seq) continue;
        size_t j = seq_home(ix, old[i].seq);
        while (nv[j].seq)
            j = (j + 1) & (ncap - 1);
        nv[j] = old[i];
    }
    free(old);
    return 0;
}

static int seq_inc(dlq_index *ix, uint64_t seq)
{
    if (!seq) return 0;
    seq_slot *s = seq_find(ix, seq);
    if (s) {
        s->n++;
        return 0;
    }
    if ((ix->seq_used + 1) * 2 > ix->seq_cap && seq_grow(ix)) return -1;
    size_t i = seq_home(ix, seq);
    while (ix->seqs[i].seq)
        i = (i + 1) & (ix->seq_cap - 1);
    ix->seqs[i].seq = seq;
    ix->seqs[i].n = 1;
    ix->seq_used++;
    return 0;
}

static void seq_dec(dlq_index *ix, uint64_t seq)
{
    seq_slot *s = seq_find(ix, seq);
    if (!s || --s->n) return;
    /* Backward-shift: pull later members of the cluster into the hole. */
    size_t mask = ix->seq_cap - 1, hole = (size_t)(s - ix->seqs);
    for (size_t i = (hole + 1) & mask; ix->seqs[i].seq; i = (i + 1) & mask) {
        size_t home = seq_home(ix, ix->seqs[i].seq);
        /* i may move to hole when home is not in (hole, i] cyclically */
        if (((i - home) & mask) >= ((i - hole) & mask)) {
            ix->seqs[hole] = ix->seqs[i];
            hole = i;
        }
    }
    ix->seqs[hole].seq = 0;
    ix->seqs[hole].n = 0;
    ix->seq_used--;
}

int dlq_index_create(dlq_index **out)
{
    dlq_index *ix = calloc(1, sizeof *ix);
    if (!ix) return -1;
    *out = ix;
    return 0;
}

static void entry_free(dlq_index_entry *e)
{
    if (e->dl) dw__dead_letter__free_unpacked(e->dl, NULL);
    free(e->dlq_subject);
}

void dlq_index_destroy(dlq_index *ix)
{
    if (!ix) return;
    for (size_t i = 0; i < ix->n; i++)
        entry_free(&ix->v[i]);
    free(ix->v);
    free(ix->seqs);
    free(ix);
}

/* First position whose id >= id. */
static size_t lower_bound(const dlq_index *ix, uint64_t id)
{
    size_t lo = 0, hi = ix->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (ix->v[mid].id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

int dlq_index_add(dlq_index *ix, uint64_t id, int64_t stored_ms, const char *dlq_subject,
                  Dw__DeadLetter *dl, size_t payload_bytes)
{
    /* Entries arrive in id order almost always: the append is O(1). */
    size_t at = ix->n && ix->v[ix->n - 1].id < id ? ix->n : lower_bound(ix, id);
    char *subj = NULL;
    if (at < ix->n && ix->v[at].id == id) {
        if (dl) dw__dead_letter__free_unpacked(dl, NULL);
        return 0;
    }
    if (ix->n == ix->cap) {
        size_t ncap = ix->cap ? ix->cap * 2 : 64;
        dlq_index_entry *g = realloc(ix->v, ncap * sizeof *g);
        if (!g) goto error;
        ix->v = g;
        ix->cap = ncap;
    }
    if (!(subj = strdup(dlq_subject ? dlq_subject : ""))) goto error;
    if (dl && seq_inc(ix, dl->stream_seq)) goto error;
    if (dl && dl->payload.data) {
        /* The index keeps summaries; show fetches the payload from DW_DLQ. */
        free(dl->payload.data);
        dl->payload.data = NULL;
        dl->payload.len = 0;
    }
    memmove(&ix->v[at + 1], &ix->v[at], (ix->n - at) * sizeof *ix->v);
    ix->v[at] = (dlq_index_entry){id, stored_ms, payload_bytes, dl, subj};
    ix->n++;
    return 1;

error:
    free(subj);
    if (dl) dw__dead_letter__free_unpacked(dl, NULL);
    return -1;
}

static void remove_at(dlq_index *ix, size_t at)
{
    dlq_index_entry *e = &ix->v[at];
    if (e->dl) seq_dec(ix, e->dl->stream_seq);
    entry_free(e);
    memmove(&ix->v[at], &ix->v[at + 1], (ix->n - at - 1) * sizeof *ix->v);
    ix->n--;
}

int dlq_index_remove(dlq_index *ix, uint64_t id)
{
    size_t at = lower_bound(ix, id);
    if (at >= ix->n || ix->v[at].id != id) return 0;
    remove_at(ix, at);
    return 1;
}

const dlq_index_entry *dlq_index_get(const dlq_index *ix, uint64_t id)
{
    size_t at = lower_bound(ix, id);
    return at < ix->n && ix->v[at].id == id ? &ix->v[at] : NULL;
}

size_t dlq_index_count_stream_seq(const dlq_index *ix, uint64_t stream_seq)
{
    const seq_slot *s = seq_find(ix, stream_seq);
    return s ? s->n : 0;
}

size_t dlq_index_count(const dlq_index *ix)
{
    return ix->n;
}

int dlq_index_matches(const dlq_index_entry *e, const dlq_filter *f)
{
    if (!f) return 1;
    if (f->since_ms > 0 && e->stored_ms < f->since_ms) return 0;
    const char *room = e->dl ? e->dl->room : "";
    const char *reason = e->dl ? e->dl->reason : "invalid_record";
    if (f->room && *f->room && strcmp(room, f->room)) return 0;
    return dlq_reason_matches(reason, f->reason);
}

void dlq_index_query(const dlq_index *ix, const dlq_filter *f, uint64_t after_id, size_t limit,
                     const dlq_index_entry **out, size_t *n, int *more)
{
    size_t got = 0;
    *more = 0;
    for (size_t i = after_id ? lower_bound(ix, after_id + 1) : 0; i < ix->n; i++) {
        if (!dlq_index_matches(&ix->v[i], f)) continue;
        if (limit && got == limit) {
            *more = 1;
            break;
        }
        out[got++] = &ix->v[i];
    }
    *n = got;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

size_t dlq_index_reconcile(dlq_index *ix, uint64_t first_seq, const uint64_t *deleted,
                           size_t n_deleted)
{
    size_t dropped = 0;
    uint64_t *del = NULL;
    if (n_deleted && (del = malloc(n_deleted * sizeof *del))) {
        memcpy(del, deleted, n_deleted * sizeof *del);
        qsort(del, n_deleted, sizeof *del, cmp_u64);
    }
    for (size_t i = 0; i < ix->n;) {
        uint64_t id = ix->v[i].id;
        int gone =
            id < first_seq || (del && bsearch(&id, del, n_deleted, sizeof *del, cmp_u64) != NULL);
        if (gone) {
            remove_at(ix, i);
            dropped++;
        } else {
            i++;
        }
    }
    free(del);
    return dropped;
}
