/* The connections table: a materialized view of DW_CONN kept in RocksDB.
 *
 * Key layout (the one-byte prefixes keep each kind of key in its own range,
 * so every query is a bounded prefix scan):
 *   c/<conn_id>                  -> Dw__ConnRecord, sealed (see below)
 *   r/<room>/<edge_id>/<conn_id> -> ""   room membership
 *   e/<edge_id>/<conn_id>        -> ""   edge index
 *   m/applied_seq                -> uint64 big-endian: last DW_CONN seq applied
 *   m/applied_ts                 -> int64 big-endian: its JetStream timestamp, ms
 *   m/count                      -> uint64 big-endian: rows under c/
 *   m/key_ids                    -> uint32 big-endian each: the keys values
 *                                   may be sealed with (0 = plaintext)
 *   m/restored_to                -> int64 big-endian ms: present while the
 *                                   table holds a point-in-time restore and
 *                                   must not apply newer events (the hold)
 *   o/<seq:020>/<idx:010>        -> Dw__LifecycleEvent, sealed: the outbox,
 *                                   lifecycle events for DW_EVENTS derived
 *                                   from DW_CONN event <seq> (events.h),
 *                                   written in the same batch as the change
 *                                   and deleted once DW_EVENTS has them
 *
 * Personal data (user id, source IP, user agent) lives only in the values.
 * With a current key in the keyring every value is sealed with AES-256-GCM
 * (dw/crypto.h), bound to its key c/<conn_id>; keys stay in plaintext and
 * hold only room, edge and connection ids. m/key_ids says which keys the
 * values need: a table that needs a key the keyring lacks is refused at
 * open rather than read as garbage. reg_store_rotate re-seals every value
 * with the current key and then forgets the others.
 *
 * Events are applied in WriteBatches holding the changes, m/count,
 * m/applied_seq and m/applied_ts, so the table and its position in the
 * stream never disagree. Writes go to the WAL without fsync: DW_CONN is the
 * source of truth, and a tail lost in a power cut is simply fetched again
 * from applied_seq + 1.
 *
 * Threads: one writer (reg_store_apply*, reg_store_rotate and the outbox
 * deletes, serialized internally) and any number of readers at the same
 * time. Readers see a
 * consistent snapshot: the applied_seq a read returns is the one its rows
 * belong to. */
#ifndef REG_STORE_H
#define REG_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "dw/crypto.h"
#include "dw/dw.pb-c.h"

/* Longest conn_id / edge_id the table accepts. Ids are printable ASCII
 * without '/', the key separator. */
#define REG_ID_MAX 128
/* A connection in more rooms than this keeps the first REG_ROOMS_MAX: the
 * record is rewritten on every join, so it must stay small. */
#define REG_ROOMS_MAX 1024

typedef struct reg_store reg_store;

/* A list of strings from a read (edge ids), with the applied_seq of the
 * snapshot it came from. Owned by the caller: reg_strs_free. */
typedef struct reg_strs {
    char **v;
    size_t n;
    uint64_t applied_seq;
} reg_strs;
void reg_strs_free(reg_strs *s);

/* Connections from reg_store_list. conns[i] are protobuf-c unpacked
 * records; the whole list is owned by the caller: reg_conns_free. */
typedef struct reg_conns {
    Dw__ConnRecord **conns;
    size_t n;
    uint64_t applied_seq;
    uint64_t total; /* rows in the table, not only the ones listed */
} reg_conns;
void reg_conns_free(reg_conns *c);

typedef struct reg_store_opts {
    /* Borrowed; must outlive the store. NULL or no current key: values are
     * written in plaintext (and a table that needs a key is refused). */
    const dw_keyring *keys;
    /* Open an existing table read-only, e.g. a checkpoint, to read its
     * metadata (reg_store_info_get): no writes, keys are not checked. */
    int read_only;
    /* Derive lifecycle events into the outbox while applying (the
     * registry's emitter publishes them to DW_EVENTS). */
    int events;
} reg_store_opts;

/* Open (creating if missing) the table in directory dir, which must exist
 * or be creatable by RocksDB, with default options (no keys). On failure
 * *err holds a malloc'd message (caller frees) and -1 is returned. */
