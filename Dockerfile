# meshtap image: a release build in a Rust image, copied into a small non-root runtime image.
# Build: docker build -t meshtap:dev .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY agent ./agent
COPY tests ./tests
COPY docs ./docs
COPY config ./config
RUN cargo build --release --locked --bin meshtap

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/meshtap /usr/local/bin/meshtap
COPY deploy /usr/share/meshtap/deploy
COPY config/meshtap.yaml /etc/meshtap/meshtap.yaml
# Non-root by default (`meshtap parse` on mounted files needs nothing more). Node log files are
# root-owned; a DaemonSet that tails them sets runAsUser/runAsGroup to what the node requires.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/meshtap"]
# The node agent on the shipped defaults (/var/log/pods, /var/lib/meshtap, stdout, :9464).
CMD ["run", "--config", "/etc/meshtap/meshtap.yaml"]
