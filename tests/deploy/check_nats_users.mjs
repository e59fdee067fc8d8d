#!/usr/bin/env node
// The deployments give every service its own NATS user, exactly as
// deploy/nats/auth.conf defines them, and wire the services to what the
// binaries read now:
//
// 1. One source of truth for the users: k8s/base/nats-auth.conf (kustomize
//    reads nothing outside k8s/) is byte for byte deploy/nats/auth.conf; every
//    nats-server config (local, compose, each nats-config ConfigMap) includes
//    "auth.conf", and the compose service mounts deploy/nats/auth.conf next
//    to its nats.conf.
// 2. Each DynamoWave container (compose and k8s, the jobs too) logs in as
//    its own user (DW_NATS_USER = its binary) with DW_NATS_PASSWORD_FILE
//    pointing at a file that holds only its own password: in compose its
//    own secrets volume (never the originals, never another's); in k8s a
//    Secret volume of dynamowave-nats-passwords carrying only its own key.
//    NATS gets every user's password (DW_NATS_PASS_<USER>) and only NATS
//    gets more than one.
// 3. Status ports: DW_STATUS_PORT (written out) is the containerPort named
//    `status` and the port the compose healthcheck probes; with --bin-dir,
//    also the binary's own default. The edge's probes use its DW_PORT.
// 4. With --bin-dir: every DW_* variable set for a DynamoWave binary is one
//    that binary reads (its --help lists it, or it is one of the NATS
//    credential variables every service reads), so a renamed or removed
//    knob (DW_NATS_CREDS, DW_RETRY_DELAY_MS, DW_STREAM_REPLICAS where it is
//    not read) cannot linger in a manifest.
// Then the same checks run on copies broken on purpose, which must fail.
//
//   node tests/deploy/check_nats_users.mjs [REPO] [--bin-dir DIR]
// Exit 0 ok, 1 a problem (one line each).
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import YAML from "yaml";

const here = path.dirname(fileURLToPath(import.meta.url));
const argv = process.argv.slice(2);
let binDir = null;
const bi = argv.indexOf("--bin-dir");
if (bi >= 0) {
  binDir = argv[bi + 1];
  argv.splice(bi, 2);
}
const repoArg = path.resolve(argv[0] ?? path.join(here, "..", ".."));

const BINARIES = ["edge", "registry", "dispatcher", "deadletter", "api", "dwctl"];
// Read from the environment by every binary (services/common/src/bus.c),
// not listed as options.
const NATS_ENV = new Set(["DW_NATS_USER", "DW_NATS_PASSWORD_FILE", "DW_NATS_PASSWORD", "DW_NATS_CA", "DW_NATS_CERT", "DW_NATS_KEY", "DW_NATS_TLS_HOSTNAME"]);
const PASSWORDS_SECRET = "dynamowave-nats-passwords";

// What each binary reads, from its --help (null without --bin-dir).
const knobs = new Map();
if (binDir) {
  for (const b of BINARIES) {
    const exe = path.join(binDir, b);
    if (!fs.existsSync(exe)) continue;
    const r = spawnSync(exe, ["--help"], { encoding: "utf8" });
    const text = `${r.stdout}${r.stderr}`;
    const vars = new Set(text.match(/\bDW_[A-Z0-9_]+\b/g) ?? []);
    const defaults = new Map();
    for (const m of text.matchAll(/^\s*--[a-z0-9-]+\s+(DW_[A-Z0-9_]+)\s.*\(default: ([^)]*)\)\s*$/gm)) defaults.set(m[1], m[2]);
    knobs.set(b, { vars, defaults });
  }
}

function walk(dir) {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.name.startsWith(".") ? [] : e.isDirectory() ? walk(path.join(dir, e.name)) : [path.join(dir, e.name)]));
}

