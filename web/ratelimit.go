package web

import (
	"log/slog"
	"math"
	"net/netip"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/time/rate"
)

// limiter is a token bucket per client address, the client addresses kept in a bounded LRU cache.
//
// Echo's RateLimiterMemoryStore is not used: its map of visitors has no bound (it forgets an address only after
// it was idle for ExpiresIn, 3 minutes by default), so a client with many addresses (an IPv6 /48 has 65,536 /64s)
// grows it without limit, its expiry scan walks the whole map under the one lock on the request path, and its
// Allow says yes or no without telling when the next request would pass (Retry-After). Here the cache holds at
// most max addresses; a full cache forgets the least recently seen, which normally has a full bucket again and so
// loses nothing (a bucket refills in burst/rate seconds).
type limiter struct {
	rate    rate.Limit
	burst   int
	clients *lru.Cache[netip.Addr, *rate.Limiter]
	now     func() time.Time
	log     *slog.Logger
	warned  atomic.Int64 // unix seconds of the last warning about forgotten active clients
}

func newLimiter(perSecond, burst, max int, log *slog.Logger) *limiter {
	l := &limiter{rate: rate.Limit(perSecond), burst: burst, now: time.Now, log: log}
	l.clients, _ = lru.NewWithEvict(max, l.evicted) // max ≥ 1: checked by the configuration
	return l
}

// clientKey is the unit one bucket covers: an IPv4 address, or the /64 of an IPv6 address (one host or one
// network: the /64 is what a single site gets).
func clientKey(a netip.Addr) netip.Addr {
	a = a.Unmap().WithZone("")
	if a.Is6() {
		return netip.PrefixFrom(a, 64).Masked().Addr()
	}
	return a
}

// allow takes a token from the bucket of a; when there is none it returns how long until there is one.
func (l *limiter) allow(a netip.Addr) (bool, time.Duration) {
	k := clientKey(a)
	lim, ok := l.clients.Get(k)
	if !ok {
		fresh := rate.NewLimiter(l.rate, l.burst)
		if prev, found, _ := l.clients.PeekOrAdd(k, fresh); found {
			lim = prev // another request of the same client came first
		} else {
			lim = fresh
		}
	}
	now := l.now()
	if lim.AllowN(now, 1) {
		return true, 0
	}
	wait := time.Duration((1 - lim.TokensAt(now)) / float64(l.rate) * float64(time.Second))
	return false, wait
}

// retryAfter is the Retry-After value for wait: whole seconds, at least 1.
func retryAfter(wait time.Duration) int {
	return max(1, int(math.Ceil(wait.Seconds())))
}

// evicted warns, at most once a minute, when the cache forgets a client whose bucket is not full: the bound is
// then too small for the clients seen, and those clients start again with a full burst.
func (l *limiter) evicted(k netip.Addr, lim *rate.Limiter) {
	now := l.now()
	if lim.TokensAt(now) >= float64(l.burst) {
		return
	}
	last := l.warned.Load()
	if now.Unix()-last >= 60 && l.warned.CompareAndSwap(last, now.Unix()) {
		l.log.Warn("rate limiter forgets active clients: raise broker_listen.rate_limit_clients", "client", k,
			"tracked", l.clients.Len())
	}
}
