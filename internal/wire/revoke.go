package wire

import (
	"encoding/json"
	"fmt"
	"time"
)

// revokeRoot is where the broker announces revoked keys: wgkex/revoke/{domain}. It is ours and not under
// wireguard/, whose every message a reference worker would take as a key to add.
const revokeRoot = "wgkex/revoke"

// RevokeFilter takes the revocations of every domain, wgkex/revoke/+ (the other brokers subscribe to it).
const RevokeFilter = revokeRoot + "/+"

// RevokeTopic is where the broker publishes the revocation of a key in domain: wgkex/revoke/{domain}. Workers
// subscribe to it for each of their domains.
func RevokeTopic(domain string) string { return revokeRoot + "/" + domain }

// ParseRevokeTopic returns the domain of wgkex/revoke/{domain}.
func ParseRevokeTopic(topic string) (domain string, err error) {
	p, err := splitTopic(topic, revokeRoot, 1)
	if err != nil {
		return "", err
	}
	return p[0], nil
}

// Revocation is the payload of wgkex/revoke/{domain}: the key revoked, when (registrations of it last seen at or
// before then are void) and the broker that revoked it (its MQTT client id; empty for the embedded server).
//
//	{"key": "o52Ge+Rpj4CUSitVag9mS7pSXUesNM0ESnvj/wwehkg=", "at": "2026-01-02T03:04:05.123456789Z", "by": "broker-a"}
type Revocation struct {
	Key string    `json:"key"`
	At  time.Time `json:"at"`
	By  string    `json:"by,omitempty"`
}

// maxRevocation bounds a revocation payload; a real one is about 120 bytes.
const maxRevocation = 1024

// Marshal renders r as JSON.
func (r Revocation) Marshal() []byte {
	b, _ := json.Marshal(r) // a string, a time and a string always marshal
	return b
}

// ParseRevocation parses a revocation: the key must be a valid WireGuard public key and the time set.
func ParseRevocation(payload []byte) (Revocation, error) {
	if len(payload) > maxRevocation {
		return Revocation{}, fmt.Errorf("%w: revocation of %d bytes", ErrPayload, len(payload))
	}
	var r Revocation
	if err := json.Unmarshal(payload, &r); err != nil {
		return Revocation{}, fmt.Errorf("%w: revocation: %v", ErrPayload, err)
	}
	if err := ValidateKey(r.Key); err != nil {
		return Revocation{}, fmt.Errorf("%w: revocation: %v", ErrPayload, err)
	}
	if r.At.IsZero() {
		return Revocation{}, fmt.Errorf("%w: revocation without a time", ErrPayload)
	}
	if r.By != "" {
		if err := ValidateTopicLevel(r.By); err != nil {
			return Revocation{}, fmt.Errorf("%w: revocation by: %v", ErrPayload, err)
		}
	}
	return r, nil
}
