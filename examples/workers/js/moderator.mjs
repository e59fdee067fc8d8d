// moderator: greets everyone who joins a room of DynamoWave
// (docs/integrations.md). Reads the lifecycle events (DW_EVENTS,
// dw.events.join) with its own durable consumer and publishes through the
// management API's room publish; a join is acked once its greeting is
// stored, and the event's stream sequence is the greeting's idempotency
// key, so a redelivery is stored once. Copies share the consumer.
//
//   npm ci && npm start     (after `make up`, in examples/workers/js)
//
// Environment: DW_NATS_URL, DW_NATS_USER, DW_NATS_PASSWORD_FILE (worker.mjs),
//   DW_BOT_CONSUMER  the durable consumer's name [moderator-js]
//   DW_BOT_FROM      the sender members see [moderator]
//   DW_BOT_GREETING  the text; {user} and {room} are replaced [Welcome to {room}, {user}!]
//   DW_BOT_ROOMS     comma-separated rooms to greet in [all but lobby]
import { connectWorker, durableConsumer, json, roomPublish } from "./worker.mjs";

if (process.argv.includes("--help")) {
  console.log("Usage: node moderator.mjs  (settings: DW_* variables, see the head of this file)");
  process.exit(0);
}
const durable = process.env.DW_BOT_CONSUMER || "moderator-js";
const from = process.env.DW_BOT_FROM || "moderator";
const template = process.env.DW_BOT_GREETING || "Welcome to {room}, {user}!";
const rooms = (process.env.DW_BOT_ROOMS || "").split(",").filter(Boolean);
const wanted = (room) => (rooms.length ? rooms.includes(room) : room !== "lobby");

const nc = await connectWorker("dw-moderator-js");
const consumer = await durableConsumer(nc, "DW_EVENTS", durable, "dw.events.join");
const messages = await consumer.consume({ max_messages: 16 });
for (const signal of ["SIGINT", "SIGTERM"]) process.on(signal, () => messages.stop());
console.log(`moderator: reading DW_EVENTS (consumer ${durable})`);

for await (const m of messages) {
  const ev = json.decode(m.data);
  if (ev.type !== "join" || !ev.room || !wanted(ev.room)) {
    m.ack();
    continue;
  }
  const user = ev.user || "someone";
  try {
    const seq = await roomPublish(nc, {
      room: ev.room,
      data: template.replaceAll("{user}", user).replaceAll("{room}", ev.room),
      from,
      key: `greet-${m.seq}`,
    });
    console.log(`moderator: greeted ${user} in ${ev.room} (seq ${seq})`);
    m.ack();
  } catch (err) {
    console.error(`moderator: greeting ${user} in ${ev.room} not stored: ${err.message}`);
    m.nak(2000);
  }
}
await nc.drain();
