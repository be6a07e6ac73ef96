// Package client dials TCP connections through proxies: SOCKS4, SOCKS4a,
// SOCKS5 (RFC 1928, with RFC 1929 username/password authentication) and
// HTTP CONNECT (RFC 9110 section 9.3.6, with Basic proxy authorization,
// RFC 7617), one hop alone or several chained. A Dialer satisfies
// golang.org/x/net/proxy's Dialer and ContextDialer and fits
// http.Transport.DialContext.
//
// Unlike golang.org/x/net/proxy, whose connections wrap the net.Conn
// interface, a Dialer returns the *net.TCPConn to the first hop itself:
// the handshakes are done on it and nothing of them is left buffered, so
// io.Copy between two such conns still uses splice(2) on Linux.
//
// Besides CONNECT, a Dialer asks for SOCKS BIND (Bind, at its last hop)
// and SOCKS5 UDP ASSOCIATE (Associate, through one SOCKS5 hop or a chain
// of them). It speaks no GSSAPI (RFC 1961) or other SOCKS5 methods than
// "no authentication" and username/password, and no TLS to a proxy.
package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sockd-ng/sockd/relay/internal/wire"
)

// Proto is the protocol a hop speaks.
type Proto uint8

const (
	SOCKS4 Proto = iota + 1
	SOCKS4a
	SOCKS5
	HTTP // HTTP CONNECT
)

var protoNames = [...]string{SOCKS4: "socks4", SOCKS4a: "socks4a", SOCKS5: "socks5", HTTP: "http"}

// String returns p's URL scheme, as FromURL reads it.
func (p Proto) String() string {
	if p == 0 || int(p) >= len(protoNames) {
		return "Proto(" + strconv.Itoa(int(p)) + ")"
	}
	return protoNames[p]
}

// CarriesNames reports whether names are handed to the hop unresolved
// (4a, 5, HTTP); plain SOCKS4 needs an address.
func (p Proto) CarriesNames() bool { return p == SOCKS4a || p == SOCKS5 || p == HTTP }

// Hop is one proxy on the way.
type Hop struct {
	Proto Proto
	Addr  string // host:port; host may be a name or an IP ([v6] for IPv6)
	// User is, for SOCKS4 and 4a, the USERID sent; for SOCKS5, the RFC 1929
	// username (RFC 1929 is offered when User or Password is set); for HTTP,
	// the Basic proxy authorization user (sent when User is set).
	User     string
	Password string
}

// String returns the hop as a URL without credentials, e.g.
// "socks5://gw:1080", so that errors and logs never carry them.
func (h Hop) String() string { return h.Proto.String() + "://" + h.Addr }

// Resolver looks up names. *net.Resolver satisfies it.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Dialer connects through Hops, nearest first (the order traffic flows);
// with no Hops it dials directly. Its zero value dials directly with a
// plain net.Dialer. It is cheap to build, one per request if need be, and
// safe for concurrent use as long as its fields do not change.
type Dialer struct {
	Hops []Hop
	// Forward reaches the first hop (or the target, with no hops); its
	// LocalAddr sets the source address. nil means &net.Dialer{}.
	Forward *net.Dialer
	// Timeout bounds the whole dial, handshakes included; 0 leaves it to
	// the context.
	Timeout time.Duration
	// Resolver resolves the names a plain SOCKS4 hop is asked to connect
	// to, the first hop's name, and the target's name with no hops; names
	// for other hops are never resolved here. nil means Forward's resolver
	// (net.DefaultResolver if it has none), and then Forward dials names
	// itself, with its dual-stack fallback.
	Resolver Resolver
}

// FromURL returns a Dialer with one hop, from a proxy URL:
//
//	socks4://[user@]host[:port]             user is the USERID
//	socks4a://[user@]host[:port]
//	socks5://[user[:password]@]host[:port]  socks5h:// is the same
//	http://[user[:password]@]host[:port]
//
// The default port is 1080 for SOCKS and 8080 for HTTP. A query
// "?timeout=5s" sets Timeout (time.ParseDuration syntax).
func FromURL(rawURL string) (*Dialer, error) {
	u, err := url.Parse(rawURL)
	if ue := (*url.Error)(nil); errors.As(err, &ue) {
		return nil, fmt.Errorf("bad proxy URL: %w", ue.Err) // ue.URL may hold a password
	} else if err != nil {
		return nil, err
	}
	fail := func(format string, a ...any) (*Dialer, error) {
		return nil, fmt.Errorf("proxy URL %q: %s", u.Redacted(), fmt.Sprintf(format, a...))
	}
	var h Hop
	port := "1080"
	switch u.Scheme {
	case "socks4":
		h.Proto = SOCKS4
	case "socks4a":
		h.Proto = SOCKS4a
	case "socks5", "socks5h":
		h.Proto = SOCKS5
	case "http":
		h.Proto, port = HTTP, "8080"
	default:
		return fail("unknown scheme %q: want socks4, socks4a, socks5, socks5h or http", u.Scheme)
	}
	if u.Hostname() == "" {
		return fail("no host")
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.ParseUint(p, 10, 16); err != nil || n == 0 {
			return fail("bad port %q", p)
		}
		port = p
	}
	if u.Opaque != "" || (u.Path != "" && u.Path != "/") || u.Fragment != "" {
		return fail("unexpected path or fragment")
	}
	h.Addr = net.JoinHostPort(u.Hostname(), port)
	if u.User != nil {
		h.User = u.User.Username()
		pw, set := u.User.Password()
		if set && (h.Proto == SOCKS4 || h.Proto == SOCKS4a) {
			return fail("SOCKS4 has no password")
		}
		h.Password = pw
	}
	d := &Dialer{Hops: []Hop{h}}
	for k, v := range u.Query() {
		if k != "timeout" || len(v) != 1 {
			return fail("unknown parameter %q: want only timeout", k)
		}
		if d.Timeout, err = time.ParseDuration(v[0]); err != nil || d.Timeout <= 0 {
			return fail("timeout %q is not a positive duration like 5s", v[0])
		}
	}
	return d, nil
}

