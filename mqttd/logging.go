package mqttd

import (
	"context"
	"errors"
	"log/slog"
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// redactHandler is the handler of the server's logger, mochi's included. mochi logs whole packets as attributes
// ("error processing packet" on a protocol violation such as a second CONNECT, "packet rejected" and "publish
// packet rejected" at debug level), and a CONNECT carries the client's password, an AUTH packet its
// authentication data. redactHandler replaces every packet among a record's attributes (also those added with
// Logger.With, and inside groups) by what identifies it: its type, packet id and topic. A secret so never reaches
// a log line, whatever the level or the handler's format. It also lowers mochi's warnings of routine events to
// debug (routine).
type redactHandler struct{ slog.Handler }

// redactingLogger returns log with packets among its attributes redacted.
func redactingLogger(log *slog.Logger) *slog.Logger {
	if _, ok := log.Handler().(redactHandler); ok {
		return log
	}
	return slog.New(redactHandler{log.Handler()})
}

// Handle passes r on, with a copy of its attributes redacted if one of them holds a packet, and mochi's warnings
// of routine events lowered to debug.
func (h redactHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn && routine(r) {
		if !h.Handler.Enabled(ctx, slog.LevelDebug) {
			return nil
		}
		r = r.Clone()
		r.Level = slog.LevelDebug
	}
	secret := false
	r.Attrs(func(a slog.Attr) bool {
		secret = needsRedaction(a.Value)
		return !secret
	})
	if !secret {
		return h.Handler.Handle(ctx, r)
	}
	nr := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	r.Attrs(func(a slog.Attr) bool {
		nr.AddAttrs(redact(a))
		return true
	})
	return h.Handler.Handle(ctx, nr)
}

// WithAttrs redacts the attributes too.
func (h redactHandler) WithAttrs(as []slog.Attr) slog.Handler {
	out := make([]slog.Attr, len(as))
	for i, a := range as {
		out[i] = redact(a)
	}
	return redactHandler{h.Handler.WithAttrs(out)}
}

// WithGroup keeps redacting in the group.
func (h redactHandler) WithGroup(name string) slog.Handler {
	return redactHandler{h.Handler.WithGroup(name)}
}

// needsRedaction reports whether v holds a packet or a CONNECT's parameters, also inside a group or behind a
// slog.LogValuer.
func needsRedaction(v slog.Value) bool {
	switch v.Kind() {
	case slog.KindLogValuer:
		return needsRedaction(v.Resolve())
	case slog.KindGroup:
		for _, a := range v.Group() {
			if needsRedaction(a.Value) {
				return true
			}
		}
	case slog.KindAny:
		switch v.Any().(type) {
		case packets.Packet, *packets.Packet, packets.ConnectParams, *packets.ConnectParams:
			return true
		}
	}
	return false
}

// redact returns a with every packet in it replaced by packetValue.
func redact(a slog.Attr) slog.Attr {
	if !needsRedaction(a.Value) {
		return a
	}
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindGroup:
		g := v.Group()
		out := make([]slog.Attr, len(g))
		for i, x := range g {
			out[i] = redact(x)
		}
		return slog.Attr{Key: a.Key, Value: slog.GroupValue(out...)}
	case slog.KindAny:
		switch pk := v.Any().(type) {
		case packets.Packet:
			return slog.Attr{Key: a.Key, Value: packetValue(&pk)}
		case *packets.Packet:
			if pk == nil {
				return slog.Attr{Key: a.Key, Value: slog.StringValue("<nil>")}
			}
			return slog.Attr{Key: a.Key, Value: packetValue(pk)}
		}
	}
	return slog.String(a.Key, "[redacted]") // a CONNECT's parameters
}

// packetValue is what a log line shows of a packet: its type, and its packet id and topic where it has them.
func packetValue(pk *packets.Packet) slog.Value {
	name, ok := packets.PacketNames[pk.FixedHeader.Type]
	if !ok {
		name = "unknown"
	}
	as := []slog.Attr{slog.String("type", name)}
	if pk.PacketID != 0 {
		as = append(as, slog.Int("id", int(pk.PacketID)))
	}
	if pk.TopicName != "" {
		as = append(as, slog.String("topic", pk.TopicName))
	}
	if pk.FixedHeader.Type == packets.Connect {
		as = append(as, slog.String("client", pk.Connect.ClientIdentifier))
	}
	return slog.GroupValue(as...)
}

// routine reports whether r is one of the warnings mochi logs for what a healthy network does all day, which
// leave an operator nothing to do (every WARN should): a client's keepalive at or below 5 s (the reference's
// default, which mochi calls below its recommendation), and a DISCONNECT that asks for the will to be sent (reason
// 0x04: our workers' farewell, which publishes their status 0), which mochi handles as an error.
func routine(r slog.Record) bool {
	if r.Message == mqtt.ErrMinimumKeepalive.Error() {
		return true
	}
	if r.Message != "error processing packet" {
		return false
	}
	found := false
	r.Attrs(func(a slog.Attr) bool {
		if err, ok := a.Value.Any().(error); ok && a.Key == "error" {
			found = errors.Is(err, packets.CodeDisconnectWillMessage)
			return false
		}
		return true
	})
	return found
}

// logGate ends a server's log: once shut, no record gets through, and shut waits for the records being written.
type logGate struct {
	mu     sync.RWMutex
	closed bool
}

func (g *logGate) shut() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
}

// closingHandler drops every record once its gate is shut (Server.Close): nothing the server started may log after
// it has closed, mochi's event loop included, which Close cannot wait for.
type closingHandler struct {
	slog.Handler
	gate *logGate
}

func (h closingHandler) Handle(ctx context.Context, r slog.Record) error {
	h.gate.mu.RLock()
	defer h.gate.mu.RUnlock()
	if h.gate.closed {
		return nil
	}
	return h.Handler.Handle(ctx, r)
}

func (h closingHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return closingHandler{h.Handler.WithAttrs(as), h.gate}
}

func (h closingHandler) WithGroup(name string) slog.Handler {
	return closingHandler{h.Handler.WithGroup(name), h.gate}
}