int reg_store_open(reg_store **out, const char *dir, char **err);

/* The same with options. Refuses (-1, *err says which key id is missing
 * and what to set) a table holding values sealed with a key the keyring
 * lacks. Otherwise records the current key id in m/key_ids (synced) before
 * anything is sealed with it. */
int reg_store_open_opts(reg_store **out, const char *dir, const reg_store_opts *o, char **err);

/* Close the database. No reader or writer may be running. NULL-safe. */
void reg_store_close(reg_store *st);

/* Last DW_CONN sequence applied (0 for a new table). Cheap, any thread. */
uint64_t reg_store_applied_seq(const reg_store *st);

/* Connections in the table. Cheap, any thread. */
uint64_t reg_store_count(const reg_store *st);

/* What a table says about itself (the m/ keys), e.g. for a checkpoint tag. */
typedef struct reg_store_info {
    uint64_t applied_seq;
    int64_t applied_ts_ms; /* JetStream time of that event, 0 when unknown */
    uint64_t count;
    int64_t restored_to_ms; /* the hold; 0 = none */
    uint32_t key_ids[DW_KEYRING_MAX + 1];
    size_t n_key_ids;
} reg_store_info;
/* Any thread. */
void reg_store_info_get(reg_store *st, reg_store_info *out);

/* The hold: while m/restored_to is set the table shows DW_CONN as it was at
 * that time and the registry must not apply newer events. Set (ms > 0) or
 * clear (0), synced. 0 or -1. */
int reg_store_set_hold(reg_store *st, int64_t restored_to_ms);
int64_t reg_store_hold(reg_store *st);

/* Flush the memtable into synced table files: after it the table survives
 * a power cut without its WAL (before a directory swap). 0 or -1. */
int reg_store_flush(reg_store *st);

/* Take a RocksDB checkpoint (hard links where possible) into dir, which
 * must not exist. Consistent while the writer runs. 0 or -1 (*err malloc'd). */
int reg_store_checkpoint(reg_store *st, const char *dir, char **err);

/* Re-seal every value (rows and outbox entries) that is not sealed with
 * the keyring's current key (plaintext values included), a batch at a time so that the writer keeps
 * running, then set m/key_ids to the current key only and compact, so that
 * older ciphertexts leave the table files. *rewritten: values re-sealed.
 * 0, or -1 with *err (malloc'd): no current key, a value that does not
 * open, a RocksDB error. Rerunning after a failure is safe. */
int reg_store_rotate(reg_store *st, uint64_t *rewritten, char **err);

/* Apply the event at DW_CONN sequence seq (with opts.events, also adding
 * its lifecycle events to the outbox, in this order):
 *   CONNECT    inserts the row (a known id is replaced, old rooms and edge
 *              index dropped); rooms are deduplicated, invalid names dropped
 *              [connect, join per room; the same id announced again by its
 *              edge: only joins/leaves for the rooms that differ; an id
 *              reused on another edge: the old one's leaves and disconnect
 *              ("replaced") first]
 *   DISCONNECT deletes the row and its room / edge keys [leave per room
 *              ("disconnect"), disconnect (the event's reason, or "closed")]
 *   JOIN/LEAVE add / remove rooms of an existing row (duplicates harmless)
 *              [join / leave ("left") per room that changed]
 *   EDGE_DOWN  deletes every row held by edge_id [per row in id order: its
 *              leaves, disconnect "edge_down:<the event's reason>"]
 * An event that changes no row has no lifecycle event: so every connect is
 * followed by exactly one disconnect.
 * Unknown ids are no-ops. DISCONNECT/JOIN/LEAVE with a non-empty edge_id
 * only touch a row on that edge. Invalid ids / unknown kinds change nothing.
 * ev may be NULL for an event that could not be decoded: only applied_seq
 * advances, so a poison event never blocks the table. Events with
 * seq <= applied_seq are skipped.
 * Returns 1 when applied (the change may be empty: unknown ids, invalid
 * fields), 0 when skipped, -1 when RocksDB failed (nothing was written;
 * the caller must not advance past seq). */
int reg_store_apply(reg_store *st, uint64_t seq, const Dw__ConnEvent *ev);

