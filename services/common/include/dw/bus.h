/* The bus: NATS connection, JetStream streams, subject names, protobuf
 * packing. Everything between services goes through here. */
#ifndef DW_BUS_H
#define DW_BUS_H

#include <nats/nats.h>
#include <protobuf-c/protobuf-c.h>
#include <stdint.h>
#include <stdio.h>

#include "dw/dw.pb-c.h"

#define DW_STREAM_CONN "DW_CONN"
#define DW_STREAM_MSG "DW_MSG"
/* Lifecycle events for user code (JSON, docs/integrations.md), written by
 * the registry: dw.events.connect|disconnect|join|leave. */
#define DW_STREAM_EVENTS "DW_EVENTS"
#define DW_SUBJ_EVENTS_PREFIX "dw.events."

/* Routes for user code (docs/integrations.md): an async route's frames go
 * to dw.route.<action> in DW_ROUTE (work queue), read by workers through
 * the durable consumer route-<action> that the edge creates; a sync route
 * is a core request to dw.rpc.<action>. */
#define DW_STREAM_ROUTE "DW_ROUTE"
#define DW_SUBJ_ROUTE_PREFIX "dw.route."
#define DW_SUBJ_RPC_PREFIX "dw.rpc."
#define DW_ROUTE_DURABLE_PREFIX "route-"
/* Each edge answers with its routes' counters (JSON; dwctl status). */
#define DW_SUBJ_OPS_ROUTES "dw.ops.routes"
/* An action that names a route: 1..DW_ACTION_MAX of [A-Za-z0-9_-] (one
 * subject token, and a consumer name with its prefix). */
#define DW_ACTION_MAX 64
int dw_action_valid(const char *action, size_t len);
/* "dw.route.<action>", "dw.rpc.<action>", "route-<action>" into buf; -1
 * when action is not valid or buf too small. */
int dw_subj_route(char *buf, size_t len, const char *action);
int dw_subj_rpc(char *buf, size_t len, const char *action);
int dw_route_durable(char *buf, size_t len, const char *action);

#define DW_SUBJ_CONN_PREFIX "dw.conn."        /* + connect|disconnect|join|leave|edge_down */
#define DW_SUBJ_MSG_PREFIX "dw.msg."          /* + <partition>.<room> (dw_subj_msg) */
#define DW_SUBJ_REG_ROOM "dw.registry.room"   /* RoomQuery -> RoomEdges */
#define DW_SUBJ_REG_LIST "dw.registry.list"   /* ListQuery -> ListReply */
#define DW_SUBJ_REG_EDGES "dw.registry.edges" /* (empty) -> EdgesReply */
#define DW_REG_QUEUE "registry"
#define DW_SUBJ_REG_PRESENCE "dw.registry.presence" /* PresenceQuery -> PresenceReply */
#define DW_SUBJ_EDGE_HEARTBEAT "dw.edge.heartbeat"
#define DW_SUBJ_API_POST "dw.api.connections.post" /* ApiRequest -> ApiReply */
#define DW_SUBJ_API_GET "dw.api.connections.get"
#define DW_SUBJ_API_DELETE "dw.api.connections.delete"
#define DW_SUBJ_API_ROOMS_PUBLISH "dw.api.rooms.publish" /* JSON -> JSON (docs/integrations.md) */
#define DW_STREAM_DLQ "DW_DLQ"
#define DW_SUBJ_DLQ_PREFIX "dw.dlq." /* + <room> */
#define DW_DISPATCHER_DURABLE "dispatcher"

/* Room names: 1..64 of letters, digits, '-', '_', '.'; a '.' makes extra
 * subject tokens (dw.msg.a.b), so it may not start, end or repeat. */
#define DW_ROOM_MAX 64
#define DW_ROOM_LOBBY "lobby"
int dw_room_valid(const char *room, size_t len);

/* DW_MSG is split into DW_MSG_PARTITIONS partitions by a stable hash of the
 * room name: a room's messages are published to dw.msg.<partition>.<room>,
 * each partition has one durable consumer and one dispatcher owning it at a
 * time (docs/architecture.md, "Ordering"), so per-room order survives
 * retries and several dispatchers. Every service that publishes or reads a
 * room's messages must agree on this number: it is part of the wire
 * contract, not a setting (changing it: docs/operations.md). */
