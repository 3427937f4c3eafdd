#!/usr/bin/env bash
# Contender for ../shared/bench/pair.sh: a pair of Tern sidecars in
# standalone mode (static bootstrap files, no control plane).
#   load -> client sidecar 127.0.0.1:15001 (plain HTTP)
#        -> mTLS (TLS 1.3, SPIFFE IDs checked) -> server sidecar 127.0.0.1:15006
#        -> app 127.0.0.1:18080
# Each sidecar gets one worker thread, as Envoy does in that script.
# Usage: ../shared/bench/pair.sh tern=bench/tern-pair.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
: "${CERTS:?pair.sh sets CERTS}"
bin=${TERN_DATAPLANE:-$root/target/release/dataplane}
if [ ! -x "$bin" ]; then
  (cd "$root" && cargo build --release -q --bins)
fi
work=$(mktemp -d /tmp/tern-pair.XXXXXX)
# Sidecars refuse key files other users can read; keep private copies.
install -m 600 "$CERTS/server.key" "$work/server.key"
install -m 600 "$CERTS/client.key" "$work/client.key"
cat > "$work/server.yaml" <<YAML
identity: { cert: $CERTS/server.pem, key: $work/server.key, roots: $CERTS/ca.pem }
trustDomain: bench
inbound: { listen: 127.0.0.1:15006, app: 127.0.0.1:18080, protocol: http }
admin: 127.0.0.1:19106
YAML
cat > "$work/client.yaml" <<YAML
identity: { cert: $CERTS/client.pem, key: $work/client.key, roots: $CERTS/ca.pem }
trustDomain: bench
outbound:
  - { listen: 127.0.0.1:15001, service: server }
clusters:
  - service: server
    endpoints: [ { address: 127.0.0.1:15006, identity: "spiffe://bench/ns/default/sa/server" } ]
admin: 127.0.0.1:19101
YAML
export RUST_LOG=${RUST_LOG:-warn}
# No drain on SIGTERM: standalone sidecars have no control plane to leave,
# and the next contender needs the ports at once.
"$bin" --bootstrap "$work/server.yaml" --workers 1 --drain 0s &
"$bin" --bootstrap "$work/client.yaml" --workers 1 --drain 0s &
wait