/* reg_store_apply that also records ts_ms, the event's JetStream timestamp
 * (m/applied_ts: what point-in-time restore compares with). */
int reg_store_apply_at(reg_store *st, uint64_t seq, int64_t ts_ms, const Dw__ConnEvent *ev);

/* One event of reg_store_apply_many: its DW_CONN sequence, JetStream time
 * (ms, 0 if unknown) and the event (NULL: undecodable, as above). */
typedef struct reg_apply_item {
    uint64_t seq;
    int64_t ts_ms;
    const Dw__ConnEvent *ev;
} reg_apply_item;

/* Apply v[0..n) in order, exactly as reg_store_apply_at one by one would,
 * but in as few WriteBatches as possible: one, unless an event touches a
 * connection an earlier one of the same batch changed (or is an
 * EDGE_DOWN), which starts a new batch after writing the current one. One
 * WAL write per batch instead of per event is most of what a connect storm
 * costs the registry. Returns how many were applied (skipped ones, at or
 * before applied_seq, do not count), or -1 when RocksDB failed: the table
 * then holds a prefix of v (applied_seq says how far), never a part of an
 * event. */
int reg_store_apply_many(reg_store *st, const reg_apply_item *v, size_t n);

/* ---- the outbox (lifecycle events waiting for DW_EVENTS) ---- */

/* Events at or before (seq, idx) are in DW_EVENTS already: apply no longer
 * writes them (their positions are still counted). Any thread. */
void reg_store_events_floor(reg_store *st, uint64_t seq, uint32_t idx);
/* The floor as set last (0, 0 at open). Any thread. */
void reg_store_events_floor_get(reg_store *st, uint64_t *seq, uint32_t *idx);

typedef struct reg_outbox_entry {
    uint64_t seq; /* DW_CONN sequence */
    uint32_t idx; /* index among its events */
    Dw__LifecycleEvent *ev;
} reg_outbox_entry;
/* Entries oldest first; owned by the caller: reg_outbox_free. */
typedef struct reg_outbox {
    reg_outbox_entry *v;
    size_t n;
} reg_outbox;
void reg_outbox_free(reg_outbox *o);

/* The oldest limit entries (0: all). Entries that cannot be read are
 * logged and left out. 0 or -1. The outbox has one reader and deleter at a
 * time (the emitter's thread): reads start where its last delete ended. */
int reg_store_outbox_read(reg_store *st, size_t limit, reg_outbox *out);

/* Delete every entry at or before (seq, idx). 0 or -1. The reader's
 * thread (above). */
int reg_store_outbox_delete_through(reg_store *st, uint64_t seq, uint32_t idx);

/* Distinct edge ids that hold members of room, sorted (strcmp). Costs one seek per
 * edge, not one step per member. 0 or -1 (RocksDB error). */
int reg_store_room_edges(reg_store *st, const char *room, reg_strs *out);

/* Distinct edge ids that hold any connection, sorted (strcmp). 0 or -1. */
int reg_store_edges(reg_store *st, reg_strs *out);

/* Connections filtered by edge_id and/or conn_id (NULL or "" = any), at
 * most limit of them (0 = no limit), in id order (bytewise), starting
 * after the id after (NULL or "" = from the first). 0 or -1. */
int reg_store_list(reg_store *st, const char *edge_id, const char *conn_id, const char *after,
                   size_t limit, reg_conns *out);

/* Members of a room by user: user ids (sorted bytewise) with the number of
 * their connections in the room. Connections without a user id are not
 * counted (there is no one to name). Owned by the caller: reg_presence_free. */
typedef struct reg_presence {
    char **users;
    uint32_t *conns;
    size_t n;
    int more; /* users after the last one listed exist */
    uint64_t applied_seq;
} reg_presence;
void reg_presence_free(reg_presence *p);

/* At most limit users (0 = no limit) after after_user (NULL/"" = from the
 * first). An invalid room has no members. 0 or -1. */
int reg_store_presence(reg_store *st, const char *room, const char *after_user, size_t limit,
                       reg_presence *out);

/* True when s can be used as a conn_id / edge_id key part. */
int reg_id_valid(const char *s);

#endif
