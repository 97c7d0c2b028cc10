package web

import (
	"strconv"

	"github.com/freifunkMUC/wgkex-go/internal/pyjson"
)

// The answers are written by hand, byte for byte as Flask writes them: json.dumps with sort_keys, compact
// separators, ensure_ascii (pyjson.AppendString) and a trailing newline. Each body below lists its keys in sorted
// order.

// appendStrings appends a JSON list of strings.
func appendStrings(dst []byte, list []string) []byte {
	dst = append(dst, '[')
	for i, s := range list {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = pyjson.AppendString(dst, s)
	}
	return append(dst, ']')
}

// appendMessage appends {"Message":msg} and a newline, the v1 answer.
func appendMessage(dst []byte, msg string) []byte {
	dst = append(dst, `{"Message":`...)
	return append(pyjson.AppendString(dst, msg), "}\n"...)
}

// appendEndpoint appends the v2 answer {"Endpoint":{"Address":…,"AllowedIPs":[…],"Port":"…","PublicKey":…}} and a
// newline. Port is a string there, as the reference writes str(port).
func appendEndpoint(dst []byte, address string, allowedIPs []string, port int, publicKey string) []byte {
	dst = append(dst, `{"Endpoint":{"Address":`...)
	dst = pyjson.AppendString(dst, address)
	dst = append(dst, `,"AllowedIPs":`...)
	dst = appendStrings(dst, allowedIPs)
	dst = append(dst, `,"Port":"`...)
	dst = strconv.AppendInt(dst, int64(port), 10)
	dst = append(dst, '"')
	dst = append(dst, `,"PublicKey":`...)
	dst = pyjson.AppendString(dst, publicKey)
	return append(dst, "}}\n"...)
}

// appendLocations appends {"locations":[…]} and a newline.
func appendLocations(dst []byte, locations []string) []byte {
	dst = append(dst, `{"locations":`...)
	return append(appendStrings(dst, locations), "}\n"...)
}

// appendError appends {"error":{"message":msg}} and a newline, the reference's error shape.
func appendError(dst []byte, msg string) []byte {
	dst = append(dst, `{"error":{"message":`...)
	return append(pyjson.AppendString(dst, msg), "}}\n"...)
}
