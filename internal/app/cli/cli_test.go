package cli

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
)

func TestProgram(t *testing.T) {
	var ran []string
	p := Program{Name: "prog", Summary: "does things", Commands: []Command{
		{Args: "[--config FILE]", Summary: "serve", Run: func(_ context.Context, a []string) error {
			ran = append(ran, "serve "+strings.Join(a, " "))
			return nil
		}},
		{Name: "one", Args: "FILE", Summary: "one job", Run: func(_ context.Context, a []string) error {
			ran = append(ran, "one "+strings.Join(a, " "))
			return errors.New("failed")
		}},
	}}
	tests := []struct {
		args    []string
		out     string // a line the output must hold
		err     string
		ran     string
		nothing bool // nothing may run
	}{
		{args: nil, ran: "serve "},
		{args: []string{"--config", "x.yaml"}, ran: "serve --config x.yaml"},
		{args: []string{"one", "f"}, ran: "one f", err: "failed"},
		{args: []string{"--help"}, out: "  prog one FILE", nothing: true},
		{args: []string{"-h"}, out: "  prog [--config FILE]  serve", nothing: true},
		{args: []string{"help"}, out: "  prog --version", nothing: true},
		{args: []string{"one", "--help"}, out: "usage: prog one FILE", nothing: true},
		{args: []string{"--config", "x", "-h"}, out: "usage: prog [--config FILE]", nothing: true},
		{args: []string{"--version"}, out: "prog ", nothing: true},
		{args: []string{"two"}, err: "unknown command \"two\": `prog --help` lists the commands", nothing: true},
	}
	for _, tc := range tests {
		ran = nil
		var out bytes.Buffer
		err := p.Run(context.Background(), tc.args, &out)
		if (err == nil) != (tc.err == "") || (err != nil && err.Error() != tc.err) {
			t.Errorf("%q: error %v, want %q", tc.args, err, tc.err)
		}
		if !strings.Contains(out.String(), tc.out) {
			t.Errorf("%q: output %q lacks %q", tc.args, out.String(), tc.out)
		}
		if tc.nothing && len(ran) > 0 || tc.ran != "" && (len(ran) != 1 || ran[0] != tc.ran) {
			t.Errorf("%q ran %q, want %q", tc.args, ran, tc.ran)
		}
	}
}
