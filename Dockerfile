# syntax=docker/dockerfile:1
# meshtap's image: a release build in the Rust image, copied into a small Debian runtime image.
#
#   docker build -t REGISTRY/meshtap:TAG .          # from the repository root (BuildKit: Docker 23+)
#   docker push REGISTRY/meshtap:TAG
#
# Then point deploy/agent/kustomization.yaml's `images:` at it (docs/deploy.md). tests/deploy
# checks this file's wiring: the paths it copies exist, and the config path in CMD is where the
# DaemonSet mounts the ConfigMap.

FROM rust:1-bookworm AS build
WORKDIR /src
# Everything Cargo.toml names (the lib and bin in agent/, the test and bench targets, which cargo
# wants present even for `--bin`) and the files the sources include (docs/, config/).
COPY Cargo.toml Cargo.lock ./
COPY agent ./agent
COPY tests ./tests
COPY benches ./benches
COPY docs ./docs
COPY config ./config
# The cargo registry and target directory persist between builds (BuildKit cache mounts), so a
# source change rebuilds meshtap only, not its dependencies (rdkafka builds librdkafka and
# OpenSSL from source: minutes).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin meshtap \
 && cp target/release/meshtap /usr/local/bin/meshtap

# Debian slim rather than distroless: the binary links libz dynamically (zlib1g is part of the
# slim image), and a shell helps when debugging a node (`kubectl exec`). ca-certificates for TLS
# to Kafka and OTLP collectors.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/meshtap /usr/local/bin/meshtap
# The manifests, for `docker run ... cat` style inspection and for tooling that renders them.
COPY deploy /usr/share/meshtap/deploy
# The documented defaults; in the cluster the ConfigMap is mounted over /etc/meshtap.
COPY config/meshtap.yaml /etc/meshtap/meshtap.yaml
# The agent's state directory (agent.state_dir) exists in the image so a plain `docker run` works;
# in the cluster it is a hostPath.
RUN mkdir -p /var/lib/meshtap && chown 65532:65532 /var/lib/meshtap
# Non-root by default: `meshtap parse` on mounted files needs nothing more. The DaemonSet runs the
# agent as uid 0 with every capability dropped, because node log files and the hostPath state
# directory are root-owned (deploy/agent/daemonset.yaml and docs/deploy.md say why).
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/meshtap"]
# The node agent on the shipped defaults (/var/log/pods, /var/lib/meshtap, stdout, :9464).
CMD ["run", "--config", "/etc/meshtap/meshtap.yaml"]
EXPOSE 9464
