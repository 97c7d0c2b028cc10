package mqttd

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"maps"
	"slices"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/freifunkMUC/wgkex-go/internal/platform/passwd"
	"github.com/freifunkMUC/wgkex-go/internal/wire"
)

// How a client authenticated (identity.via).
const (
	viaPassword    = "password"
	viaCertificate = "certificate"
	viaShared      = "shared"
	viaAnonymous   = "anonymous"
)

// Accounts are the credentials the server accepts; SetAccounts replaces them while it runs.
type Accounts struct {
	// Workers are the configured gateways by name. A worker authenticates with its own password (username =
	// name), a client certificate naming it, or the shared password with its name as client id.
	Workers map[string]Account
	// Monitors are read-only accounts: they may subscribe to worker topics (metrics, status, data), never see
	// keys or replays and never publish.
	Monitors map[string]Account
	// SharedUsername and SharedPassword are the reference's one credential for every worker (mqtt.username and
	// mqtt.password); a client using it acts as the worker its client id names, for names under Workers only.
	// Without SharedUsername (one wgkex.yaml for broker and worker with mqtt.password alone), each worker logs in
	// with its name as username and client id and the shared password, as the worker does without mqtt.username.
	SharedUsername, SharedPassword string
}

// validate checks names and hashes, all problems at once.
func (a Accounts) validate() error {
	var errs []error
	for name, w := range a.Workers {
		if err := wire.ValidateTopicLevel(name); err != nil || name == mqtt.InlineClientId {
			errs = append(errs, fmt.Errorf("worker %q: not a possible client id", name))
		}
		if err := passwd.Valid(w.PasswordHash); w.PasswordHash != "" && err != nil {
			errs = append(errs, fmt.Errorf("worker %s: password hash: %w", name, err))
		}
	}
	for name, m := range a.Monitors {
		if _, dup := a.Workers[name]; dup || name == "" || name == mqtt.InlineClientId {
			errs = append(errs, fmt.Errorf("monitor %q: empty, reserved or also a worker", name))
		}
		if err := passwd.Valid(m.PasswordHash); err != nil {
			errs = append(errs, fmt.Errorf("monitor %s: password hash: %w", name, err))
		}
	}
	if a.SharedUsername != "" && a.SharedPassword == "" {
		errs = append(errs, errors.New("mqtt.username without mqtt.password: set the shared password too "+
			"(WGKEX_MQTT_PASSWORD), or leave both empty and give each worker workers.<name>.password_hash"))
	}
	return errors.Join(errs...)
}

// accountSet is the Accounts in effect, with what the server derives from them. It is never modified: a new
// one replaces it.
type accountSet struct {
	Accounts
	// credentials: a password is configured (then anonymous clients are refused, unless allowed).
	credentials bool
	// maxFilterLen bounds a subscription filter: the longest topic a configured name can make, with room.
	maxFilterLen int
	// sharedKey identifies the shared login (a SHA-256), so that a reload can tell whether it changed.
	sharedKey string
	// cost is the bcrypt cost of most password hashes: a login with an unknown username costs as much
	// (passwd.Cost); 0 without any.
	cost int
}

func newAccountSet(a Accounts, domains []string) *accountSet {
	a.Workers, a.Monitors = maps.Clone(a.Workers), maps.Clone(a.Monitors)
	set := &accountSet{Accounts: a, credentials: a.SharedPassword != "" || len(a.Monitors) > 0}
	var hashes []string
	for _, m := range []map[string]Account{a.Workers, a.Monitors} {
		for _, acc := range m {
			set.credentials = set.credentials || acc.PasswordHash != ""
			hashes = append(hashes, acc.PasswordHash)
		}
	}
	set.cost = passwd.Cost(hashes...)
	longest := func(names []string) int { return len(slices.MaxFunc(append(names, ""), cmpLen)) }
	set.maxFilterLen = 1024 + longest(slices.Collect(maps.Keys(a.Workers))) + longest(domains)
	if a.SharedPassword != "" {
		sum := sha256.Sum256([]byte(a.SharedUsername + "\x00" + a.SharedPassword))
		set.sharedKey = string(sum[:])
	}
	return set
}

func cmpLen(a, b string) int { return len(a) - len(b) }

// SetAccounts replaces the accounts of the running server at once: every login from now on is checked against
// acc. A connected client whose credential acc removes or changes — a new password hash, a new shared login,
// its worker or monitor removed, its worker given a password of its own while it used the shared one, or an
// anonymous client no longer accepted — is disconnected and logged once; all others keep their connections.
// SetAccounts refuses acc, changing nothing, when it does not validate, or when it leaves no credential while a
// listener other than loopback needs one (AllowAnonymous and the listeners are fixed at New).
func (s *Server) SetAccounts(acc Accounts) error {
	if err := acc.validate(); err != nil {
		return err
	}
	set := newAccountSet(acc, s.opts.Domains)
	if err := s.needsCredentials(set); err != nil {
		return err
	}
	s.accMu.Lock()
	defer s.accMu.Unlock()
	s.acc.Store(set)
	s.passwords.Forget(set.hasHash)
	// A client authenticated by the old accounts but not yet among mochi's clients is checked by
	// OnSessionEstablished.
	for _, cl := range s.srv.Clients.GetAll() {
		s.recheck(cl, set)
	}
	return nil
}

// hasHash reports whether a worker or monitor has the password hash h.
func (set *accountSet) hasHash(h string) bool {
	for _, m := range []map[string]Account{set.Workers, set.Monitors} {
		for _, a := range m {
			if a.PasswordHash == h {
				return true
			}
		}
	}
	return false
}

// recheck disconnects cl when set no longer gives it the identity it was authenticated with.
func (s *Server) recheck(cl *mqtt.Client, set *accountSet) {
	c := connOf(cl.Net.Conn)
	if c == nil || cl.Closed() {
		return
	}
	id := c.id.Load()
	if id == nil || s.holds(id, set, cl.Net.Listener) || !c.revoked.CompareAndSwap(false, true) {
		return
	}
	s.refused(reasonRevoked)
	s.log.Warn("mqtt client disconnected: its credential was removed or changed", "client", cl.ID,
		"remote", cl.Net.Remote, "via", id.via, "reason", reasonRevoked)
	cl.Stop(packets.ErrNotAuthorized)
}

// holds reports whether set gives id the rights it was authenticated with, by the same credential.
func (s *Server) holds(id *identity, set *accountSet, listenerID string) bool {
	if id.set == set {
		return true
	}
	var now *identity
	switch id.via {
	case viaPassword:
		if string(set.hashOf(id.name)) != id.cred {
			return false
		}
		now, _ = s.account(set, id.name, id.via)
	case viaCertificate:
		now, _ = s.account(set, id.name, id.via)
	case viaShared:
		if set.sharedKey != id.cred {
			return false
		}
		now, _ = s.sharedWorker(set, id.name)
	case viaAnonymous:
		if !s.anonymousOK(set, listenerID) {
			return false
		}
		if id.assigned {
			return true
		}
		now, _ = s.anonymous(set, id.name)
	}
	return now != nil && now.worker == id.worker && now.monitor == id.monitor
}
