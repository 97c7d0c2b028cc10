// Package wire holds the wgkex wire protocol shared by the broker and the worker: the WireGuard public key rule,
// the link-local address derived from a key, the MQTT topics and their payloads. It is pure: no I/O, no clock.
package wire

import (
	"crypto/md5"
	"encoding/base64"
	"errors"
	"fmt"
	"net/netip"
)

// KeyLen is the length of a WireGuard public key in canonical base64.
const KeyLen = 44

// ErrInvalidKey reports a string that is not a canonical base64 WireGuard public key.
var ErrInvalidKey = errors.New("invalid WireGuard public key")

// ValidateKey checks s against the reference rule ^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw480]=$ and that it decodes to
// 32 bytes. Unlike the reference (Python's $), a trailing newline is rejected.
func ValidateKey(s string) error {
	if len(s) != KeyLen {
		return fmt.Errorf("%w: length %d, want %d", ErrInvalidKey, len(s), KeyLen)
	}
	for i := 0; i < 42; i++ {
		if !isBase64(s[i]) {
			return fmt.Errorf("%w: character %d is not base64", ErrInvalidKey, i+1)
		}
	}
	if !isLastKeyChar(s[42]) || s[43] != '=' {
		return fmt.Errorf("%w: not canonical base64 of 32 bytes", ErrInvalidKey)
	}
	var buf [33]byte
	n, err := base64.StdEncoding.Decode(buf[:], []byte(s))
	if err != nil || n != 32 {
		return fmt.Errorf("%w: does not decode to 32 bytes", ErrInvalidKey)
	}
	return nil
}

func isBase64(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '+' || c == '/'
}

// isLastKeyChar reports whether c may stand 43rd in a 32-byte key: a base64 digit whose low two bits are zero.
func isLastKeyChar(c byte) bool {
	switch c {
	case 'A', 'E', 'I', 'M', 'Q', 'U', 'Y', 'c', 'g', 'k', 'o', 's', 'w', '4', '8', '0':
		return true
	}
	return false
}

// LinkLocal returns the IPv6 link-local address that nodes derive from their public key, bit for bit as the
// reference and the Gluon firmware do: md5 of the key plus a newline, MAC 02:h0:h1:h2:h3:h4, modified EUI-64 with
// the first byte ORed (not XORed) with 0x02, in fe80::/64.
func LinkLocal(key string) netip.Addr {
	h := md5.New()
	h.Write([]byte(key))
	h.Write([]byte{'\n'})
	var sum [md5.Size]byte
	h.Sum(sum[:0])
	mac := [6]byte{0x02, sum[0], sum[1], sum[2], sum[3], sum[4]}
	a := [16]byte{0: 0xfe, 1: 0x80}
	a[8] = mac[0] | 0x02
	a[9], a[10] = mac[1], mac[2]
	a[11], a[12] = 0xff, 0xfe
	a[13], a[14], a[15] = mac[3], mac[4], mac[5]
	return netip.AddrFrom16(a)
}

// LinkLocalPrefix returns LinkLocal(key) as a /128 prefix, the peer's allowed IP and route destination.
func LinkLocalPrefix(key string) netip.Prefix {
	return netip.PrefixFrom(LinkLocal(key), 128)
}
