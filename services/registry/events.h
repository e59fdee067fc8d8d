/* Lifecycle events for user code (DW_EVENTS): their identity, subject and
 * the JSON workers read. Pure functions: no NATS, no store (unit-tested).
 *
 * The store derives the events while it applies DW_CONN (store.c: a
 * connect, a join per room, a leave per room and a disconnect, each only
 * when the table really changes) and keeps them in its outbox; emit.c
 * publishes them. An event's identity is the DW_CONN sequence it came from
 * and its index among that sequence's events: every replica derives the
 * same events, in the same order, with the same positions, from the same
 * stream. That is what makes "exactly once" possible across replicas and
 * replays (docs/integrations.md, "Exactly once"). */
#ifndef REG_EVENTS_H
#define REG_EVENTS_H

#include <stddef.h>
#include <stdint.h>

#include "dw/dw.pb-c.h"

#define REG_EV_CONNECT "connect"
#define REG_EV_DISCONNECT "disconnect"
#define REG_EV_JOIN "join"
#define REG_EV_LEAVE "leave"

/* Where an event is in the sequence every replica derives. */
typedef struct reg_ev_pos {
    uint64_t seq; /* DW_CONN sequence */
    uint32_t idx; /* index among the events of that sequence, from 0 */
} reg_ev_pos;

/* <0, 0, >0 like strcmp. */
int reg_ev_pos_cmp(reg_ev_pos a, reg_ev_pos b);

/* The Nats-Msg-Id of the event at p: "ev.<seq>.<idx>" (dw_msgid_event,
 * dw/wire.h). 0, or -1 when buf is too small (REG_EV_ID_MAX is enough). */
#define REG_EV_ID_MAX 40
int reg_ev_msg_id(char *buf, size_t len, reg_ev_pos p);

/* The position in a Nats-Msg-Id made by reg_ev_msg_id: 0, or -1 for
 * anything else (no leading zeros, no sign, no trailing bytes). */
int reg_ev_msg_id_parse(const char *id, size_t len, reg_ev_pos *out);

/* 1 for connect, disconnect, join, leave. */
int reg_ev_type_valid(const char *type);

/* "dw.events.<type>" into buf: 0, or -1 for an unknown type or a short buf. */
int reg_ev_subject(char *buf, size_t len, const char *type);

/* The JSON a worker reads (docs/integrations.md):
 *   {"type":"disconnect","connectionId":"...","user":"alice","room":null,
 *    "edge":"...","ts":1764064947123,"reason":"closed"}
 * Empty strings are null. Text that is not UTF-8 is sent with every byte
 * outside printable ASCII as '?'. malloc'd (caller frees), NULL when out of
 * memory or the type is unknown. */
char *reg_ev_json(const Dw__LifecycleEvent *ev, size_t *len);

#endif
