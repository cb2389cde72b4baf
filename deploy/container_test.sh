#!/usr/bin/env bash
# Proves the Dockerfile without a Docker engine or registry: builds it unchanged with podman
# (chroot isolation), then runs the image's entrypoint with buildah as the image's non-root user,
# on the host's network, and drives it from the host with the host-built attention-cli and curl:
#   1. an empty /models mount: the built-in model "default" (health, attend, /metrics, the image's
#      own HEALTHCHECK command run inside the container, SIGTERM -> exit 0);
#   2. a /models mount holding one model: the entrypoint adds --model_repository=/models;
#   3. TLS and tokens: throwaway certificates (tests/testing/make_test_certs.sh) and a token
#      file mounted at /run/secrets; attend with the CA and the token works, without the token
#      it is UNAUTHENTICATED; the HEALTHCHECK passes on the plaintext --health_listen port.
# When the Debian base images are not in local storage (Docker Hub is out of reach), they are made
# with debootstrap from Debian's archive and imported under the names the Dockerfile uses.
# Re-runs reuse the base images and podman's layer cache. Needs root, podman, buildah, debootstrap,
# curl and python3.
#
# Usage: deploy/container_test.sh [BIN_DIR]      (BIN_DIR: host binaries, default build/bin)
# Environment: ATTN_IMAGE (tag to build, default localhost/attention-server:test).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
BIN=$(cd "${1:-$top/build/bin}" && pwd)
IMAGE=${ATTN_IMAGE:-localhost/attention-server:test}
BASE=docker.io/library/debian:bookworm        # the Dockerfile's build stage
SLIM=docker.io/library/debian:bookworm-slim   # the Dockerfile's runtime stage
RUN_USER=10001:10001                          # the Dockerfile's USER
export BUILDAH_ISOLATION=chroot               # podman run cannot start containers here

