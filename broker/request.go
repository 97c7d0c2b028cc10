package broker

import (
	"encoding/json"
	"fmt"
)

// ParseRequest parses a registration body: a JSON object with the strings public_key and domain and an optional
// location. Like the reference, it ignores the Content-Type (Gluon posts JSON as a form). A location that is not a
// string is ignored, as an unknown location falls back to all gateways.
func ParseRequest(body []byte) (Request, error) {
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
