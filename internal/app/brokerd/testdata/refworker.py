#!/usr/bin/env python3
"""Plays a reference (Python) wgkex worker against an MQTT server, with the payloads of SPEC §2.1:
connect with a last will, publish the endpoint data, status 1 and the connected-peer metric, then stay
connected until stdin closes (ready once subscribed), printing "key KEY" for every key it receives on wireguard/DOMAIN/+.
Usage: refworker.py HOST PORT WORKER DOMAIN PUBKEY LINKADDR PEERS; credentials from $MQTT_USERNAME, $MQTT_PASSWORD."""
import json
import os
import sys

import paho.mqtt.client as mqtt

host, port, worker, domain, pubkey, linkaddr, peers = sys.argv[1:8]

try:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION1, client_id=worker)
except AttributeError:  # paho-mqtt 1.x
    client = mqtt.Client(client_id=worker)
if os.environ.get("MQTT_USERNAME"):
    client.username_pw_set(os.environ["MQTT_USERNAME"], os.environ.get("MQTT_PASSWORD"))
client.will_set(f"wireguard-worker/{worker}/status", 0, qos=1, retain=True)


def on_connect(client, userdata, flags, rc):
    data = {"ExternalAddress": worker.replace(".in.", ".ext."), "Port": 51820, "PublicKey": pubkey, "LinkAddress": linkaddr}
    client.publish(f"wireguard-worker/{worker}/{domain}/data", json.dumps(data), qos=1, retain=True)
    client.publish(f"wireguard-worker/{worker}/status", 1, qos=1, retain=True)
    client.publish(f"wireguard-metrics/{domain}/{worker}/connected_peers", int(peers), retain=True)
    client.subscribe(f"wireguard/{domain}/+")


def on_subscribe(client, userdata, mid, granted_qos):
    print("ready", flush=True)


def on_message(client, userdata, msg):
    print("key " + msg.payload.decode(), flush=True)


client.on_connect = on_connect
client.on_message = on_message
client.on_subscribe = on_subscribe
client.connect(host, int(port), keepalive=5)
client.loop_start()
sys.stdin.read()
client.loop_stop()