start=$(date +%s)
step() { echo "=== $* ($(( $(date +%s) - start )) s)"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/var/tmp}/attn-container-test.XXXXXX")
chmod 755 "$work"   # the container's non-root user reads the models mounted from here
ctr=""
run_pid=""
server_pid=""
cleanup() {
  set +e
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid"; sleep 2; kill -KILL "$server_pid" 2>/dev/null
  fi
  if [ -n "$run_pid" ] && kill -0 "$run_pid" 2>/dev/null; then
    kill -TERM "$run_pid"; wait "$run_pid" 2>/dev/null
  fi
  [ -n "$ctr" ] && buildah rm "$ctr" >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for tool in podman buildah curl python3; do
  command -v "$tool" >/dev/null || fail "$tool is not installed"
done
[ -x "$BIN/attention-cli" ] || fail "no $BIN/attention-cli (build the host binaries first)"

# --- Base images: debootstrap when they are not in local storage. ------------------------------
# Like Debian's official images: minbase, apt lists and .debs removed, deb822 sources for
# bookworm, -updates and -security; the slim one also keeps no docs, man pages or locales.
make_base_images() {
  command -v debootstrap >/dev/null || fail "debootstrap is not installed (needed once, to make $BASE)"
  local rootfs=$work/rootfs
  step "debootstrap --variant=minbase bookworm"
  debootstrap --variant=minbase bookworm "$rootfs" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 30 "$work/debootstrap.log" >&2; fail "debootstrap failed"; }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
         "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/* "$rootfs"/etc/apt/sources.list
  mkdir -p "$rootfs"/var/lib/apt/lists/partial
  cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  # Keep apt from caching downloaded packages in images (as the official images do).
  cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  step "podman import $BASE"
  tar -C "$rootfs" -c . | podman import --quiet --change 'CMD ["bash"]' - "$BASE" >/dev/null
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
EOF
  find "$rootfs/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
  find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/lintian/*
  find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
  step "podman import $SLIM"
  tar -C "$rootfs" -c . | podman import --quiet --change 'CMD ["bash"]' - "$SLIM" >/dev/null
  rm -rf "$rootfs"
}
if podman image exists "$BASE" && podman image exists "$SLIM"; then
  step "base images $BASE and $SLIM present"
else
  make_base_images
fi

# --- Build the Dockerfile unchanged. -------------------------------------------------------------
# --format docker keeps HEALTHCHECK (the OCI image format has no field for it).
# The build stage is tagged too ($IMAGE-build), so that when a source change replaces either
# image the previous one (600+ MiB for the build stage) is removed instead of left dangling.
step "podman build $IMAGE"
image_id() { podman image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }
old_ids="$(image_id "$IMAGE-build") $(image_id "$IMAGE")"
revision=$(git -C "$top" rev-parse HEAD 2>/dev/null || echo unknown)
created=$(git -C "$top" log -1 --format=%cI 2>/dev/null || echo unknown)
for target in build final; do
  tag=$IMAGE; target_args=()
  if [ "$target" = build ]; then tag=$IMAGE-build; target_args=(--target build); fi
  podman build --isolation chroot --format docker --pull=never --layers "${target_args[@]}" \
    --build-arg REVISION="$revision" --build-arg CREATED="$created" \
    -f "$top/Dockerfile" -t "$tag" "$top" >>"$work/build.log" 2>&1 \
    || { tail -n 40 "$work/build.log" >&2; fail "podman build ($target stage) failed"; }
done
echo "podman build: $(grep -c "Using cache" "$work/build.log" || true) steps from the layer cache"
new_ids=" $(image_id "$IMAGE-build") $(image_id "$IMAGE") "
for id in $old_ids; do
  case "$new_ids" in *" $id "*) ;; *) podman rmi "$id" >/dev/null 2>&1 || true ;; esac
done

inspect() { podman image inspect --format "$1" "$IMAGE"; }
user=$(inspect '{{.Config.User}}')
[ "$user" = "$RUN_USER" ] || fail "image USER is '$user', expected $RUN_USER"
inspect '{{json .Config.ExposedPorts}}' | grep -q '"50051/tcp"' || fail "50051 not exposed"
inspect '{{json .Config.ExposedPorts}}' | grep -q '"9464/tcp"' || fail "9464 not exposed"
inspect '{{index .Labels "org.opencontainers.image.title"}}' | grep -qx attention-server \
  || fail "OCI title label missing"
podman image inspect "$IMAGE" | python3 -c '
import json, sys
image = json.load(sys.stdin)[0]
hc = image.get("Healthcheck") or (image.get("Config") or {}).get("Healthcheck") or {}
test = hc.get("Test") or []
if not test or test[0] not in ("CMD", "CMD-SHELL"): sys.exit("no HEALTHCHECK in the image")
print("\0".join(test[1:] if test[0] == "CMD" else ["/bin/sh", "-c", test[1]]), end="")' \
  >"$work/healthcheck" || fail "cannot read the image's HEALTHCHECK"
size=$(inspect '{{.Size}}')
echo "image $IMAGE: $(( size / 1024 / 1024 )) MiB ($size bytes), user $user, $(inspect '{{index .Labels "org.opencontainers.image.version"}}')"

# --- Run it. ---------------------------------------------------------------------------------------
# Working containers left by a run that was killed outright (no trap) are removed first.
for name in $(buildah containers --format '{{.ContainerName}}' | grep '^attn-test-[0-9]*$' || true); do
  kill -0 "${name#attn-test-}" 2>/dev/null || buildah rm "$name" >/dev/null
done
ctr=$(buildah from --pull=never --name "attn-test-$$" "$IMAGE")
entrypoint=$(inspect '{{index .Config.Entrypoint 0}}')

# descendant_named PID COMM: the first descendant of PID whose command name is COMM.
descendant_named() {
  local child
  # shellcheck disable=SC2013  # the children files hold space-separated PIDs
  for child in $(cat /proc/"$1"/task/*/children 2>/dev/null); do
    if [ "$(cat /proc/"$child"/comm 2>/dev/null)" = "$2" ]; then echo "$child"; return 0; fi
    descendant_named "$child" "$2" && return 0
  done
  return 1
}

