#!/usr/bin/env bash
# Validates deploy/compose/docker-compose.yml without a container engine: `docker-compose config`
# must accept it, and every host file or directory it mounts must exist (as a file where the
# target is a file), the build context and Dockerfile too; the server's command must use real
# attention-server flags, publish its ports, and stop slower than --shutdown_grace
# (tests/deploy/deploy_check.py). Then the same for docker-compose.yml + docker-compose.tls.yml with
# generated secret files: every security flag reads a compose secret whose file exists, the
# HEALTHCHECK uses the plaintext health port, and Prometheus sends basic auth from a
# password_file secret whose password is a user of the server's metrics auth file.
# Usage: tests/deploy/compose_test.sh BIN_DIR
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
BIN=$(cd "${1:-$top/build/bin}" && pwd)
PY=/usr/bin/python3
"$PY" -c 'import yaml' 2>/dev/null || { echo "FAIL: $PY has no yaml module (Debian: python3-yaml)" >&2; exit 1; }
if command -v docker-compose >/dev/null; then
  compose=(docker-compose)
elif command -v docker >/dev/null && docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
else
  echo "FAIL: neither docker-compose (Debian: docker-compose) nor docker compose is installed" >&2; exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# No engine is contacted by `config`; the environment must not pick another project file.
(cd "$top" && env -u COMPOSE_FILE -u ATTN_MODELS -u ATTN_SECRETS "${compose[@]}" -f deploy/compose/docker-compose.yml config) \
  >"$work/config.yaml" 2>"$work/config.err" \
  || { cat "$work/config.err" >&2; echo "FAIL: ${compose[*]} config rejects deploy/compose/docker-compose.yml" >&2; exit 1; }
echo "${compose[*]} config: ok ($(grep -c '' "$work/config.yaml") lines)"
"$PY" "$top/tests/deploy/deploy_check.py" compose "$BIN" "$work/config.yaml"

# The TLS + tokens override, with the secret files a user would create (deploy/compose/secrets/
# README.md): throwaway certificates, a token's digest, a metrics password and its digest.
secrets=$work/secrets
"$top/tests/testing/make_test_certs.sh" "$secrets"
token=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
printf '%s infer,read test-client\n' "$(printf %s "$token" | sha256sum | cut -d' ' -f1)" >"$secrets/tokens"
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$secrets/metrics-password"
printf 'prometheus %s\n' "$(sha256sum <"$secrets/metrics-password" | cut -d' ' -f1)" >"$secrets/metrics-users"
(cd "$top" && env -u COMPOSE_FILE -u ATTN_MODELS ATTN_SECRETS="$secrets" "${compose[@]}" \
  -f deploy/compose/docker-compose.yml -f deploy/compose/docker-compose.tls.yml config) \
  >"$work/config-tls.yaml" 2>"$work/config.err" \
  || { cat "$work/config.err" >&2; echo "FAIL: ${compose[*]} config rejects docker-compose.yml + docker-compose.tls.yml" >&2; exit 1; }
echo "${compose[*]} config with docker-compose.tls.yml: ok ($(grep -c '' "$work/config-tls.yaml") lines)"
"$PY" "$top/tests/deploy/deploy_check.py" compose "$BIN" "$work/config-tls.yaml"
echo "compose: all checks passed"
