# syntax=docker/dockerfile:1
# The single image of helpr vault: both binaries, helpr-dataplane (every data-plane role) and
# helpr-operator, run as the non-root user 65532 on a distroless base without a shell.
#
#   docker build -t helpr:0.1.0 .
#
# The build needs no protoc (protox compiles dataplane/proto in Rust) and no network beyond
# crates.io; Cargo.lock is honoured (--locked).

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-trixie AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p helpr-dataplane -p helpr-operator \
    && mkdir -p /out \
    && cp target/release/helpr-dataplane target/release/helpr-operator /out/

# glibc (the binaries link it dynamically), CA roots, tzdata, nonroot user 65532; no shell.
FROM gcr.io/distroless/cc-debian13:nonroot
COPY --from=build /out/helpr-dataplane /usr/local/bin/helpr-dataplane
COPY --from=build /out/helpr-operator /usr/local/bin/helpr-operator
USER 65532:65532
WORKDIR /tmp
ENV HELPR_DATA_DIR=/tmp/helpr
EXPOSE 8080 9090 7070
ENTRYPOINT ["/usr/local/bin/helpr-dataplane"]
