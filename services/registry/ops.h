/* Operations on a registry replica, over NATS request/reply, for dwctl:
 *
 *   dw.registry.<op>             any one replica (queue group "registry")
 *   dw.registry.<op>.<replica>   that replica (e.g. dw.registry.status.r1)
 *
 *   op           request                       reply (besides ok, replica)
 *   status       {}                            state, applied_seq, keys, last checkpoint
 *   checkpoint   {}                            checkpoint {name, applied_seq, ...}
 *   checkpoints  {}                            checkpoints [...], newest first
 *   restore      {to, dry_run?, full_replay?}  plan {...}, result {...} unless dry_run
 *   resume       {}                            was_held, state
 *   rotate       {}                            key_id, rewritten, checkpoint
 *   reconcile    {dry_run?}                    edges, held, ghosts, missing, dropped, ...
 *
 * Bodies are JSON objects: this is the operator's control plane, read and
 * printed by dwctl (which speaks JSON to people and scripts), never on a
 * data path between services. Every reply has "ok"; a failure has
 * "error", which starts with "bad_request" when the request was at fault.
 * Times are RFC 3339 UTC strings with milliseconds, plus *_ms numbers. */
#ifndef REG_OPS_H
#define REG_OPS_H

#include <nats/nats.h>
#include <stddef.h>

#include "node.h"

#define REG_OPS_PREFIX "dw.registry."
#define REG_OPS_QUEUE "registry"

typedef struct reg_ops reg_ops;

/* Subscribe both subject forms of every operation. node, nc and
 * replica_id are borrowed and must outlive reg_ops_stop. 0 or -1. */
int reg_ops_start(reg_ops **out, natsConnection *nc, reg_node *node, const char *replica_id);

/* Drain the subscriptions (an operation in progress finishes first, within
 * the stop's budget; a restore stops early once dw_stop is set), then
 * free. Returns -1 when an operation was still running at the deadline: it
 * may still use the node, which the caller must then leave allocated.
 * (When only the server could not confirm the drain, NATS being away, o
 * itself is left allocated for late callbacks, which no longer touch the
 * node: 0.) NULL-safe (0). */
int reg_ops_stop(reg_ops *o);

/* The reply to one request, without NATS (tests): malloc'd JSON text. */
char *reg_ops_handle(reg_node *node, const char *replica_id, const char *op, const void *data,
                     size_t len);

#endif
