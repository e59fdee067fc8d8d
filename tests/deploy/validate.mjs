#!/usr/bin/env node
// Validate every Kubernetes manifest under k8s/ without a cluster and
// without kustomize (neither exists on the build machines):
//
//   node tests/deploy/validate.mjs [path/to/k8s]
//   node tests/deploy/validate.mjs --render k8s/overlays/dev   # show a render
//
// 1. Every YAML document parses the same way as YAML 1.1 (kubectl) and 1.2
//    (kustomize), so no scalar means two things.
// 2. Every kustomization uses only plain features (resources, strategic-merge
//    patch files, JSON patch files aimed at one kind and name, images,
//    replicas, configMapGenerator); every file it lists exists; every patch
//    names exactly one object (apiVersion, kind, name) of what its resources
//    render; every file under k8s/ is used by some kustomization (k8s/jobs/
//    holds stand-alone manifests).
// 3. Each kustomization is rendered (strategic merge as kubectl/kustomize
//    apply it, for the directives used here; JSON patch ops test, add,
//    replace, remove) and every object, and every
//    stand-alone manifest, is checked by its kubernetes-models class's
//    validate() (the Kubernetes, KEDA and prometheus-operator OpenAPI
//    schemas), plus a check for fields the schema does not know (typos the
//    schemas alone let through: they allow additional properties).
// 4. Cross-object checks on each render: selectors, ports, volumes and
//    ConfigMap keys that resolve, autoscaler and PDB targets, security
//    context, resources, a readiness probe on every container and complete
//    zone spread on every workload, images with a tag (the project's own at
//    the version in CMakeLists.txt), the registry's store encrypted, Secrets
//    documented in k8s/README.md.
// 5. PrometheusRule and Grafana dashboard expressions parse as PromQL and
//    use only the metrics the services export (the list below).
//
// --kubectl: render base and every overlay with `kubectl kustomize` instead
// (the real kustomize), run the same checks on what it renders, and report
// where this checker's own renderer disagrees with it. Exit 77 without
// kubectl.
//
// Exit 0 when everything holds, 1 otherwise (one line per problem).

import fs from "node:fs";
import path from "node:path";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import YAML from "yaml";
import { parser as promqlParser } from "@prometheus-io/lezer-promql";

const here = path.dirname(fileURLToPath(import.meta.url));
// --render DIR: print what this checker renders for one kustomization (the
// same objects it validates), e.g. to review an overlay's patches.
const renderOnly = process.argv[2] === "--render" ? path.resolve(process.argv[3] ?? ".") : null;
const withKubectl = process.argv[2] === "--kubectl";
const k8sDir = renderOnly
  ? path.resolve(here, "..", "..", "k8s")
  : path.resolve((withKubectl ? process.argv[3] : process.argv[2]) ?? path.join(here, "..", "..", "k8s"));
const rel = (p) => path.relative(path.dirname(k8sDir), p);

let failures = 0;
let checks = 0;
function fail(where, msg) {
  failures++;
  console.log(`FAIL ${where}: ${msg}`);
}
function ok() {
  checks++;
}

// ---------------------------------------------------------------- metrics --
// What the services export (the contract of the metrics issue) and the
// NATS exporter / Kubernetes series the rules may use besides.
const DW_METRICS = [
  "dw_edge_connections",
  "dw_edge_messages_in_total",
  "dw_edge_messages_accepted_total",
  "dw_edge_deliveries_total",
  "dw_edge_rate_limited_total",
  "dw_edge_connections_rejected_total",
  "dw_dispatcher_messages_total",
  "dw_dispatcher_retries_total",
  "dw_dispatcher_delivery_seconds",
  "dw_dispatcher_stage_seconds",
  "dw_dispatcher_partitions",
  "dw_dispatcher_held_messages",
  "dw_edge_stage_seconds",
  "dw_deadletter_captured_total",
  "dw_deadletter_replayed_total",
  "dw_deadletter_depth",
  "dw_registry_connections",
  "dw_registry_applied_seq",
  "dw_registry_last_checkpoint_timestamp_seconds",
  "dw_nats_reconnects_total",
  "dw_ready",
];
const OTHER_METRICS = new Set([
  "up",
  // prometheus-nats-exporter -jsz=all -prefix=nats (k8s/base/nats.yaml)
  "nats_consumer_num_pending",
  "nats_consumer_num_ack_pending",
  "nats_consumer_num_redelivered",
  "nats_stream_total_messages",
  "nats_varz_connections",
  "nats_varz_slow_consumers",
  "nats_healthz_status_value",
]);
function knownMetric(name) {
  if (OTHER_METRICS.has(name)) return true;
  if (DW_METRICS.includes(name)) return true;
  // Histograms expose _bucket, _sum and _count.
  const m = name.match(/^(.*)_(bucket|sum|count)$/);
  return !!m && DW_METRICS.includes(m[1]) && m[1].endsWith("_seconds");
}

// Parse one PromQL expression; report syntax errors and unknown metrics;
// return the metric names it uses.
function checkPromQL(where, expr) {
  // Grafana's variables are not PromQL: give them a neutral value.
  const q = expr
    .replace(/\$__(rate_interval|interval|range)/g, "5m")
    .replace(/\$\{?[A-Za-z_][A-Za-z0-9_]*\}?/g, "x");
  const tree = promqlParser.parse(q);
  const used = [];
  let bad = -1;
  tree.iterate({
    enter(n) {
      if (n.type.isError && bad < 0) bad = n.from;
      if (n.name === "Identifier" && n.node.parent?.name === "VectorSelector") {
        used.push(q.slice(n.from, n.to));
      }
    },
  });
  if (bad >= 0) {
    fail(where, `PromQL syntax error at offset ${bad}: ${expr}`);
    return used;
  }
  for (const m of used) {
    if (!knownMetric(m)) fail(where, `unknown metric ${m} (not exported by any service)`);
  }
  ok();
  return used;
}

