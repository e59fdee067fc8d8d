/* The connections table: a materialized view of DW_CONN kept in RocksDB.
 *
 * Key layout (the one-byte prefixes keep each kind of key in its own range,
 * so every query is a bounded prefix scan):
 *   c/<conn_id>                  -> packed Dw__ConnRecord
 *   r/<room>/<edge_id>/<conn_id> -> ""   room membership
 *   e/<edge_id>/<conn_id>        -> ""   edge index
 *   m/applied_seq                -> uint64 big-endian: last DW_CONN seq applied
 *   m/count                      -> uint64 big-endian: rows under c/
 *
 * Every event is applied as one WriteBatch holding the change, m/count and
 * m/applied_seq, so the table and its position in the stream never disagree.
 * Writes go to the WAL without fsync: DW_CONN is the source of truth, and a
 * tail lost in a power cut is simply fetched again from applied_seq + 1.
 *
 * Threads: one writer (reg_store_apply, serialized internally) and any
 * number of readers at the same time. Readers see a consistent snapshot:
 * the applied_seq a read returns is the one its rows belong to. */
#ifndef REG_STORE_H
#define REG_STORE_H

#include <stddef.h>
#include <stdint.h>

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

/* Open (creating if missing) the table in directory dir, which must exist
 * or be creatable by RocksDB. On failure *err holds a malloc'd message
 * (caller frees) and -1 is returned. */
int reg_store_open(reg_store **out, const char *dir, char **err);

/* Close the database. No reader or writer may be running. NULL-safe. */
void reg_store_close(reg_store *st);

/* Last DW_CONN sequence applied (0 for a new table). Cheap, any thread. */
uint64_t reg_store_applied_seq(const reg_store *st);

/* Connections in the table. Cheap, any thread. */
uint64_t reg_store_count(const reg_store *st);

/* Apply the event at DW_CONN sequence seq:
 *   CONNECT    inserts the row (a known id is replaced, old rooms and edge
 *              index dropped); rooms are deduplicated, invalid names dropped
 *   DISCONNECT deletes the row and its room / edge keys
 *   JOIN/LEAVE add / remove rooms of an existing row (duplicates harmless)
 *   EDGE_DOWN  deletes every row held by edge_id
 * Unknown ids are no-ops. DISCONNECT/JOIN/LEAVE with a non-empty edge_id
 * only touch a row on that edge. Invalid ids / unknown kinds change nothing.
 * ev may be NULL for an event that could not be decoded: only applied_seq
 * advances, so a poison event never blocks the table. Events with
 * seq <= applied_seq are skipped.
 * Returns 1 when applied (the change may be empty: unknown ids, invalid
 * fields), 0 when skipped, -1 when RocksDB failed (nothing was written;
 * the caller must not advance past seq). */
int reg_store_apply(reg_store *st, uint64_t seq, const Dw__ConnEvent *ev);

/* Distinct edge ids that hold members of room, sorted (strcmp). Costs one seek per
 * edge, not one step per member. 0 or -1 (RocksDB error). */
int reg_store_room_edges(reg_store *st, const char *room, reg_strs *out);

/* Distinct edge ids that hold any connection, sorted (strcmp). 0 or -1. */
int reg_store_edges(reg_store *st, reg_strs *out);

/* Connections filtered by edge_id and/or conn_id (NULL or "" = any), at
 * most limit of them (0 = no limit), in key order. 0 or -1. */
int reg_store_list(reg_store *st, const char *edge_id, const char *conn_id, size_t limit,
                   reg_conns *out);

/* True when s can be used as a conn_id / edge_id key part. */
int reg_id_valid(const char *s);

#endif