function check(repo) {
  const problems = [];
  const fail = (where, msg) => problems.push(`${where}: ${msg}`);
  const read = (rel) => fs.readFileSync(path.join(repo, rel), "utf8");
  const authText = read("deploy/nats/auth.conf");
  const users = [...authText.matchAll(/^\s*user:\s*([A-Za-z0-9_-]+)/gm)].map((m) => m[1]);
  if (!users.length) fail("deploy/nats/auth.conf", "defines no user");
  for (const b of BINARIES) if (!users.includes(b)) fail("deploy/nats/auth.conf", `no user for ${b}`);

  // 1. One source of truth.
  if (!fs.existsSync(path.join(repo, "k8s/base/nats-auth.conf"))) {
    fail("k8s/base/nats-auth.conf", "missing (the copy of deploy/nats/auth.conf the ConfigMap nats-auth is made from)");
  } else if (read("k8s/base/nats-auth.conf") !== authText) {
    fail("k8s/base/nats-auth.conf", "differs from deploy/nats/auth.conf: cp deploy/nats/auth.conf k8s/base/nats-auth.conf");
  }
  const includesAuth = (text) => /^\s*include\s+"?auth\.conf"?\s*$/m.test(text);
  for (const rel of ["deploy/nats/local.conf", "deploy/compose/nats.conf"]) {
    if (!includesAuth(read(rel))) fail(rel, 'does not include "auth.conf"');
  }
  const k8sDocs = [];
  for (const f of walk(path.join(repo, "k8s")).filter((f) => /\.ya?ml$/.test(f))) {
    const rel = path.relative(repo, f);
    for (const d of YAML.parseAllDocuments(fs.readFileSync(f, "utf8")).map((x) => x.toJS())) {
      if (!d || typeof d !== "object") continue;
      k8sDocs.push({ rel, doc: d });
      if (d.kind === "ConfigMap" && d.metadata?.name === "nats-config" && d.data?.["nats.conf"] && !includesAuth(d.data["nats.conf"])) {
        fail(`${rel} ConfigMap/nats-config`, 'nats.conf does not include "auth.conf"');
      }
    }
  }

  // 2 + 3, compose.
  const compose = YAML.parse(read("docker-compose.yml"), { merge: true });
  const services = compose?.services ?? {};
  const mounts = (svc) =>
    (svc.volumes ?? []).map((v) => {
      const [src, dst, mode] = String(v).split(":");
      return { src, dst, ro: mode === "ro" };
    });
  const natsSvc = services.nats ?? {};
  const natsMounts = mounts(natsSvc);
  const conf = natsMounts.find((m) => m.dst?.endsWith("/nats.conf"));
  const authMount = natsMounts.find((m) => m.src === "./deploy/nats/auth.conf");
  if (!conf || !authMount || path.posix.dirname(authMount.dst) !== path.posix.dirname(conf.dst) || path.posix.basename(authMount.dst) !== "auth.conf") {
    fail("docker-compose.yml services.nats", "must mount ./deploy/nats/auth.conf as auth.conf next to its nats.conf");
  }
  const script = String((natsSvc.entrypoint ?? []).at(-1) ?? "");
  for (const u of users) {
    if (!script.includes(`DW_NATS_PASS_${u.toUpperCase()}`)) fail("docker-compose.yml services.nats.entrypoint", `does not hand over DW_NATS_PASS_${u.toUpperCase()}`);
  }
  if (!natsMounts.some((m) => m.src === "secrets-nats")) fail("docker-compose.yml services.nats", "does not mount its own secrets volume secrets-nats");
  for (const [name, svc] of Object.entries(services)) {
    const where = `docker-compose.yml services.${name}`;
    const ms = mounts(svc);
    if (name !== "secrets" && ms.some((m) => m.src === "secrets")) fail(where, "mounts the originals (volume `secrets`); only the `secrets` service may");
    const foreign = ms.filter((m) => /^secrets-/.test(m.src) && m.src !== `secrets-${name}` && name !== "secrets");
    for (const m of foreign) fail(where, `mounts ${m.src}, another consumer's secrets`);
    const bin = [svc.entrypoint, svc.command].map((x) => (Array.isArray(x) ? x[0] : x)).find((x) => BINARIES.includes(x));
    if (!bin) continue;
    const env = svc.environment ?? {};
    if (env.DW_NATS_USER !== bin) fail(where, `DW_NATS_USER is '${env.DW_NATS_USER ?? ""}', expected '${bin}'`);
    const own = ms.find((m) => m.src === `secrets-${name}`);
    if (!own || !own.ro) fail(where, `must mount its own secrets volume secrets-${name} read-only`);
    else if (env.DW_NATS_PASSWORD_FILE !== `${own.dst}/nats_${bin}`) fail(where, `DW_NATS_PASSWORD_FILE is '${env.DW_NATS_PASSWORD_FILE ?? ""}', expected '${own.dst}/nats_${bin}'`);
    if (env.DW_NATS_CREDS !== undefined) fail(where, "DW_NATS_CREDS is read by nothing (DW_NATS_USER + DW_NATS_PASSWORD_FILE)");
    const probe = svc.healthcheck?.test;
    const probePort = Array.isArray(probe) && probe[1] === "dw-probe" ? String(probe[2]) : null;
    if (bin === "edge") {
      if (probePort !== String(env.DW_PORT)) fail(where, `healthcheck probes port ${probePort}, the edge serves /readyz on DW_PORT ${env.DW_PORT}`);
    } else if (bin !== "dwctl") {
      if (env.DW_STATUS_PORT === undefined) fail(where, "DW_STATUS_PORT is not written out");
      else if (probePort !== String(env.DW_STATUS_PORT)) fail(where, `healthcheck probes port ${probePort}, DW_STATUS_PORT is ${env.DW_STATUS_PORT}`);
      const def = knobs.get(bin)?.defaults.get("DW_STATUS_PORT");
      if (def !== undefined && String(env.DW_STATUS_PORT) !== def) fail(where, `DW_STATUS_PORT ${env.DW_STATUS_PORT} is not ${bin}'s default ${def}`);
    }
    checkKnobs(where, bin, Object.keys(env), fail);
  }

  // 2 + 3, Kubernetes (full objects and overlay patches alike).
  for (const { rel, doc } of k8sDocs) {
    const spec = ["Deployment", "StatefulSet", "Job"].includes(doc.kind) ? doc.spec?.template?.spec : doc.kind === "Pod" ? doc.spec : null;
    if (!spec) continue;
    const where = `${rel} ${doc.kind}/${doc.metadata?.name}`;
    // An overlay patch names no image; only whole objects must be complete.
    const full = (spec.containers ?? []).some((c) => c.image);
    const pwVolumes = (spec.volumes ?? []).filter((v) => v.secret?.secretName === PASSWORDS_SECRET);
    for (const c of spec.containers ?? []) {
      const cw = `${where} container ${c.name}`;
      const env = Object.fromEntries((c.env ?? []).map((e) => [e.name, e]));
      const pwRefs = (c.env ?? []).filter((e) => e.valueFrom?.secretKeyRef?.name === PASSWORDS_SECRET);
      if (c.name === "nats" && doc.kind === "StatefulSet") {
        if (!full) continue;
        const keys = pwRefs.map((e) => `${e.name}=${e.valueFrom.secretKeyRef.key}`).sort();
        const want = users.map((u) => `DW_NATS_PASS_${u.toUpperCase()}=${u}`).sort();
        if (keys.join() !== want.join()) fail(cw, `needs exactly ${want.join(", ")} from ${PASSWORDS_SECRET}, has ${keys.join(", ") || "none"}`);
        continue;
      }
      const bin = [c.command?.[0], c.args?.[0], c.name].find((x) => BINARIES.includes(x));
      if (!bin) continue;
      if (pwRefs.length) fail(cw, `reads ${PASSWORDS_SECRET} into its environment; only NATS may`);
      if (env.DW_NATS_CREDS) fail(cw, "DW_NATS_CREDS is read by nothing (DW_NATS_USER + DW_NATS_PASSWORD_FILE)");
      checkKnobs(cw, bin, Object.keys(env), fail);
      const status = (c.ports ?? []).find((p) => p.name === "status");
      if (status) {
        const v = env.DW_STATUS_PORT?.value;
        if (v === undefined) fail(cw, "DW_STATUS_PORT is not written out next to its containerPort `status`");
        else if (String(v) !== String(status.containerPort)) fail(cw, `DW_STATUS_PORT ${v} but containerPort status ${status.containerPort}`);
        const def = knobs.get(bin)?.defaults.get("DW_STATUS_PORT");
        if (def !== undefined && v !== undefined && String(v) !== def) fail(cw, `DW_STATUS_PORT ${v} is not ${bin}'s default ${def}`);
      }
      if (bin === "edge" && full) {
        const http = (c.ports ?? []).find((p) => p.name === "http");
        if (!http || String(http.containerPort) !== String(env.DW_PORT?.value)) fail(cw, "the port `http` must be DW_PORT (the edge's /healthz, /readyz, /metrics)");
        for (const pr of ["startupProbe", "livenessProbe", "readinessProbe"]) {
          if (c[pr] && c[pr].httpGet?.port !== "http") fail(cw, `${pr} must probe the port http`);
        }
      }
      if (!full) continue;
      if (env.DW_NATS_USER?.value !== bin) fail(cw, `DW_NATS_USER is '${env.DW_NATS_USER?.value ?? ""}', expected '${bin}'`);
      const file = env.DW_NATS_PASSWORD_FILE?.value ?? "";
      const mount = (c.volumeMounts ?? []).find((m) => file.startsWith(`${m.mountPath}/`));
      const vol = mount && (spec.volumes ?? []).find((v) => v.name === mount.name);
      const items = vol?.secret?.items ?? [];
      const sub = mount ? file.slice(mount.mountPath.length + 1) : "";
      if (vol?.secret?.secretName !== PASSWORDS_SECRET) {
        fail(cw, `DW_NATS_PASSWORD_FILE '${file}' is not a file of a ${PASSWORDS_SECRET} volume`);
      } else if (items.length !== 1 || items[0].key !== bin || items[0].path !== sub) {
        fail(cw, `its ${PASSWORDS_SECRET} volume must carry only the key ${bin}, as ${sub || "the password file"}`);
      } else if (vol.secret.optional) {
        fail(cw, `its ${PASSWORDS_SECRET} volume must not be optional (NATS requires a password)`);
      }
    }
    for (const v of pwVolumes) {
      const keys = (v.secret.items ?? []).map((i) => i.key);
      if (!v.secret.items || keys.length !== 1) fail(`${where} volume ${v.name}`, `mounts ${v.secret.items ? keys.join(", ") : "every key"} of ${PASSWORDS_SECRET}; a pod gets only its own`);
    }
  }
  return problems;
}

