package wire

import (
	"encoding/json"
	"fmt"
	"strings"
)

// The topics brokers use among themselves when several share one MQTT server. They are ours: reference workers
// never subscribe to them. {id} is a broker's MQTT client id.
const (
	clusterRoot = "wgkex/broker"

	// KeyAllFilter takes every key any broker publishes, wireguard/+/all.
	KeyAllFilter = keyRoot + "/+/all"
	// SharedGroup is the shared-subscription group of the brokers: a message on a $share/wgkex/… subscription
	// goes to exactly one of them.
	SharedGroup = "$share/wgkex/"
	// BrokerStatusFilter takes every broker's liveness, wgkex/broker/+/status.
	BrokerStatusFilter = clusterRoot + "/+/status"
	// ChoiceFilter takes every broker's gateway choices, wgkex/broker/+/choice.
	ChoiceFilter = clusterRoot + "/+/choice"
)

// BrokerStatusTopic is wgkex/broker/{id}/status: retained "1" while the broker is connected, "0" (its will) after.
func BrokerStatusTopic(id string) string { return clusterRoot + "/" + id + "/status" }

// ChoiceTopic is wgkex/broker/{id}/choice, where a broker announces each gateway it chose as "{worker}/{domain}".
func ChoiceTopic(id string) string { return clusterRoot + "/" + id + "/choice" }

// CatchupRequestTopic is wgkex/broker/{id}/catchup, where another broker asks broker id for the keys it missed.
func CatchupRequestTopic(id string) string { return clusterRoot + "/" + id + "/catchup" }

// CatchupKeysTopic is wgkex/broker/{id}/keys, where broker id receives the keys it asked for, in batches.
func CatchupKeysTopic(id string) string { return clusterRoot + "/" + id + "/keys" }

// ParseBrokerTopic splits wgkex/broker/{id}/{kind}.
func ParseBrokerTopic(topic string) (id, kind string, err error) {
	p, err := splitTopic(topic, clusterRoot, 2)
	if err != nil {
		return "", "", err
	}
	return p[0], p[1], nil
}

// FormatChoice renders a choice announcement: "{worker}/{domain}".
func FormatChoice(worker, domain string) []byte { return []byte(worker + "/" + domain) }

// ParseChoice parses "{worker}/{domain}"; both must be valid topic levels.
func ParseChoice(payload []byte) (worker, domain string, err error) {
	w, d, ok := strings.Cut(string(payload), "/")
	if !ok {
		return "", "", fmt.Errorf("%w: choice %q is not worker/domain", ErrPayload, payload)
	}
	if err := ValidateTopicLevel(w); err != nil {
		return "", "", fmt.Errorf("%w: choice worker: %v", ErrPayload, err)
	}
	if err := ValidateTopicLevel(d); err != nil {
		return "", "", fmt.Errorf("%w: choice domain: %v", ErrPayload, err)
	}
	return w, d, nil
}

// CatchupRequest asks one broker for every key it has seen since Since (Unix seconds), to be sent to From.
type CatchupRequest struct {
	From  string `json:"from"`
	Since int64  `json:"since"`
}

// ParseCatchupRequest parses a catch-up request; From must be a valid topic level.
func ParseCatchupRequest(payload []byte) (CatchupRequest, error) {
	if len(payload) > maxReplayRequest {
		return CatchupRequest{}, fmt.Errorf("%w: catch-up request of %d bytes", ErrPayload, len(payload))
	}
	var r CatchupRequest
	if err := json.Unmarshal(payload, &r); err != nil {
		return CatchupRequest{}, fmt.Errorf("%w: catch-up request: %v", ErrPayload, err)
	}
	if err := ValidateTopicLevel(r.From); err != nil {
		return CatchupRequest{}, fmt.Errorf("%w: catch-up request from: %v", ErrPayload, err)
	}
	return r, nil
}

// CatchupKey is one key of a catch-up batch with its domain and when it was first and last registered (Unix
// seconds).
type CatchupKey struct {
	Domain    string `json:"d"`
	Key       string `json:"k"`
	FirstSeen int64  `json:"f"`
	LastSeen  int64  `json:"l"`
}

// CatchupBatch is one message of a catch-up answer; the one with Last set ends it. Seq counts from 0.
type CatchupBatch struct {
	Seq  int          `json:"seq"`
	Last bool         `json:"last"`
	Keys []CatchupKey `json:"keys"`
}

// ParseCatchupBatch parses a catch-up batch. Domains and keys are checked by the receiver as it checks a
// registration.
func ParseCatchupBatch(payload []byte) (CatchupBatch, error) {
	var b CatchupBatch
	if err := json.Unmarshal(payload, &b); err != nil {
		return CatchupBatch{}, fmt.Errorf("%w: catch-up batch: %v", ErrPayload, err)
	}
	if b.Seq < 0 {
		return CatchupBatch{}, fmt.Errorf("%w: catch-up batch with negative seq", ErrPayload)
	}
	return b, nil
}

// BrokerSyncTopic is wgkex/broker/{id}/sync, on which a broker sends itself tokens to learn that it has handled
// every message the server sent it before (see mqttclient.Client.Sync).
func BrokerSyncTopic(id string) string { return clusterRoot + "/" + id + "/sync" }
