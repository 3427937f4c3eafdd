#!/usr/bin/env bash
# Policy propagation at scale: a real global control plane, ZONES real zone
# control planes, and PROXIES simulated proxies per zone (real gRPC streams
# over TLS, one connection each, that register, get certificates and ACK
# configs; no data plane). The global applies an AccessPolicy APPLIES times;
# the simulator records when each proxy holds each revision.
# Prints one JSON line: time until every proxy in every zone has an apply
# (p50/p99/max over the applies) and per proxy, CPU per apply of each
# component, and each zone-cp's memory per connected proxy.
# Everything runs on this machine: on 2 cores the zone-cps, the global and
# the simulator share them. Needs `ulimit -n` above ZONES * PROXIES + 1000.
#   env: ZONES (10), PROXIES (1000), APPLIES (200), WORK (/tmp/tern-propagation),
#        REACHABLE (0: every proxy gets every service; N: each declares N)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
ZONES=${ZONES:-10}; PROXIES=${PROXIES:-1000}; APPLIES=${APPLIES:-200}
ulimit -n $((ZONES * PROXIES * 2 + 4096)) 2>/dev/null || true
(cd "$root" && cargo build --release -q --bins)
"$root/target/release/tern-propagation" --bin-dir "$root/target/release" \
  --zones "$ZONES" --proxies "$PROXIES" --applies "$APPLIES" --reachable "${REACHABLE:-0}" \
  --work "${WORK:-/tmp/tern-propagation}"
