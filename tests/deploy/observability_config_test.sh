#!/usr/bin/env bash
# Checks the Prometheus and Grafana configuration in deploy/: promtool
# validates the scrape config and rules and runs the alert unit tests; the
# dashboard JSON parses, its PromQL compiles, and every metric that the rules
# and the dashboard name is one server/metrics.h documents.
# Usage: observability_config_test.sh [REPO_DIR]   (default: this checkout)
# Needs promtool (Debian package prometheus) and python3.
set -euo pipefail
repo=$(cd "${1:-$(dirname "$0")/../..}" && pwd)
prom="$repo/deploy/prometheus"
dashboard="$repo/deploy/grafana/dashboards/attention-server.json"
header="$repo/server/metrics.h"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
command -v promtool >/dev/null || fail "promtool not found (install the Debian package 'prometheus')"
PYTHON=/usr/bin/python3
[ -x "$PYTHON" ] || PYTHON=$(command -v python3) || fail "python3 not found"

promtool check config "$prom/prometheus.yml" || fail "promtool check config"
# The basic-auth variant (compose's docker-compose.tls.yml); its rule file sits beside it.
promtool check config "$prom/prometheus-basic-auth.yml" || fail "promtool check config (basic auth)"
promtool check rules "$prom/alerts.yml" || fail "promtool check rules"
promtool test rules "$prom/alerts_test.yml" || fail "promtool test rules"

"$PYTHON" -m json.tool "$dashboard" >/dev/null || fail "$dashboard is not valid JSON"

# Every query of the dashboard as a recording rule, with the template
# variables replaced, so promtool compiles the PromQL. Also: each panel and
# query uses the dashboard's datasource variable, and panel ids are unique.
"$PYTHON" - "$dashboard" "$work/dashboard_rules.yml" <<'PY' || fail "dashboard structure"
import json, sys
dash = json.load(open(sys.argv[1]))
exprs, ids, errors = [], set(), []
def walk(panels):
    for p in panels:
        if p["id"] in ids:
            errors.append(f"duplicate panel id {p['id']}")
        ids.add(p["id"])
        if p["type"] != "row":
            if p.get("datasource", {}).get("uid") != "${datasource}":
                errors.append(f"panel {p['title']!r}: datasource is not ${{datasource}}")
            if not p.get("targets"):
                errors.append(f"panel {p['title']!r}: no queries")
            for t in p.get("targets", []):
                if t.get("datasource", {}).get("uid") != "${datasource}":
                    errors.append(f"panel {p['title']!r}: query {t['refId']} datasource is not ${{datasource}}")
                exprs.append(t["expr"])
        walk(p.get("panels", []))
walk(dash["panels"])
if errors:
    sys.exit("\n".join(errors))
with open(sys.argv[2], "w") as out:
    out.write("groups:\n  - name: dashboard\n    rules:\n")
    for i, e in enumerate(exprs):
        for var, value in (("$__rate_interval", "1m"), ("$job", ".*"), ("$instance", ".*"), ("$model", ".*")):
            e = e.replace(var, value)
        if "$" in e:
            sys.exit(f"unknown template variable in: {e}")
        out.write(f"      - record: dashboard_query_{i}\n        expr: {json.dumps(e)}\n")
print(f"dashboard: {len(ids)} panels, {len(exprs)} queries")
PY
promtool check rules "$work/dashboard_rules.yml" >/dev/null || {
  promtool check rules "$work/dashboard_rules.yml" >&2 || true; fail "a dashboard query is not valid PromQL"; }

# Metric names documented in metrics.h (its "Metric names" comment block).
sed -n '/^\/\/ Metric names/,/^\/\/ Thread-safe/p' "$header" \
  | grep -oE '\b(attn|process)_[a-z0-9_]+' | sort -u >"$work/documented"
[ "$(wc -l <"$work/documented")" -ge 10 ] || fail "cannot read the metric list of $header"
# Names defined by recording rules (level:metric:operations).
grep -oE 'record: *[a-zA-Z0-9_:]+' "$prom/alerts.yml" | sed 's/record: *//' | sort -u >"$work/recorded"

bad=0
for file in "$prom/alerts.yml" "$prom/alerts_test.yml" "$dashboard"; do
  for name in $(grep -oE '[a-zA-Z0-9_:]*\b(attn|process)_[a-zA-Z0-9_:]*' "$file" | sort -u); do
    if [[ "$name" == *:* ]]; then
      grep -qxF "$name" "$work/recorded" || { echo "$file: $name is not a recording rule of alerts.yml" >&2; bad=1; }
      continue
    fi
    base=$(sed -E 's/_(bucket|sum|count)$//' <<<"$name")
    grep -qxF "$base" "$work/documented" \
      || { echo "$file: $name is not a metric documented in server/metrics.h" >&2; bad=1; }
  done
done
[ "$bad" -eq 0 ] || fail "undocumented metric names"
echo "observability config: all checks passed ($(wc -l <"$work/documented") documented metrics)"
