#!/usr/bin/env bash
# Start a local Tern mesh on loopback, on the embedded store:
#   a global control plane; three zones in two regions, each with a zone
#   control plane, two east-west gateways (QUIC) and an `api` instance;
#   `web` in eu-west-1 calling `api` (local first, failover by locality) and
#   `billing`, which runs only in us-east-1 (always cross-region); `batch` in
#   eu-west-2 calling billing too; `ledger`, an opaque TCP service in
#   eu-west-2 and us-east-1, that web reaches on a TCP port of its own.
# It applies deploy/local/policies.yaml (an access rule on billing that only
# web passes, and a route that sends 20% of web's /split calls to api in
# us-east-1), prints who answered each call, and schedules a failover drill
# (docs/drills.md): a blackhole of api in eu-west-1, 50% then 100%, guarded
# by api's error rate; it prints the drill's events and, at the end, its
# report (and where to read it again).
# Everything lives under ./.tern-local; Ctrl-C stops it all.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
state=${TERN_LOCAL_DIR:-$root/.tern-local}
profile=${TERN_PROFILE:-release}

# Refuse to start over another mesh (or anything) on our addresses.
for a in 127.0.0.1:5681 127.0.0.1:5685 \
         127.0.1.1:5678 127.0.2.1:5678 127.0.3.1:5678 \
         127.0.1.5:15443 127.0.2.5:15443 127.0.3.5:15443 \
         127.0.1.6:15443 127.0.2.6:15443 127.0.3.6:15443 \
         127.0.1.10:15000 127.0.1.11:15000 127.0.2.10:15000 127.0.2.11:15000 127.0.3.11:15000 127.0.3.12:15000 \
         127.0.2.12:15000 127.0.3.13:15000 127.0.1.10:16000; do
  if (exec 3<>"/dev/tcp/${a%:*}/${a#*:}") 2>/dev/null; then
    echo "something already listens on $a; stop it (another local mesh?) and run again" >&2
    exit 1
  fi
done

echo "building Tern ($profile)..."
if [ "$profile" = release ]; then cargo build --release --bins -q; else cargo build --bins -q; fi
bin=$root/target/$profile

