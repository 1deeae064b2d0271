package api

import (
	"math"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
)

// RateLimiter keeps one token bucket per key: a client address or an API
// token. The console API takes one token per request from the caller's
// address (before authentication) and one from its token (after); the
// download handler takes one from a bucket of the address's own only for
// a refused URL (403 or 404), so that a fleet downloading through one NAT
// address is never limited while a client guessing URLs is.
//
// Memory stays bounded: a bucket unused for as long as it takes to fill up
// again is the same as a new one and is dropped, and at most maxKeys are
// kept. When that many keys are all in use (a flood from that many
// addresses), requests from further keys are refused until some refill.
type RateLimiter struct {
	limit   rate.Limit
	burst   int
	full    time.Duration // how long an empty bucket takes to fill up
	maxKeys int
	now     func() time.Time

	mu        sync.Mutex
	keys      map[string]*bucket
	lastSweep time.Time

	limited *prometheus.CounterVec
}

type bucket struct {
	lim  *rate.Limiter
	seen time.Time
}

// DefaultRateLimitKeys is how many keys a RateLimiter tracks at most.
const DefaultRateLimitKeys = 100_000

// NewRateLimiter allows perSecond requests a second per key, with bursts
// of burst, tracking at most maxKeys keys (<= 0: DefaultRateLimitKeys).
// now defaults to time.Now. perSecond <= 0 returns nil: no limit, which
// every user of a *RateLimiter accepts.
func NewRateLimiter(perSecond float64, burst, maxKeys int, now func() time.Time) *RateLimiter {
	if perSecond <= 0 {
		return nil
	}
	if burst < 1 {
		burst = 1
	}
	if maxKeys <= 0 {
		maxKeys = DefaultRateLimitKeys
	}
	if now == nil {
		now = time.Now
	}
	return &RateLimiter{
		limit:   rate.Limit(perSecond),
		burst:   burst,
		full:    time.Duration(float64(burst) / perSecond * float64(time.Second)),
		maxKeys: maxKeys,
		now:     now,
		keys:    make(map[string]*bucket),
		limited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "otad_http_rate_limited_total",
			Help: "Requests refused 429 by the rate limit (OTAD_RATE_LIMIT), by what was over it: address or token.",
		}, []string{"by"}),
	}
}

// Register adds the limiter's metrics to reg; a nil limiter has none.
func (l *RateLimiter) Register(reg prometheus.Registerer) error {
	if l == nil {
		return nil
	}
	keys := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "otad_http_rate_limit_keys",
		Help: "Addresses and tokens the rate limit currently tracks.",
	}, func() float64 { return float64(l.Len()) })
	for _, c := range []prometheus.Collector{l.limited, keys} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// Len is how many keys are tracked.
func (l *RateLimiter) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.keys)
}

// take takes one request for key: it returns 0 when the request may go
// on, or else how long until it could. A nil limiter allows everything.
func (l *RateLimiter) take(key string) time.Duration {
	return l.check(key, true)
}

// wait says how long until key could make a request (0: now), taking
// nothing.
func (l *RateLimiter) wait(key string) time.Duration {
	return l.check(key, false)
}

func (l *RateLimiter) check(key string, take bool) time.Duration {
	if l == nil {
		return 0
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.keys[key]
	if !ok {
		if len(l.keys) >= l.maxKeys {
			l.sweep(now)
			if len(l.keys) >= l.maxKeys {
				return time.Second
			}
		}
		b = &bucket{lim: rate.NewLimiter(l.limit, l.burst)}
		l.keys[key] = b
	}
	b.seen = now
	if take && b.lim.AllowN(now, 1) {
		if now.Sub(l.lastSweep) > l.full {
			l.sweep(now)
		}
		return 0
	}
	t := b.lim.TokensAt(now)
	if !take && t >= 1 {
		return 0
	}
	return max(time.Millisecond, time.Duration((1-t)/float64(l.limit)*float64(time.Second)))
}

// sweep drops the buckets unused for long enough to be full again; it
// runs at most once a second, so that a full table does not make every
// request walk it.
func (l *RateLimiter) sweep(now time.Time) {
	if now.Sub(l.lastSweep) < time.Second {
		return
	}
	l.lastSweep = now
	for k, b := range l.keys {
		if now.Sub(b.seen) >= l.full {
			delete(l.keys, k)
		}
	}
}

// refuse counts a refusal by what and sets Retry-After to the wait, in
// whole seconds, at least 1.
func (l *RateLimiter) refuse(w http.ResponseWriter, by string, wait time.Duration) {
	l.limited.WithLabelValues(by).Inc()
	w.Header().Set("Retry-After", strconv.Itoa(max(1, int(math.Ceil(wait.Seconds())))))
}

// addressKey is the rate limit key of a request's client address: the IP
// (not the port), and for IPv6 its /64, which one client usually holds
// whole. otad is reached directly or through a TCP load balancer, so the
// address is the connection's; a forwarded-for header is never trusted.
func addressKey(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return "addr:" + host
	}
	ip = ip.Unmap()
	if ip.Is6() {
		ip = netip.PrefixFrom(ip, 64).Masked().Addr()
	}
	return "addr:" + ip.String()
}
