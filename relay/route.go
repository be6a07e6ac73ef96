package relay

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/sockd-ng/sockd/grammar"
	"github.com/sockd-ng/sockd/policy"
	"github.com/sockd-ng/sockd/relay/client"
)

// hopBackoff is how long a chain that failed is skipped while others are
// left (socks.conf(5), Server lists).
const hopBackoff = 30 * time.Second

// backoff remembers chains that failed recently. Safe for concurrent use.
type backoff struct {
	mu     sync.Mutex
	failed map[string]time.Time
}

func (b *backoff) fail(key string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.failed == nil {
		b.failed = map[string]time.Time{}
	}
	b.failed[key] = time.Now()
}

func (b *backoff) ok(key string) {
	b.mu.Lock()
	delete(b.failed, key)
	b.mu.Unlock()
}

func (b *backoff) skip(key string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	t, ok := b.failed[key]
	if ok && time.Since(t) > hopBackoff {
		delete(b.failed, key)
		return false
	}
	return ok
}

// errNoInterface is a destination that no sockd.route line covers.
var errNoInterface = errors.New("no sockd.route line for the destination")

// dialRoute connects as d says: directly to the permitted addresses, or
// through the first alternative chain that works. It returns the
// connection and what it went through, for the log.
func (c *conn) dialRoute(ctx context.Context, d *policy.Decision) (*net.TCPConn, string, error) {
	if d.Route.Kind != policy.RouteVia {
		addrs := d.Addrs
		if !d.Resolved {
			addrs = []netip.Addr{c.rec.Dst.IP}
		}
		out, err := c.s.dialDirect(ctx, d.Interfaces, addrs, c.rec.Dst.Port)
		return out, "direct", err
	}
	// A name resolved here (for a plain SOCKS4 hop) is sent as its first
	// permitted address; otherwise the name goes on as the client gave it.
	target := c.rec.Dst.String()
	if d.Resolved {
		if len(d.Addrs) == 0 {
			return nil, "", errNoAddress
		}
		target = netip.AddrPortFrom(d.Addrs[0], c.rec.Dst.Port).String()
	}
	var out *net.TCPConn
	via, err := c.eachChain(ctx, d, func(ctx context.Context, cd *client.Dialer) (err error) {
		out, _, err = cd.DialTCP(ctx, target)
		return err
	})
	return out, via, err
}

// eachChain tries do with a dialer for each alternative chain of d's
// route in turn, skipping chains that failed lately while others are left,
// until one works or one is refused for good. It returns the chain used.
func (c *conn) eachChain(ctx context.Context, d *policy.Decision, do func(context.Context, *client.Dialer) error) (string, error) {
	chains := d.Route.Chains
	var first error
	tried := 0
	for i, chain := range chains {
		key := chainString(chain)
		if c.s.backoff.skip(key) && anyLeft(&c.s.backoff, chains[i+1:]) {
			continue
		}
		tried++
		actx, cancel := shareDeadline(ctx, len(chains)-i)
		cd, err := c.chainDialer(actx, d, chain)
		if err == nil {
			err = do(actx, cd)
		}
		cancel()
		if err == nil {
			c.s.backoff.ok(key)
			c.s.upstream(key, true)
			return key, nil
		}
		if first == nil {
			first = err
		}
		// A definite refusal is final, as in legacy (the hops work); a hop
		// whose name means this host is left for the next.
		if !client.Retryable(err) && !errors.Is(err, errUnspecified) || ctx.Err() != nil {
			c.s.upstream(key, ctx.Err() == nil)
			return key, err
		}
		c.s.backoff.fail(key)
		c.s.upstream(key, false)
		c.s.logger().Warn("next hop failed; trying the next", "id", c.rec.ID, "via", key, "err", err)
	}
	if tried == 0 {
		return "", errors.New("every next hop is backing off")
	}
	return chainString(chains[len(chains)-1]), first
}

// anyLeft reports whether some chain is not backing off.
func anyLeft(b *backoff, chains [][]policy.Hop) bool {
	for _, ch := range chains {
		if !b.skip(chainString(ch)) {
			return true
		}
	}
	return false
}

// shareDeadline gives one of n remaining attempts an equal share of the time
// left before ctx's deadline, as net.Dialer does for the addresses of a
// name.
func shareDeadline(ctx context.Context, n int) (context.Context, context.CancelFunc) {
	if dl, ok := ctx.Deadline(); ok && n > 1 {
		return context.WithTimeout(ctx, time.Until(dl)/time.Duration(n))
	}
	return context.WithCancel(ctx)
}

// chainDialer builds the dialer of one chain. A SOCKS4 hop gets the
// client's claimed user as USERID, as legacy rsockd forwarded it; SOCKS5
// and HTTP hops get the credentials -upstream-passwd gives.
func (c *conn) chainDialer(ctx context.Context, d *policy.Decision, chain []policy.Hop) (*client.Dialer, error) {
	fwd := c.s.dialer()
	hops := make([]client.Hop, len(chain))
	for i, h := range chain {
		hops[i] = client.Hop{Addr: h.Addr(), User: h.User, Password: h.Password}
		switch h.Proto {
		case grammar.HopSOCKS4:
			hops[i].Proto, hops[i].User, hops[i].Password = client.SOCKS4, c.rec.User, ""
		case grammar.HopLegacy, grammar.HopSOCKS4a:
			hops[i].Proto, hops[i].User, hops[i].Password = client.SOCKS4a, c.rec.User, ""
		case grammar.HopSOCKS5:
			hops[i].Proto = client.SOCKS5
		case grammar.HopHTTP:
			hops[i].Proto = client.HTTP
		}
	}
	if d.Interfaces != nil {
		// sockd.route picks the source by the address dialed: the first
		// hop's.
		addrs, err := LookupAddrs(ctx, c.s.hops, chain[0].Host)
		if err != nil || len(addrs) == 0 {
			return nil, fmt.Errorf("resolve next hop %s: %w", chain[0].Host, err)
		}
		src, _, ok := d.Interfaces.Source(addrs[0])
		if !ok {
			return nil, fmt.Errorf("next hop %s: %w", addrs[0], errNoInterface)
		}
		hops[0].Addr = netip.AddrPortFrom(addrs[0], chain[0].Port).String()
		f := *fwd
		f.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
		fwd = &f
	}
	return &client.Dialer{Hops: hops, Forward: fwd, Resolver: c.s.hops}, nil
}

func chainString(chain []policy.Hop) string {
	parts := make([]string, len(chain))
	for i, h := range chain {
		parts[i] = h.String()
	}
	return strings.Join(parts, ">")
}

// replyFor picks the SOCKS5 REP for an outbound failure from the error's
// type, never its text (protocol.md): a SOCKS5 next hop's own REP when it
// gave one; else by cause.
func replyFor(err error) byte {
	var re *client.ReplyError
	if errors.As(err, &re) && re.Hop.Proto == client.SOCKS5 && re.Code > 0 && re.Code <= 8 {
		return byte(re.Code)
	}
	return replyForCause(err)
}