// FromURLs returns a Dialer through a chain of proxy URLs (see FromURL),
// nearest first. Its Timeout is the largest any URL gives. With no URLs it
// dials directly.
func FromURLs(rawURLs ...string) (*Dialer, error) {
	d := &Dialer{}
	for _, s := range rawURLs {
		d1, err := FromURL(s)
		if err != nil {
			return nil, err
		}
		d.Hops = append(d.Hops, d1.Hops...)
		d.Timeout = max(d.Timeout, d1.Timeout)
	}
	return d, nil
}

// ReplyError is a definite refusal by a reachable hop, with its own code:
// trying another route is not worth it.
type ReplyError struct {
	Hop Hop
	// Code is the SOCKS4 CD (91 to 93), the SOCKS5 REP (1 to 8, RFC 1928
	// section 6) or the HTTP status code. A SOCKS5 hop that accepted none of
	// the offered methods (RFC 1928 section 3) or rejected the username and
	// password (RFC 1929 section 2) gives 0xFF.
	Code int
	Msg  string
}

func (e *ReplyError) Error() string { return fmt.Sprintf("%v replied %d: %s", e.Hop, e.Code, e.Msg) }

// ProtocolError means the hop answered something that is not its
// protocol: a bad version, garbage, a short reply then EOF, or an HTTP
// response that is not HTTP. Another route may work.
type ProtocolError struct {
	Hop Hop
	Err error
}

func (e *ProtocolError) Error() string { return fmt.Sprintf("%v: protocol error: %v", e.Hop, e.Err) }
func (e *ProtocolError) Unwrap() error { return e.Err }

// Retryable reports whether err means "try the next alternative": a hop
// could not be reached (connection refused or reset, network or host
// unreachable, its name does not resolve, a timeout, including a hop that
// accepts and never answers), or it broke the protocol. A *ReplyError, a
// canceled context and a bad address or hop are not retryable.
func Retryable(err error) bool {
	var (
		re  *ReplyError
		pe  *ProtocolError
		dns *net.DNSError
		ne  net.Error
	)
	switch {
	case err == nil, errors.As(err, &re), errors.Is(err, context.Canceled):
		return false
	case errors.As(err, &pe), errors.As(err, &dns),
		errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.ENETUNREACH), errors.Is(err, syscall.EHOSTUNREACH),
		errors.Is(err, syscall.ETIMEDOUT), errors.Is(err, syscall.EPIPE),
		errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return true
	}
	return errors.As(err, &ne) && ne.Timeout()
}

// Dial is DialContext with context.Background.
func (d *Dialer) Dial(network, address string) (net.Conn, error) {
	return d.DialContext(context.Background(), network, address)
}

// DialContext connects to address (host:port) through the hops. network
// must be "tcp", "tcp4" or "tcp6"; it applies to the connection to the
// first hop. The returned net.Conn is the *net.TCPConn to the first hop
// itself, never a wrapper, so that callers can splice; the caller owns it.
func (d *Dialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	c, _, err := d.dial(ctx, network, address)
	if err != nil {
		return nil, err // not a typed nil in an interface
	}
	return c, nil
}

// DialTCP is DialContext on "tcp" that also returns the address the last
// hop reported as bound: BND.ADDR and BND.PORT of a SOCKS5 hop, DSTIP and
// DSTPORT of a SOCKS4 reply, the zero AddrPort for HTTP or when the hop
// sent a name.
func (d *Dialer) DialTCP(ctx context.Context, address string) (*net.TCPConn, netip.AddrPort, error) {
	return d.dial(ctx, "tcp", address)
}

