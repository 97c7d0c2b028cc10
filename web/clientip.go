package web

import (
	"net"
	"net/http"
	"net/netip"

	"github.com/labstack/echo/v4"
)

// clientIP returns how Echo finds a request's client address (c.RealIP, used by the rate limit and in logs): the
// peer address, unless the peer is one of the trusted proxies; then the nearest address in X-Forwarded-For that
// is not a trusted proxy, or X-Real-IP when there is no X-Forwarded-For. Echo's extractors trust loopback,
// link-local and private peers by default: that is switched off, only the configured ranges count.
func clientIP(trusted []netip.Prefix) echo.IPExtractor {
	if len(trusted) == 0 {
		return echo.ExtractIPDirect()
	}
	opts := []echo.TrustOption{echo.TrustLoopback(false), echo.TrustLinkLocal(false), echo.TrustPrivateNet(false)}
	for _, p := range trusted {
		opts = append(opts, echo.TrustIPRange(&net.IPNet{
			IP:   p.Addr().AsSlice(),
			Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen()),
		}))
	}
	xff := echo.ExtractIPFromXFFHeader(opts...)
	realIP := echo.ExtractIPFromRealIPHeader(opts...)
	return func(r *http.Request) string {
		if _, ok := r.Header[echo.HeaderXForwardedFor]; ok {
			return xff(r)
		}
		return realIP(r)
	}
}
