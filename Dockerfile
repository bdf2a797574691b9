# syntax=docker/dockerfile:1
#
# amqp-gateway container image.
#
#   docker build -t amqp-gateway .
#   docker run --rm -p 8080:8080 -e AMQP_URL=amqp://user:pass@rabbitmq:5672/%2f \
#       -e JWT_SECRET="$(openssl rand -base64 48)" amqp-gateway
#   docker run --rm -e AMQP_URL=… -e JWT_SECRET=… amqp-gateway check --config /etc/amqp-gateway/gateway.toml
#
# The runtime image holds the binary, CA certificates (amqps://, JWKS over
# https), the JSON schemas and its default config (deploy/image.toml, the
# demo's routes) in /etc/amqp-gateway/; mount your own config over it. That
# config has no fallback for secrets: without AMQP_URL and JWT_SECRET the
# gateway refuses to start and names the missing variable (the demo config,
# config/gateway.toml, has a published demo JWT secret and is not copied). It runs as uid 10001, listens on 0.0.0.0 (see ENV below) and stops
# gracefully on SIGTERM (server.shutdown_timeout, 30s in the example config:
# give `docker stop -t` / stop_grace_period a little more).
#
# `docker build --target consumer -t amqp-gateway-consumer .` builds the
# example consumer (examples/consumer.rs) instead; deploy/docker-compose.yml
# uses it to bind a queue for the demo routes.

# ---------------------------------------------------------------- build
FROM rust:1-bookworm AS builder
WORKDIR /src
# The whole context (see .dockerignore): Cargo may need any manifest-declared
# target (benches, tests) to exist even when it does not build it.
COPY . .
# Cache mounts keep the registry and target/ between builds (BuildKit); the
# binary is copied out of the cache mount, which is not part of the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin amqp-gateway \
    && install -D -m 0755 target/release/amqp-gateway /out/amqp-gateway

FROM builder AS consumer-builder
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --example consumer \
    && install -D -m 0755 target/release/examples/consumer /out/consumer

# ---------------------------------------------------------------- base
FROM debian:bookworm-slim AS base
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent \
        --no-create-home --shell /usr/sbin/nologin gateway

# ---------------------------------------------------------------- consumer (optional)
FROM base AS consumer
COPY --from=consumer-builder /out/consumer /usr/local/bin/consumer
USER 10001:10001
ENTRYPOINT ["consumer"]

# ---------------------------------------------------------------- runtime (default)
FROM base AS runtime
COPY --from=builder /out/amqp-gateway /usr/local/bin/amqp-gateway
COPY config/schemas/ /etc/amqp-gateway/schemas/
COPY deploy/image.toml /etc/amqp-gateway/gateway.toml
# The example config reads its listen addresses from these; 127.0.0.1 (its
# default) would be unreachable from outside the container. Publish only
# 8080; 9090 (/healthz, /readyz) is for the orchestrator and Prometheus.
ENV GATEWAY_LISTEN=0.0.0.0:8080 \
    GATEWAY_ADMIN_LISTEN=0.0.0.0:9090 \
    GATEWAY_SCHEMA_DIR=/etc/amqp-gateway/schemas
USER 10001:10001
EXPOSE 8080 9090
STOPSIGNAL SIGTERM
# Liveness without curl (not in the slim image): bash's /dev/tcp speaks just
# enough HTTP/1.0 to GET /healthz on the admin port. /readyz (broker
# channels up) is the better check for a load balancer; compose uses it.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${GATEWAY_ADMIN_LISTEN##*:} && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["amqp-gateway"]
CMD ["--config", "/etc/amqp-gateway/gateway.toml"]
