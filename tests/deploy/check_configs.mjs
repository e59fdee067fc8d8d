#!/usr/bin/env node
// The server configurations the deployments ship parse with the real
// servers: nats-server -t on deploy/compose/nats.conf and on every
// nats-config ConfigMap under k8s/ (base and overlays), each with the
// auth.conf it includes and with the JetStream key and the users' passwords
// exactly as the compose entrypoint / the StatefulSet's command hand them
// over (hostile values that nats-server would read as numbers if bare);
// haproxy -c on deploy/compose/haproxy.cfg (when haproxy is installed).
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
// The NATS passwords get the same treatment.
const HOSTILE_KEY = "2e3f" + "a1".repeat(30);
// The users of deploy/nats/auth.conf, whose passwords nats-server reads
// from DW_NATS_PASS_<USER>.
const authConf = fs.readFileSync(path.join(repo, "deploy", "nats", "auth.conf"), "utf8");
const users = [...authConf.matchAll(/^\s*user:\s*([A-Za-z0-9_-]+)/gm)].map((m) => m[1]);
const passVar = (u) => `DW_NATS_PASS_${u.toUpperCase()}`;
const hostilePass = (u) => `9e${users.indexOf(u) + 1}` + "b2".repeat(24);
if (!users.length) {
  failed++;
  console.log("FAIL deploy/nats/auth.conf defines no user");
}

// Run an entrypoint's `sh -c` script with a stand-in nats-server on PATH
// that records what it was given: JS_KEY and every DW_NATS_PASS_*. Returns
// that environment (name -> value), or null when nats-server was not run.
function handedOver(label, script, extraEnv, { quiet = false } = {}) {
  const fake = path.join(tmp, "bin");
  fs.mkdirSync(fake, { recursive: true });
  fs.writeFileSync(path.join(fake, "nats-server"), '#!/bin/sh\nenv > "$DW_ENV_OUT"\n', { mode: 0o755 });
  const out = path.join(tmp, "env.out");
  fs.rmSync(out, { force: true });
  const r = spawnSync("sh", ["-c", script], {
    encoding: "utf8",
    env: { PATH: `${fake}:${process.env.PATH}`, ...extraEnv, DW_ENV_OUT: out },
  });
  if (r.status !== 0 || !fs.existsSync(out)) {
    if (!quiet) {
      failed++;
      console.log(`FAIL ${label}: the entrypoint did not start nats-server: ${r.stdout}${r.stderr}`);
    }
    return null;
  }
  const got = {};
  for (const line of fs.readFileSync(out, "utf8").split("\n")) {
    const m = line.match(/^(JS_KEY|DW_NATS_PASS_[A-Z0-9_]+)=(.*)$/);
    if (m) got[m[1]] = m[2];
  }
  return got;
}

// Every user's password must reach nats-server (quoted or not: nats-server
// -t below decides whether it parses).
function allPasswords(label, env) {
  const missing = users.filter((u) => !env[passVar(u)]);
  if (missing.length) {
    failed++;
    console.log(`FAIL ${label}: no password handed to nats-server for ${missing.join(", ")}`);
  } else {
    passed++;
    console.log(`ok   ${label}: hands nats-server the key and ${users.length} passwords`);
  }
}