// ------------------------------------------------------------------ files --
function walk(dir) {
  const out = [];
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    if (e.name.startsWith(".")) continue;
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...walk(p));
    else out.push(p);
  }
  return out.sort();
}

const docsCache = new Map();
// The YAML documents of one file (objects, nulls dropped).
function loadDocs(file) {
  if (docsCache.has(file)) return docsCache.get(file);
  const text = fs.readFileSync(file, "utf8");
  let docs = [];
  try {
    const d12 = YAML.parseAllDocuments(text);
    const d11 = YAML.parseAllDocuments(text, { version: "1.1" });
    for (const d of d12) {
      if (d.errors.length) throw new Error(d.errors[0].message);
    }
    const j12 = d12.map((d) => d.toJS());
    const j11 = d11.map((d) => d.toJS());
    if (JSON.stringify(j12) !== JSON.stringify(j11)) {
      fail(rel(file), "a scalar reads differently in YAML 1.1 (kubectl) and 1.2 (kustomize): quote it (yes/no/on/off, 0-prefixed numbers, ...)");
    }
    docs = j12.filter((d) => d !== null && d !== undefined);
  } catch (e) {
    fail(rel(file), `YAML does not parse: ${e.message}`);
  }
  docsCache.set(file, docs);
  return docs;
}

// ----------------------------------------------------------------- models --
const modelCache = new Map();
async function modelFor(apiVersion, kind) {
  const key = `${apiVersion}/${kind}`;
  if (modelCache.has(key)) return modelCache.get(key);
  let spec;
  if (apiVersion.startsWith("keda.sh/")) spec = `@kubernetes-models/keda/${apiVersion}/${kind}`;
  else if (apiVersion.startsWith("monitoring.coreos.com/")) spec = `@kubernetes-models/prometheus-operator/${apiVersion}/${kind}`;
  else spec = `kubernetes-models/${apiVersion}/${kind}`;
  let cls = null;
  try {
    const mod = await import(spec);
    cls = mod[kind] ?? null;
  } catch {
    cls = null;
  }
  modelCache.set(key, cls);
  return cls;
}

// Run the model's validate() on a proxy of the object that records which
// fields the schema looked at; a field it never looked at (on an object it
// did not enumerate as a map) is not in the schema.
function unknownFields(cls, obj) {
  const recs = new Map();
  const proxies = new WeakMap();
  const wrap = (o, p) => {
    if (o === null || typeof o !== "object") return o;
    if (proxies.has(o)) return proxies.get(o);
    const rec = { keys: new Set(), enumerated: false, path: p };
    recs.set(o, rec);
    const px = new Proxy(o, {
      get(t, k, r) {
        const v = Reflect.get(t, k, r);
        if (typeof k !== "string") return v;
        rec.keys.add(k);
        return Object.prototype.hasOwnProperty.call(t, k) ? wrap(v, `${p}.${k}`) : v;
      },
      has(t, k) {
        if (typeof k === "string") rec.keys.add(k);
        return Reflect.has(t, k);
      },
      ownKeys(t) {
        rec.enumerated = true;
        return Reflect.ownKeys(t);
      },
      getOwnPropertyDescriptor(t, k) {
        if (typeof k === "string") rec.keys.add(k);
        return Reflect.getOwnPropertyDescriptor(t, k);
      },
    });
    proxies.set(o, px);
    return px;
  };
  const copy = structuredClone(obj);
  cls.prototype.validate.call(wrap(copy, ""));
  const out = [];
  for (const [o, rec] of recs) {
    if (Array.isArray(o) || rec.enumerated) continue;
    for (const k of Object.keys(o)) if (!rec.keys.has(k)) out.push(`${rec.path}.${k}`.replace(/^\./, ""));
  }
  return out;
}

function objName(o) {
  return `${o?.kind ?? "?"}/${o?.metadata?.name ?? "?"}`;
}

async function validateObject(where, obj) {
  if (!obj || typeof obj !== "object" || !obj.apiVersion || !obj.kind) {
    fail(where, "not a Kubernetes object (apiVersion and kind required)");
    return;
  }
  const w = `${where} ${objName(obj)}`;
  if (!obj.metadata?.name) fail(w, "metadata.name missing");
  const cls = await modelFor(obj.apiVersion, obj.kind);
  if (!cls) {
    fail(w, `no schema for ${obj.apiVersion} ${obj.kind}`);
    return;
  }
  try {
    new cls(structuredClone(obj)).validate();
    ok();
  } catch (e) {
    fail(w, `schema: ${e.message}`);
    return;
  }
  try {
    const unk = unknownFields(cls, obj);
    for (const f of unk) fail(w, `field not in the ${obj.kind} schema: ${f}`);
    if (!unk.length) ok();
  } catch (e) {
    fail(w, `schema (traced): ${e.message}`);
  }
}

