#!/usr/bin/env bash
# Start a local Tern mesh on loopback, on the embedded store:
#   a global control plane, two zones (eu-west / us-east) each with a zone
#   control plane, a demo `api` service (two instances in eu-west-1, one in
#   us-east-1), a `web` client sidecar per zone, and demo traffic.
# Everything lives under ./.tern-local; Ctrl-C stops it all.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
state=${TERN_LOCAL_DIR:-$root/.tern-local}
profile=${TERN_PROFILE:-release}

echo "building Tern ($profile)..."
if [ "$profile" = release ]; then cargo build --release --bins -q; else cargo build --bins -q; fi
bin=$root/target/$profile

rm -rf "$state"; mkdir -p "$state/logs"
pids=()
cleanup() {
  trap - EXIT INT TERM
  echo; echo "stopping the local mesh..."
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

start() { # name, command...
  local name=$1; shift
  "$@" >"$state/logs/$name.log" 2>&1 &
  last=$!
  pids+=($last)
}
# Refuse to start over another mesh (or anything) on our addresses.
for a in 127.0.0.1:5681 127.0.0.1:5685 127.0.1.1:5678 127.0.1.1:5680 127.0.2.1:5678 127.0.2.1:5680 \
         127.0.1.10:15000 127.0.1.11:15000 127.0.1.12:15000 127.0.2.10:15000 127.0.2.11:15000; do
  if (exec 3<>"/dev/tcp/${a%:*}/${a#*:}") 2>/dev/null; then
    echo "something already listens on $a; stop it (another local mesh?) and run again" >&2
    exit 1
  fi
done
wait_http() { # url: ready, and served by the process we just started
  for _ in $(seq 1 200); do
    kill -0 "$last" 2>/dev/null || { echo "a process exited during startup; see $state/logs:" >&2; tail -n 3 "$state"/logs/*.log >&2; exit 1; }
    curl -sf -o /dev/null "$1" && return 0
    sleep 0.1
  done
  echo "timed out waiting for $1 (see $state/logs)" >&2; exit 1
}

export TERN_CONFIG=$state/global/ternctl.json
start global "$bin/global-cp" --data-dir "$state/global" --sync-addr 127.0.0.1:5685 --admin-addr 127.0.0.1:5681
wait_http http://127.0.0.1:5681/ready
ctl() { "$bin/ternctl" "$@"; }

cat <<YAML | ctl apply -f - >/dev/null
apiVersion: tern.dev/v1alpha1
kind: Mesh
metadata:
  name: default
spec:
  mtls:
    workloadCertTtl: 1h
YAML

zone() { # name region ip
  local name=$1 region=$2 ip=$3
  ctl generate zone-token --zone "$name" 2>/dev/null >"$state/$name.token"
  start "zone-$name" "$bin/zone-cp" --zone "$name" --region "$region" --token-file "$state/$name.token" \
    --data-dir "$state/zone-$name" --proxy-addr "$ip:5678" --admin-addr "$ip:5680"
  wait_http "http://$ip:5680/ready"
}
workload() { # zone zone-ip service ip [outbound]
  local z=$1 zip=$2 svc=$3 ip=$4
  local tok=$state/$svc-$z.token
  [ -f "$tok" ] || ctl generate dataplane-token --zone "$z" --service "$svc" 2>/dev/null >"$tok"
  start "app-$svc-$ip" "$bin/demo-app" --listen "$ip:8080" --name "$svc" --zone "$z"
  start "sidecar-$svc-$ip" "$bin/dataplane" --cp-address "$zip:5678" --token-file "$tok" --service "$svc" \
    --address "$ip" --inbound "$ip:15006" --app "$ip:8080" --outbound "$ip:15001" --admin "$ip:15000"
  wait_http "http://$ip:15000/ready"
}

zone eu-west-1 eu-west 127.0.1.1
zone us-east-1 us-east 127.0.2.1
workload eu-west-1 127.0.1.1 api 127.0.1.11
workload eu-west-1 127.0.1.1 api 127.0.1.12
workload eu-west-1 127.0.1.1 web 127.0.1.10
workload us-east-1 127.0.2.1 api 127.0.2.11
workload us-east-1 127.0.2.1 web 127.0.2.10

# Demo traffic: web -> api in each zone, through both sidecars, over mTLS.
traffic() { # web-ip
  while true; do
    curl -s -H 'Host: api' "http://$1:15001/demo" >>"$state/logs/traffic-$1.log" 2>&1 || echo "request failed" >>"$state/logs/traffic-$1.log"
    sleep 0.5
  done
}
traffic 127.0.1.10 & pids+=($!)
traffic 127.0.2.10 & pids+=($!)

cat <<EOF

Tern is running: a global control plane and two zones on loopback.

  export TERN_CONFIG=$TERN_CONFIG
  $bin/ternctl inspect zones                 # zones, versions, proxies
  $bin/ternctl get meshes -o yaml
  $bin/ternctl get tokens
  curl -s -H 'Host: api' http://127.0.1.10:15001/hello   # web -> api in eu-west-1, over mTLS

Admin ports (/ready /metrics /config_dump):
  global       http://127.0.0.1:5681   (API needs the token in $state/global/admin-token)
  zone-cp eu   http://127.0.1.1:5680    zone-cp us   http://127.0.2.1:5680
  sidecars     http://127.0.1.10:15000 (web, eu)  http://127.0.1.11:15000 (api, eu)  http://127.0.2.10:15000 (web, us)

Demo traffic: tail -f $state/logs/traffic-127.0.1.10.log  (which api instance answered, and the caller's SPIFFE ID)
Logs: $state/logs        Ctrl-C stops everything.
EOF
wait
