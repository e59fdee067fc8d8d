// The worker kit for DynamoWave workers in JavaScript (docs/integrations.md):
// log in as the NATS user worker, a durable consumer of your own, room
// publish through the management API. Copy it with the examples.
//
// Environment (what `make up` prints for workers):
//   DW_NATS_URL            comma-separated NATS URLs [nats://127.0.0.1:4222]
//   DW_NATS_USER           the NATS user [worker]
//   DW_NATS_PASSWORD_FILE  its password [../../../var/secrets/nats_worker:
//                          a `make up` in this checkout]
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import path from "node:path";
import { AckPolicy, DeliverPolicy, JSONCodec, StringCodec, connect } from "nats";

const here = path.dirname(fileURLToPath(import.meta.url));
export const json = JSONCodec();
export const text = StringCodec();

export async function connectWorker(name) {
  const user = process.env.DW_NATS_USER || "worker";
  const pwfile = process.env.DW_NATS_PASSWORD_FILE || path.join(here, "..", "..", "..", "var", "secrets", "nats_worker");
  const pass = readFileSync(pwfile, "utf8").split(/\r?\n/)[0];
  const servers = (process.env.DW_NATS_URL || "nats://127.0.0.1:4222").split(",").map((s) => s.trim());
  return connect({
    servers,
    name,
    user,
    pass,
    // Replies come to _INBOX.<user>.>: the worker user may read no other.
    inboxPrefix: `_INBOX.${user}`,
    maxReconnectAttempts: -1,
    waitOnFirstConnect: true,
  });
}

// A durable pull consumer on stream, made if it does not exist yet. The
// worker user may create consumers on DW_EVENTS only (DW_ROUTE's route-*
// consumers exist already: get them, never add).
export async function durableConsumer(nc, stream, durable, filter, deliverNew = true) {
  // checkAPI: false, the worker user may not ask for account information.
  const jsm = await nc.jetstreamManager({ checkAPI: false });
  try {
    await jsm.consumers.info(stream, durable);
  } catch (err) {
    if (!String(err?.message).includes("consumer not found")) throw err;
    await jsm.consumers.add(stream, {
      durable_name: durable,
      filter_subject: filter,
      ack_policy: AckPolicy.Explicit,
      ack_wait: 30_000_000_000,
      max_deliver: 20,
      deliver_policy: deliverNew ? DeliverPolicy.New : DeliverPolicy.All,
    });
  }
  return nc.jetstream().consumers.get(stream, durable);
}

// Store a message in room through the api service (dw.api.rooms.publish);
// its sequence in the room. key: an idempotency key (a retry within 2
// minutes is stored once).
export async function roomPublish(nc, { room, data, from, key }) {
  const req = { room, data, from };
  if (key) req.idempotencyKey = key;
  const reply = await nc.request("dw.api.rooms.publish", json.encode(req), { timeout: 5000 });
  const ans = json.decode(reply.data);
  if (typeof ans.seq !== "number") throw new Error(`room publish refused: ${ans.error} (${ans.status})`);
  return ans.seq;
}