#define DW_MSG_PARTITIONS 16
/* The partition of room (FNV-1a 32 of its bytes, modulo DW_MSG_PARTITIONS). */
uint32_t dw_room_partition(const char *room);
/* "dw.msg.<partition>.<room>" into buf; -1 when it does not fit. */
int dw_subj_msg(char *buf, size_t len, const char *room);
/* "dw.msg.<partition>.>" (a partition consumer's filter) into buf. */
void dw_subj_msg_partition(char *buf, size_t len, uint32_t partition);
/* The room of a DW_MSG subject, pointing into subject: "dw.msg.3.a.b" ->
 * "a.b"; a subject from before partitions ("dw.msg.a.b") -> "a.b". NULL
 * when subject is not under dw.msg. or names no room. *partition (may be
 * NULL) gets the partition token, or UINT32_MAX for the old form. */
const char *dw_subj_msg_room(const char *subject, uint32_t *partition);

/* "dw.edge.<edge_id>.deliver" into buf. */
void dw_subj_edge_deliver(char *buf, size_t len, const char *edge_id);
/* "dw.edge.<edge_id>.conn" (ConnRequest -> ConnReply) into buf. */
void dw_subj_edge_conn(char *buf, size_t len, const char *edge_id);
/* Subject of a connection event kind. */
const char *dw_subj_conn_event(Dw__ConnEvent__Kind kind);

/* Connect with reconnect forever (the services outlive NATS restarts).
 * name shows in the server's connection list. Credentials and TLS come
 * from the environment (dw_bus_options_env); a bad setting there fails
 * with NATS_INVALID_ARG (logged). On success *out is owned by the caller
 * (natsConnection_Destroy). */
natsStatus dw_bus_connect(natsConnection **out, const char *url, const char *name);

/* The same, but publishes wait up to ~1 ms in nats.c's buffer (its flusher
 * thread) instead of one send() each: for a thread that publishes bursts
 * and is not waited for message by message (the registry's lifecycle
 * events: 256 publishes were 256 send()s and as many reads in the server). */
natsStatus dw_bus_connect_batched(natsConnection **out, const char *url, const char *name);

/* The NATS servers to try, from a comma-separated list of URLs
 * ("nats://a:4222,nats://b:4222", spaces around commas allowed): every
 * node of a cluster, so that a (re)start while one node is down still
 * connects. Passed to natsOptions_SetServers (a single URL too: nats.c's
 * SetURL takes one server only). NATS_INVALID_ARG for an empty list, an
 * empty entry or more than DW_BUS_MAX_SERVERS entries. */
#define DW_BUS_MAX_SERVERS 32
natsStatus dw_bus_set_servers(natsOptions *opts, const char *url_list);

/* Call fn(arg) on nats.c's thread every time a connection made by
 * dw_bus_connect comes back after it was lost (the server restarted, a
 * cluster node went away): state that lives only in core NATS traffic
 * (replies in flight, pull requests, heartbeats) may have been missed and
 * must be rebuilt. fn must only hand the news over. At most 8 hooks per
 * process; 0 or -1. */
int dw_bus_on_reconnect(void (*fn)(void *arg), void *arg);
/* Remove a hook (waits for a call of it in progress to return). */
void dw_bus_on_reconnect_remove(void (*fn)(void *arg), void *arg);

/* Apply this process's NATS credentials and TLS settings from the
 * environment to opts; for a connection not made by dw_bus_connect (dwctl).
 *   DW_NATS_USER + DW_NATS_PASSWORD_FILE (or DW_NATS_PASSWORD): the user
 *     (deploy/nats/auth.conf); replies then come to _INBOX.<user>.>;
 *   DW_NATS_CA: TLS, the server verified against this PEM bundle;
 *   DW_NATS_CERT + DW_NATS_KEY: a client certificate;
 *   DW_NATS_TLS_HOSTNAME: the name expected in the server's certificate.
 * Nothing set: no authentication, no TLS. 0, or -1 with a message in err
 * (no secret in it). */