# Token files and keys live here: private to this user.
rm -rf "$state"; mkdir -p "$state/logs"; chmod 700 "$state"
pids=()
cleanup() {
  trap - EXIT INT TERM
  echo; echo "stopping the local mesh..."
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
# A signal exits (and the exit cleans up): a handler that only cleaned up
# would return to the traffic loop with the mesh gone (seen with `kill`).
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start() { # name, command...
  local name=$1; shift
  "$@" >"$state/logs/$name.log" 2>&1 &
  last=$!
  pids+=($last)
}
wait_http() { # url: ready, and served by the process we just started
  for _ in $(seq 1 200); do
    kill -0 "$last" 2>/dev/null || { echo "a process exited during startup; see $state/logs:" >&2; tail -n 3 "$state"/logs/*.log >&2; exit 1; }
    curl -sf -o /dev/null "$1" && return 0
    sleep 0.1
  done
  echo "timed out waiting for $1 (see $state/logs)" >&2; exit 1
}

export TERN_CONFIG=$state/global/ternctl.json
start global "$bin/global-cp" --data-dir "$state/global" --sync-addr 127.0.0.1:5685 --admin-addr 127.0.0.1:5681 --zone-offline-ttl 30s
wait_http http://127.0.0.1:5681/ready
ctl() { "$bin/ternctl" "$@"; }

cat <<YAML | ctl apply -f - >/dev/null
apiVersion: tern.dev/v1alpha1
kind: Mesh
metadata:
  name: default
spec:
  mtls:
    workloadCertTtl: 24h
YAML

zone() { # name region subnet
  local name=$1 region=$2 n=$3
  ctl generate zone-token --zone "$name" --file "$state/$name.token" 2>/dev/null
  start "zone-$name" "$bin/zone-cp" --zone "$name" --region "$region" --token-file "$state/$name.token" \
    --data-dir "$state/zone-$name" --proxy-addr "127.0.$n.1:5678" --admin-addr "127.0.$n.1:5680" --deregister-after 5s
  wait_http "http://127.0.$n.1:5680/ready"
  ctl generate gateway-token --zone "$name" --file "$state/$name-gw.token" 2>/dev/null
  # Two gateways per zone: losing one fails no cross-zone request.
  for h in 5 6; do
    start "gateway-$name-$h" "$bin/gateway" --cp-address "127.0.$n.1:5678" --token-file "$state/$name-gw.token" \
      --local "127.0.$n.$h:15443" --quic-bind "127.0.$n.$h:15444" --admin "127.0.$n.$h:15090"
  done
  wait_http "http://127.0.$n.5:15090/ready"
  wait_http "http://127.0.$n.6:15090/ready"
}
workload() { # zone subnet service host [sidecar flags...]
  local z=$1 n=$2 svc=$3 ip=127.0.$2.$4
  shift 4
  local tok=$state/$svc-$z.token
  [ -f "$tok" ] || ctl generate dataplane-token --zone "$z" --service "$svc" --file "$tok" 2>/dev/null
  local app=(--listen "$ip:8080" --name "$svc" --zone "$z")
  # An opaque TCP service: the app echoes, after a line naming itself.
  [ "${1:-}" = "--protocol" ] && [ "${2:-}" = tcp ] && app+=(--tcp-echo --greet)
  start "app-$svc-$ip" "$bin/demo-app" "${app[@]}"
  start "sidecar-$svc-$ip" "$bin/dataplane" --cp-address "127.0.$n.1:5678" --token-file "$tok" --service "$svc" \
    --address "$ip" --inbound "$ip:15006" --app "$ip:8080" --outbound "$ip:15001" --admin "$ip:15000" \
    --per-try-timeout 2s --health-interval 500ms "$@"
  wait_http "http://$ip:15000/ready"
}

zone eu-west-1 eu-west 1
zone eu-west-2 eu-west 2
zone us-east-1 us-east 3
workload eu-west-1 1 api 11
workload eu-west-2 2 api 11
workload us-east-1 3 api 11
workload us-east-1 3 billing 12
workload eu-west-2 2 ledger 12 --protocol tcp
workload us-east-1 3 ledger 13 --protocol tcp
workload eu-west-1 1 web 10 --outbound-port tcp:ledger=127.0.1.10:16000
workload eu-west-2 2 batch 10
ctl apply -f deploy/local/policies.yaml >/dev/null

# Wait until web sees api in all three zones.
for _ in $(seq 1 100); do
  n=$(curl -s http://127.0.1.10:15000/config_dump | grep -o '"zone":"[a-z0-9-]*"' | sort -u | wc -l)
  [ "$n" -ge 3 ] && break; sleep 0.2
done

# A Prometheus config for this topology (deploy/grafana/ has dashboards).
cat > "$state/prometheus.yml" <<EOF
# prometheus --config.file=$state/prometheus.yml --web.listen-address=127.0.0.1:9090
global: {scrape_interval: 5s, evaluation_interval: 5s}
scrape_configs:
  - {job_name: tern-global, static_configs: [{targets: ['127.0.0.1:5681']}]}
  - {job_name: tern-zone, static_configs: [{targets: ['127.0.1.1:5680', '127.0.2.1:5680', '127.0.3.1:5680']}]}
  - {job_name: tern-gateway, static_configs: [{targets: ['127.0.1.5:15090', '127.0.1.6:15090', '127.0.2.5:15090', '127.0.2.6:15090', '127.0.3.5:15090', '127.0.3.6:15090']}]}
  - {job_name: tern-sidecar, static_configs: [{targets: ['127.0.1.10:15000', '127.0.1.11:15000', '127.0.2.10:15000', '127.0.2.11:15000', '127.0.2.12:15000', '127.0.3.11:15000', '127.0.3.12:15000', '127.0.3.13:15000']}]}
EOF

cat <<EOF

Tern is running: a global control plane and three zones in two regions, on loopback.

  export TERN_CONFIG=$TERN_CONFIG
  $bin/ternctl inspect zones                  # zones, versions, proxies, services
  $bin/ternctl get zoneingresses -o yaml      # what each zone publishes: gateways, healthy services
  curl -s -H 'Host: api' http://127.0.1.10:15001/hello       # web -> api (local zone first)
  curl -s -H 'Host: billing' http://127.0.1.10:15001/hello   # web -> billing, only in us-east-1 (QUIC gateways)
  curl -s -H 'Host: billing' http://127.0.2.10:15001/hello   # batch -> billing: 403, AccessPolicy/billing-callers
  bash -c 'exec 3<>/dev/tcp/127.0.1.10/16000; head -1 <&3'   # web -> ledger, opaque TCP: "ledger ZONE"
  $bin/ternctl get accesspolicies; $bin/ternctl get httproutes   # from deploy/local/policies.yaml (docs/policies.md)
  $bin/ternctl inspect dataplane web-127.0.1.10-15006 --zone eu-west-1   # what applies to web, and its routes

Admin ports (/ready /metrics /config_dump):
  global          http://127.0.0.1:5681   (API needs the token in $state/global/admin-token)
  zone-cps        http://127.0.1.1:5680  http://127.0.2.1:5680  http://127.0.3.1:5680
  gateways        http://127.0.N.5:15090 and http://127.0.N.6:15090 for zone N = 1, 2, 3
  web's sidecar   http://127.0.1.10:15000/config_dump   (locality tiers, endpoint health)
Web console: http://127.0.0.1:5681/ui/  (sign in with the token in $state/global/admin-token)
Traffic figures (docs/observability.md):
  $bin/ternctl inspect services               # each service per zone: req/s, errors, p50/p99, instances
  $bin/ternctl inspect traffic -o wide        # zone-to-zone matrix and service edges
  $bin/ternctl inspect dataplanes             # every proxy: version, state, certificate expiry, sync
Drills (docs/drills.md):
  $bin/ternctl drill status                   # the running drill and recent runs
  $bin/ternctl drill report api-eu-west-1     # the demo drill's report (-o html for charts)
  $bin/ternctl drill abort api-eu-west-1      # stop it and restore at once
  Prometheus config: $state/prometheus.yml   Grafana dashboards: deploy/grafana/*.json
Logs: $state/logs        Ctrl-C stops everything.

Demo traffic; each line says which zone answered web's calls (HTTP, and
opaque TCP to ledger), what batch got from billing, and where ten of web's
calls to api's /split went:
EOF

zone_of() { sed -n 's/.*"zone":"\([a-z0-9-]*\)".*/\1/p'; }
call() { # service
  local out
  out=$(curl -s -m 5 -H "Host: $1" "http://127.0.1.10:15001/demo" 2>/dev/null) || out=""
  local z; z=$(printf '%s' "$out" | zone_of)
  printf '%s' "${z:-FAILED}"
}
batch_billing() { # a 403 names the rule that denied it
  local out
  out=$(curl -s -m 5 -H 'Host: billing' http://127.0.2.10:15001/demo 2>/dev/null) || out=""
  case "$out" in
    "access denied by "*) printf '403 (%s)' "${out#access denied by }" ;;
    *) printf '%s' "$(printf '%s' "$out" | zone_of)" ;;
  esac
}
ledger() { # an opaque TCP connection through web's sidecar; ledger greets with its zone
  local out
  out=$(timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.1.10/16000; head -1 <&3' 2>/dev/null) || out=""
  printf '%s' "${out#ledger }" | grep . || printf FAILED
}
split() { # ten calls to /split, counted by zone
  for _ in $(seq 1 10); do
    curl -s -m 5 -H 'Host: api' http://127.0.1.10:15001/split 2>/dev/null | zone_of; echo
  done | grep . | sort | uniq -c | awk '{printf "%s %s  ", $2, $1}'
}
# The drill: scheduled (cron, UTC) for the first minute at least 30 s away,
# so the report has a baseline of web's traffic before it.
at=$(( ($(date +%s) + 90) / 60 * 60 ))
cron="$(date -u -d "@$at" '+%-M %-H %-d %-m') *"
cat <<YAML | ctl apply -f - >/dev/null
apiVersion: tern.dev/v1alpha1
kind: Drill
metadata:
  name: api-eu-west-1
spec:
  target: {zone: eu-west-1, services: [api]}
  method: blackhole
  stages:
    - {percent: 50, hold: 15s}
    - {percent: 100, hold: 20s}
  guard:
    for: 5s
    slos: [{service: api, maxErrorRate: 1, maxP99: 500ms}]
  observe: {before: 60s, after: 20s}
  schedule: {cron: "$cron", timeZone: UTC}
YAML
echo ">>> drill api-eu-west-1 (blackhole of api in eu-west-1) is scheduled for $(date -d "@$at" +%T) (cron \"$cron\" UTC)"

drill_json() { ctl drill report api-eu-west-1 -o json 2>/dev/null || true; }
events_shown=0; reported=""
drill_events() { # print new events of the drill's run; the report once it is done
  local j n
  j=$(drill_json); [ -n "$j" ] || return 0
  n=$(printf '%s' "$j" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["events"]))')
  if [ "$n" -gt "$events_shown" ]; then
    printf '%s' "$j" | python3 -c '
import json, sys
r = json.load(sys.stdin)
for e in r["events"][int(sys.argv[1]):]:
    print(">>> drill: %s %s" % (e["event"], e.get("detail", "")))' "$events_shown"
    events_shown=$n
  fi
  if [ -z "$reported" ] && printf '%s' "$j" | grep -q '"state": *"done"'; then
    reported=1
    echo; ctl drill report api-eu-west-1; echo
    echo ">>> the report again: $bin/ternctl drill report api-eu-west-1 [-o json|html]"
    echo ">>> in the console: http://127.0.0.1:5681/ui/#/drills"
    echo
  fi
}

while true; do
  a=$(call api); b=$(call billing); d=$(batch_billing); l=$(ledger)
  printf '%s  web -> api: %-10s  web -> billing: %-10s  web -> ledger (tcp): %-10s  batch -> billing: %s  web -> api/split x10: %s\n' \
    "$(date +%T)" "$a" "$b" "$l" "$d" "$(split)"
  drill_events
  sleep 1
done
