#!/usr/bin/env bash
# End to end with a real Prometheus: the built attention-server on free ports,
# scraped every second by `prometheus` (Debian package), driven by the built
# attention-cli with a known mix of requests; then Prometheus's HTTP API must
# report exactly those counts, a sane latency quantile, and the target up.
# A second server runs with --metrics_auth_file, scraped by a second job with
# basic_auth from a password_file (deploy/prometheus/prometheus-basic-auth.yml's
# shape): that target must be up, while curl without or with wrong credentials
# gets 401, the wrong password counted in attn_auth_failures_total{reason="metrics_auth"}.
# Usage: prometheus_test.sh BIN_DIR
set -euo pipefail
BIN=$(cd "$1" && pwd)
source "$(dirname "$0")/lib.sh"
work=$(mktemp -d)
PROM_PID=""
stop_prometheus() {
  [ -n "$PROM_PID" ] || return 0
  kill -TERM "$PROM_PID" 2>/dev/null || true
  local i
  for i in $(seq 1 100); do kill -0 "$PROM_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$PROM_PID" 2>/dev/null || true
  wait "$PROM_PID" 2>/dev/null || true
  PROM_PID=""
}
AUTH_PID=""
stop_auth_server() {  # the basic-auth server, through lib.sh's stop_server
  local rc=0
  SERVER_PID=$AUTH_PID stop_server || rc=$?
  AUTH_PID=""
  return $rc
}
trap 'stop_prometheus; stop_server >/dev/null 2>&1 || true; stop_auth_server >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

fail() {
  echo "FAIL: $*" >&2
  for log in "$work/server.log" "$work/auth-server.log" "$work/prometheus.log"; do
    [ -f "$log" ] && { echo "--- $log (tail):" >&2; tail -n 30 "$log" >&2; }
  done
  exit 1
}
command -v prometheus >/dev/null || fail "prometheus not found (install the Debian package 'prometheus')"
command -v curl >/dev/null || fail "curl not found"
PYTHON=/usr/bin/python3
[ -x "$PYTHON" ] || PYTHON=$(command -v python3) || fail "python3 not found"

# A free loopback port (the kernel's pick, released again for Prometheus).
free_port() {
  "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- attention-server with /metrics behind basic auth ---------------------
# The user "prometheus" with a random password: Prometheus reads the password
# from a file, the server only its digest.
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/metrics-password"
printf 'prometheus %s\n' "$(sha256sum <"$work/metrics-password" | cut -d' ' -f1)" >"$work/metrics-users"
start_server "$work/auth-server.log" --metrics_auth_file="$work/metrics-users"
AUTH_PID=$SERVER_PID SERVER_PID=""
auth_metrics_url=$METRICS_URL
auth_target=${METRICS_URL#http://}
auth_target=${auth_target%/metrics}
echo "basic-auth server: metrics at $auth_metrics_url"

# --- attention-server (built-in model "default") -------------------------
start_server "$work/server.log"
metrics_target=${METRICS_URL#http://}
metrics_target=${metrics_target%/metrics}
echo "server at $GRPC_TARGET, metrics at $METRICS_URL"

# --- Prometheus, scraping it every second ---------------------------------
prom_port=$(free_port)
PROM="http://127.0.0.1:$prom_port"
cat >"$work/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: attention-server
    static_configs:
      - targets: ["$metrics_target"]
  - job_name: attention-server-auth
    basic_auth:
      username: prometheus
      password_file: $work/metrics-password
    static_configs:
      - targets: ["$auth_target"]
EOF
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/data" \
  --web.listen-address="127.0.0.1:$prom_port" --log.level=warn >"$work/prometheus.log" 2>&1 &
PROM_PID=$!

# poll SECONDS COMMAND...: runs COMMAND every 0.2 s until it succeeds.
poll() {
  local deadline=$(( $(date +%s) + $1 )); shift
  until "$@"; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    kill -0 "$PROM_PID" 2>/dev/null || fail "prometheus exited"
    sleep 0.2
  done
}
poll 60 curl -sf -o /dev/null "$PROM/-/ready" || fail "prometheus not ready within 60 s"

# query EXPR: prints the value of the one sample EXPR returns, "none" when it
# returns none; fails on anything else.
query() {
  curl -sfG --data-urlencode "query=$1" "$PROM/api/v1/query" >"$work/query.json" \
    || fail "query failed: $1"
  "$PYTHON" - "$work/query.json" "$1" <<'PY' || fail "bad answer to: $1 ($(cat "$work/query.json"))"
import json, sys
answer = json.load(open(sys.argv[1]))
if answer.get("status") != "success":
    sys.exit(f"status {answer.get('status')}: {answer.get('error')}")
data = answer["data"]
if data["resultType"] == "scalar":
    print(data["result"][1])
elif data["resultType"] == "vector":
    if not data["result"]:
        print("none")
    elif len(data["result"]) == 1:
        print(data["result"][0]["value"][1])
    else:
        sys.exit(f"{len(data['result'])} samples, expected one: {data['result']}")
else:
    sys.exit(f"unexpected result type {data['resultType']}")
PY
}
scraped_after() {  # scraped_after UNIX_SECONDS: the target's last scrape began later
  local t
  t=$(query "timestamp(up{job=\"attention-server\"})")
  [ "$t" != none ] && "$PYTHON" -c "import sys; sys.exit(0 if float('$t') > float('$1') else 1)"
}
poll 60 scraped_after 0 || fail "prometheus never scraped the server"

# --- a known mix of requests ----------------------------------------------
cli() { "$BIN/attention-cli" "$1" --target="$GRPC_TARGET" "${@:2}"; }
expect_code() {  # expect_code CODE CLI_ARGS...: the call fails with that gRPC code
  local code=$1 rc=0; shift
  cli "$@" >"$work/err.out" 2>"$work/err.err" || rc=$?
  [ "$rc" -eq 2 ] || fail "attention-cli $*: expected exit 2, got $rc"
  grep -q "$code" "$work/err.err" || { cat "$work/err.err" >&2; fail "attention-cli $*: expected $code"; }
}
ok=20
for i in $(seq 1 "$ok"); do
  cli attend --model=default --batch=1 --seq_len=$(( 4 + i )) --seed="$i" >/dev/null \
    || fail "attend $i: exit $?"
done
# With --input the client sends Attend without asking GetModel first, so the
# server sees the unknown model. A [1, 4, 256] query has the wrong embed_dim
# for the built-in model (512).
"$PYTHON" - "$work/e256.npy" <<'PY'
import struct, sys
header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 4, 256), }"
header += " " * (63 - (10 + len(header)) % 64) + "\n"
with open(sys.argv[1], "wb") as f:
    f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode())
    f.write(struct.pack("<1024f", *([0.5] * 1024)))
