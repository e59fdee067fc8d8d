# One image for every DynamoWave binary: edge, registry, dispatcher,
# deadletter, api and dwctl. The command picks the binary:
#
#   docker build -t dynamowave .
#   docker run --rm dynamowave edge --help
#   docker run --rm -e DW_NATS_URL=nats://nats:4222 dynamowave dwctl status
#
# Two stages: the build stage installs exactly the Debian packages that
# `make up` installs (scripts/packages.txt) and compiles; the runtime stage
# has only the shared libraries the binaries load, the binaries, and a
# non-root user (about 97 MB: debian:bookworm-slim's 74 MB, the libraries'
# 22 MB, the binaries). tests/deploy/check_dockerfile.py keeps both stages
# honest; make test-compose builds it and runs the compose stack on it.
#
# No `# syntax=` line: nothing here needs a newer Dockerfile frontend, and
# with BuildKit that line makes the build fetch one from Docker Hub.

ARG DEBIAN_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------- build ----
FROM ${DEBIAN_IMAGE} AS build

# The same list `make up` installs (scripts/deps.sh reads this file too), so
# the image and a developer machine cannot drift apart. Comments and blank
# lines are stripped exactly as deps.sh strips them.
COPY scripts/packages.txt /tmp/packages.txt
RUN set -eux; \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get update; \
    sed -e 's/#.*//' -e 's/[[:space:]]//g' /tmp/packages.txt | grep -v '^$' \
        | xargs apt-get install -y --no-install-recommends; \
    rm -rf /var/lib/apt/lists/*

WORKDIR /src
# Only what the build reads: a change to docs, k8s/ or tests does not
# invalidate the compile layer, and nothing else can leak into the image.
COPY CMakeLists.txt ./
COPY cmake/ cmake/
COPY proto/ proto/
COPY services/ services/
COPY tools/ tools/

ARG BUILD_TYPE=RelWithDebInfo
RUN set -eux; \
    cmake -S . -B /build -DCMAKE_BUILD_TYPE="${BUILD_TYPE}" \
          -DDW_WERROR=ON -DDW_BUILD_TESTS=OFF; \
    cmake --build /build -j"$(nproc)" --target edge registry dispatcher deadletter api dwctl; \
    mkdir -p /out; \
    for bin in edge registry dispatcher deadletter api dwctl; do \
        install -s -m 0755 "/build/bin/$bin" /out/; \
    done

# -------------------------------------------------------------- runtime ----
FROM ${DEBIAN_IMAGE} AS runtime

# Only the shared libraries the binaries are linked against (the Debian 12
# runtime packages of the -dev packages above) and the CA bundle for TLS to
# NATS. No compiler, no -dev package, no package manager cache.
RUN set -eux; \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get update; \
    apt-get install -y --no-install-recommends \
        ca-certificates \
        libjansson4 \
        libnats3.4 \
        libprotobuf-c1 \
        librocksdb7.8 \
        libssl3 \
        libwebsockets17; \
    rm -rf /var/lib/apt/lists/*

# A fixed numeric uid/gid so Kubernetes can check runAsNonRoot and volumes
# can be chowned (fsGroup) without a name lookup.
RUN set -eux; \
    groupadd --system --gid 10001 dw; \
    useradd --system --uid 10001 --gid dw --no-create-home \
            --home-dir /var/lib/dynamowave --shell /usr/sbin/nologin dw; \
    install -d -o dw -g dw -m 0750 /var/lib/dynamowave /etc/dynamowave/secrets

COPY --from=build /out/ /usr/local/bin/
# A tiny HTTP probe for Docker healthchecks (the image has no curl/wget).
COPY deploy/compose/dw-probe /usr/local/bin/dw-probe

ENV DW_DATA_DIR=/var/lib/dynamowave
WORKDIR /var/lib/dynamowave
USER 10001:10001

# 8080: the edge (WebSocket, /healthz /readyz /metrics); 8081: the api
# service's @connections management API (never on a public address); 9090:
# the status port (/healthz /readyz /metrics) the deployments give every
# other service.
EXPOSE 8080 8081 9090

# Every service drains and exits 0 on SIGTERM.
STOPSIGNAL SIGTERM
CMD ["edge"]
