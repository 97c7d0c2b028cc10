#!/usr/bin/env bash
# Load test of API v2 over loopback HTTP with keep-alive (wrk), against the real broker binary with one online
# worker gw04 on its own password (its retained status, endpoint and metrics published with mosquitto_pub, every
# publish through the topic ACL) and a real MQTT subscriber (mosquitto_sub as gw04) receiving every published key.
# Usage: bench/v2.sh [duration] [connections]
# STATE=file bench/v2.sh …  starts the broker on a copy of that state file (see bench/fillstate) instead of an
# empty one; the script reports the broker's cold start, its RSS after the run and what the retention sweep did.
# HTTP_PORT and MQTT_PORT (15000, 11883) choose the ports, so that runs side by side do not clash; BROKER=binary
# runs that binary instead of building ./cmd/wgkex-broker (to compare two builds back to back). Memory is reported
# split into RssAnon (the Go heap and stacks) and RssFile (pages of the mmap'd state file and of the binary, which
# the kernel can drop), after the run and as the peak of samples taken every MEM_INTERVAL seconds (0.5) during it. BROKER_LOG=file keeps
# the broker's log (with GODEBUG=gctrace=1 in the environment, its garbage collections).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-20s}
CONNS=${2:-64}
HTTP_PORT=${HTTP_PORT:-15000}
MQTT_PORT=${MQTT_PORT:-11883}
for t in wrk mosquitto_pub mosquitto_sub; do
	command -v $t >/dev/null || { echo "needs $t (apt-get install wrk mosquitto-clients)"; exit 1; }
done
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
if [ -n "${BROKER:-}" ]; then cp "$BROKER" "$dir/wgkex-broker"; else go build -o "$dir/wgkex-broker" ./cmd/wgkex-broker; fi
hash=$(echo gw04-secret | "$dir/wgkex-broker" hash-password)
cat >"$dir/wgkex.yaml" <<YAML
domains: [ffmuc_welt]
domain_prefixes: [ffmuc_]
workers: {gw04: {weight: 1, password_hash: "$hash"}}
broker_listen: {host: 127.0.0.1, port: $HTTP_PORT, rate_limit: 1000000, rate_burst: 1000000}  # limiter on the path, never refusing
broker: {state_file: $dir/wgkex.db, mqtt_listeners: [{address: "127.0.0.1:$MQTT_PORT"}]}
log: {level: info}
YAML
if [ -n "${STATE:-}" ]; then cp "$STATE" "$dir/wgkex.db"; fi
start=$(date +%s.%N)
"$dir/wgkex-broker" --config "$dir/wgkex.yaml" 2>"$dir/broker.log" &
broker=$!
for i in $(seq 500); do curl -s -o /dev/null localhost:$HTTP_PORT/api/v1/locations && break; sleep 0.01; done
echo "cold start (exec to first answer): $(echo "$(date +%s.%N) - $start" | bc) s, state file $(du -m "$dir/wgkex.db" | cut -f1) MB"
auth=(-p $MQTT_PORT -u gw04 -P gw04-secret -i gw04)
pub() { mosquitto_pub "${auth[@]}" -q 1 -r -t "$1" -m "$2"; }
pub wireguard-worker/gw04/ffmuc_welt/data '{"ExternalAddress": "gw04.ext", "Port": 51820, "PublicKey": "TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2g=", "LinkAddress": "fe80::1"}'
pub wireguard-worker/gw04/status 1
pub wireguard-metrics/ffmuc_welt/gw04/connected_peers 0
mosquitto_sub "${auth[@]}" -t 'wireguard/ffmuc_welt/+' >"$dir/keys.txt" &
sleep 0.5
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); wrk -t2 -c$CONNS -d$DURATION"
echo "wrk starts $(date +%T.%N | cut -c1-12)"
mem() { awk '/^(RssAnon|RssFile):/ {printf "%s %d ", $1, $2/1024}' "/proc/$broker/status"; }
(while sleep ${MEM_INTERVAL:-0.5}; do mem; echo; done >"$dir/mem.txt") &
sampler=$!
cpu() { awk '{print $14 + $15}' "/proc/$broker/stat"; }
cpu0=$(cpu)
wrk -t2 -c"$CONNS" -d"$DURATION" -s bench/v2.lua http://127.0.0.1:$HTTP_PORT/api/v2/wg/key/exchange | tee "$dir/wrk.txt" | tail -n 1
ticks=$(($(cpu) - cpu0)) hz=$(getconf CLK_TCK)
echo "broker CPU during the run: $(echo "scale=2; $ticks / $hz" | bc) s, $(awk -v t="$ticks" -v hz="$hz" '/^requests/ {sub(",", "", $2); printf "%.0f", t / hz * 1e6 / $2}' "$dir/wrk.txt") µs a request"
kill $sampler
heap=$(curl -s localhost:$HTTP_PORT/metrics | awk '$1 == "go_memstats_heap_inuse_bytes" {printf "%d", $2/1048576}')
echo "broker memory after the run (MB): $(mem)VmRSS $(awk '/^VmRSS:/ {print int($2/1024)}' /proc/$broker/status), VmHWM $(awk '/^VmHWM:/ {print int($2/1024)}' /proc/$broker/status), Go heap in use $heap"
echo "peak during the run (MB): $(awk '{if ($2 > a) a = $2; if ($4 > f) f = $4; if ($2 + $4 > t) t = $2 + $4} END {printf "RssAnon %d, RssFile %d, sum %d", a, f, t}' "$dir/mem.txt")"
sleep 1
echo "keys seen by mosquitto_sub: $(wc -l <"$dir/keys.txt")"
grep -E 'expired keys|level=(WARN|ERROR)' "$dir/broker.log" | cut -c1-200 || true
if [ -n "${BROKER_LOG:-}" ]; then cp "$dir/broker.log" "$BROKER_LOG"; cp "$dir/mem.txt" "$BROKER_LOG.mem"; fi
