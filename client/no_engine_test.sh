#!/usr/bin/env bash
# Proves that a program that only calls the server carries no engine:
#   no_engine_test.sh ATTENTION_CLI ARCHIVE...
# ATTENTION_CLI must need neither libdnnl nor libgomp (ldd and readelf -d),
# and neither it nor any ARCHIVE (the client, wire and base libraries) may
# define or refer to a oneDNN, OpenMP or engine (MultiHeadAttention,
# attn::core::kernels) symbol. Exit 0 when clean, 1 naming what was found.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 ATTENTION_CLI ARCHIVE..." >&2; exit 2; }
cli=$1
shift
status=0
fail() { echo "FAIL: $*" >&2; status=1; }

libs=$(ldd "$cli")
if grep -qE 'libdnnl|libgomp|libomp|libiomp' <<<"$libs"; then
  fail "ldd $cli: $(grep -E 'libdnnl|libgomp|libomp|libiomp' <<<"$libs" | tr -s ' \t' ' ')"
fi
needed=$(readelf -d "$cli" | grep NEEDED || true)
if grep -qE 'dnnl|gomp|omp' <<<"$needed"; then
  fail "readelf -d $cli: $(grep -E 'dnnl|gomp|omp' <<<"$needed" | tr -s ' \t' ' ')"
fi
# Mangled names: dnnl::... is _ZN4dnnl, attn::core::MultiHeadAttention is
# ...4core18MultiHeadAttention; C symbols dnnl_* and GOMP_*/omp_*.
pattern='(^| )(_ZN4dnnl|_ZNK4dnnl|dnnl_|GOMP_|omp_|__kmpc_)|4core18MultiHeadAttention|4core7kernels'
for f in "$cli" "$@"; do
  found=$(nm "$f" 2>/dev/null | grep -E "$pattern" | head -5 || true)
  [ -z "$found" ] || fail "nm $f: $(tr '\n' ' ' <<<"$found")"
done
[ "$status" -eq 0 ] && echo "ok: $cli and $# libraries carry no oneDNN, OpenMP or engine code"
exit "$status"