// ------------------------------------------------- strategic merge patch --
// The subset of Kubernetes' strategic merge patch that kubectl and
// kustomize apply to built-in kinds: maps merge, null deletes, lists of
// objects merge on their patch merge key, other lists are replaced, and the
// directives $patch: delete | replace | merge. Custom resources (no merge
// keys known) get maps merged and lists replaced, as kustomize does.
const MERGE_KEYS = {
  containers: "name",
  initContainers: "name",
  ephemeralContainers: "name",
  env: "name",
  volumes: "name",
  volumeMounts: "mountPath",
  volumeDevices: "devicePath",
  imagePullSecrets: "name",
  // x-kubernetes-list-map-keys, which kustomize merges on: a patch entry
  // with another whenUnsatisfiable is a new entry, not a change.
  topologySpreadConstraints: ["topologyKey", "whenUnsatisfiable"],
  hostAliases: "ip",
  // Pod container ports merge on containerPort, Service ports on port.
  ports: (items) => (items.some((i) => i && "containerPort" in i) ? "containerPort" : "port"),
};
const UNSUPPORTED = ["$retainKeys", "$deleteFromPrimitiveList", "$setElementOrder"];

function smpMerge(where, base, patch, builtin, field) {
  if (patch === null) return undefined;
  if (Array.isArray(patch)) return smpList(where, Array.isArray(base) ? base : [], patch, builtin, field);
  if (typeof patch !== "object") return patch;
  for (const k of Object.keys(patch)) {
    if (UNSUPPORTED.some((u) => k.startsWith(u))) fail(where, `unsupported patch directive ${k}`);
  }
  const dir = patch.$patch;
  const body = Object.fromEntries(Object.entries(patch).filter(([k]) => k !== "$patch"));
  if (dir === "delete") return undefined;
  if (dir === "replace") return structuredClone(body);
  if (dir !== undefined && dir !== "merge") fail(where, `unknown $patch: ${dir}`);
  const out = base && typeof base === "object" && !Array.isArray(base) ? structuredClone(base) : {};
  for (const [k, v] of Object.entries(body)) {
    const merged = smpMerge(`${where}.${k}`, out[k], v, builtin, k);
    if (merged === undefined) delete out[k];
    else out[k] = merged;
  }
  return out;
}

function smpList(where, base, patch, builtin, field) {
  let key = builtin ? MERGE_KEYS[field] : undefined;
  if (typeof key === "function") key = key([...base, ...patch]);
  const objects = patch.every((e) => e && typeof e === "object" && !Array.isArray(e));
  if (!key || !objects) {
    return patch.filter((e) => !(e && e.$patch)).map((e) => structuredClone(e));
  }
  if (patch.some((e) => e.$patch === "replace" && Object.keys(e).length === 1)) {
    return patch.filter((e) => !e.$patch).map((e) => structuredClone(e));
  }
  const keys = Array.isArray(key) ? key : [key];
  // kustomize puts the patch's elements first, in the patch's order, then
  // the untouched ones in their order (the order only shows in renders).
  const out = base.map((e) => structuredClone(e));
  const first = [];
  for (const e of patch) {
    const missing = keys.filter((k) => !(k in e));
    if (missing.length) {
      fail(where, `list element without its merge key '${missing.join("', '")}': ${JSON.stringify(e)}`);
      continue;
    }
    const label = keys.map((k) => `${k}=${e[k]}`).join(",");
    const i = out.findIndex((b) => b && keys.every((k) => b[k] === e[k]));
    if (e.$patch === "delete") {
      if (i < 0) fail(where, `$patch: delete of ${label}, which is not there`);
      else out.splice(i, 1);
      continue;
    }
    if (i < 0) {
      first.push(smpMerge(where, undefined, e, builtin, null));
    } else {
      first.push(smpMerge(`${where}[${label}]`, out[i], e, builtin, null));
      out.splice(i, 1);
    }
  }
  return [...first, ...out];
}

// ------------------------------------------------------------ JSON patch --
// RFC 6902 as kustomize applies it to a `target`: test, add, replace and
// remove on JSON pointers. A failed test stops the render, as in kustomize.
function pointer(where, doc, ptr) {
  if (typeof ptr !== "string" || !ptr.startsWith("/")) {
    fail(where, `bad JSON pointer ${JSON.stringify(ptr)}`);
    return null;
  }
  const parts = ptr.slice(1).split("/").map((p) => p.replace(/~1/g, "/").replace(/~0/g, "~"));
  let parent = doc;
  for (const p of parts.slice(0, -1)) {
    parent = Array.isArray(parent) ? parent[Number(p)] : parent?.[p];
    if (parent === undefined || parent === null || typeof parent !== "object") {
      fail(where, `${ptr}: ${p} does not exist`);
      return null;
    }
  }
  return { parent, last: parts[parts.length - 1] };
}

function jsonPatch(where, obj, ops) {
  const doc = structuredClone(obj);
  if (!Array.isArray(ops)) {
    fail(where, "a JSON patch (a patch with a target) must be a list of operations");
    return doc;
  }
  for (const op of ops) {
    const ow = `${where} ${op?.op} ${op?.path}`;
    const at = pointer(ow, doc, op?.path);
    if (!at) return doc;
    const { parent, last } = at;
    const isArr = Array.isArray(parent);
    const has = isArr ? Number(last) < parent.length : Object.prototype.hasOwnProperty.call(parent, last);
    if (op.op === "test") {
      if (!has || JSON.stringify(parent[last]) !== JSON.stringify(op.value)) {
        fail(ow, `test failed: found ${JSON.stringify(parent[last])}, expected ${JSON.stringify(op.value)}`);
        return doc;
      }
    } else if (op.op === "replace") {
      if (!has) fail(ow, "replace of something that does not exist");
      else parent[last] = structuredClone(op.value);
    } else if (op.op === "add") {
      if (isArr) parent.splice(last === "-" ? parent.length : Number(last), 0, structuredClone(op.value));
      else parent[last] = structuredClone(op.value);
    } else if (op.op === "remove") {
      if (!has) fail(ow, "remove of something that does not exist");
      else if (isArr) parent.splice(Number(last), 1);
      else delete parent[last];
    } else {
      fail(ow, `unsupported JSON patch op ${op.op}`);
    }
  }
  ok();
  return doc;
}

