#!/usr/bin/env bash
# Renders deploy/k8s/base and every deploy/k8s/overlays/* with `kubectl kustomize` (no cluster
# needed) and checks them against the built attention-server and the Dockerfile: container args
# are real flags, ports and probes follow --listen/--metrics_listen, the grace period covers
# preStop + --shutdown_grace, CPU equals --threads, the restricted security settings, Services,
# HPA, PDB and ServiceMonitor wiring (tests/deploy/deploy_check.py).
# Usage: tests/deploy/k8s_test.sh BIN_DIR
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
BIN=$(cd "${1:-$top/build/bin}" && pwd)
PY=/usr/bin/python3
command -v kubectl >/dev/null || { echo "FAIL: kubectl is not installed (Debian: kubernetes-client)" >&2; exit 1; }
"$PY" -c 'import yaml' 2>/dev/null || { echo "FAIL: $PY has no yaml module (Debian: python3-yaml)" >&2; exit 1; }
# The kustomizations use kustomize v4.5+ syntax (labels, components, patches), embedded in
# kubectl >= 1.24. Debian 12's kubernetes-client is 1.20 (kustomize v2): skip there, loudly.
minor=$(kubectl version --client -o json 2>/dev/null \
  | "$PY" -c 'import json, re, sys; print(re.sub(r"\D", "", json.load(sys.stdin)["clientVersion"]["minor"]))' \
  || echo 0)
if [ "${minor:-0}" -lt 24 ]; then
  echo "SKIP: kubectl 1.$minor embeds a kustomize older than v4.5; deploy/k8s needs kubectl >= 1.24"
  exit 77
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

rendered=()
for dir in "$top/deploy/k8s/base" "$top"/deploy/k8s/overlays/*/; do
  dir=${dir%/}
  name=${dir#"$top/deploy/k8s/"}
  out="$work/${name//\//_}.yaml"   # e.g. overlays_example.yaml
  kubectl kustomize "$dir" >"$out" || { echo "FAIL: kubectl kustomize $name" >&2; exit 1; }
  echo "rendered $name: $(grep -c '^kind:' "$out") objects ($(grep '^kind:' "$out" | awk '{print $2}' | sort | tr '\n' ' '))"
  rendered+=("$out")
done
[ "${#rendered[@]}" -ge 2 ] || { echo "FAIL: no overlays under deploy/k8s/overlays" >&2; exit 1; }
"$PY" "$top/tests/deploy/deploy_check.py" k8s "$BIN" "$top/Dockerfile" "${rendered[@]}"
echo "k8s: all checks passed"
