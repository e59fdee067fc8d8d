// echo: a sync route worker for DynamoWave (docs/integrations.md). The edge,
// started with DW_ROUTES=echo:sync, sends each {"action":"echo",...} frame
// as a NATS request on dw.rpc.echo with
//   {"action", "connectionId", "requestId",
//    "identity": {"sourceIp", "userAgent", "user", "context"}, "body": <the frame>}
// and the reply {"reply": ...} goes to the sender as one text frame (a
// string as it is, anything else as JSON; v1 clients get {"type":"reply"}).
// {"error": "..."} gives the sender an error frame instead. Copies share
// the work (queue group "echo").
//
//   npm ci && npm run echo      (after `make up`, in examples/workers/js)
//
// Environment: DW_NATS_URL, DW_NATS_USER, DW_NATS_PASSWORD_FILE (worker.mjs),
//   DW_ROUTE_ACTION  the action to serve [echo]
import { connectWorker, json } from "./worker.mjs";

if (process.argv.includes("--help")) {
  console.log("Usage: node echo.mjs  (settings: DW_* variables, see the head of this file)");
  process.exit(0);
}
const action = process.env.DW_ROUTE_ACTION || "echo";
const subject = `dw.rpc.${action}`;

// The answer to one request: the frame's "data" when it has one, else the
// whole frame; who asked comes from identity (the JWT's or the connect
// authorizer's user, its context).
export function answer(req) {
  const body = req.body ?? {};
  const data = body.data !== undefined ? body.data : body;
  return { reply: typeof data === "string" ? data : { echo: data, user: req.identity?.user ?? null } };
}

const nc = await connectWorker(`dw-echo-${action}`);
const sub = nc.subscribe(subject, { queue: action });
for (const signal of ["SIGINT", "SIGTERM"]) process.on(signal, () => nc.drain());
await nc.flush();
console.log(`echo: serving ${subject}`);

for await (const m of sub) {
  let out;
  try {
    out = answer(json.decode(m.data));
  } catch (err) {
    out = { error: `bad request: ${err.message}` };
  }
  if (m.reply) m.respond(json.encode(out));
}
