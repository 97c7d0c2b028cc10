# Static wgkex binaries on a distroless base, a drop-in for the reference image: the entrypoint /wgkex takes the
# reference's command words and environment (WGKEX_DOMAINS, MQTT_BROKER_URL, …; see README "Docker"), so the
# reference's docker-compose.yml runs this image unchanged. With a configuration file of your own, mount it:
#   docker run -p 5000:5000 -p 1883:1883 -v wgkex:/var/lib/wgkex -v ./wgkex.yaml:/etc/wgkex.yaml wgkex
# and the worker with the network of the gateway host and the right to manage its interfaces:
#   docker run --network host --cap-add NET_ADMIN --user root -v ./wgkex.yaml:/etc/wgkex.yaml wgkex worker
# deploy/ has compose files for one host (embedded MQTT) and for two brokers on Mosquitto.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# The build context has no .git: the commit --version prints comes from docker build --build-arg WGKEX_COMMIT=$(git rev-parse HEAD).
ARG WGKEX_COMMIT=""
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w -X github.com/freifunkMUC/wgkex-go/internal/app/cli.commit=${WGKEX_COMMIT}" -o /out/ ./cmd/wgkex ./cmd/wgkex-broker ./cmd/wgkex-worker \
    && mkdir -p /out/state /out/tmp && chmod 1777 /out/tmp

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/wgkex /out/wgkex-broker /out/wgkex-worker /
COPY --from=build --chown=65532:65532 /out/state /var/lib/wgkex
COPY --from=build /out/tmp /tmp
# Inside a container the broker listens on every address and keeps its state on a volume. Without a file at
# /etc/wgkex.yaml the entrypoint writes one from the environment (to /tmp when /etc is not writable).
ENV WGKEX_BROKER_LISTEN_HOST=0.0.0.0 \
    WGKEX_BROKER_MQTT_LISTENERS=0.0.0.0:1883 \
    WGKEX_BROKER_STATE_FILE=/var/lib/wgkex/wgkex.db
VOLUME /var/lib/wgkex
EXPOSE 5000 1883
ENTRYPOINT ["/wgkex"]
CMD ["broker"]