func (d *Dialer) dial(ctx context.Context, network, address string) (*net.TCPConn, netip.AddrPort, error) {
	var bound netip.AddrPort
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return nil, bound, &net.OpError{Op: "dial", Net: network, Err: net.UnknownNetworkError(network)}
	}
	if d.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d.Timeout)
		defer cancel()
	}
	if len(d.Hops) == 0 {
		c, err := d.dialNear(ctx, network, address)
		return c, bound, err
	}
	chain := make([]string, len(d.Hops))
	for i, h := range d.Hops {
		chain[i] = h.String()
	}
	wrap := func(err error) error {
		return fmt.Errorf("dial %s via %s: %w", address, strings.Join(chain, " > "), err)
	}
	if _, _, err := splitHostPort(address); err != nil {
		return nil, bound, wrap(err)
	}
	c, err := d.dialNear(ctx, network, d.Hops[0].Addr)
	if err != nil {
		return nil, bound, wrap(err)
	}
	if bound, err = d.handshake(ctx, c, address); err != nil {
		c.Close()
		return nil, netip.AddrPort{}, wrap(err)
	}
	return c, bound, nil
}

// handshake asks each hop on c in turn to connect to the next one, and the
// last to address. ctx bounds it through c's deadline, which it clears on
// success.
func (d *Dialer) handshake(ctx context.Context, c *net.TCPConn, address string) (bound netip.AddrPort, err error) {
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	for i, h := range d.Hops {
		next := address
		if i+1 < len(d.Hops) {
			next = d.Hops[i+1].Addr
		}
		if bound, err = d.connect(ctx, c, h, next); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				// Only ctx sets c's deadline: it is done, or about to be
				// (its timer and the poller's race). Say why.
				<-ctx.Done()
				err = fmt.Errorf("%v: %w", h, context.Cause(ctx))
			}
			stop()
			return bound, err
		}
	}
	if !stop() {
		// The AfterFunc ran, or is about to set the deadline: the conn is
		// not usable, and the context is done anyway.
		return bound, context.Cause(ctx)
	}
	return bound, c.SetDeadline(time.Time{})
}

// connect runs one hop's handshake, asking it to connect to target.
func (d *Dialer) connect(ctx context.Context, c *net.TCPConn, h Hop, target string) (netip.AddrPort, error) {
	host, port, err := splitHostPort(target)
	if err != nil {
		return netip.AddrPort{}, err
	}
	switch h.Proto {
	case SOCKS4, SOCKS4a:
		return d.socks4(ctx, c, h, wire.Cmd4Connect, host, port)
	case SOCKS5:
		return socks5(c, h, wire.CmdConnect, host, port)
	case HTTP:
		return netip.AddrPort{}, httpConnect(c, h, target)
	}
	return netip.AddrPort{}, fmt.Errorf("hop %v: unknown protocol", h)
}

// dialNear connects to host:port directly with Forward, resolving a name
// with Resolver if set: each address tried in order gets an equal share
// of the time left, as net.Dialer does.
func (d *Dialer) dialNear(ctx context.Context, network, hostport string) (*net.TCPConn, error) {
	fwd := d.Forward
	if fwd == nil {
		fwd = &net.Dialer{}
	}
	host, port, err := splitHostPort(hostport)
	if err != nil {
		return nil, err
	}
	addrs := []string{hostport}
	if _, err := netip.ParseAddr(host); err != nil && d.Resolver != nil {
		ips, err := d.Resolver.LookupNetIP(ctx, "ip"+strings.TrimPrefix(network, "tcp"), host)
		if err != nil {
			return nil, err
		}
		addrs = addrs[:0]
		for _, ip := range ips {
			addrs = append(addrs, netip.AddrPortFrom(ip.Unmap(), port).String())
		}
		if len(addrs) == 0 {
			return nil, &net.DNSError{Err: "no addresses", Name: host, IsNotFound: true}
		}
	}
	var first error
	for i, a := range addrs {
		actx := ctx
		if dl, ok := ctx.Deadline(); ok && i < len(addrs)-1 {
			var cancel context.CancelFunc
			actx, cancel = context.WithTimeout(ctx, time.Until(dl)/time.Duration(len(addrs)-i))
			defer cancel()
		}
		c, err := fwd.DialContext(actx, network, a)
		if err == nil {
			return c.(*net.TCPConn), nil
		}
		if first == nil {
			first = err
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, first
}

// splitHostPort splits host:port and checks that the port is a number and
// that the host fits every protocol: at most 255 bytes (the SOCKS5 and 4a
// limit) and no control characters or spaces, which would end a SOCKS4a
// name or an HTTP request line early.
func splitHostPort(hostport string) (string, uint16, error) {
	host, p, err := net.SplitHostPort(hostport)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.ParseUint(p, 10, 16)
	bad := func(r rune) bool { return r <= ' ' || r == 0x7f }
	if err != nil || host == "" || len(host) > 255 || strings.ContainsFunc(host, bad) {
		return "", 0, &net.AddrError{Err: "bad host or port", Addr: hostport}
	}
	return host, uint16(port), nil
}
