# Multi-stage build of the relay: a full Rust toolchain builds it, a slim Debian runs it as a
# non-root user. Build context: the repository root.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p dmls-relay \
 && cp target/release/dmls-relay /usr/local/bin/dmls-relay

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /data --create-home dmls
COPY --from=build /usr/local/bin/dmls-relay /usr/local/bin/dmls-relay
USER dmls
WORKDIR /data
# SQLite (the default) keeps its file in /data; mount a volume there to keep it.
ENV DMLS_RELAY_BIND=0.0.0.0:8080 \
    DATABASE_URL=sqlite:///data/dmls-relay.db
EXPOSE 8080
VOLUME ["/data"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/dmls-relay"]
