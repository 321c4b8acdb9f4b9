# syntax=docker/dockerfile:1
# The Lifeline image the Helm chart (helm/lifeline) runs.
#   docker build -t registry.example.com/lifeline/lifeline:0.1.0 .
# Stage 1 compiles a release binary; stage 2 is distroless (glibc and libgcc only: no shell, no
# package manager), runs as the unprivileged user 65532 and works with a read-only root
# filesystem. The chart's lifecycle hooks exec this binary (`lifeline drain`, `lifeline
# wait-ready`) because there is no shell or curl in the image.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# The release profile keeps line tables for profiling; the image does not need them.
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=symbols
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin lifeline \
 && install -D -m 0755 target/release/lifeline /out/lifeline \
 && /out/lifeline --version

# Same Debian release as the build stage, so the glibc the binary links against is there.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="lifeline" \
      org.opencontainers.image.description="Resilience and failover sidecar for the electronic social-security card services" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/lifeline /usr/local/bin/lifeline
USER 65532:65532
# 15001: the application's traffic; 15000: admin (health, readiness, metrics, operator actions).
EXPOSE 15001 15000
ENTRYPOINT ["/usr/local/bin/lifeline"]
CMD ["run", "--config", "/etc/lifeline/lifeline.yaml"]
