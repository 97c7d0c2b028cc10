# Static wgkex binaries on a distroless base. The image runs the broker by default:
#   docker run -p 5000:5000 -p 1883:1883 -v wgkex:/var/lib/wgkex -v ./wgkex.yaml:/etc/wgkex.yaml wgkex
# and the worker with the network of the gateway host and the right to manage its interfaces:
#   docker run --network host --cap-add NET_ADMIN --user root -v ./wgkex.yaml:/etc/wgkex.yaml --entrypoint /wgkex-worker wgkex
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /out/ ./cmd/wgkex-broker ./cmd/wgkex-worker \
    && mkdir -p /out/state

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/wgkex-broker /out/wgkex-worker /
COPY --from=build --chown=65532:65532 /out/state /var/lib/wgkex
COPY wgkex.yaml.example /etc/wgkex.yaml
# Inside a container the broker listens on every address and keeps its state on a volume.
ENV WGKEX_BROKER_LISTEN_HOST=0.0.0.0 \
    WGKEX_BROKER_MQTT_LISTENERS=0.0.0.0:1883 \
    WGKEX_BROKER_STATE_FILE=/var/lib/wgkex/wgkex.db
VOLUME /var/lib/wgkex
EXPOSE 5000 1883
ENTRYPOINT ["/wgkex-broker"]
