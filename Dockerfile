# kvsync container image: a static binary in a distroless image, running as a non-root user.
#
#   docker build -t kvsync:0.1.0 .
#   docker run --rm kvsync:0.1.0 --help
#
# The build runs scripts/build-static, the same command the tests check, and the final image holds
# only the binary (and CA certificates for https:// backends), at /usr/local/bin/kvsync.

# --- build ---
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    scripts/build-static \
    && cp target/x86_64-unknown-linux-gnu/release/kvsync /kvsync \
    # Refuse to ship a binary that needs a dynamic loader: the image below has none.
    && ! readelf --program-headers /kvsync | grep -q INTERP \
    && /kvsync --version

# --- run ---
# distroless/static: no shell, no package manager, CA certificates and /etc/passwd with `nonroot`.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /kvsync /usr/local/bin/kvsync
# 65532 is distroless's `nonroot`; Kubernetes' runAsNonRoot needs the numeric form.
USER 65532:65532
# The HTTP endpoint, when http.listen is 0.0.0.0:9101.
EXPOSE 9101
ENTRYPOINT ["kvsync"]
CMD ["--help"]