# start_in_container LOG MODELS_DIR [FLAGS...]: the entrypoint on free loopback ports, as
# $RUN_USER, with the extra volumes in extra_volumes (buildah --volume arguments).
extra_volumes=()
start_in_container() {
  local log=$1 models=$2 _
  shift 2
  : >"$log"
  buildah run --isolation chroot --network host --user "$RUN_USER" \
    --volume "$models:/models:ro" "${extra_volumes[@]}" "$ctr" -- \
    "$entrypoint" --listen=127.0.0.1:0 --metrics_listen=127.0.0.1:0 "$@" >"$log" 2>&1 &
  run_pid=$!
  for _ in $(seq 1 600); do
    grep -q " event=ready " "$log" && break
    kill -0 "$run_pid" 2>/dev/null || { cat "$log" >&2; fail "the server exited early"; }
    sleep 0.1
  done
  grep -q " event=ready " "$log" || { cat "$log" >&2; fail "the server was not ready after 60 s"; }
  server_pid=$(descendant_named "$run_pid" attention-serve) || fail "no attention-server process"
  grpc=$(sed -n 's/.* event=ready .*grpc=\([^ ]*\).*/\1/p' "$log")
  metrics="http://$(sed -n 's/.* event=ready .*metrics=\([^ ]*\).*/\1/p' "$log")/metrics"
  local uid
  uid=$(awk '/^Uid:/ {print $2}' /proc/"$server_pid"/status)
  [ "$uid" = "${RUN_USER%%:*}" ] || fail "the server runs as uid $uid, expected ${RUN_USER%%:*}"
  grep -E "^attention-entrypoint| event=ready " "$log"
}

# stop_in_container LOG: SIGTERM to the server; buildah run must pass on its exit code 0.
stop_in_container() {
  kill -TERM "$server_pid"
  local rc=0
  wait "$run_pid" || rc=$?
  server_pid="" run_pid=""
  [ "$rc" -eq 0 ] || { cat "$1" >&2; fail "after SIGTERM the server exited $rc"; }
  grep -q "stopped" "$1" || { cat "$1" >&2; fail "no 'stopped' line after SIGTERM"; }
}

cli() { "$BIN/attention-cli" "$1" --target="$grpc" "${@:2}"; }