// --------------------------------------------------------- kustomization --
const KUSTOMIZATION_KEYS = new Set([
  "apiVersion", "kind", "namespace", "resources", "patches", "images", "replicas",
  "configMapGenerator", "generatorOptions",
]);
const CLUSTER_SCOPED = new Set([
  "Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
  "PersistentVolume", "StorageClass", "PriorityClass",
]);
const usedFiles = new Set();
const jsonPatchFiles = new Set();

function sameTarget(a, b) {
  return a.apiVersion === b.apiVersion && a.kind === b.kind && a.metadata?.name === b.metadata?.name;
}

function podTemplates(o) {
  if (["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"].includes(o.kind)) return [o.spec?.template];
  if (o.kind === "Job") return [o.spec?.template];
  if (o.kind === "CronJob") return [o.spec?.jobTemplate?.spec?.template];
  if (o.kind === "Pod") return [o];
  return [];
}

// Render one kustomization directory into a list of objects.
function render(dir, stack = []) {
  const kfile = path.join(dir, "kustomization.yaml");
  const where = rel(kfile);
  if (stack.includes(dir)) {
    fail(where, "kustomization cycle");
    return [];
  }
  if (!fs.existsSync(kfile)) {
    fail(rel(dir), "directory listed as a resource has no kustomization.yaml");
    return [];
  }
  usedFiles.add(kfile);
  const k = loadDocs(kfile)[0] ?? {};
  if (k.apiVersion !== "kustomize.config.k8s.io/v1beta1" || k.kind !== "Kustomization") {
    fail(where, "apiVersion/kind must be kustomize.config.k8s.io/v1beta1 Kustomization");
  }
  for (const key of Object.keys(k)) {
    if (!KUSTOMIZATION_KEYS.has(key)) fail(where, `'${key}' is not allowed: keep overlays to resources + plain patches`);
  }
  let objs = [];
  for (const r of k.resources ?? []) {
    const p = path.resolve(dir, r);
    if (/^[a-z]+:\/\//.test(r)) {
      fail(where, `remote resource ${r} is not allowed`);
    } else if (!fs.existsSync(p)) {
      fail(where, `resource ${r} does not exist`);
    } else if (fs.statSync(p).isDirectory()) {
      objs.push(...render(p, [...stack, dir]));
    } else {
      usedFiles.add(p);
      objs.push(...loadDocs(p).map((o) => structuredClone(o)));
    }
  }
  const gopts = k.generatorOptions ?? {};
  for (const g of k.configMapGenerator ?? []) {
    const data = {};
    for (const f of g.files ?? []) {
      const [key, file] = f.includes("=") ? f.split("=", 2) : [path.basename(f), f];
      const p = path.resolve(dir, file);
      if (!fs.existsSync(p)) {
        fail(where, `configMapGenerator ${g.name}: file ${file} does not exist`);
        continue;
      }
      usedFiles.add(p);
      data[key] = fs.readFileSync(p, "utf8");
    }
    for (const lit of g.literals ?? []) {
      const i = lit.indexOf("=");
      data[lit.slice(0, i)] = lit.slice(i + 1);
    }
    const labels = { ...(gopts.labels ?? {}), ...(g.options?.labels ?? {}) };
    const cm = { apiVersion: "v1", kind: "ConfigMap", metadata: { name: g.name }, data };
    if (Object.keys(labels).length) cm.metadata.labels = labels;
    objs.push(cm);
  }
  for (const p of k.patches ?? []) {
    const targetKeys = Object.keys(p?.target ?? {});
    if (typeof p !== "object" || !p.path || p.patch || (p.target && (targetKeys.join() !== "kind,name" || /[^a-z0-9-]/.test(p.target.name)))) {
      fail(where, `patch ${JSON.stringify(p)}: only { path: file } strategic-merge patches and JSON patches with target { kind, name } (one exact name) are allowed`);
      continue;
    }
    const file = path.resolve(dir, p.path);
    if (!fs.existsSync(file)) {
      fail(where, `patch ${p.path} does not exist`);
      continue;
    }
    usedFiles.add(file);
    if (p.target) {
      const pw = `${rel(file)} -> ${p.target.kind}/${p.target.name}`;
      const hits = objs.filter((o) => o.kind === p.target.kind && o.metadata?.name === p.target.name);
      if (hits.length !== 1) {
        fail(pw, `target ${hits.length ? "is ambiguous" : "is not in the resources"} of ${where}`);
        continue;
      }
      jsonPatchFiles.add(file);
      objs[objs.indexOf(hits[0])] = jsonPatch(pw, hits[0], loadDocs(file)[0]);
      continue;
    }
    for (const doc of loadDocs(file)) {
      const pw = `${rel(file)} ${objName(doc)}`;
      if (!doc.apiVersion || !doc.kind || !doc.metadata?.name) {
        fail(pw, "a patch needs apiVersion, kind and metadata.name to name its target");
        continue;
      }
      const hits = objs.filter((o) => sameTarget(o, doc));
      if (hits.length !== 1) {
        fail(pw, `patch targets ${doc.apiVersion} ${objName(doc)}, which ${hits.length ? "is ambiguous" : "is not in the resources"} of ${where}`);
        continue;
      }
      ok();
      // Built-in kinds: core ("v1"), "apps/v1", "*.k8s.io/*"; the rest are CRDs.
      const builtin = !doc.apiVersion.includes(".") || doc.apiVersion.includes(".k8s.io/");
      if (doc.$patch === "delete") {
        objs = objs.filter((o) => o !== hits[0]);
        continue;
      }
      const merged = smpMerge(pw, hits[0], doc, builtin, null);
      objs[objs.indexOf(hits[0])] = merged;
    }
  }
  for (const img of k.images ?? []) {
    let used = false;
    for (const o of objs) {
      for (const t of podTemplates(o)) {
        for (const c of [...(t?.spec?.containers ?? []), ...(t?.spec?.initContainers ?? [])]) {
          const name = (c.image ?? "").replace(/@.*$/, "").replace(/:[^/:]+$/, "");
          if (name !== img.name) continue;
          used = true;
          const tag = img.digest ? `@${img.digest}` : img.newTag ? `:${img.newTag}` : "";
          c.image = `${img.newName ?? img.name}${tag}`;
        }
      }
    }
    if (!used) fail(where, `images: no container uses image '${img.name}'`);
  }
  for (const r of k.replicas ?? []) {
    const hits = objs.filter((o) => ["Deployment", "StatefulSet", "ReplicaSet"].includes(o.kind) && o.metadata?.name === r.name);
    if (hits.length !== 1) fail(where, `replicas: no single Deployment/StatefulSet named ${r.name}`);
    else hits[0].spec.replicas = r.count;
  }
  if (k.namespace) {
    for (const o of objs) {
      if (!CLUSTER_SCOPED.has(o.kind)) (o.metadata ??= {}).namespace = k.namespace;
    }
  }
  return objs;
}

