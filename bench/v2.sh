#!/usr/bin/env bash
# Load test of API v2 over loopback HTTP with keep-alive (wrk), against the real broker binary with one online
# worker gw04 on its own password (its retained status, endpoint and metrics published with mosquitto_pub, every
# publish through the topic ACL) and a real MQTT subscriber (mosquitto_sub as gw04) receiving every published key.
# Usage: bench/v2.sh [duration] [connections]
# STATE=file bench/v2.sh …  starts the broker on a copy of that state file (see bench/fillstate) instead of an
# empty one; the script reports the broker's cold start, its RSS after the run and what the retention sweep did.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-20s}
CONNS=${2:-64}
for t in wrk mosquitto_pub mosquitto_sub; do
	command -v $t >/dev/null || { echo "needs $t (apt-get install wrk mosquitto-clients)"; exit 1; }
done
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
go build -o "$dir/wgkex-broker" ./cmd/wgkex-broker
hash=$(echo gw04-secret | "$dir/wgkex-broker" hash-password)
cat >"$dir/wgkex.yaml" <<YAML
domains: [ffmuc_welt]
domain_prefixes: [ffmuc_]
workers: {gw04: {weight: 1, password_hash: "$hash"}}
broker_listen: {host: 127.0.0.1, port: 15000, rate_limit: 1000000, rate_burst: 1000000}  # limiter on the path, never refusing
broker: {state_file: $dir/wgkex.db, mqtt_listeners: [{address: "127.0.0.1:11883"}]}
log: {level: info}
YAML
if [ -n "${STATE:-}" ]; then cp "$STATE" "$dir/wgkex.db"; fi
start=$(date +%s.%N)
"$dir/wgkex-broker" --config "$dir/wgkex.yaml" 2>"$dir/broker.log" &
broker=$!
for i in $(seq 500); do curl -s -o /dev/null localhost:15000/api/v1/locations && break; sleep 0.01; done
echo "cold start (exec to first answer): $(echo "$(date +%s.%N) - $start" | bc) s, state file $(du -m "$dir/wgkex.db" | cut -f1) MB"
auth=(-p 11883 -u gw04 -P gw04-secret -i gw04)
pub() { mosquitto_pub "${auth[@]}" -q 1 -r -t "$1" -m "$2"; }
pub wireguard-worker/gw04/ffmuc_welt/data '{"ExternalAddress": "gw04.ext", "Port": 51820, "PublicKey": "TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2g=", "LinkAddress": "fe80::1"}'
pub wireguard-worker/gw04/status 1
pub wireguard-metrics/ffmuc_welt/gw04/connected_peers 0
mosquitto_sub "${auth[@]}" -t 'wireguard/ffmuc_welt/+' >"$dir/keys.txt" &
sleep 0.5
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); wrk -t2 -c$CONNS -d$DURATION"
echo "wrk starts $(date +%T.%N | cut -c1-12)"
wrk -t2 -c"$CONNS" -d"$DURATION" -s bench/v2.lua http://127.0.0.1:15000/api/v2/wg/key/exchange | tail -n 1
echo "broker memory after the run: $(grep -E 'VmRSS|VmHWM' /proc/$broker/status | tr -s ' \t\n' ' ')"
sleep 1
echo "keys seen by mosquitto_sub: $(wc -l <"$dir/keys.txt")"
grep -E 'expired keys|level=(WARN|ERROR)' "$dir/broker.log" | cut -c1-200 || true