step "run 1: empty /models -> built-in model, as uid ${RUN_USER%%:*}"
mkdir -p "$work/empty-models"
start_in_container "$work/server1.log" "$work/empty-models"
grep -q "serving the built-in model" "$work/server1.log" || fail "entrypoint did not report the fallback"
grep -q " models=default " "$work/server1.log" || fail "built-in model not served"
cli health >"$work/health.out" || fail "health: exit $?"
grep -qx "SERVING" "$work/health.out" || fail "health: $(cat "$work/health.out")"
echo "host attention-cli health: $(cat "$work/health.out")"
cli attend --model=default --batch=2 --seq_len=16 >"$work/attend.out" || fail "attend: exit $?"
grep -q "output shape: \[2, 16, 512\]" "$work/attend.out" || { cat "$work/attend.out"; fail "attend output"; }
echo "host attention-cli attend: $(grep 'output shape' "$work/attend.out")"
port=${grpc##*:}
mapfile -d '' hc_cmd <"$work/healthcheck"
buildah run --isolation chroot --network host --user "$RUN_USER" \
  --env ATTN_HEALTH_TARGET="127.0.0.1:$port" "$ctr" -- "${hc_cmd[@]}" >"$work/hc.out" 2>&1 \
  || { cat "$work/hc.out" >&2; fail "the image's HEALTHCHECK failed"; }
echo "image HEALTHCHECK inside the container: $(cat "$work/hc.out")"
curl -sf "$metrics" >"$work/metrics.txt" || fail "cannot scrape $metrics"
grep -q '^attn_requests_total{code="OK",model="default"} 1$' "$work/metrics.txt" \
  || fail "/metrics: no attn_requests_total for the OK attend"
grep -q '^attn_build_info{' "$work/metrics.txt" || fail "/metrics: no attn_build_info"
echo "curl $metrics: $(grep -c '^attn_' "$work/metrics.txt") attn_ samples"
stop_in_container "$work/server1.log"
echo "SIGTERM: exit 0, $(tail -n1 "$work/server1.log")"

step "run 2: a model mounted at /models -> --model_repository=/models"
mkdir -p "$work/models/golden_mha"
cp "$top/tests/data/golden/self_basic.safetensors" "$work/models/golden_mha/model.safetensors"
printf 'embed_dim: 64\nnum_heads: 4\n' >"$work/models/golden_mha/config.pbtxt"
chmod -R a+rX "$work/models"
start_in_container "$work/server2.log" "$work/models"
grep -q " models=golden_mha " "$work/server2.log" || fail "mounted model not served"
cli attend --model=golden_mha --batch=1 --seq_len=8 >"$work/attend2.out" || fail "attend golden_mha: exit $?"
grep -q "output shape: \[1, 8, 64\]" "$work/attend2.out" || { cat "$work/attend2.out"; fail "attend output"; }
echo "host attention-cli attend --model=golden_mha: $(grep 'output shape' "$work/attend2.out")"
stop_in_container "$work/server2.log"

step "run 3: TLS and tokens from /run/secrets, health on a plaintext port"
secrets=$work/secrets
"$top/tests/testing/make_test_certs.sh" "$secrets"
token=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
printf '%s infer,read container-test\n' "$(printf %s "$token" | sha256sum | cut -d' ' -f1)" >"$secrets/tokens"
chmod 755 "$secrets"; chmod 644 "$secrets"/*   # a throwaway key: readable by uid 10001
health_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
extra_volumes=(--volume "$secrets:/run/secrets:ro")
start_in_container "$work/server3.log" "$work/empty-models" \
  --tls_cert_file=/run/secrets/server.pem --tls_key_file=/run/secrets/server.key \
  --auth_tokens_file=/run/secrets/tokens --health_listen="127.0.0.1:$health_port"
extra_volumes=()
ATTN_TOKEN=$token cli attend --model=default --batch=1 --seq_len=8 --tls_ca_file="$secrets/ca.pem" \
  >"$work/attend3.out" 2>&1 || { rc=$?; cat "$work/attend3.out" >&2; fail "attend over TLS with the token: exit $rc"; }
grep -q "output shape: \[1, 8, 512\]" "$work/attend3.out" || { cat "$work/attend3.out"; fail "attend output"; }
echo "host attention-cli attend --tls_ca_file, ATTN_TOKEN: $(grep 'output shape' "$work/attend3.out")"
rc=0
cli attend --model=default --batch=1 --seq_len=8 --tls_ca_file="$secrets/ca.pem" \
  >"$work/attend3-noauth.out" 2>&1 || rc=$?
[ "$rc" -ne 0 ] && grep -q UNAUTHENTICATED "$work/attend3-noauth.out" \
  || { cat "$work/attend3-noauth.out" >&2; fail "attend without the token: exit $rc, expected UNAUTHENTICATED"; }
echo "host attention-cli attend --tls_ca_file without a token: exit $rc, UNAUTHENTICATED"
buildah run --isolation chroot --network host --user "$RUN_USER" \
  --env ATTN_HEALTH_TARGET="127.0.0.1:$health_port" "$ctr" -- "${hc_cmd[@]}" >"$work/hc3.out" 2>&1 \
  || { cat "$work/hc3.out" >&2; fail "the image's HEALTHCHECK on --health_listen failed"; }
echo "image HEALTHCHECK on the plaintext health port: $(cat "$work/hc3.out")"
! grep -qF "$token" "$work/server3.log" || fail "the token is in the server's log"
stop_in_container "$work/server3.log"

step "done"
echo "container test: image $IMAGE $(( size / 1024 / 1024 )) MiB; all checks passed"
