// audit: an async route worker for DynamoWave (docs/integrations.md). The
// edge, started with DW_ROUTES=audit:async, stores each {"action":"audit",...}
// frame in the stream DW_ROUTE (dw.route.audit) before it tells the sender,
// with the same JSON body as a sync route's request; this worker reads the
// durable consumer route-audit, which the edge made (the worker user may
// only read it: INFO and MSG.NEXT), and acks each message once handled. A
// message not acked (the worker crashed, or nak) comes again with a
// backoff; after the last attempt it goes to DW_DLQ. Copies share the
// consumer.
//
//   npm ci && npm run audit     (after `make up`, in examples/workers/js)
//
// Environment: DW_NATS_URL, DW_NATS_USER, DW_NATS_PASSWORD_FILE (worker.mjs),
//   DW_ROUTE_ACTION  the async route's action [audit]
import { connectWorker, json } from "./worker.mjs";

if (process.argv.includes("--help")) {
  console.log("Usage: node audit.mjs  (settings: DW_* variables, see the head of this file)");
  process.exit(0);
}
const action = process.env.DW_ROUTE_ACTION || "audit";
const durable = `route-${action}`;

const nc = await connectWorker(`dw-audit-${action}`);
const js = nc.jetstream({ checkAPI: false });
// The edge makes the consumer when it starts with the route: wait for it.
let consumer;
for (let wait = 250; !consumer; wait = Math.min(wait * 2, 5000)) {
  try {
    consumer = await js.consumers.get("DW_ROUTE", durable);
    await consumer.info();
  } catch (err) {
    consumer = undefined;
    console.log(`audit: waiting for DW_ROUTE consumer ${durable} (${err.message})`);
    await new Promise((r) => setTimeout(r, wait));
  }
}
const messages = await consumer.consume({ max_messages: 16 });
for (const signal of ["SIGINT", "SIGTERM"]) process.on(signal, () => messages.stop());
console.log(`audit: reading DW_ROUTE (consumer ${durable})`);

for await (const m of messages) {
  try {
    const req = json.decode(m.data);
    // The audit record: in real code a database write; acked only after it.
    console.log(`audit: #${m.seq} ${req.connectionId} ${req.identity?.user ?? "-"} ${JSON.stringify(req.body)}`);
    m.ack();
  } catch (err) {
    // Not JSON: nothing will ever read it; terminate rather than retry.
    console.error(`audit: #${m.seq} unreadable: ${err.message}`);
    m.term();
  }
}
await nc.drain();
