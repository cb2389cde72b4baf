# attention-server container image.
# Build stage: Debian 12 with the build dependencies; runtime stage: Debian 12
# slim with only the shared libraries the binaries need.
FROM debian:bookworm AS build
WORKDIR /src
COPY deploy/install-deps.sh deploy/install-deps.sh
RUN deploy/install-deps.sh
COPY . .
RUN cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DATTN_BUILD_TESTS=OFF \
 && cmake --build build --target attention-server attention-cli

FROM debian:bookworm-slim
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      libgrpc++1.51 libprotobuf32 libdnnl2 libgomp1 libprometheus-cpp-pull1.0 \
      libprometheus-cpp-core1.0 libabsl20220623 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home attention
COPY --from=build /src/build/bin/attention-server /src/build/bin/attention-cli /usr/local/bin/
USER 10001
EXPOSE 50051 9464
ENTRYPOINT ["/usr/local/bin/attention-server"]
