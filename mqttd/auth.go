package mqttd

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/freifunkMUC/wgkex-go/internal/wire"
)

// Reasons for refusing a client or one of its packets; the label values of wgkex_mqtt_refused_total.
const (
	reasonBadLogin       = "bad_login"        // wrong or unknown username or password
	reasonLoginBackoff   = "login_backoff"    // too many failed logins from the address; not checked
	reasonAnonymous      = "anonymous"        // no credentials where they are required
	reasonClientID       = "client_id"        // client id is not the authenticated name
	reasonUnknownWorker  = "unknown_worker"   // shared password or anonymous for a name not under workers:
	reasonTakeover       = "takeover"         // would take over a session of a stronger credential
	reasonWill           = "will"             // last will on a topic the client may not publish
	reasonPublish        = "publish"          // publish outside the client's topics
	reasonSubscribe      = "subscribe"        // subscription outside the client's topics
	reasonMaxConnections = "max_connections"  // too many open connections
	reasonMaxClients     = "max_clients"      // too many connected clients
	reasonPacketTooLarge = "packet_too_large" // a packet over Limits.MaxPacketSize
	reasonConnectTimeout = "connect_timeout"  // no CONNECT (or TLS handshake) within Limits.ConnectTimeout
	reasonProtocol       = "protocol"         // first packet not CONNECT, bad TLS handshake
	reasonSlowConsumer   = "slow_consumer"    // outbound queue full: the client stopped reading
	reasonSubscriptions  = "subscriptions"    // more subscriptions than the limit per client
	reasonPerAddress     = "per_address"      // too many connections without a credential from one address
	reasonRevoked        = "revoked"          // a reload removed or changed its credential: disconnected, or refused mid-login
)

var allReasons = []string{reasonBadLogin, reasonLoginBackoff, reasonAnonymous, reasonClientID, reasonUnknownWorker,
	reasonTakeover, reasonWill, reasonPublish, reasonSubscribe, reasonMaxConnections, reasonMaxClients,
	reasonPacketTooLarge, reasonConnectTimeout, reasonProtocol, reasonSlowConsumer, reasonSubscriptions,
	reasonPerAddress, reasonRevoked}

// Failed logins: the first failure from an address delays the refusal by loginDelay; every further failure
// within failureMemory doubles a lockout (up to maxLockout) during which logins from the address are refused
// without looking at the password. At most maxFailureEntries addresses are remembered.
const (
	loginDelay        = time.Second
	maxLockout        = time.Minute
	failureMemory     = 15 * time.Minute
	maxFailureEntries = 10000
	// maxKeepalive bounds the keepalive a client may ask for (0, "never", included): a silent client is dropped
	// after 1.5 times this.
	maxKeepalive = 600
)

// authenticate decides who the connecting client is, by the accounts in effect. On refusal it returns the
// reason, counted and logged by the caller.
func (s *Server) authenticate(cl *mqtt.Client, pk packets.Packet) (*identity, string) {
	set := s.acc.Load()
	id, reason := s.identify(set, cl, pk)
	if id != nil {
		id.set = set
	}
	return id, reason
}

func (s *Server) identify(set *accountSet, cl *mqtt.Client, pk packets.Packet) (*identity, string) {
	clientID := pk.Connect.ClientIdentifier
	user := string(pk.Connect.Username)
	if names := verifiedNames(cl.Net.Conn); names != nil {
		// The certificate proves the name; a username and password the worker also sends are not looked at.
		if !slices.Contains(names, clientID) {
			return nil, reasonClientID
		}
		return s.account(set, clientID, viaCertificate)
	}
	if user == "" && !pk.Connect.PasswordFlag {
		if !s.anonymousOK(set, cl.Net.Listener) {
			return nil, reasonAnonymous
		}
		if clientID == "" {
			// The server assigns an id; such a client can only read.
			return &identity{name: cl.ID, monitor: true, via: viaAnonymous, assigned: true}, ""
		}
		if wire.ValidateTopicLevel(clientID) != nil || clientID == mqtt.InlineClientId {
			return nil, reasonClientID
		}
		return s.anonymous(set, clientID)
	}
	pass := pk.Connect.Password
	if hash := set.hashOf(user); hash != nil {
		if reason := s.checkPassword(set, hash, pass); reason != "" {
			return nil, reason
		}
		if clientID != user {
			return nil, reasonClientID
		}
		id, reason := s.account(set, user, viaPassword)
		if id != nil {
			id.cred = string(hash)
		}
		return id, reason
	}
	// The shared login: its username, or without one the client id (the worker's name).
	sharedUser := set.SharedUsername
	if sharedUser == "" {
		sharedUser = clientID
	}
	if set.SharedPassword != "" &&
		subtle.ConstantTimeCompare([]byte(user), []byte(sharedUser))&
			subtle.ConstantTimeCompare(pass, []byte(set.SharedPassword)) == 1 {
		id, reason := s.sharedWorker(set, clientID)
		if id != nil {
			id.cred = set.sharedKey
		}
		return id, reason
	}
	// An unknown username, a worker without a password of its own, the shared username with a wrong password:
	// refused after the bcrypt comparison a wrong password costs, so that the time does not tell them apart.
	return nil, s.checkPassword(set, nil, pass)
}

// anonymous returns the identity of an anonymous client with a client id of its own: the worker it names (any
// name while no worker is configured, else only configured ones), and a reader.
func (s *Server) anonymous(set *accountSet, name string) (*identity, string) {
	id := &identity{name: name, monitor: true, via: viaAnonymous}
	w, ok := set.Workers[name]
	if ok && w.PasswordHash != "" {
		// Like the shared password, no anonymous client acts as a worker with a password of its own.
		return nil, reasonClientID
	}
	if ok || len(set.Workers) == 0 {
		id.workerRights(s.opts.Domains)
	}
	return id, ""
}

