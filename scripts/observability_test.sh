#!/usr/bin/env bash
# End-to-end check of the observability setup with a real Prometheus server:
#
#   1. `promtool check rules` on observability/prometheus-rules.yml;
#   2. runs `ecosystem/examples/observability.rs` (cached calls under load, /metrics on a free port);
#   3. starts `prometheus` scraping it every second, with the rules loaded;
#   4. queries Prometheus's HTTP API for p95 call latency (histogram_quantile over the real
#      histogram buckets), the hit ratio and a recording rule, and checks they are plausible;
#   5. checks that every metric name the dashboard and the rules use exists in the example's
#      /metrics output, so a rename cannot silently empty a panel.
#
# Installs Debian's `prometheus` package (which provides promtool) when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
    log "prometheus not found: installing it from Debian's packages"
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    if command -v apt-get >/dev/null 2>&1; then
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq prometheus >/dev/null
        # The test starts its own server; the distribution's service is not needed.
        $sudo systemctl disable --now prometheus >/dev/null 2>&1 || true
        $sudo pkill -x prometheus >/dev/null 2>&1 || true
    else
        echo "error: prometheus is missing and apt-get is unavailable; install Prometheus 2.x (prometheus, promtool) and rerun" >&2
        exit 1
    fi
fi
prometheus --version 2>&1 | head -1

log "promtool check rules"
promtool check rules observability/prometheus-rules.yml

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" >/dev/null 2>&1 || true; done
    wait >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

log "starting redis-server (the example's L2, so the Redis series are there too)"
command -v redis-server >/dev/null 2>&1 || {
    echo "error: redis-server is missing: run scripts/test.sh (it installs it) or install redis-server" >&2
    exit 1
}
redis_port="$(free_port)"
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)

log "building and starting ecosystem/examples/observability.rs"
cargo build --quiet -p layercache-ecosystem --example observability
app_port="$(free_port)"
REDIS_URL="redis://127.0.0.1:$redis_port" METRICS_ADDR="127.0.0.1:$app_port" RUN_SECONDS=300 \
    target/debug/examples/observability >"$work/app.log" 2>&1 &
pids+=($!)

prom_port="$(free_port)"
cp observability/prometheus-rules.yml "$work/"
cat >"$work/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - prometheus-rules.yml
scrape_configs:
  - job_name: layercache
    static_configs:
      - targets: ["127.0.0.1:$app_port"]
EOF
log "starting prometheus on 127.0.0.1:$prom_port"
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/data" \
    --web.listen-address="127.0.0.1:$prom_port" >"$work/prometheus.log" 2>&1 &
pids+=($!)

log "querying Prometheus until the figures are there (deadline 90 s)"
python3 - "$prom_port" <<'PY'
import json, sys, time, urllib.parse, urllib.request

port = sys.argv[1]

def query(expr):
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            data = json.load(r)
    except OSError:
        return None
    if data.get("status") != "success" or not data["data"]["result"]:
        return None
    value = float(data["data"]["result"][0]["value"][1])
    return None if value != value else value  # NaN: not yet

checks = {
    "p95 of llm_chat (s)": ('histogram_quantile(0.95, sum by (le) (rate(layercache_call_duration_seconds_bucket{call="llm_chat"}[30s])))', 0.05, 10.0),
    "p95 of chat_request (s)": ('histogram_quantile(0.95, sum by (le) (rate(layercache_call_duration_seconds_bucket{call="chat_request"}[30s])))', 0.0, 10.0),
    "hit ratio": ('sum(rate(layercache_requests_total{cache="chat",result="hit"}[30s])) / sum(rate(layercache_requests_total{cache="chat"}[30s]))', 0.05, 1.0),
    "served from cache": ('1 - sum(rate(layercache_requests_total{cache="chat",result="miss"}[30s])) / sum(rate(layercache_requests_total{cache="chat"}[30s]))', 0.05, 1.0),
    "p95 of loads (s)": ('histogram_quantile(0.95, sum by (le) (rate(layercache_load_duration_seconds_bucket{cache="chat"}[30s])))', 0.05, 10.0),
    "recording rule: hit ratio": ('layercache:hit_ratio:rate5m{cache="chat"}', 0.05, 1.0),
}
deadline = time.time() + 90
found = {}
while time.time() < deadline and len(found) < len(checks):
    for name, (expr, low, high) in checks.items():
        if name not in found:
            value = query(expr)
            if value is not None:
                found[name] = value
    time.sleep(1)
failed = False
for name, (expr, low, high) in checks.items():
    value = found.get(name)
    ok = value is not None and low <= value <= high
    failed |= not ok
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {value} (expected {low}..{high})")
sys.exit(1 if failed else 0)
PY

log "every metric name used by the dashboard and the rules exists in /metrics"
curl -fsS "http://127.0.0.1:$app_port/metrics" >"$work/metrics.txt"
python3 - "$work/metrics.txt" observability/grafana-dashboard.json observability/prometheus-rules.yml <<'PY'
import re, sys

exported = set()
for line in open(sys.argv[1]):
    m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)", line)
    if m and not line.startswith("#"):
        name = m.group(1)
        exported.add(name)
        exported.add(re.sub(r"_(bucket|sum|count)$", "", name))
used = set()
for path in sys.argv[2:]:
    used |= set(re.findall(r"\blayercache_[a-z_]+", open(path).read()))
missing = sorted(n for n in used if n not in exported)
print(f"{len(used)} metric names used, {len(missing)} missing from /metrics: {missing}")
sys.exit(1 if missing else 0)
PY
log "observability checks passed"
