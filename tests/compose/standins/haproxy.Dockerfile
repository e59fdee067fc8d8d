# A stand-in for the official `haproxy` image, from Debian's haproxy
# package (2.6), for machines that reach Debian's archive but no image
# registry (tests/compose/run.sh builds it; docker-compose.yml takes it
# through DW_PROXY_IMAGE). Shaped like haproxy:*-alpine where the compose
# file relies on it: the configuration at /usr/local/etc/haproxy/haproxy.cfg,
# haproxy as the non-root user `haproxy` in the foreground master-worker
# mode (-W -db), SIGUSR1 (soft stop) to stop, and wget for the healthcheck.
ARG DEBIAN_IMAGE=debian:bookworm-slim
FROM ${DEBIAN_IMAGE}
RUN set -eux; \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get update; \
    apt-get install -y --no-install-recommends haproxy wget; \
    rm -rf /var/lib/apt/lists/*; \
    mkdir -p /usr/local/etc/haproxy; \
    haproxy -v
STOPSIGNAL SIGUSR1
USER haproxy
WORKDIR /var/lib/haproxy
CMD ["haproxy", "-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
