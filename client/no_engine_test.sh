#!/usr/bin/env bash
# Proves that a program that only calls the server carries no engine:
#   no_engine_test.sh FILE...
# Each FILE is a program or a static archive (.a). A program must need
# neither libdnnl, OpenMP (libgomp, libomp, libiomp5) nor Highway (libhwy)
# by ldd and readelf -d; no FILE may define or refer to a oneDNN, OpenMP,
# Highway or engine (attn::core::MultiHeadAttention, attn::core::kernels)
# symbol (nm).
# Exit 0 when clean, 1 naming what was found, 2 on usage errors.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 FILE..." >&2; exit 2; }
status=0
fail() { echo "FAIL: $*" >&2; status=1; }
flat() { tr -s ' \t\n' ' '; }

# Mangled names: dnnl::... is _ZN4dnnl, attn::core::MultiHeadAttention is
# ...4core18MultiHeadAttention, hwy:: is _ZN3hwy; C symbols dnnl_*, GOMP_*,
# omp_*, __kmpc_*.
symbols='(^| )(_ZN4dnnl|_ZNK4dnnl|_ZN3hwy|_ZNK3hwy|dnnl_|GOMP_|omp_|__kmpc_)|4core18MultiHeadAttention|4core7kernels'
for f in "$@"; do
  [ -e "$f" ] || { echo "no such file: $f" >&2; exit 2; }
  if [[ "$f" != *.a ]]; then
    libs=$(ldd "$f")
    found=$(grep -E 'libdnnl|libgomp|libomp|libiomp|libhwy' <<<"$libs" || true)
    [ -z "$found" ] || fail "ldd $f: $(flat <<<"$found")"
    found=$(readelf -d "$f" | grep NEEDED | grep -E 'dnnl|gomp|omp|hwy' || true)
    [ -z "$found" ] || fail "readelf -d $f: $(flat <<<"$found")"
  fi
  found=$(nm "$f" 2>/dev/null | grep -E "$symbols" | head -5 || true)
  [ -z "$found" ] || fail "nm $f: $(flat <<<"$found")"
done
[ "$status" -eq 0 ] && echo "ok: $# files carry no oneDNN, OpenMP, Highway or engine code"
exit "$status"
