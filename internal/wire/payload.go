package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/freifunkMUC/wgkex-go/internal/pyjson"
)

// ErrPayload reports a payload that does not parse.
var ErrPayload = errors.New("malformed payload")

// maxIntPayload bounds an integer payload; anything longer is not a count.
const maxIntPayload = 20

// ParseInt parses an integer payload such as the reference's str(int) ("20", "-1", "1", "0"). Surrounding
// whitespace is tolerated; an empty payload (a cleared retained message) is an error.
func ParseInt(payload []byte) (int, error) {
	s := strings.TrimSpace(string(payload))
	if s == "" {
		return 0, fmt.Errorf("%w: empty integer", ErrPayload)
	}
	if len(s) > maxIntPayload {
		return 0, fmt.Errorf("%w: integer too long", ErrPayload)
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("%w: %q is not an integer", ErrPayload, s)
	}
	return n, nil
}

// FormatInt renders n as the reference does: ASCII decimal.
func FormatInt(n int) []byte { return strconv.AppendInt(nil, int64(n), 10) }

// WorkerData is a worker's endpoint for one domain, published retained on wireguard-worker/{worker}/{domain}/data.
type WorkerData struct {
	ExternalAddress string
	Port            int
	PublicKey       string
	LinkAddress     string
}

// Marshal renders d byte for byte as the reference worker's json.dumps does:
// {"ExternalAddress": "gw04.ext.ffmuc.net", "Port": 51820, "PublicKey": "…", "LinkAddress": "fe80::1"}.
func (d WorkerData) Marshal() []byte {
	b := append(make([]byte, 0, 192), `{"ExternalAddress": `...)
	b = pyjson.AppendString(b, d.ExternalAddress)
	b = append(b, `, "Port": `...)
	b = strconv.AppendInt(b, int64(d.Port), 10)
	b = append(b, `, "PublicKey": `...)
	b = pyjson.AppendString(b, d.PublicKey)
	b = append(b, `, "LinkAddress": `...)
	b = pyjson.AppendString(b, d.LinkAddress)
	return append(b, '}')
}

// maxDataPayload bounds a worker data payload; the real ones are about 150 bytes.
const maxDataPayload = 4096

// ParseWorkerData parses a data payload. Port may be a JSON number (the reference) or a numeric string. Every
// field must be present and sane, since the broker hands them to nodes as their endpoint.
func ParseWorkerData(payload []byte) (WorkerData, error) {
	if len(payload) > maxDataPayload {
		return WorkerData{}, fmt.Errorf("%w: worker data of %d bytes", ErrPayload, len(payload))
	}
	var raw struct {
		ExternalAddress *string
		Port            json.RawMessage
		PublicKey       *string
		LinkAddress     *string
	}
	dec := json.NewDecoder(bytes.NewReader(payload))
	if err := dec.Decode(&raw); err != nil {
		return WorkerData{}, fmt.Errorf("%w: worker data is not a JSON object: %v", ErrPayload, err)
	}
	if dec.More() {
		return WorkerData{}, fmt.Errorf("%w: trailing data after worker data", ErrPayload)
	}
	var problems []string
	d := WorkerData{}
	if raw.ExternalAddress == nil || *raw.ExternalAddress == "" {
		problems = append(problems, "ExternalAddress missing")
	} else {
		d.ExternalAddress = *raw.ExternalAddress
	}
	port, err := parsePort(raw.Port)
	if err != nil {
		problems = append(problems, err.Error())
	}
	d.Port = port
	if raw.PublicKey == nil || ValidateKey(*raw.PublicKey) != nil {
		problems = append(problems, "PublicKey missing or invalid")
	} else {
		d.PublicKey = *raw.PublicKey
	}
	if raw.LinkAddress == nil {
		problems = append(problems, "LinkAddress missing")
	} else if _, err := netip.ParseAddr(*raw.LinkAddress); err != nil {
		problems = append(problems, fmt.Sprintf("LinkAddress %q is not an IP address", *raw.LinkAddress))
	} else {
		d.LinkAddress = *raw.LinkAddress
	}
	if len(problems) > 0 {
		return WorkerData{}, fmt.Errorf("%w: worker data: %s", ErrPayload, strings.Join(problems, "; "))
	}
	return d, nil
}

func parsePort(raw json.RawMessage) (int, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return 0, errors.New("missing Port")
	}
	var n json.Number
	if err := json.Unmarshal(raw, &n); err != nil {
		var s string
		if json.Unmarshal(raw, &s) != nil {
			return 0, fmt.Errorf("port %s is not a number", raw)
		}
		n = json.Number(s)
	}
	p, err := strconv.Atoi(n.String())
	if err != nil || p < 1 || p > 65535 {
		return 0, fmt.Errorf("port %s is not a port number", raw)
	}
	return p, nil
}

// ReplayRequest is what a worker publishes on wgkex/replay/{worker}/request after every (re)connect: the domains
// whose keys it wants.
type ReplayRequest struct {
	Domains []string `json:"domains"`
}

// ReplayBatch is one answer message on wgkex/replay/{worker}/keys. A replay of a domain is a sequence of batches
// numbered from 0; the one with Last set ends it (an empty domain gets one empty, last batch). The last batch also
// carries Revoked: the keys revoked within the replay window and not registered again since, which the worker
// removes from the device, even where it found them there itself. Workers from before revocations ignore it.
type ReplayBatch struct {
	Domain  string   `json:"domain"`
	Seq     int      `json:"seq"`
	Last    bool     `json:"last"`
	Keys    []string `json:"keys"`
	Revoked []string `json:"revoked,omitempty"`
}

// maxReplayRequest bounds a replay request payload.
const maxReplayRequest = 64 << 10

// ParseReplayRequest parses a replay request; every domain must be a valid topic level.
func ParseReplayRequest(payload []byte) (ReplayRequest, error) {
	if len(payload) > maxReplayRequest {
		return ReplayRequest{}, fmt.Errorf("%w: replay request of %d bytes", ErrPayload, len(payload))
	}
	var r ReplayRequest
	if err := json.Unmarshal(payload, &r); err != nil {
		return ReplayRequest{}, fmt.Errorf("%w: replay request: %v", ErrPayload, err)
	}
	if len(r.Domains) == 0 {
		return ReplayRequest{}, fmt.Errorf("%w: replay request names no domain", ErrPayload)
	}
	for _, d := range r.Domains {
		if err := ValidateTopicLevel(d); err != nil {
			return ReplayRequest{}, fmt.Errorf("%w: replay request domain: %v", ErrPayload, err)
		}
	}
	return r, nil
}

// ParseReplayBatch parses one replay answer. Keys are not validated here: the worker checks each one as it checks
// a live key.
func ParseReplayBatch(payload []byte) (ReplayBatch, error) {
	var b ReplayBatch
	if err := json.Unmarshal(payload, &b); err != nil {
		return ReplayBatch{}, fmt.Errorf("%w: replay batch: %v", ErrPayload, err)
	}
	if b.Domain == "" || b.Seq < 0 {
		return ReplayBatch{}, fmt.Errorf("%w: replay batch without domain or with negative seq", ErrPayload)
	}
	return b, nil
}
