package cluster

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/freifunkMUC/wgkex-go/internal/wire"
)

// The topics brokers use among themselves when several share one MQTT server. They are ours: reference workers
// never subscribe to them. {id} is a broker's MQTT client id.
const (
	clusterRoot = "wgkex/broker"

	// KeyAllFilter takes every key any broker publishes, wireguard/+/all.
	KeyAllFilter = "wireguard/+/all"
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

// ChoiceTopic is wgkex/broker/{id}/choice, where a broker announces the gateways it chose, one "{worker}/{domain}"
// a line (FormatChoice): choices made at the same time share a message.
func ChoiceTopic(id string) string { return clusterRoot + "/" + id + "/choice" }

// CatchupRequestTopic is wgkex/broker/{id}/catchup, where another broker asks broker id for the keys it missed.
func CatchupRequestTopic(id string) string { return clusterRoot + "/" + id + "/catchup" }

// CatchupKeysTopic is wgkex/broker/{id}/keys, where broker id receives the keys it asked for, in batches.
func CatchupKeysTopic(id string) string { return clusterRoot + "/" + id + "/keys" }

// ParseBrokerTopic splits wgkex/broker/{id}/{kind}.
func ParseBrokerTopic(topic string) (id, kind string, err error) {
	rest, ok := strings.CutPrefix(topic, clusterRoot+"/")
	id, kind, ok2 := strings.Cut(rest, "/")
	if !ok || !ok2 || id == "" || kind == "" || strings.Contains(kind, "/") {
		return "", "", fmt.Errorf("%w %q: not %s/{id}/{kind}", wire.ErrTopic, topic, clusterRoot)
	}
	return id, kind, nil
}

// FormatChoice renders a choice announcement: "{worker}/{domain}". Several are joined by newlines.
func FormatChoice(worker, domain string) []byte { return []byte(worker + "/" + domain) }

// Choice is a gateway a broker chose for a node: the worker and the domain.
type Choice struct{ Worker, Domain string }

// ParseChoices parses an announcement of one or more choices, one "{worker}/{domain}" a line (ParseChoice), at
// most maxChoices of them (what Announce sends). It returns the valid ones, and one error for the rest: the first
// bad line's and how many there were, whatever the payload holds (a hostile announcement cannot make the error, or
// the work, grow faster than the payload).
func ParseChoices(payload []byte) ([]Choice, error) {
	var out []Choice
	var first error
	bad, lines := 0, 0
	for line := range bytes.SplitSeq(payload, []byte("\n")) {
		if lines++; lines > maxChoices {
			return out, fmt.Errorf("more than %d choices in one announcement, the rest dropped (%d bad before): %w",
				maxChoices, bad, cmp.Or(first, errTooManyChoices))
		}
		w, d, err := ParseChoice(line)
		if err != nil {
			if bad++; first == nil {
				first = err
			}
			continue
		}
		out = append(out, Choice{Worker: w, Domain: d})
	}
	if bad > 0 {
		return out, fmt.Errorf("%d bad choices in the announcement, the first: %w", bad, first)
	}
	return out, nil
}

var errTooManyChoices = errors.New("too many choices")

// ParseChoice parses "{worker}/{domain}"; both must be valid topic levels.
func ParseChoice(payload []byte) (worker, domain string, err error) {
	w, d, ok := strings.Cut(string(payload), "/")
	if !ok {
		return "", "", fmt.Errorf("%w: choice %q is not worker/domain", wire.ErrPayload, clip(payload))
	}
	if err := wire.ValidateTopicLevel(w); err != nil {
		return "", "", fmt.Errorf("%w: choice worker %q: not a topic level", wire.ErrPayload, clip([]byte(w)))
	}
	if err := wire.ValidateTopicLevel(d); err != nil {
		return "", "", fmt.Errorf("%w: choice domain %q: not a topic level", wire.ErrPayload, clip([]byte(d)))
	}
	return w, d, nil
}

// clip is the start of a payload for an error message, which may be logged: at most 64 bytes of it.
func clip(b []byte) []byte {
	if len(b) > 64 {
		return append(b[:64:64], "…"...)
	}
	return b
}

// maxRequest bounds a catch-up request.
const maxRequest = 64 << 10

// CatchupRequest asks one broker for every key it has seen since Since (Unix seconds), to be sent to From.
// Round numbers the asking broker's requests; the answer carries it back. A broker of an earlier version neither
// sends nor returns it (0).
type CatchupRequest struct {
	From  string `json:"from"`
	Since int64  `json:"since"`
	Round uint64 `json:"round,omitempty"`
}

// ParseCatchupRequest parses a catch-up request; From must be a valid topic level.
func ParseCatchupRequest(payload []byte) (CatchupRequest, error) {
	if len(payload) > maxRequest {
		return CatchupRequest{}, fmt.Errorf("%w: catch-up request of %d bytes", wire.ErrPayload, len(payload))
	}
	var r CatchupRequest
	if err := json.Unmarshal(payload, &r); err != nil {
		return CatchupRequest{}, fmt.Errorf("%w: catch-up request: %v", wire.ErrPayload, err)
	}
	if err := wire.ValidateTopicLevel(r.From); err != nil {
		return CatchupRequest{}, fmt.Errorf("%w: catch-up request from: %v", wire.ErrPayload, err)
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

// CatchupRevocation is one revocation of a catch-up answer: domain, key and when it was revoked (Unix
// nanoseconds, as the store keeps it).
type CatchupRevocation struct {
	Domain string `json:"d"`
	Key    string `json:"k"`
	At     int64  `json:"at"`
}

// CatchupBatch is one message of a catch-up answer; the one with Last set ends it. Seq counts from 0.
// From (the answering broker) and Round (the request's) tell a late batch of an earlier request from the
// answer awaited now; a broker of an earlier version sends neither. The last batch carries the revocations made
// since the time asked for (Revoked), which the asking broker applies after the keys; a broker of an earlier
// version neither sends nor reads them.
type CatchupBatch struct {
	From    string              `json:"from,omitempty"`
	Round   uint64              `json:"round,omitempty"`
	Seq     int                 `json:"seq"`
	Last    bool                `json:"last"`
	Keys    []CatchupKey        `json:"keys"`
	Revoked []CatchupRevocation `json:"revoked,omitempty"`
}

// ParseCatchupBatch parses a catch-up batch. Domains and keys are checked by the receiver as it checks a
// registration.
func ParseCatchupBatch(payload []byte) (CatchupBatch, error) {
	var b CatchupBatch
	if err := json.Unmarshal(payload, &b); err != nil {
		return CatchupBatch{}, fmt.Errorf("%w: catch-up batch: %v", wire.ErrPayload, err)
	}
	if b.Seq < 0 {
		return CatchupBatch{}, fmt.Errorf("%w: catch-up batch with negative seq", wire.ErrPayload)
	}
	return b, nil
}

// BrokerSyncTopic is wgkex/broker/{id}/sync, on which a broker sends itself tokens to learn that it has handled
// every message the server sent it before (see mqttclient.Client.Sync and Cluster.Sync).
func BrokerSyncTopic(id string) string { return clusterRoot + "/" + id + "/sync" }
