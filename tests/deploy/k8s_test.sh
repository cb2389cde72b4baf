#!/usr/bin/env bash
# Renders deploy/k8s/base and every deploy/k8s/overlays/* with `kubectl kustomize` (no cluster
# needed) and checks them against the built attention-server and the Dockerfile: container args
# are real flags, ports and probes follow --listen/--metrics_listen, the grace period covers
# preStop + --shutdown_grace, CPU equals --threads, the restricted security settings, Services,
# HPA, PDB and ServiceMonitor wiring; with components/tls-auth and mtls: every TLS, token and
# metrics-auth file is a read-only whole-volume Secret mount (rendered, or issued by the
# cert-manager Certificate, whose dnsNames cover the headless Service), probes on the plaintext
# health port, the ServiceMonitor sends basic auth, and the component changes nothing else
# (tests/deploy/deploy_check.py). deploy/k8s/kserve: the ServingRuntime's args are real flags, its
# first port is --listen's (named h2c), probes, metrics port and scrape annotations follow
# --metrics_listen, --model_repository is /mnt/models, restricted securityContext; each
# InferenceService names a rendered runtime, a format and protocol it supports, and a rendered PVC
# or ServiceAccount for its storageUri. No private key or user secret file is in git.
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

# No private key, and no file of the secrets/ directories, is in git.
if git -C "$top" rev-parse --git-dir >/dev/null 2>&1; then
  keys=$(git -C "$top" grep -lE -- '-----BEGIN ([A-Z]+ )?PRIVATE KEY-----' -- deploy || true)
  [ -z "$keys" ] || { echo "FAIL: private keys in git: $keys" >&2; exit 1; }
  tracked=$(git -C "$top" ls-files -- 'deploy/k8s/overlays/*/secrets/*' 'deploy/compose/secrets/*' \
    | grep -v '/README.md$' || true)
  [ -z "$tracked" ] || { echo "FAIL: user secret files in git: $tracked" >&2; exit 1; }
fi

# Render a copy, where overlays/example-tls/secrets/ gets the files a user would create
# (its secrets/README.md): a throwaway token's digest and a metrics password with its digest.
cp -r "$top/deploy/k8s" "$work/k8s"
secrets=$work/k8s/overlays/example-tls/secrets
rm -f "$secrets"/tokens "$secrets"/metrics-users "$secrets"/metrics-password
token=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
printf '%s infer,read test-client\n' "$(printf %s "$token" | sha256sum | cut -d' ' -f1)" >"$secrets/tokens"
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$secrets/metrics-password"
printf 'prometheus %s\n' "$(sha256sum <"$secrets/metrics-password" | cut -d' ' -f1)" >"$secrets/metrics-users"

# components/tokens alone (the service-mesh case, deploy/README.md): a test-only overlay over
# example-sessions, with its own copy of the secret files.
mkdir -p "$work/k8s/overlays/test-tokens-only"
cp -r "$secrets" "$work/k8s/overlays/test-tokens-only/secrets"
cat >"$work/k8s/overlays/test-tokens-only/kustomization.yaml" <<'EOF'
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: attention
resources:
  - ../example-sessions
components:
  - ../../components/tokens
generatorOptions:
  disableNameSuffixHash: true
secretGenerator:
  - {name: attention-server-tokens, files: [tokens=secrets/tokens]}
  - {name: attention-server-metrics-auth, files: [users=secrets/metrics-users]}
  - name: attention-server-metrics-scrape
    literals: [username=prometheus]
    files: [password=secrets/metrics-password]
patches:
  - target: {kind: ServiceMonitor, name: attention-server}
    patch: |-
      - op: add
        path: /spec/endpoints/0/basicAuth
        value:
          username: {name: attention-server-metrics-scrape, key: username}
          password: {name: attention-server-metrics-scrape, key: password}
EOF

rendered=()
for dir in "$work/k8s/base" "$work"/k8s/overlays/*/; do
  dir=${dir%/}
  name=${dir#"$work/k8s/"}
  out="$work/${name//\//_}.yaml"   # e.g. overlays_example.yaml
  kubectl kustomize "$dir" >"$out" || { echo "FAIL: kubectl kustomize $name" >&2; exit 1; }
  echo "rendered $name: $(grep -c '^kind:' "$out") objects ($(grep '^kind:' "$out" | awk '{print $2}' | sort | tr '\n' ' '))"
  rendered+=("$out")
done
[ "${#rendered[@]}" -ge 2 ] || { echo "FAIL: no overlays under deploy/k8s/overlays" >&2; exit 1; }
"$PY" "$top/tests/deploy/deploy_check.py" k8s "$BIN" "$top/Dockerfile" "${rendered[@]}"

# KServe: the ServingRuntime with the PVC InferenceService, the S3 one, the ClusterServingRuntime.
kserve=()
for dir in kserve kserve/s3 kserve/cluster; do
  out="$work/${dir//\//_}.yaml"   # e.g. kserve_s3.yaml
  kubectl kustomize "$work/k8s/$dir" >"$out" || { echo "FAIL: kubectl kustomize $dir" >&2; exit 1; }
  echo "rendered $dir: $(grep '^kind:' "$out" | awk '{print $2}' | sort | tr '\n' ' ')"
  kserve+=("$out")
done
"$PY" "$top/tests/deploy/deploy_check.py" kserve "$BIN" "$top/Dockerfile" "${kserve[@]}"
echo "k8s: all checks passed"
