#!/usr/bin/env bash
# Installs everything attention-server needs to build and test, from Debian's
# package archive only. Idempotent: packages already present are skipped.
# Usage: deploy/install-deps.sh   (as root, or with sudo available)
set -euo pipefail

build_packages=(
  build-essential cmake ninja-build pkg-config git ca-certificates curl
  clang clang-format libclang-rt-14-dev
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libdnnl-dev ocl-icd-opencl-dev libabsl-dev prometheus-cpp-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev libbenchmark-dev libhwy-dev
  python3-grpcio python3-numpy python3-yaml prometheus nginx-light
  podman buildah debootstrap docker-compose uidmap
)
# The aarch64 cross compiler and qemu for tests/arm/run.sh, on hosts that are
# not arm64 themselves (Debian's arm64 archive has no aarch64 cross compiler;
# there the build is native).
if [ "$(dpkg --print-architecture)" != arm64 ]; then
  build_packages+=(g++-aarch64-linux-gnu qemu-user-static)
fi
# kubectl for the k8s render test, unless one is installed (Debian's
# kubernetes-client conflicts with other kubectl packages).
if ! command -v kubectl >/dev/null 2>&1; then
  build_packages+=(kubernetes-client)
fi
# Node.js for the Node client's test, unless a node is already installed.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  build_packages+=(nodejs npm)
fi

missing=()
for p in "${build_packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#build_packages[@]} packages present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Packages with daemons (nginx, prometheus) must not start them: the tests
# run their own on loopback. A policy-rc.d that says no, for this install only.
policy=/usr/sbin/policy-rc.d
added_policy=""
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
  $SUDO chmod +x "$policy"
  added_policy=1
fi
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
[ -z "$added_policy" ] || $SUDO rm -f "$policy"
echo "install-deps: done"