int dw_bus_options_env(natsOptions *opts, char *err, size_t errlen);

/* A fresh inbox subject under this process's inbox prefix: _INBOX.<user>
 * with DW_NATS_USER (what dw_bus_options_env sets, and all the user may
 * subscribe to), else _INBOX. For subscriptions that receive replies
 * outside nats.c's own request API (dw/pull.h). 0 or -1. */
int dw_bus_new_inbox(char *buf, size_t len);

/* Close subscriptions on stop: drain every one of subs (no new messages;
 * those already delivered are handled), wait for all of them under one
 * deadline, destroy them and set the slots to NULL. NULL slots are
 * skipped. The deadline is connected_ms while nc is connected, else
 * away_ms: while NATS is away a drain cannot complete (the server must
 * confirm the unsubscribe) and would wait out the whole timeout, once per
 * subscription; and never past the stop's deadline (dw_stop_left_ms,
 * dw/util.h). 0 when all drained, -1 when one did not (a callback may
 * still be running: keep what it uses). */
int dw_subs_drain(natsConnection *nc, natsSubscription **subs, size_t n, int64_t connected_ms,
                  int64_t away_ms);
/* How many subscriptions dw_subs_drain gave up on in this process: their
 * callbacks' state is left to the exit, and nats.c's teardown would wait
 * for them in vain (dw/service.h does not). */
size_t dw_subs_undrained(void);

/* The --help lines for the variables above (dw_config_usage prints them for
 * every binary with a NATS_URL field). */
void dw_bus_env_help(FILE *out);

/* Create or update the streams DW_CONN, DW_MSG, DW_EVENTS and DW_ROUTE
 * (work queue: a frame leaves when a worker acks it; idempotent):
 * the registry's job (their owner). Looks first and writes nothing when they
 * are already as asked, so a caller whose NATS user may only read them
 * succeeds once the owner made them (until then: an error after ~2 s).
 * msg_max_age_s / conn_max_age_s: retention; replicas: 1 locally, 3 in a
 * cluster. */
typedef struct dw_stream_opts {
    int64_t conn_max_age_s;   /* DW_CONN: the PITR window (35 days) */
    int64_t msg_max_age_s;    /* DW_MSG: the history window (24 h) */
    int64_t dedup_window_s;   /* Nats-Msg-Id window of all three (120 s) */
    int64_t events_max_age_s; /* DW_EVENTS: how long workers may take to read (7 days) */
    int events;               /* 0: no DW_EVENTS (lifecycle events turned off) */
    int64_t route_max_age_s;  /* DW_ROUTE: async route frames not acked (7 days) */
    int replicas;
} dw_stream_opts;
void dw_stream_opts_default(dw_stream_opts *o);
natsStatus dw_streams_ensure(jsCtx *js, const dw_stream_opts *o);

/* For the services that use DW_CONN and DW_MSG without owning them (edge,
 * dispatcher, api, deadletter): NATS_OK when both exist, NATS_NOT_FOUND
 * while they do not (the caller retries), another status when NATS does
 * not answer. Needs only $JS.API.STREAM.INFO. */
natsStatus dw_streams_exist(jsCtx *js);

/* Pack a protobuf message into a malloc'd buffer (caller frees). */
uint8_t *dw_pb_pack(const ProtobufCMessage *m, size_t *len);

/* Publish m to JetStream on subj and wait up to max_wait_ms for the
 * stream's ack: for the few events that must be durable before the caller
 * goes on (the hot paths publish asynchronously instead). msg_id (NULL:
 * none) lets the stream drop a repeat within its duplicate window. On
 * NATS_OK, *ack (may be NULL) has the stream sequence and whether the
 * stream took it as a duplicate; *jerr (may be NULL) is JetStream's error
 * code for a refusal. */
typedef struct dw_js_ack {
    uint64_t seq;
    int duplicate;
} dw_js_ack;
natsStatus dw_js_publish_pb(jsCtx *js, const char *subj, const ProtobufCMessage *m,
                            const char *msg_id, int64_t max_wait_ms, dw_js_ack *ack,
                            jsErrCode *jerr);

#endif
