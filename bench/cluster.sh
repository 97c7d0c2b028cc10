#!/usr/bin/env bash
# Load test of API v2 on three brokers sharing one Mosquitto (broker.mqtt_server), wrk against all three at once:
# one online worker (retained status, endpoint and metric via mosquitto_pub), mosquitto_sub receiving every key.
# Every broker records every key, announces every choice and syncs with the others before it chooses.
# Usage: bench/cluster.sh [duration] [connections per broker] [brokers (3)]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-15s}
CONNS=${2:-16}
BROKERS=${3:-3}
for t in wrk mosquitto mosquitto_pub mosquitto_sub; do
	command -v $t >/dev/null || [ -x /usr/sbin/$t ] || { echo "needs $t (apt-get install wrk mosquitto mosquitto-clients)"; exit 1; }
done
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
dir=$(mktemp -d)
chmod 755 "$dir"
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
go build -o "$dir/wgkex-broker" ./cmd/wgkex-broker
printf 'listener 21883 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 100000\nset_tcp_nodelay true\n' >"$dir/mosquitto.conf"
"$MOSQUITTO" -c "$dir/mosquitto.conf" 2>/dev/null &
mpid=$!
for i in $(seq 50); do mosquitto_pub -p 21883 -t probe -m x 2>/dev/null && break; sleep 0.1; done
kill -0 $mpid 2>/dev/null || { echo "mosquitto did not start (port 21883 in use?)"; exit 1; }
for n in $(seq "$BROKERS"); do
	cat >"$dir/b$n.yaml" <<YAML
domains: [ffmuc_welt]
domain_prefixes: [ffmuc_]
workers: {gw04: {weight: 1}}
broker_listen: {host: 127.0.0.1, port: 2500$n, rate_limit: 0}
broker: {state_file: $dir/b$n.db, mqtt_server: {url: "mqtt://127.0.0.1:21883", client_id: broker-$n}}
log: {level: warn}
YAML
	"$dir/wgkex-broker" --config "$dir/b$n.yaml" &
done
for n in $(seq "$BROKERS"); do
	for i in $(seq 50); do curl -s -o /dev/null localhost:2500$n/api/v1/locations && break; sleep 0.1; done
done
pub() { mosquitto_pub -p 21883 -q 1 -r -t "$1" -m "$2"; }
pub wireguard-worker/gw04/ffmuc_welt/data '{"ExternalAddress": "gw04.ext", "Port": 51820, "PublicKey": "TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2g=", "LinkAddress": "fe80::1"}'
pub wireguard-worker/gw04/status 1
pub wireguard-metrics/ffmuc_welt/gw04/connected_peers 0
mosquitto_sub -p 21883 -t 'wireguard/#' >"$dir/keys.txt" &
sleep 1
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $BROKERS × wrk -t1 -c$CONNS -d$DURATION"
for n in $(seq "$BROKERS"); do
	wrk -t1 -c"$CONNS" -d"$DURATION" -s bench/v2.lua http://127.0.0.1:2500$n/api/v2/wg/key/exchange | tail -n 1 >"$dir/wrk$n.txt" &
done
wait $(jobs -p | tail -"$BROKERS") 2>/dev/null || true
for n in $(seq "$BROKERS"); do echo "broker-$n: $(cat "$dir/wrk$n.txt")"; done
awk '/req\/s/ { for (i = 1; i <= NF; i++) if ($i == "req/s") { gsub(",", "", $(i+1)); s += $(i+1) } } END { printf "total req/s %.0f\n", s }' "$dir"/wrk?.txt
sleep 2
echo "keys seen by mosquitto_sub: $(wc -l <"$dir/keys.txt")"
