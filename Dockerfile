# MR-Enclave: a static binary in a distroless image, running as non-root.
#
#   docker build -t mr-enclave .
#   docker run -p 8000:8000 -v enclave-data:/data mr-enclave
#
# Where no registry is reachable (no golang or distroless image to pull), build
# the same layout FROM scratch around a locally built binary instead:
# `make image-scratch` (deploy/Dockerfile.scratch).

ARG GO_VERSION=1.26

FROM golang:${GO_VERSION} AS build
WORKDIR /src
# Modules first, so editing the code does not download them again.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 GOOS=linux go build -trimpath -ldflags='-s -w' -o /out/enclave ./cmd/enclave \
    && mkdir -p /out/data

# static-debian12: no libc, no shell, no package manager; :nonroot is uid 65532.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/enclave /enclave
# The data directory belongs to the runtime user, so a named volume mounted
# on /data starts out writable by it.
COPY --from=build --chown=65532:65532 /out/data /data

USER 65532:65532
ENV DATA_DIR=/data \
    PORT=8000
# 8000 HTTP + WebSocket; 7946 gossip (TCP and UDP); 7947 Raft.
EXPOSE 8000 7946/tcp 7946/udp 7947
VOLUME ["/data"]
# `enclave healthcheck` asks the local /health on $PORT: no shell or curl needed.
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["/enclave", "healthcheck"]
ENTRYPOINT ["/enclave"]