// sharedWorker returns the identity of a client that used the shared password: the configured worker its
// client id names.
func (s *Server) sharedWorker(set *accountSet, name string) (*identity, string) {
	w, ok := set.Workers[name]
	if !ok || w.PasswordHash != "" {
		// A worker with its own password no longer accepts the shared one.
		return nil, reasonUnknownWorker
	}
	id := &identity{name: name, via: viaShared}
	id.workerRights(s.opts.Domains)
	return id, ""
}

// checkPassword compares pass with a bcrypt hash, one check per core at a time (a reconnecting fleet is served
// first come, first served, instead of every login finishing at the end of the storm), waiting at most the connect
// timeout for its turn. A password that matched is remembered for its hash, so that a reconnecting worker does not
// pay for bcrypt again. A nil hash (a username without one) is refused after the same wait and a comparison of
// the same cost (passwd.Checker.CheckUnknown). It returns the reason of a refusal, or "": a login that was not
// checked in time is refused as a timeout, not as a wrong password, so that its address is not locked out.
func (s *Server) checkPassword(set *accountSet, hash, pass []byte) string {
	ctx, cancel := context.WithTimeout(s.stopped, s.loginWait)
	defer cancel()
	switch {
	case hash == nil:
		s.passwords.CheckUnknown(ctx, set.cost, pass)
	case s.passwords.Check(ctx, hash, pass):
		return ""
	}
	if ctx.Err() != nil {
		return reasonConnectTimeout
	}
	return reasonBadLogin
}

// account returns the identity of a worker or monitor that proved its name with its own credential.
func (s *Server) account(set *accountSet, name, via string) (*identity, string) {
	id := &identity{name: name, own: true, via: via}
	if _, ok := set.Workers[name]; ok {
		id.workerRights(s.opts.Domains)
		return id, ""
	}
	if _, ok := set.Monitors[name]; ok {
		id.monitor = true
		return id, ""
	}
	return nil, reasonUnknownWorker
}

// hashOf returns the bcrypt hash of a worker or monitor, or nil.
func (set *accountSet) hashOf(name string) []byte {
	if w, ok := set.Workers[name]; ok && w.PasswordHash != "" {
		return []byte(w.PasswordHash)
	}
	if m, ok := set.Monitors[name]; ok && m.PasswordHash != "" {
		return []byte(m.PasswordHash)
	}
	return nil
}

// anonymousOK reports whether clients without credentials may connect on the listener: when allowed
// explicitly, or when no credentials are configured at all and the listener is on a loopback address.
func (s *Server) anonymousOK(set *accountSet, listenerID string) bool {
	if s.opts.AllowAnonymous {
		return true
	}
	if set.credentials || s.certCredentials {
		return false
	}
	for _, l := range s.listeners {
		if l.id == listenerID {
			return l.loopback
		}
	}
	return false
}

// verifiedNames returns the names a verified TLS client certificate proves (its CN and DNS SANs), or nil when
// the client sent no certificate. The TLS handshake has verified the chain against the listener's client CA.
func verifiedNames(nc net.Conn) []string {
	tc, ok := nc.(*tls.Conn)
	if !ok {
		return nil
	}
	st := tc.ConnectionState()
	if len(st.VerifiedChains) == 0 || len(st.PeerCertificates) == 0 {
		return nil
	}
	return certNames(st.PeerCertificates[0])
}

// certNames returns the subject common name and the DNS names of cert, those that are valid worker names.
func certNames(cert *x509.Certificate) []string {
	names := []string{}
	for _, n := range append([]string{cert.Subject.CommonName}, cert.DNSNames...) {
		if n != "" && wire.ValidateTopicLevel(n) == nil && !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	return names
}

// failures remembers failed logins per address (IPv4 address or IPv6 /64).
type failures struct {
	mu sync.Mutex
	m  map[netip.Prefix]*failure
	n  atomic.Int64 // for tests: failures recorded
}

type failure struct {
	count int
	last  time.Time
	until time.Time // logins are refused unchecked before this
}

// addrKey maps "ip:port" to the prefix failures are counted under.
func addrKey(remote string) netip.Prefix {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return netip.Prefix{}
	}
	a := ap.Addr().Unmap()
	if a.Is4() {
		return netip.PrefixFrom(a, 32)
	}
	p, _ := a.Prefix(64)
	return p
}

// locked reports whether logins from key are refused unchecked at now.
func (f *failures) locked(key netip.Prefix, now time.Time) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	e := f.m[key]
	return e != nil && now.Before(e.until)
}

// fail records a failed login from key at now.
func (f *failures) fail(key netip.Prefix, now time.Time, unit time.Duration) {
	f.n.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	e := f.m[key]
	if e == nil {
		if len(f.m) >= maxFailureEntries {
			f.evict(now)
		}
		e = &failure{}
		f.m[key] = e
	}
	if now.Sub(e.last) > failureMemory {
		e.count = 0
	}
	e.count++
	e.last = now
	if e.count > 1 {
		e.until = now.Add(min(maxLockout, time.Duration(1<<min(e.count-2, 16))*unit))
	}
}

// evict forgets stale entries, or an arbitrary half when none is stale. Callers hold mu.
func (f *failures) evict(now time.Time) {
	for k, e := range f.m {
		if now.Sub(e.last) > failureMemory {
			delete(f.m, k)
		}
	}
	for k := range f.m {
		if len(f.m) < maxFailureEntries/2 {
			break
		}
		delete(f.m, k)
	}
}

// succeed forgets the failures of key.
func (f *failures) succeed(key netip.Prefix) {
	f.mu.Lock()
	delete(f.m, key)
	f.mu.Unlock()
}