function natsCheck(label, file, env) {
  const r = spawnSync(nats, ["-c", file, "-t"], { encoding: "utf8", env: { ...process.env, ...env, POD_NAME: "nats-0" }, cwd: path.dirname(file) });
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
  // ---- compose: the entrypoint reads the key and the passwords from the
  // nats secrets volume; the config directory is what the service mounts.
  const compose = YAML.parse(fs.readFileSync(path.join(repo, "docker-compose.yml"), "utf8"));
  const svc = compose?.services?.nats ?? {};
  const entry = svc.entrypoint ?? [];
  const secrets = path.join(tmp, "secrets");
  fs.mkdirSync(secrets);
  fs.writeFileSync(path.join(secrets, "js_key"), HOSTILE_KEY + "\n");
  for (const u of users) fs.writeFileSync(path.join(secrets, `nats_${u}`), hostilePass(u) + "\n");
  const script = String(entry[entry.length - 1] ?? "").replaceAll("$$", "$").replaceAll("/etc/dynamowave/secrets", secrets);
  const composeEnv = handedOver("docker-compose.yml services.nats.entrypoint", script, {});
  // /etc/nats as the container sees it: every bind mount below it.
  const etc = path.join(tmp, "compose-etc-nats");
  fs.mkdirSync(etc);
  let confFile = null;
  for (const v of svc.volumes ?? []) {
    const [src, dst] = String(v).split(":");
    if (!dst?.startsWith("/etc/nats/") || !src.startsWith(".")) continue;
    fs.copyFileSync(path.join(repo, src), path.join(etc, dst.slice("/etc/nats/".length)));
    if (dst === "/etc/nats/nats.conf") confFile = path.join(etc, "nats.conf");
  }
  if (!confFile) {
    failed++;
    console.log("FAIL docker-compose.yml: services.nats does not mount a config at /etc/nats/nats.conf");
  } else if (composeEnv) {
    allPasswords("docker-compose.yml services.nats.entrypoint", composeEnv);
    natsCheck("deploy/compose/nats.conf + auth.conf (as the compose service mounts them, values as its entrypoint passes them)", confFile, composeEnv);
  }
  // A missing password file must stop the start, not start nats-server
  // with an empty password.
  if (users.length) {
    fs.rmSync(path.join(secrets, `nats_${users[users.length - 1]}`));
    if (handedOver("", script, {}, { quiet: true }) === null) {
      passed++;
      console.log("ok   docker-compose.yml services.nats.entrypoint: refuses to start without a password file");
    } else {
      failed++;
      console.log("FAIL docker-compose.yml services.nats.entrypoint: started nats-server without a password file");
    }
  }
  const bareEnv = { JS_KEY: HOSTILE_KEY };
  for (const u of users) bareEnv[passVar(u)] = hostilePass(u);
  const bare = confFile ? spawnSync(nats, ["-c", confFile, "-t"], { encoding: "utf8", env: { ...process.env, ...bareEnv } }) : { status: 1 };
  if (bare.status === 0) console.log("note: this nats-server also takes the bare values; the quoting is still harmless");

  // ---- Kubernetes: the StatefulSet's nats container gets the key as
  // JS_KEY_RAW and the passwords as DW_NATS_PASS_<USER> from the Secrets.
  const sts = YAML.parseAllDocuments(fs.readFileSync(path.join(repo, "k8s", "base", "nats.yaml"), "utf8"))
    .map((d) => d.toJS())
    .find((d) => d?.kind === "StatefulSet" && d?.metadata?.name === "nats");
  const ctr = sts?.spec?.template?.spec?.containers?.find((c) => c.name === "nats");
  const cmd = ctr?.command ?? [];
  const k8sIn = { JS_KEY_RAW: HOSTILE_KEY };
  for (const e of ctr?.env ?? []) {
    const m = e.name.match(/^DW_NATS_PASS_/) && e.valueFrom?.secretKeyRef?.key;
    if (m && users.includes(m)) k8sIn[e.name] = hostilePass(m);
  }
  const k8sEnv = cmd[0] === "/bin/sh" && cmd[1] === "-c" ? handedOver("k8s/base/nats.yaml StatefulSet/nats command", cmd[2], k8sIn) : null;
  if (k8sEnv === null) {
    failed++;
    console.log("FAIL k8s/base/nats.yaml: the nats container must start through /bin/sh -c, quoting JS_KEY and the passwords");
  } else {
    allPasswords("k8s/base/nats.yaml StatefulSet/nats", k8sEnv);
  }
  // auth.conf sits next to nats.conf (the projected volume `config`): the
  // ConfigMap nats-auth, generated in k8s/base/kustomization.yaml.
  const kust = YAML.parse(fs.readFileSync(path.join(repo, "k8s", "base", "kustomization.yaml"), "utf8"));
  const gen = (kust?.configMapGenerator ?? []).find((g) => g.name === "nats-auth");
  const authEntry = (gen?.files ?? []).find((f) => f.startsWith("auth.conf="));
  const k8sAuth = authEntry ? path.join(repo, "k8s", "base", authEntry.slice("auth.conf=".length)) : null;
  if (!k8sAuth || !fs.existsSync(k8sAuth)) {
    failed++;
    console.log("FAIL k8s/base/kustomization.yaml: no configMapGenerator nats-auth with auth.conf=<file>");
  }
  const walk = (d) => fs.readdirSync(d, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? walk(path.join(d, e.name)) : [path.join(d, e.name)]));
  let n = 0;
  for (const f of walk(path.join(repo, "k8s")).filter((f) => /\.ya?ml$/.test(f))) {
    for (const doc of YAML.parseAllDocuments(fs.readFileSync(f, "utf8")).map((d) => d.toJS())) {
      if (doc?.kind !== "ConfigMap" || doc?.metadata?.name !== "nats-config" || !doc?.data?.["nats.conf"]) continue;
      const dir = path.join(tmp, `k8s-${n++}`);
      fs.mkdirSync(dir);
      fs.writeFileSync(path.join(dir, "nats.conf"), doc.data["nats.conf"]);
      if (k8sAuth && fs.existsSync(k8sAuth)) fs.copyFileSync(k8sAuth, path.join(dir, "auth.conf"));
      natsCheck(`${path.relative(repo, f)} (ConfigMap nats-config + nats-auth)`, path.join(dir, "nats.conf"), k8sEnv ?? bareEnv);
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
