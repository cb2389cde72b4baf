#!/usr/bin/env bash
# Cross-builds the core (attn_core, core/batching) and its tests for aarch64
# with Debian's g++-aarch64-linux-gnu and runs the tests under
# qemu-aarch64-static. Ends with CTest's summary line for each emulated CPU and
# "arm: N passed, N failed"; exits non-zero on any failure or when a time bound
# is hit.
#
# Usage: tests/arm/run.sh [BUILD_ROOT]      (default: build-arm/ at the top)
#
# The arm64 packages come from Debian's archive through a private apt state in
# BUILD_ROOT/apt (the host's dpkg architectures and apt lists stay untouched;
# apt checks the archive's signatures as usual), cached in BUILD_ROOT/debs and
# unpacked into BUILD_ROOT/sysroot. A rerun downloads nothing it already has
# and builds incrementally. The host needs g++-aarch64-linux-gnu and
# qemu-user-static (deploy/install-deps.sh).
#
# Environment:
#   ATTN_ARM_TIME_LIMIT  seconds for the whole script (default 1500)
#   ATTN_ARM_TEST_TIMEOUT  seconds per test (default 300)
#   ATTN_ARM_CPUS        the CPUs qemu emulates, one test pass each (default
#                        "max neoverse-n1": max has NEON, SVE and SVE2 (512-bit
#                        vectors); Neoverse N1, the core of Graviton2 and Ampere
#                        Altra, has NEON only)
set -euo pipefail
cd "$(dirname "$0")/../.."
src=$PWD
root=$(realpath -m "${1:-build-arm}")
limit=${ATTN_ARM_TIME_LIMIT:-1500}
test_timeout=${ATTN_ARM_TEST_TIMEOUT:-300}
read -r -a cpus <<< "${ATTN_ARM_CPUS:-max neoverse-n1}"
[ ${#cpus[@]} -gt 0 ] || { echo "arm: ATTN_ARM_CPUS is empty" >&2; exit 2; }
export QEMU_CPU=${cpus[0]}  # for test discovery and the checks below

# The whole script runs under one time bound.
# timeout signals its whole process group: the build, ctest and every qemu.
if [ -z "${ATTN_ARM_BOUNDED:-}" ]; then
  rc=0
  ATTN_ARM_BOUNDED=1 timeout --kill-after=30 "$limit" "$0" "$@" || rc=$?
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "arm: FAILED: over the time limit of ${limit} s" >&2
  fi
  exit "$rc"
fi
start=$(date +%s)
say() { echo "arm: [$(( $(date +%s) - start )) s] $*"; }
die() { echo "arm: FAILED: $*" >&2; exit 1; }

if [ "$(uname -m)" = aarch64 ]; then
  echo "arm: this host is aarch64: the release preset's tests run natively here, nothing to cross-build"
  exit 0
fi
for tool in aarch64-linux-gnu-g++ qemu-aarch64-static cmake ninja dpkg-deb file; do
  command -v "$tool" >/dev/null || die "$tool not found (deploy/install-deps.sh installs it)"
done

# --- arm64 packages: what the core links and its tests run with. ----------
# The cross toolchain brings libc, libstdc++, libgcc and libgomp
# (/usr/aarch64-linux-gnu); these bring the rest. nlohmann-json is
# architecture-independent.
packages=(libdnnl-dev libdnnl2 libabsl-dev libabsl20220623 libhwy-dev libhwy1
          libgtest-dev libgmock-dev nlohmann-json3-dev)
apt_dir=$root/apt debs=$root/debs sysroot=$root/sysroot
apt_opts=(
  -o APT::Architecture=arm64 -o APT::Architectures::=arm64
  -o Dir::State="$apt_dir" -o Dir::State::status="$apt_dir/status"
  -o Dir::Cache="$apt_dir/cache"
  -o Dir::Etc::SourceList="$apt_dir/sources.list" -o Dir::Etc::SourceParts="$apt_dir/sources.list.d"
  -o Dir::Etc::Preferences="$apt_dir/preferences" -o Dir::Etc::PreferencesParts="$apt_dir/preferences.d"
  -o Debug::NoLocking=1 -o APT::Sandbox::User=root -qq
)
missing=()
for p in "${packages[@]}"; do
  compgen -G "$debs/${p}_*_arm64.deb" >/dev/null || compgen -G "$debs/${p}_*_all.deb" >/dev/null ||
    missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "downloading arm64 packages: ${missing[*]}"
  mkdir -p "$apt_dir"/{lists/partial,cache/archives/partial,sources.list.d,preferences.d} "$debs"
  : > "$apt_dir/status"; : > "$apt_dir/sources.list"; : > "$apt_dir/preferences"
  # The host's Debian sources (not its other repositories), read for arm64
  # alone (APT::Architectures above).
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    sed '/^Architectures:/d' /etc/apt/sources.list.d/debian.sources \
      > "$apt_dir/sources.list.d/debian.sources"
  fi
  if [ -f /etc/apt/sources.list ]; then
    sed -E 's/\[arch=[^] ]*\] *//; s/arch=[^] ]* *//' /etc/apt/sources.list > "$apt_dir/sources.list"
  fi
  apt-get "${apt_opts[@]}" update
  (cd "$debs" && apt-get "${apt_opts[@]}" download "${missing[@]}")
fi
# Unpack afresh whenever the set of .debs changed.
deb_list=$(cd "$debs" && ls -1 ./*.deb | sort)
if [ "$(cat "$sysroot/.debs" 2>/dev/null)" != "$deb_list" ]; then
  say "unpacking $(echo "$deb_list" | wc -l) packages into $sysroot"
  rm -rf "$sysroot" && mkdir -p "$sysroot"
  for d in "$debs"/*.deb; do dpkg-deb -x "$d" "$sysroot"; done
  echo "$deb_list" > "$sysroot/.debs"
fi

# --- Configure and build. ---------------------------------------------------
build=$root/build
say "configuring $build (core only, aarch64)"
cmake -S "$src" -B "$build" -G Ninja --log-level=WARNING \
  -DCMAKE_TOOLCHAIN_FILE="$src/tests/arm/aarch64-linux-gnu.cmake" \
  -DATTN_ARM_SYSROOT="$sysroot" -DATTN_CORE_ONLY=ON -DCMAKE_BUILD_TYPE=Release ||
  die "cmake could not configure the cross build"
# Every package must have come from the sysroot, none from the host.
for pkg in absl dnnl GTest hwy nlohmann_json; do
  dir=$(sed -n "s/^${pkg}_DIR:PATH=//p" "$build/CMakeCache.txt")
  case "$dir" in
    "$sysroot"/*) ;;
    *) die "${pkg}_DIR is '$dir', not in the arm64 sysroot" ;;
  esac
done
say "building (-j2)"
cmake --build "$build" -j2 || die "the cross build failed"

# --- The binaries are aarch64 and load arm64 libraries only. ---------------
mapfile -t tests < <(find "$build/bin" -maxdepth 1 -type f -name '*_test' | sort)
[ ${#tests[@]} -gt 0 ] || die "no test binaries in $build/bin"
libdir=$sysroot/usr/lib/aarch64-linux-gnu
for t in "${tests[@]}"; do
  file -b "$t" | grep -q 'ARM aarch64' || die "$t is not an aarch64 binary: $(file -b "$t")"
done
# The guest's loader lists where each library resolves. With -L, /lib is the
# cross toolchain's /usr/aarch64-linux-gnu/lib.
libs_of() {
  qemu-aarch64-static -L /usr/aarch64-linux-gnu -E LD_LIBRARY_PATH="$libdir" \
    /usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1 --list "$1"
}
for t in "${tests[@]}"; do
  loaded=$(libs_of "$t") || die "$t: the loader failed"
  if echo "$loaded" | grep 'not found'; then die "$t: a library is missing"; fi
  echo "$loaded" | grep '=>' | grep -vE "=> ($libdir/|/lib/|/usr/aarch64-linux-gnu/lib/)" &&
    die "$t: a library resolved outside the sysroot and the cross toolchain"
done
mha_test=$build/bin/multi_head_attention_test
loaded=$(libs_of "$mha_test")
echo "$loaded" | sed 's/^/arm:   /'
for lib in libdnnl.so libgomp.so libabsl_; do
  echo "$loaded" | grep -q "$lib" || die "$mha_test does not load $lib"
done
say "${#tests[@]} test binaries, all aarch64; libraries from the sysroot and /usr/aarch64-linux-gnu"

# --- Run the tests under qemu (CMAKE_CROSSCOMPILING_EMULATOR). -------------
# qemu reads QEMU_CPU from the environment ctest passes on.
summary=() failed=0 passed_all=0 failed_all=0
for cpu in "${cpus[@]}"; do
  say "ctest under qemu-aarch64-static, QEMU_CPU=$cpu ($test_timeout s per test)"
  rc=0
  QEMU_CPU=$cpu ctest --test-dir "$build" -j2 --timeout "$test_timeout" --output-on-failure \
    --no-tests=error --output-log "$root/ctest-$cpu.log" || rc=$?
  summary+=("QEMU_CPU=$cpu: $(grep -E 'tests passed, .* tests failed out of' "$root/ctest-$cpu.log" ||
                              echo "ctest exited $rc")")
  [ "$rc" -eq 0 ] || failed=1
  if counts=$(sed -nE 's/.*tests passed, ([0-9]+) tests failed out of ([0-9]+).*/\1 \2/p' \
                "$root/ctest-$cpu.log") && [ -n "$counts" ]; then
    read -r nfail ntotal <<< "$counts"
    passed_all=$((passed_all + ntotal - nfail)) failed_all=$((failed_all + nfail))
  else
    failed=1
  fi
done
say "done"
for line in "${summary[@]}"; do echo "arm: $line"; done
echo "arm: $passed_all passed, $failed_all failed"
if [ "$failed" -ne 0 ]; then die "tests failed under qemu (logs: $root/ctest-*.log)"; fi
