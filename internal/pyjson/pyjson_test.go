package pyjson

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"unicode/utf16"
	"unicode/utf8"
)

// The wanted outputs are Python's, from
// python3 -c 'import json; print(json.dumps({"a": S}, separators=(",", ":"), sort_keys=True))', as Flask writes them.
func TestAppendString(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", `""`},
		{"gw04.ext.ffmuc.net", `"gw04.ext.ffmuc.net"`},
		{"ü<>&\u2028😀", `"\u00fc<>&\u2028\ud83d\ude00"`},
		{`a"b\c/d`, `"a\"b\\c/d"`},
		{"\x00\x01\x1f\x7f\b\f\n\r\t", `"\u0000\u0001\u001f\u007f\b\f\n\r\t"`},
		{"été", `"\u00e9t\u00e9"`},
		{"€100", `"\u20ac100"`},
		{"\U0010ffff", `"\udbff\udfff"`},
		{"\ufffd", `"\ufffd"`},
		{"</script>", `"</script>"`},
		{"\u0080\u07ff\u0800\uffff\U00010000", `"\u0080\u07ff\u0800\uffff\ud800\udc00"`},
		// Not valid UTF-8: a Python str cannot hold it; written as encoding/json does.
		{"a\xffb\xc3", `"a\ufffdb\ufffd"`},
	}
	for _, tt := range tests {
		if got := string(AppendString(nil, tt.in)); got != tt.want {
			t.Errorf("AppendString(%q) = %s, want %s", tt.in, got, tt.want)
		}
	}
}

// pythonString is the reference property, written the slow and obvious way after CPython's
// py_encode_basestring_ascii: printable ASCII but " and \ as they are, the five short escapes, every other code
// point as \uXXXX, above U+FFFF as a surrogate pair.
func pythonString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s { // invalid UTF-8 yields U+FFFD
		switch {
		case r == '"':
			b.WriteString(`\"`)
		case r == '\\':
			b.WriteString(`\\`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r == '\b':
			b.WriteString(`\b`)
		case r == '\f':
			b.WriteString(`\f`)
		case r >= ' ' && r <= '~':
			b.WriteRune(r)
		case r > 0xffff:
			r1, r2 := utf16.EncodeRune(r)
			fmt.Fprintf(&b, `\u%04x\u%04x`, r1, r2)
		default:
			fmt.Fprintf(&b, `\u%04x`, r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

func FuzzAppendString(f *testing.F) {
	for _, s := range []string{"", "gw04.ext.ffmuc.net", "ü<>&\u2028😀", "\x00\x7f\"\\", "\xff\xc3", "\U0010ffff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := string(AppendString(nil, s))
		if want := pythonString(s); got != want {
			t.Fatalf("AppendString(%q) = %s, want %s", s, got, want)
		}
		for i := 0; i < len(got); i++ {
			if got[i] < ' ' || got[i] > '~' {
				t.Fatalf("AppendString(%q) = %s: byte %d is not printable ASCII", s, got, i)
			}
		}
		var back string
		if err := json.Unmarshal([]byte(got), &back); err != nil {
			t.Fatalf("AppendString(%q) = %s: not JSON: %v", s, got, err)
		}
		if utf8.ValidString(s) && back != s {
			t.Fatalf("AppendString(%q) = %s reads back as %q", s, got, back)
		}
	})
}
