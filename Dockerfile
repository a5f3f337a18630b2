# Multi-stage build of every ipp-pipeline binary. One image, several commands:
#   docker run IMAGE ipp-ingest | ipp-projector | ipp-actions | ipp-om-sim | ipp-demo
# The same toolchain as rust-toolchain.toml.
FROM rust:1.95.0-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential pkg-config libssl-dev zlib1g-dev python3 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The sqlx::query! macros read the committed .sqlx/ data: no database at build time.
ENV SQLX_OFFLINE=true
COPY . .
RUN cargo build --release --locked --workspace --bins \
 && mkdir /out \
 && cp target/release/ipp-ingest target/release/ipp-projector target/release/ipp-actions \
       target/release/ipp-om-sim target/release/ipp-demo /out/

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 ipp
COPY --from=build /out/ /usr/local/bin/
USER ipp
ENV LOG_FORMAT=json
CMD ["ipp-ingest"]
