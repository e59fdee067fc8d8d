/* The dead-letter record: how a Dw__DeadLetter is named, encoded, checked
 * and filtered, and how JetStream's max-deliveries advisory is read. Shared
 * by the two writers of DW_DLQ (the dispatcher when it gives up, the
 * deadletter service for advisories) and by the service's ops. No NATS I/O
 * in here (dw/dlq_streams.h does the stream setup). */
#ifndef DW_DLQ_RECORD_H
#define DW_DLQ_RECORD_H

#include <stddef.h>
#include <stdint.h>

#include "dw/dlq.h"
#include "dw/dw.pb-c.h"

/* Reasons (Dw__DeadLetter.reason). Edge reasons carry the edges after a
 * colon: "edge_timeout:e1,e2". */
#define DLQ_REASON_REGISTRY "registry_unavailable" /* no answer from the registry */
#define DLQ_REASON_REGISTRY_ERROR "registry_error" /* the registry answered with an error */
#define DLQ_REASON_EDGE_TIMEOUT "edge_timeout"     /* edges that never confirmed */
#define DLQ_REASON_EDGE_ERROR "edge_error"         /* edges whose reply was unusable */
#define DLQ_REASON_DISPATCHER "dispatcher_error"   /* the dispatcher could not run it */
#define DLQ_REASON_POISON "poison"                 /* max deliveries, no reason recorded */
/* An async route's frame that no worker acked in its consumer's MaxDeliver
 * attempts: "route_max_deliveries:<consumer>". */
#define DLQ_REASON_ROUTE "route_max_deliveries"

/* DW_DLQ subjects of an async route's dead letters: "dw.dlq.$route.<action>"
 * (dlq_route_subject; '$' is never part of a room name). */
#define DLQ_SUBJECT_ROUTE_PREFIX DW_SUBJ_DLQ_PREFIX "$route."
/* DW_DLQ subject of a dead letter whose original was gone ('$' is never
 * part of a room name). */
#define DLQ_SUBJECT_LOST DW_SUBJ_DLQ_PREFIX "$lost"

#define DLQ_SOURCE_DISPATCHER "dispatcher"
#define DLQ_SOURCE_ADVISORY "advisory"

/* Longest reason we write: the kind plus a bounded list of edges. */
#define DLQ_REASON_MAX 512
/* Attempt times kept in a record (the schedule is far shorter). */
#define DLQ_ATTEMPTS_MAX 64

/* The Nats-Msg-Ids of dead letters and replays: dw_msgid_dlq and
 * dw_msgid_replay (dw/wire.h). */

/* The room of a DW_MSG subject ("dw.msg.3.a.b", or "dw.msg.a.b" from before
 * partitions -> "a.b"; dw_subj_msg_room), pointing into subject; NULL when
 * subject is not a chat subject. */
const char *dlq_room_of_subject(const char *subject);

/* "dw.dlq.<room>" into buf; room: subject tokens (what dlq_room_of_subject gives).
 * 0, or -1 when invalid or too long. */
int dlq_subject(char *buf, size_t len, const char *room);

/* The reason of an edge failure: "<kind>:<e1>,<e2>..." into buf. Edges that
 * do not fit are left out and the list ends with ",..." so the text stays
 * bounded; failed_edges has them all. 0, or -1 when not even the kind fits. */
int dlq_reason_edges(char *buf, size_t len, const char *kind, const char *const *edges, size_t n);

/* True when reason is filter, or filter is its kind (the part before ':'):
 * "edge_timeout" matches "edge_timeout:e1". An empty filter matches all. */
int dlq_reason_matches(const char *reason, const char *filter);

/* The action of a DW_ROUTE subject ("dw.route.audit" -> "audit"), pointing
 * into subject; NULL when it is none. */
const char *dlq_route_of_subject(const char *subject);
/* "dw.dlq.$route.<action>" into buf: 0, or -1 when invalid or too long. */
int dlq_route_subject(char *buf, size_t len, const char *action);

/* Encode a record (malloc'd; caller frees). NULL when dl is not a valid
 * record (see dlq_record_valid) or out of memory. */
uint8_t *dlq_record_pack(const Dw__DeadLetter *dl, size_t *len);

/* Decode a DW_DLQ entry; NULL when the bytes are not a valid record.
 * Caller frees with dw__dead_letter__free_unpacked. */
Dw__DeadLetter *dlq_record_unpack(const void *data, size_t len);

/* A record is valid when it names its origin (a subject under dw.msg.
 * with room = its room, or an async route's dw.route.<action> with room
 * "", a stream_seq > 0), has a reason and a source, and
 * keeps at most DLQ_ATTEMPTS_MAX attempt times. One exception: captured
 * from an advisory after the original had left DW_MSG, subject, room and
 * payload are empty (stored under DLQ_SUBJECT_LOST; nothing to replay). */
int dlq_record_valid(const Dw__DeadLetter *dl);

/* The edges of a Dw-Replay-Edges header ("e1,e2"): *out is a malloc'd
 * array of *n malloc'd ids (dlq_edges_free). Empty items are skipped.
 * 0, or -1 when out of memory. */
int dlq_edges_parse(const char *text, char ***out, size_t *n);
/* "e1,e2" (malloc'd), the header value for a replay; NULL when out of memory. */
char *dlq_edges_join(char *const *edges, size_t n);
void dlq_edges_free(char **edges, size_t n);

#endif
