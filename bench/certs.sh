#!/usr/bin/env bash
# Certificates for the benchmarks, made with openssl: a CA; a client and a
# server certificate with SPIFFE URI SANs spiffe://bench/ns/default/sa/NAME
# (the Envoy chain in bench/crosszone.sh; Tern issues its own there); and,
# in Tern's layout, a zone CA (spiffe://bench/zone/bench, path length 0)
# with tern-client.pem and tern-server.pem chains for
# spiffe://bench/zone/bench/svc/NAME (bench/pair-policy.sh, where access
# rules match callers by service and zone).
# Usage: bench/certs.sh OUTDIR   (does nothing when OUTDIR already has them)
set -euo pipefail
dir=${1:?usage: bench/certs.sh OUTDIR}
mkdir -p "$dir"; chmod 700 "$dir"; cd "$dir"
[ -s ca.pem ] && [ -s client.pem ] && [ -s server.pem ] && [ -s tern-server.pem ] && exit 0
umask 077
ec() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
ec ca.key
openssl req -new -x509 -key ca.key -out ca.pem -days 7 -subj "/CN=tern-bench-ca" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" 2>/dev/null
for who in client server; do
  ec "$who.key"
  openssl req -new -key "$who.key" -out "$who.csr" -subj "/CN=$who" 2>/dev/null
  cat > "$who.ext" <<EXT
subjectAltName = URI:spiffe://bench/ns/default/sa/$who, DNS:localhost
extendedKeyUsage = serverAuth, clientAuth
keyUsage = critical, digitalSignature
EXT
  openssl x509 -req -in "$who.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
    -out "$who.pem" -days 7 -extfile "$who.ext" 2>/dev/null
  rm -f "$who.csr" "$who.ext"
done
chmod 644 ca.pem client.pem server.pem
# Tern's layout: root -> zone CA -> workloads.
ec zone.key
openssl req -new -key zone.key -out zone.csr -subj "/CN=zone-bench" 2>/dev/null
cat > zone.ext <<EXT
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign
subjectAltName = URI:spiffe://bench/zone/bench
EXT
openssl x509 -req -in zone.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out zone.pem -days 7 -extfile zone.ext 2>/dev/null
for who in client server; do
  ec "tern-$who.key"
  openssl req -new -key "tern-$who.key" -out "tern-$who.csr" -subj "/CN=$who" 2>/dev/null
  cat > "tern-$who.ext" <<EXT
subjectAltName = URI:spiffe://bench/zone/bench/svc/$who
extendedKeyUsage = serverAuth, clientAuth
keyUsage = critical, digitalSignature
EXT
  openssl x509 -req -in "tern-$who.csr" -CA zone.pem -CAkey zone.key -CAcreateserial \
    -out "tern-$who.leaf.pem" -days 7 -extfile "tern-$who.ext" 2>/dev/null
  cat "tern-$who.leaf.pem" zone.pem > "tern-$who.pem"
  rm -f "tern-$who.csr" "tern-$who.ext" "tern-$who.leaf.pem"
done
rm -f zone.csr zone.ext
chmod 644 ca.pem client.pem server.pem zone.pem tern-client.pem tern-server.pem
