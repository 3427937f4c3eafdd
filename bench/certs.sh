#!/usr/bin/env bash
# Certificates for the Envoy chain in bench/crosszone.sh (Tern issues its own
# through its control planes): a CA and a client and a server certificate,
# each with a SPIFFE URI SAN under spiffe://bench/, made with openssl.
# Usage: bench/certs.sh OUTDIR   (does nothing when OUTDIR already has them)
set -euo pipefail
dir=${1:?usage: bench/certs.sh OUTDIR}
mkdir -p "$dir"; chmod 700 "$dir"; cd "$dir"
[ -s ca.pem ] && [ -s client.pem ] && [ -s server.pem ] && exit 0
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
