package web

import (
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// The answers are written by hand, byte for byte as Flask writes them: json.dumps with sort_keys, compact
// separators, ensure_ascii and a trailing newline. Python escapes every character outside printable ASCII
// (space to ~) as \uXXXX with lowercase hex, characters above U+FFFF as a UTF-16 surrogate pair, and leaves < > &
// alone; encoding/json does the opposite on both counts. Each body below lists its keys in sorted order.

// hex is the lowercase hexadecimal alphabet Python uses in \uXXXX.
const hex = "0123456789abcdef"

// plain reports whether Python writes the ASCII byte c as it is: printable ASCII except " and \.
func plain(c byte) bool { return c >= ' ' && c <= '~' && c != '"' && c != '\\' }

// appendString appends s as a JSON string the way Python's json.dumps(ensure_ascii=True) writes it. Bytes that
// are not valid UTF-8 become \ufffd, as encoding/json writes them (a Python str cannot hold them).
func appendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if plain(c) {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			default:
				dst = appendEscape(dst, rune(c))
			}
			i++
			start = i
			continue
		}
		dst = append(dst, s[start:i]...)
		r, size := utf8.DecodeRuneInString(s[i:])
		if r1, r2 := utf16.EncodeRune(r); r1 != utf8.RuneError {
			dst = appendEscape(appendEscape(dst, r1), r2)
		} else {
			dst = appendEscape(dst, r)
		}
		i += size
		start = i
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// appendEscape appends \uXXXX for r ≤ U+FFFF.
func appendEscape(dst []byte, r rune) []byte {
	return append(dst, '\\', 'u', hex[r>>12&0xf], hex[r>>8&0xf], hex[r>>4&0xf], hex[r&0xf])
}

// appendStrings appends a JSON list of strings.
func appendStrings(dst []byte, list []string) []byte {
	dst = append(dst, '[')
	for i, s := range list {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendString(dst, s)
	}
	return append(dst, ']')
}

// appendMessage appends {"Message":msg} and a newline, the v1 answer.
func appendMessage(dst []byte, msg string) []byte {
	dst = append(dst, `{"Message":`...)
	return append(appendString(dst, msg), "}\n"...)
}

// appendEndpoint appends the v2 answer {"Endpoint":{"Address":…,"AllowedIPs":[…],"Port":"…","PublicKey":…}} and a
// newline. Port is a string there, as the reference writes str(port).
func appendEndpoint(dst []byte, address string, allowedIPs []string, port int, publicKey string) []byte {
	dst = append(dst, `{"Endpoint":{"Address":`...)
	dst = appendString(dst, address)
	dst = append(dst, `,"AllowedIPs":`...)
	dst = appendStrings(dst, allowedIPs)
	dst = append(dst, `,"Port":"`...)
	dst = strconv.AppendInt(dst, int64(port), 10)
	dst = append(dst, '"')
	dst = append(dst, `,"PublicKey":`...)
	dst = appendString(dst, publicKey)
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
	return append(appendString(dst, msg), "}}\n"...)
}