// ------------------------------------------------------ cross checks --
function matches(selector, labels) {
  if (!selector) return false;
  for (const [k, v] of Object.entries(selector.matchLabels ?? {})) if (labels?.[k] !== v) return false;
  for (const e of selector.matchExpressions ?? []) {
    const has = labels && e.key in labels;
    const v = labels?.[e.key];
    if (e.operator === "In" && !(has && e.values.includes(v))) return false;
    if (e.operator === "NotIn" && has && e.values.includes(v)) return false;
    if (e.operator === "Exists" && !has) return false;
    if (e.operator === "DoesNotExist" && has) return false;
  }
  return true;
}

// An image names its version: a tag other than latest, or a digest. The
// project's own image carries the version of CMakeLists.txt, so that a
// release bumps both (overlays set their registry and tag with `images:`).
const projectVersion = (() => {
  try {
    const cm = fs.readFileSync(path.join(here, "..", "..", "CMakeLists.txt"), "utf8");
    return cm.match(/project\(dynamowave VERSION ([0-9.]+)/)?.[1] ?? null;
  } catch {
    return null;
  }
})();
function checkImage(where, image) {
  const m = String(image ?? "").match(/^(.*?)(?::([^/:@]+))?(@sha256:[0-9a-f]{64})?$/);
  const [, name, tag, digest] = m ?? [];
  if (!tag && !digest) fail(where, `image ${image} has no tag`);
  else if (tag === "latest" && !digest) fail(where, `image ${image}: name a version, not latest`);
}
// In k8s/base and k8s/jobs the project's image is dynamowave:<version>.
function checkProjectVersion(where, objs) {
  for (const o of objs) {
    for (const t of podTemplates(o)) {
      for (const c of [...(t?.spec?.containers ?? []), ...(t?.spec?.initContainers ?? [])]) {
        const [name, tag] = String(c.image ?? "").split(":");
        if (name === "dynamowave" && tag !== projectVersion) {
          fail(`${where} ${objName(o)} container ${c.name}`, `image ${c.image}: use dynamowave:${projectVersion}, the version in CMakeLists.txt`);
        }
      }
    }
  }
}

// Secure by default: the registry seals its values (DW_REGISTRY_KEY_FILE,
// docs/security.md) with a key from a Secret the pod cannot start without.
function checkRegistryEncrypted(where, objs) {
  const reg = objs.find((o) => o.kind === "StatefulSet" && o.metadata?.name === "registry");
  if (!reg) return;
  const spec = reg.spec?.template?.spec ?? {};
  const c = (spec.containers ?? []).find((x) => x.name === "registry");
  const keyFile = c?.env?.find((e) => e.name === "DW_REGISTRY_KEY_FILE")?.value;
  if (!keyFile) {
    fail(`${where} StatefulSet/registry`, "DW_REGISTRY_KEY_FILE is not set: the registry would store its table unencrypted");
    return;
  }
  const mount = (c.volumeMounts ?? []).find((m) => keyFile.startsWith(`${m.mountPath.replace(/\/$/, "")}/`));
  const vol = (spec.volumes ?? []).find((v) => v.name === mount?.name);
  if (!vol?.secret) fail(`${where} StatefulSet/registry`, `DW_REGISTRY_KEY_FILE ${keyFile} is not on a Secret volume`);
  else if (vol.secret.optional) fail(`${where} StatefulSet/registry`, `the key's Secret ${vol.secret.secretName} must not be optional`);
  else ok();
}

function checkPodSpec(where, o, tmpl, objs, secrets) {
  const spec = tmpl?.spec ?? {};
  const psc = spec.securityContext ?? {};
  if (psc.runAsNonRoot !== true) fail(where, "pod securityContext.runAsNonRoot must be true");
  if (psc.seccompProfile?.type !== "RuntimeDefault") fail(where, "pod securityContext.seccompProfile.type must be RuntimeDefault");
  const volumes = new Set((spec.volumes ?? []).map((v) => v.name));
  for (const t of o.spec?.volumeClaimTemplates ?? []) volumes.add(t.metadata?.name);
  for (const v of spec.volumes ?? []) {
    if (v.secret) secrets.add(v.secret.secretName);
    if (v.configMap && !objs.some((x) => x.kind === "ConfigMap" && x.metadata?.name === v.configMap.name) && !v.configMap.optional) {
      fail(where, `volume ${v.name}: ConfigMap ${v.configMap.name} is not part of this deployment`);
    }
  }
  const longRunning = ["Deployment", "StatefulSet", "DaemonSet"].includes(o.kind);
  for (const c of [...(spec.containers ?? []), ...(spec.initContainers ?? [])]) {
    const cw = `${where} container ${c.name}`;
    const init = (spec.initContainers ?? []).includes(c);
    // Every long-running container says when it can take traffic (a
    // sidecar too: a pod is Ready only when all of its containers are).
    if (longRunning && !init && !c.readinessProbe) fail(cw, "no readinessProbe");
    checkImage(cw, c.image);
    for (const e of c.env ?? []) {
      const ref = e.valueFrom?.configMapKeyRef;
      if (!ref || ref.optional || !objs.length) continue;
      const cm = objs.find((x) => x.kind === "ConfigMap" && x.metadata?.name === ref.name);
      if (!cm) fail(cw, `env ${e.name}: ConfigMap ${ref.name} is not part of this deployment`);
      else if (!(ref.key in (cm.data ?? {}))) fail(cw, `env ${e.name}: ConfigMap ${ref.name} has no key ${ref.key}`);
    }
    const sc = c.securityContext ?? {};
    if (sc.readOnlyRootFilesystem !== true) fail(cw, "securityContext.readOnlyRootFilesystem must be true");
    if (sc.allowPrivilegeEscalation !== false) fail(cw, "securityContext.allowPrivilegeEscalation must be false");
    if (!(sc.capabilities?.drop ?? []).includes("ALL")) fail(cw, "securityContext.capabilities.drop must include ALL");
    if (sc.privileged) fail(cw, "privileged");
    for (const kind of ["requests", "limits"]) {
      for (const r of ["cpu", "memory"]) {
        if (!c.resources?.[kind]?.[r]) fail(cw, `resources.${kind}.${r} missing`);
      }
    }
    for (const m of c.volumeMounts ?? []) {
      if (!volumes.has(m.name)) fail(cw, `volumeMount ${m.name} has no volume`);
    }
    const portNames = new Set((c.ports ?? []).map((p) => p.name).filter(Boolean));
    for (const pr of ["startupProbe", "livenessProbe", "readinessProbe"]) {
      const port = c[pr]?.httpGet?.port ?? c[pr]?.tcpSocket?.port;
      if (typeof port === "string" && !portNames.has(port)) fail(cw, `${pr} uses port '${port}', which the container does not declare`);
    }
    for (const e of c.env ?? []) {
      if (e.valueFrom?.secretKeyRef) secrets.add(e.valueFrom.secretKeyRef.name);
    }
    ok();
  }
}

function crossCheck(where, objs, { requireZoneSpread = true } = {}) {
  const secrets = new Set();
  const seen = new Set();
  for (const o of objs) {
    const id = `${o.kind}/${o.metadata?.namespace ?? ""}/${o.metadata?.name}`;
    if (seen.has(id)) fail(where, `duplicate object ${id}`);
    seen.add(id);
  }
  const workloads = objs.filter((o) => ["Deployment", "StatefulSet"].includes(o.kind));
  const byName = (kind, name) => objs.find((o) => o.kind === kind && o.metadata?.name === name);
  for (const o of objs) {
    const w = `${where} ${objName(o)}`;
    for (const t of podTemplates(o)) {
      checkPodSpec(w, o, t, objs, secrets);
      if (o.kind === "Deployment" || o.kind === "StatefulSet") {
        if (!matches(o.spec?.selector, t?.metadata?.labels)) fail(w, "selector does not match the pod template's labels");
        const zone = (t?.spec?.topologySpreadConstraints ?? []).find((c) => c.topologyKey === "topology.kubernetes.io/zone");
        if (requireZoneSpread && !zone) fail(w, "no topologySpreadConstraints across topology.kubernetes.io/zone");
        if (zone && !matches(zone.labelSelector, t?.metadata?.labels)) fail(w, "zone spread labelSelector does not select its own pods");
      }
    }
    if (o.kind === "StatefulSet") {
      const svc = byName("Service", o.spec?.serviceName);
      if (!svc) fail(w, `serviceName ${o.spec?.serviceName} is not a Service here`);
      else if (svc.spec?.clusterIP !== "None") fail(w, `serviceName ${svc.metadata.name} must be headless`);
    }
    if (o.kind === "Service" && o.spec?.selector) {
      const pods = workloads.filter((x) => matches({ matchLabels: o.spec.selector }, x.spec?.template?.metadata?.labels));
      if (!pods.length) fail(w, "selector matches no workload");
      for (const p of o.spec.ports ?? []) {
        if (typeof p.targetPort !== "string") continue;
        const named = pods.some((x) => (x.spec.template.spec.containers ?? []).some((c) => (c.ports ?? []).some((cp) => cp.name === p.targetPort)));
        if (!named) fail(w, `targetPort ${p.targetPort} is not a named port of the selected pods`);
      }
    }
    if (o.kind === "PodDisruptionBudget") {
      if (!workloads.some((x) => matches(o.spec?.selector, x.spec?.template?.metadata?.labels))) fail(w, "selector matches no workload");
    }
    if (o.kind === "NetworkPolicy") {
      const sel = o.spec?.podSelector ?? {};
      const empty = !Object.keys(sel.matchLabels ?? {}).length && !(sel.matchExpressions ?? []).length;
      // Pods not part of the render: k8s/jobs/ (dwctl), your own workers (k8s/README.md).
      const standalonePods = ["dwctl", "worker"];
      if (!empty && !workloads.some((x) => matches(sel, x.spec?.template?.metadata?.labels)) && !standalonePods.includes(sel.matchLabels?.["app.kubernetes.io/name"])) {
        fail(w, "podSelector matches no workload");
      }
    }
    if (o.kind === "HorizontalPodAutoscaler") {
      const t = o.spec?.scaleTargetRef;
      if (!byName(t?.kind, t?.name)) fail(w, `scaleTargetRef ${t?.kind}/${t?.name} is not here`);
    }
    if (o.kind === "ScaledObject") {
      const t = o.spec?.scaleTargetRef;
      if (!byName(t?.kind ?? "Deployment", t?.name)) fail(w, `scaleTargetRef ${t?.name} is not here`);
      if (objs.some((h) => h.kind === "HorizontalPodAutoscaler" && h.spec?.scaleTargetRef?.name === t?.name)) {
        fail(w, `both a ScaledObject and a HorizontalPodAutoscaler scale ${t?.name}; KEDA builds its own HPA`);
      }
    }
  }
  checkRegistryEncrypted(where, objs);
  // Every Secret the pods need must be explained to the operator.
  const readme = path.join(k8sDir, "README.md");
  const doc = fs.existsSync(readme) ? fs.readFileSync(readme, "utf8") : "";
  for (const s of secrets) {
    if (!doc.includes(s)) fail(where, `Secret ${s} is referenced but not documented in k8s/README.md`);
  }
  ok();
  return secrets;
}

function checkRulesAndDashboards(where, objs) {
  const used = new Set();
  for (const o of objs) {
    if (o.kind === "PrometheusRule") {
      for (const g of o.spec?.groups ?? []) {
        for (const r of g.rules ?? []) {
          const rw = `${where} PrometheusRule ${g.name}/${r.alert ?? r.record}`;
          for (const m of checkPromQL(rw, String(r.expr))) used.add(m);
          if (r.alert && !(r.annotations?.summary && r.annotations?.description)) fail(rw, "alert needs summary and description annotations");
          if (r.alert && !r.labels?.severity) fail(rw, "alert needs a severity label");
        }
      }
    }
    if (o.kind === "ConfigMap" && o.metadata?.labels?.grafana_dashboard) {
      for (const [key, text] of Object.entries(o.data ?? {})) {
        let dash;
        try {
          dash = JSON.parse(text);
        } catch (e) {
          fail(`${where} ${key}`, `dashboard JSON does not parse: ${e.message}`);
          continue;
        }
        if (!dash.title || !dash.uid || !Array.isArray(dash.panels)) fail(`${where} ${key}`, "dashboard needs title, uid and panels");
        const panels = [];
        const walkPanels = (ps) => {
          for (const p of ps ?? []) {
            panels.push(p);
            walkPanels(p.panels);
          }
        };
        walkPanels(dash.panels);
        for (const p of panels) {
          for (const t of p.targets ?? []) {
            if (t.expr === undefined) continue;
            for (const m of checkPromQL(`${where} ${key} panel "${p.title}"`, t.expr)) used.add(m);
          }
        }
      }
    }
  }
  return used;
}

// --------------------------------------------------------------- kubectl --
function which(cmd) {
  for (const d of (process.env.PATH ?? "").split(path.delimiter)) {
    const p = path.join(d, cmd);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {
      // next
    }
  }
  return null;
}

// What `kubectl kustomize DIR` renders, as objects; null when it fails.
function kubectlRender(where, dir) {
  const r = spawnSync(kubectl, ["kustomize", dir], { encoding: "utf8", maxBuffer: 64 << 20 });
  if (r.status !== 0) {
    fail(where, `kubectl kustomize failed: ${(r.stderr || r.stdout || "").trim()}`);
    return null;
  }
  const docs = YAML.parseAllDocuments(r.stdout);
  for (const d of docs) if (d.errors.length) fail(where, `kubectl's output does not parse: ${d.errors[0].message}`);
  ok();
  return docs.map((d) => d.toJS()).filter((d) => d);
}

// Where this checker's renderer and kustomize disagree: the first few
// differing paths per object (a disagreement means the checks above may
// have looked at something else than what gets applied).
function compareRenders(where, mine, theirs) {
  const id = (o) => `${o.kind}/${o.metadata?.namespace ?? ""}/${o.metadata?.name}`;
  const a = new Map(mine.map((o) => [id(o), o]));
  const b = new Map(theirs.map((o) => [id(o), o]));
  for (const k of a.keys()) if (!b.has(k)) fail(where, `kustomize does not render ${k}, this checker does`);
  for (const k of b.keys()) if (!a.has(k)) fail(where, `kustomize renders ${k}, this checker does not`);
  const diffs = (x, y, p, out) => {
    if (out.length >= 5) return out;
    if (JSON.stringify(x) === JSON.stringify(y)) return out;
    if (x && y && typeof x === "object" && typeof y === "object" && Array.isArray(x) === Array.isArray(y)) {
      const keys = Array.isArray(x) ? [...Array(Math.max(x.length, y.length)).keys()] : [...new Set([...Object.keys(x), ...Object.keys(y)])];
      for (const k of keys) diffs(x[k], y[k], `${p}.${k}`, out);
      if (Array.isArray(x) && x.length !== y.length) out.push(`${p}: ${x.length} vs ${y.length} entries`);
      return out;
    }
    out.push(`${p}: ${JSON.stringify(x)?.slice(0, 120)} vs kustomize ${JSON.stringify(y)?.slice(0, 120)}`);
    return out;
  };
  for (const [k, o] of a) {
    if (!b.has(k)) continue;
    for (const d of diffs(o, b.get(k), "", [])) fail(where, `${k} differs${d}`);
  }
  ok();
}

// ------------------------------------------------------------------- main --
if (renderOnly) {
  const objs = render(renderOnly);
  process.stdout.write(objs.map((o) => YAML.stringify(o)).join("---\n"));
  if (failures) console.error(`${failures} problem(s) while rendering`);
  process.exit(failures ? 1 : 0);
}
if (!fs.existsSync(k8sDir)) {
  console.log(`FAIL ${k8sDir} does not exist`);
  process.exit(1);
}
const all = walk(k8sDir);
const yamlFiles = all.filter((f) => /\.ya?ml$/.test(f));
const kustomizations = yamlFiles.filter((f) => path.basename(f) === "kustomization.yaml").map((f) => path.dirname(f));

// Every document of every file parses; remember which files are patches.
const patchFiles = new Set();
for (const kdir of kustomizations) {
  const k = loadDocs(path.join(kdir, "kustomization.yaml"))[0] ?? {};
  for (const p of k.patches ?? []) if (p?.path) patchFiles.add(path.resolve(kdir, p.path));
}

// Stand-alone validation of every non-patch document (base resources, jobs).
for (const f of yamlFiles) {
  if (path.basename(f) === "kustomization.yaml" || patchFiles.has(f)) continue;
  for (const d of loadDocs(f)) await validateObject(rel(f), d);
}

// Render and check every kustomization; the entry points (not used as a
// resource of another one) get the cross-object checks.
const asResource = new Set();
for (const kdir of kustomizations) {
  const k = loadDocs(path.join(kdir, "kustomization.yaml"))[0] ?? {};
  for (const r of k.resources ?? []) {
    const p = path.resolve(kdir, r);
    if (fs.existsSync(p) && fs.statSync(p).isDirectory()) asResource.add(p);
  }
}
const allUsedMetrics = new Set();
const kubectl = withKubectl ? which("kubectl") : null;
if (withKubectl && !kubectl) {
  console.log("SKIP: kubectl is not installed (1.21 or newer: its kustomize understands these overlays)");
  process.exit(77);
}
if (kubectl) {
  // kubectl embeds kustomize; before kubectl 1.21 (kustomize v4, e.g.
  // Debian 12's kubernetes-client 1.20) it lacks `patches:` with a target.
  const v = spawnSync(kubectl, ["version", "--client", "-o", "json"], { encoding: "utf8" });
  let kv = null;
  try {
    kv = JSON.parse(v.stdout);
  } catch {
    kv = null;
  }
  const kust = kv?.kustomizeVersion ?? "";
  const major = Number(kust.match(/^v(\d+)\./)?.[1] ?? 0);
  if (major < 4) {
    console.log(`SKIP: ${kubectl} (${kv?.clientVersion?.gitVersion ?? "unknown version"}) embeds kustomize ${kust || "of unknown version"}; these manifests need v4 or newer (kubectl 1.21+)`);
    process.exit(77);
  }
  console.log(`kubectl ${kv.clientVersion.gitVersion}, kustomize ${kust}`);
}
const baseObjs = render(path.join(k8sDir, "base"));
checkProjectVersion(rel(path.join(k8sDir, "base")), baseObjs);
for (const kdir of kustomizations) {
  const where = rel(kdir) + (kubectl ? " (kubectl)" : "");
  const mine = render(kdir);
  const objs = kubectl ? kubectlRender(where, kdir) : mine;
  if (!objs) continue;
  if (kubectl) compareRenders(where, mine, objs);
  for (const o of objs) await validateObject(`${where} (rendered)`, o);
  if (!asResource.has(kdir) || kdir.endsWith(`${path.sep}base`)) {
    crossCheck(where, objs, { requireZoneSpread: true });
  }
  for (const m of checkRulesAndDashboards(where, objs)) allUsedMetrics.add(m);
  console.log(`ok   ${where}: ${objs.length} objects (${[...new Set(objs.map((o) => o.kind))].sort().join(", ")})`);
}

// Stand-alone manifests (k8s/jobs/) get the pod checks too.
for (const f of yamlFiles) {
  if (usedFiles.has(f) || patchFiles.has(f)) continue;
  if (!f.includes(`${path.sep}jobs${path.sep}`)) {
    fail(rel(f), "not used by any kustomization (and not under k8s/jobs/)");
    continue;
  }
  const secrets = new Set();
  // They run next to what the base deploys (its ConfigMaps, Secrets).
  for (const d of loadDocs(f)) {
    for (const t of podTemplates(d)) checkPodSpec(`${rel(f)} ${objName(d)}`, d, t, baseObjs, secrets);
  }
  checkProjectVersion(rel(f), loadDocs(f));
  console.log(`ok   ${rel(f)}: stand-alone`);
}

// The alerts and the dashboard together cover every metric the services export.
for (const m of DW_METRICS) {
  const covered = [...allUsedMetrics].some((u) => u === m || u.startsWith(`${m}_`));
  if (!covered) fail("k8s/monitoring", `metric ${m} appears in no alert and no dashboard panel`);
}

console.log(`${checks} passed, ${failures} failed`);
process.exit(failures ? 1 : 0);