// A DW_* variable set for BIN that BIN does not read.
function checkKnobs(where, bin, names, fail) {
  const k = knobs.get(bin);
  if (!k) return;
  for (const n of names) {
    if (!n.startsWith("DW_") || NATS_ENV.has(n) || k.vars.has(n)) continue;
    fail(where, `${n} is not read by ${bin} (not in '${bin} --help')`);
  }
}

// ------------------------------------------------------------------ main --
let failed = 0;
let passed = 0;
const problems = check(repoArg);
for (const p of problems) console.log(`FAIL ${p}`);
if (problems.length) failed++;
else {
  passed++;
  console.log("ok   NATS users, password files and status ports are consistent");
}
if (!binDir) console.log("note: no --bin-dir: the variables are not checked against the binaries' --help");
else if (knobs.size < BINARIES.length) console.log(`note: only ${[...knobs.keys()].join(", ")} found in ${binDir}`);

// The checks fail on what they claim to catch.
const MUTATIONS = [
  ["auth.conf copy drifts", "k8s/base/nats-auth.conf", /$/, "# drift\n", "differs from deploy/nats/auth.conf"],
  ["compose config without the users", "deploy/compose/nats.conf", /^include "auth\.conf"$/m, '# include "auth.conf"', 'does not include "auth.conf"'],
  ["a pod gets another's password", "k8s/base/edge.yaml", /- key: edge\n/, "- key: registry\n", "must carry only the key edge"],
  ["a pod gets every password", "k8s/base/api.yaml", /items:\n\s+- key: api\n\s+path: password\n/, "", "a pod gets only its own"],
  ["wrong NATS user", "k8s/jobs/dlq-replay.yaml", /value: dwctl\n/, "value: deadletter\n", "expected 'dwctl'"],
  ["NATS misses a password", "k8s/base/nats.yaml", /key: dwctl\n/, "key: dwctl2\n", "needs exactly"],
  ["compose service mounts the originals", "docker-compose.yml", /- secrets-edge:\/etc\/dynamowave\/secrets:ro/, "- secrets:/etc/dynamowave/secrets:ro", "mounts the originals"],
  ["compose password file elsewhere", "docker-compose.yml", /nats_dispatcher\n/, "nats_api\n", "expected '/etc/dynamowave/secrets/nats_dispatcher'"],
  ["status port and containerPort differ", "k8s/base/dispatcher.yaml", /value: "9093"/, 'value: "9090"', "but containerPort status"],
  ["compose healthcheck on another port", "docker-compose.yml", /"dw-probe", "9092"/, '"dw-probe", "9090"', "DW_STATUS_PORT is 9092"],
];
if (knobs.size) {
  MUTATIONS.push(
    ["a knob the binary does not read (k8s)", "k8s/base/registry.yaml", /- name: DW_REPLICA_ID\n/, '- name: DW_RETRY_BASE_MS\n              value: "3"\n            - name: DW_REPLICA_ID\n', "DW_RETRY_BASE_MS is not read by registry"],
    ["a knob the binary does not read (compose)", "docker-compose.yml", /DW_RETRY_BASE_MS: /, "DW_RETRY_DELAY_MS: ", "DW_RETRY_DELAY_MS is not read by dispatcher"],
  );
}
for (const [name, file, from, to, expect] of MUTATIONS) {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "dw-natsusers-"));
  try {
    for (const p of ["docker-compose.yml", "deploy", "k8s"]) fs.cpSync(path.join(repoArg, p), path.join(tmp, p), { recursive: true });
    const p = path.join(tmp, file);
    const text = fs.readFileSync(p, "utf8");
    if (!from.test(text)) {
      failed++;
      console.log(`FAIL selftest ${name}: the mutation does not apply to ${file} any more`);
      continue;
    }
    fs.writeFileSync(p, text.replace(from, to));
    const got = check(tmp);
    if (got.some((g) => g.includes(expect))) {
      passed++;
      console.log(`ok   selftest ${name}`);
    } else {
      failed++;
      console.log(`FAIL selftest ${name}: expected "${expect}", got: ${got.join(" | ") || "no problem"}`);
    }
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
