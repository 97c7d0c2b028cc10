#!/usr/bin/env bash
# Load test of API v2 on three brokers sharing one Mosquitto (broker.mqtt_server), wrk against all three at once:
# one online worker (retained status, endpoint and metric via mosquitto_pub), mosquitto_sub receiving every key.
# Every broker records every key, announces every choice and syncs with the others before it chooses.
# Usage: bench/cluster.sh [duration] [connections per broker] [brokers (3)]
# MQTT_PORT (21883) is Mosquitto's port and HTTP_PORT (25000) + n broker n's; BROKER=binary runs that binary instead
# of building ./cmd/wgkex-broker (to compare two builds back to back); PPROF_PORT=p serves broker n's pprof on p + n.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-15s}
CONNS=${2:-16}
BROKERS=${3:-3}
MQTT_PORT=${MQTT_PORT:-21883}
HTTP_PORT=${HTTP_PORT:-25000}
for t in wrk mosquitto mosquitto_pub mosquitto_sub; do
	command -v $t >/dev/null || [ -x /usr/sbin/$t ] || { echo "needs $t (apt-get install wrk mosquitto mosquitto-clients)"; exit 1; }
done
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
dir=$(mktemp -d)
chmod 755 "$dir"
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
if [ -n "${BROKER:-}" ]; then cp "$BROKER" "$dir/wgkex-broker"; else go build -o "$dir/wgkex-broker" ./cmd/wgkex-broker; fi
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 100000\nset_tcp_nodelay true\n' "$MQTT_PORT" >"$dir/mosquitto.conf"
"$MOSQUITTO" -c "$dir/mosquitto.conf" 2>/dev/null &
mpid=$!
for i in $(seq 50); do mosquitto_pub -p $MQTT_PORT -t probe -m x 2>/dev/null && break; sleep 0.1; done
kill -0 $mpid 2>/dev/null || { echo "mosquitto did not start (port $MQTT_PORT in use?)"; exit 1; }
for n in $(seq "$BROKERS"); do
	cat >"$dir/b$n.yaml" <<YAML
domains: [ffmuc_welt]
domain_prefixes: [ffmuc_]
workers: {gw04: {weight: 1}}
broker_listen: {host: 127.0.0.1, port: $((HTTP_PORT + n)), rate_limit: 0}
broker: {state_file: $dir/b$n.db, mqtt_server: {url: "mqtt://127.0.0.1:$MQTT_PORT", client_id: broker-$n}}
log: {level: warn}
YAML
	WGKEX_PPROF_LISTEN=${PPROF_PORT:+127.0.0.1:$((PPROF_PORT + n))} "$dir/wgkex-broker" --config "$dir/b$n.yaml" &
	bpid[n]=$!
done
for n in $(seq "$BROKERS"); do
	for i in $(seq 50); do curl -s -o /dev/null localhost:$((HTTP_PORT + n))/api/v1/locations && break; sleep 0.1; done
done
pub() { mosquitto_pub -p $MQTT_PORT -q 1 -r -t "$1" -m "$2"; }
pub wireguard-worker/gw04/ffmuc_welt/data '{"ExternalAddress": "gw04.ext", "Port": 51820, "PublicKey": "TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2g=", "LinkAddress": "fe80::1"}'
pub wireguard-worker/gw04/status 1
pub wireguard-metrics/ffmuc_welt/gw04/connected_peers 0
mosquitto_sub -p $MQTT_PORT -t 'wireguard/#' >"$dir/keys.txt" &
sleep 1
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $BROKERS × wrk -t1 -c$CONNS -d$DURATION"
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
mcpu0=$(cpu $mpid)
for n in $(seq "$BROKERS"); do bcpu0[n]=$(cpu ${bpid[n]}); done
for n in $(seq "$BROKERS"); do
	wrk -t1 -c"$CONNS" -d"$DURATION" -s bench/v2.lua http://127.0.0.1:$((HTTP_PORT + n))/api/v2/wg/key/exchange | tail -n 1 >"$dir/wrk$n.txt" &
done
wait $(jobs -p | tail -"$BROKERS") 2>/dev/null || true
for n in $(seq "$BROKERS"); do echo "broker-$n: $(cat "$dir/wrk$n.txt")"; done
hz=$(getconf CLK_TCK)
requests=$(awk '/^requests/ {sub(",", "", $2); s += $2} END {print s}' "$dir"/wrk?.txt)
echo "CPU during the run, µs a request: mosquitto $(awk -v t=$(($(cpu $mpid) - mcpu0)) -v hz=$hz -v r=$requests 'BEGIN {printf "%.0f", t / hz * 1e6 / r}')$(for n in $(seq "$BROKERS"); do printf ', broker-%d %s' $n "$(awk -v t=$(($(cpu ${bpid[n]}) - bcpu0[n])) -v hz=$hz -v r=$requests 'BEGIN {printf "%.0f", t / hz * 1e6 / r}')"; done)"
awk '/req\/s/ { for (i = 1; i <= NF; i++) if ($i == "req/s") { gsub(",", "", $(i+1)); s += $(i+1) } } END { printf "total req/s %.0f\n", s }' "$dir"/wrk?.txt
sleep 2
echo "keys seen by mosquitto_sub: $(wc -l <"$dir/keys.txt")"
