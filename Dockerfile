# attention-server container image (deploy/README.md tells how to build, run and test it).
#
#   docker build -t attention-server .            (or: podman build --format docker -t attention-server .)
#   docker run --rm -p 50051:50051 -p 9464:9464 [-v $PWD/models:/models:ro] attention-server [FLAGS...]
#
# Two stages, both Debian 12 from Debian's archive only: `build` compiles the release
# configuration without tests; the runtime stage is bookworm-slim with the shared libraries the
# two binaries load, and nothing else. deploy/container_test.sh builds this file unchanged with
# podman/buildah and runs the server in it.

# ---------------------------------------------------------------------------
FROM docker.io/library/debian:bookworm AS build
# The build subset of deploy/install-deps.sh: no clang, sanitizer runtimes, GoogleTest or
# Google Benchmark (tests are off; attention-core-bench is skipped without Benchmark).
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      g++ cmake ninja-build pkg-config \
      libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler \
      libdnnl-dev ocl-icd-opencl-dev libabsl-dev prometheus-cpp-dev nlohmann-json3-dev libhwy-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The `release` preset (gcc, Release) into build/, tests off; only the two binaries.
RUN cmake --preset release -DATTN_BUILD_TESTS=OFF \
 && cmake --build --preset release --target attention-server attention-cli \
 && install -D -s -m 0755 -t /out build/bin/attention-server build/bin/attention-cli \
 && install -D -m 0755 deploy/container-entrypoint.sh /out/attention-entrypoint

# ---------------------------------------------------------------------------
FROM docker.io/library/debian:bookworm-slim
# Runtime libraries only (what `ldd` lists for the binaries, by Debian package; each pulls its
# own dependencies: libgrpc29, c-ares, re2, OpenSSL, zlib, ocl-icd-libopencl1, ...).
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      libgrpc++1.51 libprotobuf32 libdnnl2 libabsl20220623 \
      libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 libgomp1 libhwy1 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log \
 && groupadd --system --gid 10001 attention \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin attention \
 && mkdir -p /models
COPY --from=build /out/ /usr/local/bin/

# Models: mount a repository (<model>/config.pbtxt + weights) read-only at /models. The entrypoint
# adds --model_repository=/models when /models holds a config.pbtxt, else the server serves its
# built-in model "default". ATTN_MODEL_DIR moves the directory.
ENV ATTN_MODEL_DIR=/models
USER 10001:10001
EXPOSE 50051 9464
# attention-cli exits 0 when SERVING, 1 when not (or unreachable). Set ATTN_HEALTH_TARGET when
# --listen moves the gRPC port.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["/bin/sh", "-c", "exec attention-cli health --target=\"${ATTN_HEALTH_TARGET:-127.0.0.1:50051}\" --timeout_ms=3000"]
# Arguments are attention-server flags (attention-server --helpfull); a first argument that is not
# a flag runs as a command instead, e.g. `attention-cli models`.
ENTRYPOINT ["/usr/local/bin/attention-entrypoint"]
CMD ["--listen=0.0.0.0:50051", "--metrics_listen=0.0.0.0:9464"]

# Labels last, so a new revision or date changes only this metadata layer.
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="attention-server" \
      org.opencontainers.image.description="gRPC inference server for multi-head attention (oneDNN + AVX-512), with dynamic batching and Prometheus metrics" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim" \
      org.opencontainers.image.documentation="deploy/README.md"
