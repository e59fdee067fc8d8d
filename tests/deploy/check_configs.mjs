#!/usr/bin/env node
// The server configurations the deployments ship parse with the real
// servers: nats-server -t on deploy/compose/nats.conf and on every
// nats-config ConfigMap under k8s/ (base and overlays), haproxy -c on
// deploy/compose/haproxy.cfg (when haproxy is installed).
// Exit 0 ok, 1 a config is rejected, 77 nats-server is not installed.
//
//   node tests/deploy/check_configs.mjs [REPO]
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import YAML from "yaml";

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(process.argv[2] ?? path.join(here, "..", ".."));
const which = (cmd) => spawnSync("sh", ["-c", `command -v ${cmd}`], { encoding: "utf8" }).stdout.trim();

const nats = which("nats-server");
if (!nats) {
  console.log("SKIP: nats-server is not installed (Debian: apt-get install nats-server)");
  process.exit(77);
}
let failed = 0;
let passed = 0;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "dw-configs-"));
// A hex key as `openssl rand -hex 32` may well produce one (about 1 in 10
// starts with digits and an "e"): bare, nats-server lexes it as a number.
const HOSTILE_KEY = "2e3f" + "a1".repeat(30);
let jsKey = null; // what the entrypoints hand to nats-server, set below
const env = () => ({ ...process.env, JS_KEY: jsKey, POD_NAME: "nats-0" });

// Run an entrypoint's `sh -c` script with a stand-in nats-server on PATH
// that records the JS_KEY it was given.
function keyHandedOver(label, script, extraEnv) {
  const fake = path.join(tmp, "bin");
  fs.mkdirSync(fake, { recursive: true });
  fs.writeFileSync(path.join(fake, "nats-server"), '#!/bin/sh\nprintf "%s" "$JS_KEY" > "$DW_JSKEY_OUT"\n', { mode: 0o755 });
  const out = path.join(tmp, "jskey.out");
  fs.rmSync(out, { force: true });
  const r = spawnSync("sh", ["-c", script], {
    encoding: "utf8",
    env: { ...process.env, ...extraEnv, PATH: `${fake}:${process.env.PATH}`, DW_JSKEY_OUT: out },
  });
  if (r.status !== 0 || !fs.existsSync(out)) {
    failed++;
    console.log(`FAIL ${label}: the entrypoint did not start nats-server: ${r.stdout}${r.stderr}`);
    return null;
  }
  return fs.readFileSync(out, "utf8");
}

function natsCheck(label, file) {
  const r = spawnSync(nats, ["-c", file, "-t"], { encoding: "utf8", env: env(), cwd: path.dirname(file) });
  const out = `${r.stdout}${r.stderr}`.trim();
  if (r.status === 0) {
    passed++;
    console.log(`ok   nats-server -t ${label}`);
  } else {
    failed++;
    console.log(`FAIL nats-server -t ${label}: ${out}`);
  }
}

try {
  // The compose entrypoint reads the key from the secrets volume.
  const compose = YAML.parse(fs.readFileSync(path.join(repo, "docker-compose.yml"), "utf8"));
  const entry = compose?.services?.nats?.entrypoint ?? [];
  const keyFile = path.join(tmp, "js_key");
  fs.writeFileSync(keyFile, HOSTILE_KEY);
  const script = String(entry[entry.length - 1] ?? "").replaceAll("$$", "$").replaceAll("/etc/dynamowave/secrets/js_key", keyFile);
  jsKey = keyHandedOver("docker-compose.yml services.nats.entrypoint", script, {});
  if (jsKey !== null) natsCheck("deploy/compose/nats.conf (key as the compose entrypoint passes it)", path.join(repo, "deploy", "compose", "nats.conf"));
  const bare = spawnSync(nats, ["-c", path.join(repo, "deploy", "compose", "nats.conf"), "-t"], { encoding: "utf8", env: { ...process.env, JS_KEY: HOSTILE_KEY } });
  if (bare.status === 0) console.log("note: this nats-server also takes the bare key; the quoting is still harmless");

  // The StatefulSet's nats container gets the key from the Secret as JS_KEY_RAW.
  const sts = YAML.parseAllDocuments(fs.readFileSync(path.join(repo, "k8s", "base", "nats.yaml"), "utf8"))
    .map((d) => d.toJS())
    .find((d) => d?.kind === "StatefulSet" && d?.metadata?.name === "nats");
  const cmd = sts?.spec?.template?.spec?.containers?.find((c) => c.name === "nats")?.command ?? [];
  const k8sKey = cmd[0] === "/bin/sh" && cmd[1] === "-c" ? keyHandedOver("k8s/base/nats.yaml StatefulSet/nats command", cmd[2], { JS_KEY_RAW: HOSTILE_KEY }) : null;
  if (k8sKey === null) {
    failed++;
    console.log("FAIL k8s/base/nats.yaml: the nats container must start through /bin/sh -c, quoting JS_KEY");
  }
  jsKey = k8sKey ?? HOSTILE_KEY;
  const walk = (d) => fs.readdirSync(d, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? walk(path.join(d, e.name)) : [path.join(d, e.name)]));
  let n = 0;
  for (const f of walk(path.join(repo, "k8s")).filter((f) => /\.ya?ml$/.test(f))) {
    for (const doc of YAML.parseAllDocuments(fs.readFileSync(f, "utf8")).map((d) => d.toJS())) {
      if (doc?.kind !== "ConfigMap" || doc?.metadata?.name !== "nats-config" || !doc?.data?.["nats.conf"]) continue;
      const out = path.join(tmp, `nats-${n++}.conf`);
      fs.writeFileSync(out, doc.data["nats.conf"]);
      natsCheck(`${path.relative(repo, f)} (ConfigMap nats-config)`, out);
    }
  }
  if (!n) {
    failed++;
    console.log("FAIL no nats-config ConfigMap found under k8s/");
  }
  const haproxy = which("haproxy");
  if (haproxy) {
    const cfg = path.join(repo, "deploy", "compose", "haproxy.cfg");
    const r = spawnSync(haproxy, ["-c", "-f", cfg], { encoding: "utf8" });
    if (r.status === 0) {
      passed++;
      console.log("ok   haproxy -c deploy/compose/haproxy.cfg");
    } else {
      failed++;
      console.log(`FAIL haproxy -c deploy/compose/haproxy.cfg: ${r.stdout}${r.stderr}`);
    }
  } else {
    console.log("note: haproxy is not installed: deploy/compose/haproxy.cfg not checked");
  }
} finally {
  fs.rmSync(tmp, { recursive: true, force: true });
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
