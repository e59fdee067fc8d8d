#!/usr/bin/env node
// The checker must fail on what it claims to catch: copy k8s/ to a temp
// directory, break one thing at a time, and expect validate.mjs to exit 1
// naming the problem. The unbroken copy must pass.
//
//   node tests/deploy/validate_selftest.mjs [path/to/k8s]

import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const k8sDir = path.resolve(process.argv[2] ?? path.join(here, "..", "..", "k8s"));
const validator = path.join(here, "validate.mjs");

// [name, file (relative to k8s/), from, to, expected message]; `from` must
// occur in the file (a mutation that no longer applies is itself a failure).
const MUTATIONS = [
  ["unknown field", "base/edge.yaml", "terminationGracePeriodSeconds: 60", "terminationGracePeriodSecond: 60", "field not in the Deployment schema"],
  ["wrong type", "base/nats.yaml", "replicas: 3", "replicas: three", "schema:"],
  ["KEDA schema", "base/dispatcher.yaml", "minReplicaCount: 2", "minReplicaCount: two", "ScaledObject/dispatcher: schema"],
  ["PrometheusRule schema", "monitoring/prometheusrule.yaml", "for: 5m", "for: five minutes", "PrometheusRule/dynamowave: schema"],
  ["patch of a missing object", "overlays/dev/edge.yaml", "  name: edge\nspec:\n  template:", "  name: edge2\nspec:\n  template:", "is not in the resources"],
  ["missing patch file", "overlays/prod/kustomization.yaml", "  - path: zones.yaml", "  - path: zones.yaml\n  - path: missing.yaml", "patch missing.yaml does not exist"],
  ["missing resource", "overlays/dev/kustomization.yaml", "  - dispatcher-hpa.yaml", "  - dispatcher-hpa.yaml\n  - gone.yaml", "resource gone.yaml does not exist"],
  ["non-plain kustomization", "overlays/dev/kustomization.yaml", "replicas:\n", "commonLabels:\n  team: chat\nreplicas:\n", "'commonLabels' is not allowed"],
  ["delete of a missing list element", "overlays/dev/edge.yaml", "name: DW_TLS_KEY\n", "name: DW_TLS_KEYS\n", "which is not there"],
  ["image not used", "overlays/prod/kustomization.yaml", "  - name: dynamowave\n", "  - name: dynamowav\n", "no container uses image"],
  ["YAML 1.1/1.2 ambiguity", "base/nats.yaml", "publishNotReadyAddresses: true", "publishNotReadyAddresses: yes", "reads differently"],
  ["writable root filesystem", "base/deadletter.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false", "readOnlyRootFilesystem must be true"],
  ["no limits", "base/dispatcher.yaml", "            limits:\n              cpu: \"1\"\n              memory: 512Mi\n", "", "resources.limits.cpu missing"],
  ["no zone spread", "base/deadletter.yaml", "topologyKey: topology.kubernetes.io/zone", "topologyKey: example.com/rack", "no topologySpreadConstraints across topology.kubernetes.io/zone"],
  ["named port missing", "base/edge.yaml", "      targetPort: http\n", "      targetPort: https\n", "targetPort https is not a named port"],
  ["probe port missing", "base/registry.yaml", "              port: status\n            periodSeconds: 5\n            failureThreshold: 120", "              port: stats\n            periodSeconds: 5\n            failureThreshold: 120", "uses port 'stats'"],
  ["mount without volume", "base/registry.yaml", "            - name: tmp\n              mountPath: /tmp", "            - name: scratch\n              mountPath: /tmp", "volumeMount scratch has no volume"],
  ["undocumented Secret", "README.md", /dynamowave-registry/g, "the-registry-secret", "Secret dynamowave-registry is referenced but not documented"],
  ["PromQL syntax", "monitoring/prometheusrule.yaml", "expr: max(dw_deadletter_depth) > 0", "expr: max(dw_deadletter_depth > 0", "PromQL syntax error"],
  ["unknown metric in a rule", "monitoring/prometheusrule.yaml", "expr: max(dw_deadletter_depth) > 0", "expr: max(dw_deadletter_dept) > 0", "unknown metric dw_deadletter_dept"],
  ["unknown metric in the dashboard", "monitoring/dynamowave-dashboard.json", "dw_registry_applied_seq{", "dw_registry_applied_sequence{", "unknown metric dw_registry_applied_sequence"],
  ["HPA and ScaledObject on one Deployment", "overlays/dev/kustomization.yaml", "  - path: no-keda.yaml\n", "", "both a ScaledObject and a HorizontalPodAutoscaler"],
  ["sidecar without a readiness probe", "base/nats.yaml", "          readinessProbe:\n            tcpSocket:\n              port: metrics\n            periodSeconds: 10\n            timeoutSeconds: 3\n            failureThreshold: 3\n", "", "container metrics: no readinessProbe"],
  ["image without a tag", "base/edge.yaml", "image: dynamowave:0.1.0", "image: dynamowave", "has no tag"],
  ["image at another version", "base/api.yaml", "image: dynamowave:0.1.0", "image: dynamowave:0.0.9", "the version in CMakeLists.txt"],
  ["latest", "jobs/dwctl.yaml", "      image: dynamowave:0.1.0\n", "      image: dynamowave:latest\n", "not latest"],
  ["ConfigMap key missing", "base/nats.yaml", "  url: nats://nats-0", "  urls: nats://nats-0", "ConfigMap nats-clients has no key url"],
  ["registry without a key", "base/registry.yaml", "name: DW_REGISTRY_KEY_FILE\n", "name: DW_REGISTRY_KEYFILE\n", "DW_REGISTRY_KEY_FILE is not set"],
  ["zone patch on another entry", "overlays/prod/zones.yaml", "  value: topology.kubernetes.io/zone", "  value: kubernetes.io/hostname", "test failed"],
  // The bug of issue 14: a strategic-merge patch with another
  // whenUnsatisfiable adds an entry instead of changing the base's.
  ["zone patch that adds an entry", "overlays/dev/nats.yaml", "    spec:\n      containers:\n        - name: nats\n", "    spec:\n      topologySpreadConstraints:\n        - topologyKey: topology.kubernetes.io/zone\n          whenUnsatisfiable: DoNotSchedule\n      containers:\n        - name: nats\n", "must have required property maxSkew"],
];

