// authorizer: a connect authorizer for DynamoWave (docs/integrations.md),
// the same as examples/workers/c/authorizer.c. The edge, started with
// DW_AUTHORIZER=<subject under dw.authz.>, asks before it accepts a
// WebSocket upgrade, with
//   {"sourceIp", "userAgent", "path", "query": {...}, "headers": {...}}
// and this answers {"allow": true, "user", "rooms", "context"} for a token
// (?token=... or Authorization: Bearer ...) listed in the tokens file,
// {"allow": false, "status": 401} when there is none, 403 for an unknown
// one. The edge refuses with 503 when no answer comes within
// DW_AUTHORIZER_TIMEOUT_MS. Copies share the work (queue group "authorizer").
//
//   npm ci && npm run authorizer    (after `make up` with DW_AUTHORIZER=dw.authz.connect)
//
// The tokens file, one per line ('#' starts a comment):
//   <token> <user> [<rooms, comma-separated> | *] [<delay in ms>]
// Environment: DW_NATS_URL, DW_NATS_USER, DW_NATS_PASSWORD_FILE (worker.mjs),
//   DW_AUTHORIZER         the subject to serve [dw.authz.connect]
//   DW_AUTHZ_TOKENS_FILE  the tokens [../authz-tokens.txt]
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import path from "node:path";
import { connectWorker, json } from "./worker.mjs";

if (process.argv.includes("--help")) {
  console.log("Usage: node authorizer.mjs  (settings: DW_* variables, see the head of this file)");
  process.exit(0);
}
const here = path.dirname(fileURLToPath(import.meta.url));
const subject = process.env.DW_AUTHORIZER || "dw.authz.connect";
const tokensFile = process.env.DW_AUTHZ_TOKENS_FILE || path.join(here, "..", "authz-tokens.txt");

const tokens = new Map();
for (const line of readFileSync(tokensFile, "utf8").split(/\r?\n/)) {
  const [token, user, rooms, delay] = line.replace(/#.*/, "").trim().split(/\s+/);
  if (!token) continue;
  if (!user) throw new Error(`${tokensFile}: a token without a user`);
  tokens.set(token, {
    user,
    rooms: rooms && rooms !== "*" ? rooms.split(",") : null,
    delayMs: Number(delay || 0),
  });
}

// The decision for one request.
export function decide(req) {
  let token = req.query?.token;
  let source = "query";
  const auth = req.headers?.authorization;
  if (!token && auth?.startsWith("Bearer ")) {
    token = auth.slice(7);
    source = "header";
  }
  if (!token) return { answer: { allow: false, status: 401 } };
  const t = tokens.get(token);
  if (!t) return { answer: { allow: false, status: 403 } };
  const answer = {
    allow: true,
    user: t.user,
    context: { tokenSource: source, sourceIp: req.sourceIp ?? "", authorizer: "authorizer.mjs" },
  };
  if (t.rooms) answer.rooms = t.rooms;
  return { answer, delayMs: t.delayMs };
}

const nc = await connectWorker("dw-authorizer-js");
const sub = nc.subscribe(subject, { queue: "authorizer" });
for (const signal of ["SIGINT", "SIGTERM"]) process.on(signal, () => nc.drain());
await nc.flush();
console.log(`authorizer: serving ${subject} (${tokens.size} tokens)`);

for await (const m of sub) {
  let d;
  try {
    d = decide(json.decode(m.data));
  } catch {
    d = { answer: { allow: false, status: 403 } };
  }
  const who = d.answer.allow ? `${d.answer.user}: allowed` : `refused ${d.answer.status}`;
  console.log(`authorizer: ${who}${d.delayMs ? " (late)" : ""}`);
  // A late answer does not hold up the others.
  if (d.delayMs) setTimeout(() => m.respond(json.encode(d.answer)), d.delayMs);
  else m.respond(json.encode(d.answer));
}
