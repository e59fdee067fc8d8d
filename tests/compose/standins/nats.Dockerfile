# A stand-in for the official `nats` image, from Debian's nats-server
# package, for machines that reach Debian's archive but no image registry
# (tests/compose/run.sh builds it; docker-compose.yml takes it through
# DW_NATS_IMAGE). What the compose file relies on is the same as in
# nats:*-alpine: `nats-server` on PATH, /bin/sh, and wget for the
# healthcheck. Debian 12 ships nats-server 2.9, the version DynamoWave is
# built and tested against (docs/operations.md); the official tag is 2.10.
ARG DEBIAN_IMAGE=debian:bookworm-slim
FROM ${DEBIAN_IMAGE}
RUN set -eux; \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get update; \
    apt-get install -y --no-install-recommends nats-server wget; \
    rm -rf /var/lib/apt/lists/*; \
    nats-server --version
EXPOSE 4222 6222 8222
CMD ["nats-server", "--config", "/etc/nats/nats-server.conf"]