function run(dir) {
  const r = spawnSync(process.execPath, [validator, dir], { encoding: "utf8" });
  return { code: r.status, out: `${r.stdout}${r.stderr}` };
}

function copy() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "dw-k8s-"));
  const dst = path.join(dir, "k8s");
  fs.cpSync(k8sDir, dst, { recursive: true });
  return { dir, dst };
}

let passed = 0;
let failed = 0;
const report = (okay, name, detail) => {
  if (okay) passed++;
  else failed++;
  console.log(`${okay ? "ok  " : "FAIL"} ${name}${detail ? `: ${detail}` : ""}`);
};

{
  const { dir, dst } = copy();
  try {
    const r = run(dst);
    report(r.code === 0, "unmodified k8s/ passes", r.code === 0 ? "" : r.out.trim());
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

{
  const { dir, dst } = copy();
  try {
    fs.writeFileSync(path.join(dst, "overlays", "dev", "stale.yaml"), "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: stale\n");
    const r = run(dst);
    report(r.code === 1 && r.out.includes("not used by any kustomization"), "unreferenced file", r.code === 1 ? "" : "not detected");
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

for (const [name, file, from, to, expect] of MUTATIONS) {
  const { dir, dst } = copy();
  try {
    const p = path.join(dst, file);
    const text = fs.readFileSync(p, "utf8");
    const applies = typeof from === "string" ? text.includes(from) : from.test(text);
    if (!applies) {
      report(false, name, `mutation does not apply any more to ${file}`);
      continue;
    }
    fs.writeFileSync(p, text.replace(from, to));
    const r = run(dst);
    const good = r.code === 1 && r.out.includes(expect);
    report(good, name, good ? "" : `expected exit 1 and "${expect}", got exit ${r.code}:\n${r.out.trim()}`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
