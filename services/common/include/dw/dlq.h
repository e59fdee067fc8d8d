/* Dead letters: the names shared by the dispatcher (writes DW_DLQ when it
 * gives up on a message), the deadletter service (owns DW_DLQ, captures
 * JetStream's max-deliveries advisories, answers dw.ops.dlq.*) and dwctl.
 * Header only: subjects and header names, no code. The record itself is
 * Dw__DeadLetter (proto/dw.proto); the ops requests are Dw__DlqRequest ->
 * Dw__DlqReply. */
#ifndef DW_DLQ_H
#define DW_DLQ_H

#include "dw/bus.h"

/* ops: request/reply, answered by the deadletter service (queue group) */
#define DW_SUBJ_DLQ_LIST "dw.ops.dlq.list"     /* filters -> entries without payload */
#define DW_SUBJ_DLQ_SHOW "dw.ops.dlq.show"     /* ids[0] -> the whole entry */
#define DW_SUBJ_DLQ_REPLAY "dw.ops.dlq.replay" /* ids -> one result per id */
#define DW_SUBJ_DLQ_PURGE "dw.ops.dlq.purge"   /* ids -> one result per id */
#define DW_DLQ_QUEUE "deadletter"

/* JetStream's advisory when the dispatcher's consumer stops redelivering a
 * message (MaxDeliver reached): JSON with "stream_seq". */
#define DW_SUBJ_ADV_MAX_DELIVERIES                                                                 \
    "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." DW_STREAM_MSG "." DW_DISPATCHER_DURABLE
/* The same for the consumers of async routes (route-<action> on DW_ROUTE):
 * a frame no worker acked in MaxDeliver attempts. */
#define DW_SUBJ_ADV_MAX_DELIVERIES_ROUTE                                                           \
    "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." DW_STREAM_ROUTE ".*"
/* The stream that keeps those advisories until the deadletter service has
 * handled them (work queue), so none is lost while it is down. */
#define DW_STREAM_DLQ_ADVISORIES "DW_DLQ_ADVISORIES"
#define DW_DLQ_ADVISORY_DURABLE "deadletter"

/* Nats-Msg-Id of the dead letter of DW_MSG sequence N: "dlq.<N>"
 * (dw_msgid_dlq, dw/wire.h). Both writers (dispatcher, advisory capture)
 * use it, so DW_DLQ's duplicate window keeps one entry per message. */

/* Headers a replay adds to the republished message (DW_MSG). */
#define DW_HDR_REPLAY_OF "Dw-Replay-Of"       /* the DW_DLQ id it came from */
#define DW_HDR_REPLAY_EDGES "Dw-Replay-Edges" /* "e1,e2": deliver only to these edges */

#endif
