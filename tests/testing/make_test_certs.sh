#!/usr/bin/env bash
# Makes throwaway certificates for the TLS tests, with openssl, into DIR
# (never committed: every test run makes its own).
# Usage: tests/testing/make_test_certs.sh DIR [PREFIX]
#   DIR/PREFIXca.pem  DIR/PREFIXca.key          a CA
#   DIR/PREFIXserver.pem DIR/PREFIXserver.key   signed by it, for localhost,
#                                              127.0.0.1, ::1 and attention-server
#   DIR/PREFIXclient.pem DIR/PREFIXclient.key   a client certificate signed by it
# PREFIX (default empty) lets one DIR hold several independent CAs, e.g.
# "other-" for a second CA whose certificates the first must refuse.
# Keys are EC P-256 (fast to make); certificates are valid for 2 days.
set -euo pipefail
dir=${1:?usage: make_test_certs.sh DIR [PREFIX]}
p=${2:-}
mkdir -p "$dir"
cd "$dir"
umask 077
ossl() { openssl "$@" 2>/dev/null; }
ossl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj "/CN=${p}attention-test-ca" -keyout "${p}ca.key" -out "${p}ca.pem" \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
make_leaf() {  # name cn ext
  local name=$1 cn=$2 ext=$3
  ossl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$cn" \
    -keyout "${p}${name}.key" -out "${p}${name}.csr"
  printf '%s\n' "$ext" >"${p}${name}.ext"
  ossl x509 -req -in "${p}${name}.csr" -CA "${p}ca.pem" -CAkey "${p}ca.key" -CAcreateserial \
    -days 2 -extfile "${p}${name}.ext" -out "${p}${name}.pem"
  rm -f "${p}${name}.csr" "${p}${name}.ext"
}
make_leaf server "${p}attention-server" \
  "subjectAltName=DNS:localhost,DNS:attention-server,IP:127.0.0.1,IP:::1
extendedKeyUsage=serverAuth"
make_leaf client "${p}attention-client" "extendedKeyUsage=clientAuth"
rm -f "${p}ca.srl"
chmod 644 ./*.pem
