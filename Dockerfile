# syntax=docker/dockerfile:1
# The regcred operator image: the release binary, run as a non-root user on
# a minimal base (distroless cc: glibc, libgcc, CA certificates; no shell, no
# package manager).
#
#   docker build -t REGISTRY/regcred:0.1.0 .
#   helm install regcred charts/regcred -n regcred-system --create-namespace \
#     --set image.repository=REGISTRY/regcred --set image.tag=0.1.0
#
# Needs BuildKit (the default builder of current Docker and Podman/Buildah).

FROM docker.io/library/rust:1-bookworm AS build
WORKDIR /src
# Only what the build reads; testenv is a workspace member, so its manifest
# and sources must be there even though the binary does not use it.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY testenv ./testenv
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin regcred \
    && install -D -m 0755 target/release/regcred /out/regcred

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="regcred" \
      org.opencontainers.image.description="Kubernetes operator that keeps image pull secrets fresh" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/regcred /usr/local/bin/regcred
# distroless "nonroot": uid/gid 65532, matching the chart's securityContext.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/regcred"]
CMD ["run"]
