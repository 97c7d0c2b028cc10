package broker

import (
	"encoding/json"
	"fmt"
)

// ParseRequest parses a registration body: a JSON object with the strings public_key and domain and an optional
// location. Like the reference, it ignores the Content-Type (Gluon posts JSON as a form). A location that is not a
// string is ignored, as an unknown location falls back to all gateways.
func ParseRequest(body []byte) (Request, error) {
	if r, ok := parsePlain(body); ok {
		return r, nil
	}
	return parseJSON(body)
}

// parseJSON is ParseRequest by encoding/json, for every body.
func parseJSON(body []byte) (Request, error) {
	var raw struct {
		PublicKey json.RawMessage `json:"public_key"`
		Domain    json.RawMessage `json:"domain"`
		Location  json.RawMessage `json:"location"`
	}
	if err := json.Unmarshal(body, &raw); err != nil { // also refuses data after the object
		return Request{}, fmt.Errorf("%w: body is not a JSON object: %v", ErrBadRequest, err)
	}
	var r Request
	if err := stringField(raw.PublicKey, "public_key", &r.PublicKey); err != nil {
		return Request{}, err
	}
	if err := stringField(raw.Domain, "domain", &r.Domain); err != nil {
		return Request{}, err
	}
	if len(raw.Location) > 0 {
		_ = json.Unmarshal(raw.Location, &r.Location)
	}
	return r, nil
}

func stringField(v json.RawMessage, name string, dst *string) error {
	if len(v) == 0 {
		return fmt.Errorf("%w: %s missing", ErrBadRequest, name)
	}
	if err := json.Unmarshal(v, dst); err != nil {
		return fmt.Errorf("%w: %s is not a string", ErrBadRequest, name)
	}
	return nil
}

// parsePlain is ParseRequest for the body every node sends: one object whose members are public_key, domain and
// location, each at most once, spelled so, each a string of printable ASCII without escapes, with JSON's white
// space around. For such a body it gives what parseJSON gives (FuzzParseRequest checks), in a tenth of the time;
// it reports false for every other body, which parseJSON then reads (the rest of JSON, and its refusals).
func parsePlain(body []byte) (Request, bool) {
	var r Request
	var seen [3]bool
	i := skipSpace(body, 0)
	if i == len(body) || body[i] != '{' {
		return Request{}, false
	}
	i = skipSpace(body, i+1)
	for {
		name, j, ok := plainString(body, i)
		if !ok {
			return Request{}, false
		}
		j = skipSpace(body, j)
		if j == len(body) || body[j] != ':' {
			return Request{}, false
		}
		value, k, ok := plainString(body, skipSpace(body, j+1))
		if !ok {
			return Request{}, false
		}
		var field int
		switch name {
		case "public_key":
			field, r.PublicKey = 0, value
		case "domain":
			field, r.Domain = 1, value
		case "location":
			field, r.Location = 2, value
		default:
			return Request{}, false
		}
		if seen[field] {
			return Request{}, false
		}
		seen[field] = true
		i = skipSpace(body, k)
		if i == len(body) {
			return Request{}, false
		}
		if body[i] == '}' {
			break
		}
		if body[i] != ',' {
			return Request{}, false
		}
		i = skipSpace(body, i+1)
	}
	if !seen[0] || !seen[1] || skipSpace(body, i+1) != len(body) {
		return Request{}, false
	}
	return r, true
}

// plainString reads a JSON string at body[i] made of printable ASCII without a backslash, and where it ends.
func plainString(body []byte, i int) (string, int, bool) {
	if i == len(body) || body[i] != '"' {
		return "", 0, false
	}
	for j := i + 1; j < len(body); j++ {
		switch c := body[j]; {
		case c == '"':
			return string(body[i+1 : j]), j + 1, true
		case c < 0x20 || c >= 0x7f || c == '\\':
			return "", 0, false
		}
	}
	return "", 0, false
}

// skipSpace skips JSON's white space from body[i].
func skipSpace(body []byte, i int) int {
	for i < len(body) && (body[i] == ' ' || body[i] == '\t' || body[i] == '\n' || body[i] == '\r') {
		i++
	}
	return i
}
