#!/usr/bin/env bash
# Regenerates dataplane/link-order.txt: the sidecar's functions that run,
# hottest first, which release builds place next to each other
# (dataplane/build.rs says why). Run it after large changes to the request
# path; a stale list only loosens the packing (renamed functions fall to the
# end), it never breaks a build.
#
# Workload: the sidecar pair of bench/pair-policy.sh (client and server in
# standalone mode, 1 KiB nginx app), once with access logs and tracing on
# and once with every traffic policy on; HTTP/1.1 and HTTP/2 requests, and a
# request the policies refuse, then a trickle for 15 s; then three sidecars
# of one zone under a real global and zone-cp (HTTP, HTTP/2 and opaque TCP,
# new connections and kept-alive ones). Each sidecar runs under valgrind's callgrind,
# which records every function executed (start-up included); with `perf`
# installed, a second pass samples the same load at full speed, so the
# CPU-specific variants (AES, SHA) the real machine picks come first.
# Usage: bench/link-order.sh      (installs valgrind if missing; about two minutes)
#        CHECK=1 bench/link-order.sh   (how much of the list the build still has)
set -uo pipefail
umask 077
root=$(cd "$(dirname "$0")/.." && pwd)
work=${BENCH_WORK:-/tmp/tern-bench}; mkdir -p "$work"
need() { command -v "$1" >/dev/null 2>&1; }
# CHECK=1: only say how much of the list the current release build still has.
if [ "${CHECK:-0}" = 1 ]; then
  (cd "$root" && cargo build --release -q --bins) || exit 1
  nm "$root/target/release/dataplane" | awk '{print $NF}' | sort -u > "$work/syms.txt"
  total=$(wc -l < "$root/dataplane/link-order.txt")
  have=$(sort -u "$root/dataplane/link-order.txt" | comm -12 - "$work/syms.txt" | wc -l)
  echo "$have of $total listed functions are in target/release/dataplane"
  # Below nine in ten, the packing has loosened: regenerate the list.
  [ $((have * 10)) -ge $((total * 9)) ]; exit
fi
need valgrind || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
need oha || cargo install oha --locked -q
# Every binary, as the benchmarks and deploy/local/up.sh build them (one
# feature set for all, so the symbol names match the binary users run).
(cd "$root" && cargo build --release -q --bins) || exit 1
SETUP_ONLY=1 BENCH_WORK="$work" "$root/bench/pair-policy.sh" || exit 1
bin=$root/target/release/dataplane
cfg=$work/pair-policy/cfg
out=$work/link-order; rm -rf "$out"; mkdir -p "$out/logs/server" "$out/logs/client"

nginx -c "$root/bench/nginx-app.conf" -e /dev/null & ngpid=$!
python3 "$root/bench/otlp-sink.py" & sinkpid=$!
pg=""; cps=()
cleanup() { [ -n "$pg" ] && kill -- -"$pg" 2>/dev/null; kill $ngpid $sinkpid "${cps[@]}" 2>/dev/null; wait 2>/dev/null; }
trap cleanup EXIT
wait_ok() { for _ in $(seq 1 300); do curl -sf -o /dev/null "$1" && return 0; sleep 0.2; done; echo "timeout: $1" >&2; exit 1; }
# cg NAME: the callgrind command line a sidecar runs under.
cg() { echo valgrind --tool=callgrind --demangle=no "--callgrind-out-file=$out/callgrind-$1.%p"; }

load() {
  wait_ok http://127.0.0.1:15001/
  oha --no-tui -n "$1" -c 16 http://127.0.0.1:15001/ >/dev/null
  oha --no-tui -n "$(( $1 / 4 ))" -c 4 --http2 http://127.0.0.1:15001/ >/dev/null
  curl -s -o /dev/null -X POST http://127.0.0.1:15001/
  # A trickle long enough for the periodic work (span export, log flush,
  # health checks, idle-connection sweeps) to run too.
  for _ in $(seq 1 "${2:-0}"); do curl -s -o /dev/null http://127.0.0.1:15001/; sleep 0.5; done
}
# run <name> <suffix> <wrapper...>: the pair with configs server$suffix and client$suffix.
run() {
  local name=$1 suffix=$2; shift 2
  setsid bash -c "RUST_LOG=warn $* $(printf '%q' "$bin") --bootstrap $cfg/server$suffix.yaml --workers 1 --drain 0s --access-log-dir $out/logs/server & \
    RUST_LOG=warn $* $(printf '%q' "$bin") --bootstrap $cfg/client$suffix.yaml --workers 1 --drain 0s --access-log-dir $out/logs/client & wait" \
    >"$out/$name.log" 2>&1 & pg=$!
}
stop() { kill -TERM -- -"$pg" 2>/dev/null; wait "$pg" 2>/dev/null; pg=""
  for _ in $(seq 1 100); do ss -ltn | grep -qE '127\.0\.0\.1:(15001|15006) ' || break; sleep 0.1; done; }

for suffix in -observed -policy; do
  run "cg$suffix" "$suffix" $(cg "pair$suffix")
  load 1000 30; stop
  if need perf; then
    run "perf$suffix" "$suffix"
    wait_ok http://127.0.0.1:15001/
    pids=$(pgrep -f -- "--bootstrap $cfg/(server|client)$suffix.yaml" | paste -sd,)
    perf record -q -F 2000 -p "$pids" -o "$out/perf$suffix.data" -- sleep 6 >/dev/null 2>&1 & perfpid=$!
    sleep 0.5; load 20000; wait $perfpid; stop
    perf report -i "$out/perf$suffix.data" --no-demangle --no-children --sort sym --stdio -q 2>/dev/null > "$out/perf$suffix.txt"
  fi