PY
for i in 1 2 3; do expect_code NOT_FOUND attend --model=no_such_model --input="$work/e256.npy"; done
expect_code INVALID_ARGUMENT attend --model=default --input="$work/e256.npy"
expect_code INVALID_ARGUMENT attend --model=default --batch=1 --seq_len=4 --lengths=9
last=$(date +%s.%N)

# Wait for a scrape that began after the last response; then every count
# must be exact (the server records a request before answering it).
poll 30 scraped_after "$last" || fail "no scrape within 30 s of the last request"

check() {  # check WHAT EXPR PYTHON_CONDITION_ON_v
  local v
  v=$(query "$2")
  "$PYTHON" -c "import sys; v = float('nan') if '$v' == 'none' else float('$v'); sys.exit(0 if ($3) else 1)" \
    || fail "$1: $2 = $v, expected $3"
  echo "ok: $1: $2 = $v"
}
check "target up" 'up{job="attention-server"}' 'v == 1'
check "OK requests" 'sum(attn_requests_total{job="attention-server", model="default", code="OK"})' "v == $ok"
# model="" in the exposition is no model label in Prometheus.
check "unknown model" 'sum(attn_requests_total{job="attention-server", model="", code="NOT_FOUND"})' 'v == 3'
check "invalid requests" \
  'sum(attn_requests_total{job="attention-server", model="default", code="INVALID_ARGUMENT"})' 'v == 2'
check "all requests" 'sum(attn_requests_total{job="attention-server"})' "v == $ok + 5"
check "latency samples" 'sum(attn_request_duration_seconds_count{job="attention-server", model="default"})' \
  "v == $ok"
# Counters started at zero with the server, so the raw buckets are the
# distribution of these requests.
check "median latency" \
  'histogram_quantile(0.5, sum by (le) (attn_request_duration_seconds_bucket{job="attention-server", model="default"}))' \
  'v > 0 and v < 10'
check "resident memory" 'process_resident_memory_bytes{job="attention-server"}' 'v > 1e6'

# --- /metrics behind basic auth ---------------------------------------------
http_code() { curl -s -o /dev/null -w '%{http_code}' "$@"; }
code=$(http_code "$auth_metrics_url")
[ "$code" = 401 ] || fail "curl $auth_metrics_url without credentials: HTTP $code, expected 401"
code=$(http_code -u prometheus:wrong-password "$auth_metrics_url")
[ "$code" = 401 ] || fail "curl $auth_metrics_url with a wrong password: HTTP $code, expected 401"
code=$(http_code -u "prometheus:$(cat "$work/metrics-password")" "$auth_metrics_url")
[ "$code" = 200 ] || fail "curl $auth_metrics_url with the password: HTTP $code, expected 200"
echo "ok: curl $auth_metrics_url: 401 without credentials and with a wrong password, 200 with the password"
refused=$(date +%s.%N)
auth_scraped_after() {
  local t
  t=$(query "timestamp(up{job=\"attention-server-auth\"})")
  [ "$t" != none ] && "$PYTHON" -c "import sys; sys.exit(0 if float('$t') > float('$1') else 1)"
}
poll 30 auth_scraped_after "$refused" || fail "no scrape of the basic-auth server within 30 s"
check "basic-auth target up" 'up{job="attention-server-auth"}' 'v == 1'
check "basic-auth scrape has samples" 'scrape_samples_scraped{job="attention-server-auth"}' 'v > 10'
# The wrong password is counted (Prometheus' own scrapes all passed). A request without an
# Authorization header is answered 401 by prometheus-cpp before the server's check runs, so it
# may not be counted: at least 1.
check "refused /metrics requests" \
  'sum(attn_auth_failures_total{job="attention-server-auth", reason="metrics_auth"})' 'v >= 1 and v <= 2'

stop_prometheus
stop_server || fail "server did not exit 0 on SIGTERM"
stop_auth_server || fail "basic-auth server did not exit 0 on SIGTERM"
echo "e2e prometheus: all checks passed"
