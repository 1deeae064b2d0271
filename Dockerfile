# otad's container image: a static otad binary on a distroless base, running
# as a non-root user. Build it from the repository root:
#
#   docker build --build-arg VERSION=v1.2.3 -t otad .
#
# or let deploy/docker-compose.yml build it. cmd/otad/deploy_test.go checks
# this file against go.mod and the configuration otad knows.

FROM golang:1.26-alpine AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/otad ./cmd/otad && \
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/otad-healthcheck ./cmd/otad-healthcheck && \
    mkdir -p /out/data

FROM gcr.io/distroless/static-debian13:nonroot
COPY --from=build /out/otad /out/otad-healthcheck /usr/local/bin/
# The volume starts out owned by the user otad runs as, so it can write there.
COPY --from=build --chown=65532:65532 /out/data /data
ENV OTAD_DATA_DIR=/data \
    OTAD_HTTP_ADDR=:8080 \
    OTAD_MQTT_ADDR=:1883 \
    OTAD_DOWNLOAD_ADDR=:8081
USER 65532:65532
# 1883 MQTT, 8883 MQTT over TLS (when OTAD_MQTT_TLS_ADDR=:8883), 8080 the
# console API and health, 8081 firmware downloads (publish it on the host's
# port 80: device SDKs ignore URL ports).
EXPOSE 1883 8883 8080 8081
VOLUME /data
HEALTHCHECK --interval=15s --timeout=6s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/otad-healthcheck"]
ENTRYPOINT ["/usr/local/bin/otad"]
