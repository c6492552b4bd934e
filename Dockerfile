# Tributary's container image.
#
#   docker build -t tributary .
#   docker build --build-arg VERSION="$(git describe --tags --always --dirty)" -t tributary .
#
# compose/docker-compose.yml builds this file and runs it next to a real
# Apache Kafka; compose/README.md explains that setup.

# The Go version go.mod names. The build runs with cgo: the Kafka client is
# librdkafka, which confluent-kafka-go ships prebuilt for glibc and links
# statically, so the runtime stage needs only Debian's libc (the same
# Debian release as the build stage).
ARG GO_VERSION=1.26.8

FROM golang:${GO_VERSION}-trixie AS build
WORKDIR /src
# Modules first, so that a change to the source reuses this layer.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# .git is not in the build context (.dockerignore): the version comes from
# this argument ("tributary version" prints it).
ARG VERSION=dev
RUN CGO_ENABLED=1 go build -trimpath -buildvcs=false \
        -ldflags "-s -w -X main.version=${VERSION}" \
        -o /out/tributary ./cmd/tributary

FROM debian:trixie-slim
# ca-certificates: for Kafka over SSL/SASL_SSL (kafka.properties) and
# upstream brokers over ssl:// or wss://.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# A fixed uid, so that files mounted into the container (a users file, TLS
# keys) can be given to it on the host.
RUN groupadd --system --gid 10001 tributary \
    && useradd --system --uid 10001 --gid tributary --no-create-home \
        --home-dir /var/lib/tributary --shell /usr/sbin/nologin tributary \
    && install -d -o tributary -g tributary -m 0700 /var/lib/tributary
COPY --from=build /out/tributary /usr/local/bin/tributary

# data_dir holds the embedded evaluation Kafka's data, which runs only
# when no kafka.bootstrap is set. The listeners' defaults (:1883, :8083,
# :8080) already bind every interface, as a container needs; the embedded
# Kafka's (127.0.0.1:9092) stays inside the container.
ENV TRIBUTARY_DATA_DIR=/var/lib/tributary
VOLUME ["/var/lib/tributary"]
WORKDIR /var/lib/tributary
USER tributary:tributary

# MQTT over TCP, MQTT over WebSocket, HTTP (/healthz, /readyz, /metrics and
# the JSON WebSocket API).
EXPOSE 1883 8083 8080

# SIGTERM (docker stop) starts Tributary's graceful shutdown, which flushes
# the Kafka producer for up to kafka.flush_timeout (30s): give the
# container at least that long to stop (compose sets stop_grace_period).
ENTRYPOINT ["/usr/local/bin/tributary"]
