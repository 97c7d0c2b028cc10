// Package pyjson writes JSON strings byte for byte as Python's json.dumps does by default (ensure_ascii=True):
// the reference's REST answers and MQTT payloads are written that way, and wgkex keeps them identical. Go's
// encoding/json cannot: it escapes < > & and writes non-ASCII as UTF-8, and has no option for either.
package pyjson

import (
	"unicode/utf16"
	"unicode/utf8"
)

// lowerHex is the lowercase hexadecimal alphabet Python uses in \uXXXX.
const lowerHex = "0123456789abcdef"

// plain reports whether Python writes the ASCII byte c as it is: printable ASCII except " and \.
func plain(c byte) bool { return c >= ' ' && c <= '~' && c != '"' && c != '\\' }

// AppendString appends s as a JSON string the way Python's json.dumps(ensure_ascii=True) writes it: printable
// ASCII (space to ~) but " and \ as it is, the five short escapes, every other character as \uXXXX with lowercase
// hex and above U+FFFF as a UTF-16 surrogate pair; < > & are left alone (encoding/json does the opposite on both
// counts). Bytes that are not valid UTF-8 become \ufffd, as encoding/json writes them (a Python str cannot hold
// them). The broker's REST answers and the worker's data payloads are written with it, byte for byte as the
// reference's.
func AppendString(dst []byte, s string) []byte {
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
	return append(dst, '\\', 'u', lowerHex[r>>12&0xf], lowerHex[r>>8&0xf], lowerHex[r>>4&0xf], lowerHex[r&0xf])
}