done

# The same binary as a zone's sidecars: a global, a zone-cp, an HTTP and an
# opaque TCP service and their caller, joined by tokens (start-up, the sync
# stream, certificate requests, config from the zone-cp), on 127.0.7.x.
rel=$root/target/release
"$rel/global-cp" --data-dir "$out/global" --sync-addr 127.0.7.1:5685 --admin-addr 127.0.7.1:5681 >"$out/global.log" 2>&1 & cps+=($!)
wait_ok http://127.0.7.1:5681/ready
export TERN_CONFIG=$out/global/ternctl.json
"$rel/ternctl" generate zone-token --zone zone-a > "$out/a.token"
"$rel/zone-cp" --zone zone-a --region r1 --token-file "$out/a.token" --data-dir "$out/za" --proxy-addr 127.0.7.2:5678 --admin-addr 127.0.7.2:5680 >"$out/zone.log" 2>&1 & cps+=($!)
wait_ok http://127.0.7.2:5680/ready
for svc in api api-tcp client; do "$rel/ternctl" generate dataplane-token --zone zone-a --service $svc > "$out/$svc.token"; done
common="--cp-address 127.0.7.2:5678 --workers 1 --drain 0s"
setsid bash -c "RUST_LOG=warn $(cg cp-api) $bin $common --token-file $out/api.token --service api --address 127.0.7.11 --inbound 127.0.7.11:15006 --app 127.0.0.1:18080 --outbound '' --admin 127.0.7.11:15000 & \
  RUST_LOG=warn $(cg cp-tcp) $bin $common --token-file $out/api-tcp.token --service api-tcp --protocol tcp --address 127.0.7.12 --inbound 127.0.7.12:15006 --app 127.0.0.1:18080 --outbound '' --admin 127.0.7.12:15000 & \
  RUST_LOG=warn $(cg cp-client) $bin $common --token-file $out/client.token --service client --address 127.0.7.10 --outbound '' --outbound-port api=127.0.7.10:16001 --outbound-port tcp:api-tcp=127.0.7.10:16002 --admin 127.0.7.10:15000 & wait" \
  >"$out/cp-sidecars.log" 2>&1 & pg=$!
wait_ok http://127.0.7.10:16001/; wait_ok http://127.0.7.10:16002/
oha --no-tui -n 500 -c 8 http://127.0.7.10:16001/ >/dev/null
oha --no-tui -n 100 -c 4 --http2 http://127.0.7.10:16001/ >/dev/null
oha --no-tui -n 200 -c 4 --disable-keepalive http://127.0.7.10:16002/ >/dev/null
for _ in $(seq 1 30); do curl -s -o /dev/null http://127.0.7.10:16001/; sleep 0.5; done
kill -TERM -- -"$pg" 2>/dev/null; wait "$pg" 2>/dev/null; pg=""
kill "${cps[@]}" 2>/dev/null; wait "${cps[@]}" 2>/dev/null

python3 - "$bin" "$root/dataplane/link-order.txt" "$out" <<'PY'
import collections, glob, re, subprocess, sys
binary, dest, out = sys.argv[1:4]
sizes = {}
for l in subprocess.run(["nm", "-S", binary], capture_output=True, text=True).stdout.splitlines():
    p = l.split()
    if len(p) == 4 and p[2] in "tT":
        sizes[p[3]] = int(p[1], 16)
# perf: hottest on the real CPU (the report keeps the symbols' raw names).
hot = collections.Counter()
for f in glob.glob(f"{out}/perf-*.txt"):
    for l in open(f):
        m = re.match(r"\s*([\d.]+)%\s+\[\.\]\s+(.*\S)", l)
        if m:
            hot[m.group(2)] += float(m.group(1))
# callgrind: every function executed, by self cost.
cost = collections.Counter()
for path in glob.glob(f"{out}/callgrind-*"):
    names, objs = {}, {}
    ob = fn = None; in_call = False
    def resolve(table, v):
        m = re.match(r"\((\d+)\)(?: (.*))?", v)
        if not m:
            return v
        if m.group(2):
            table[m.group(1)] = m.group(2)
        return table.get(m.group(1))
    for line in open(path, errors="replace"):
        line = line.rstrip("\n")
        if line.startswith("ob="): ob = resolve(objs, line[3:])
        elif line.startswith("cob="): resolve(objs, line[4:])
        elif line.startswith("fn="): fn = resolve(names, line[3:]); in_call = False
        elif line.startswith("cfn="): resolve(names, line[4:])
        elif line.startswith("calls="): in_call = True
        elif line[:1].isdigit() or line[:1] in "+-*":
            if in_call:
                in_call = False
                continue
            parts = line.split()
            if len(parts) >= 2 and ob == binary and fn:
                try:
                    cost[fn] += int(parts[1])
                except ValueError:
                    pass
order, seen = [], set()
for name, _ in hot.most_common() + sorted(cost.items(), key=lambda kv: -kv[1]):
    if name in sizes and name not in seen:
        seen.add(name); order.append(name)
open(dest, "w").write("".join(n + "\n" for n in order))
print(f"{len(order)} functions, {sum(sizes[n] for n in order)} bytes of {sum(sizes.values())} "
      f"({len(hot)} sampled hot, {len(cost)} executed) -> {dest}")
PY
