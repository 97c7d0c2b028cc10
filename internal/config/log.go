package config

import (
	"io"
	"log/slog"
)

// Logger builds the root logger the configuration asks for, writing to w. Validate has checked level and format.
func (l Log) Logger(w io.Writer) *slog.Logger {
	level, _ := ParseLevel(l.Level)
	opts := &slog.HandlerOptions{Level: level}
	if l.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
