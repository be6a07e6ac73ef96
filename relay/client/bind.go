package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/sockd-ng/sockd/relay/internal/wire"
)

// Bind is a BIND request in progress at the last hop (RFC 1928 section 4;
// CD 2 in SOCKS4): the hop listens for one connection from the
// application server and relays it over Conn. Used by one goroutine.
type Bind struct {
	// Conn is the connection to the first hop. Once Accept has returned,
	// it carries the bytes of the inbound connection.
	Conn *net.TCPConn
	// Addr is where the last hop listens: its first reply, with 0.0.0.0
	// replaced by the hop's own address, as the SOCKS4 notes ask.
	Addr netip.AddrPort
	hop  Hop
}

// Bind asks the last hop to listen for one inbound connection from the
// application server at address (host:port, the server of the primary
// connection), and returns when the hop has said where it listens. The
// hops before the last are asked to CONNECT, as DialContext does. HTTP
// hops cannot BIND.
func (d *Dialer) Bind(ctx context.Context, address string) (*Bind, error) {
	if len(d.Hops) == 0 {
		return nil, errors.New("bind: no hop to listen")
	}
	last := d.Hops[len(d.Hops)-1]
	if last.Proto == HTTP {
		return nil, &net.OpError{Op: "bind", Net: "tcp", Err: fmt.Errorf("%v: HTTP CONNECT has no BIND", last)}
	}
	if d.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d.Timeout)
		defer cancel()
	}
	wrap := func(err error) error { return fmt.Errorf("bind %s via %v: %w", address, last, err) }
	host, port, err := splitHostPort(address)
	if err != nil {
		return nil, wrap(err)
	}
	c, err := d.dialNear(ctx, "tcp", d.Hops[0].Addr)
	if err != nil {
		return nil, wrap(err)
	}
	// The hops before the last connect onwards; the last is asked to bind.
	near := *d
	near.Hops = d.Hops[:len(d.Hops)-1]
	var first netip.AddrPort
	err = deadlined(ctx, c, func() (err error) {
		if len(near.Hops) > 0 {
			if _, err = near.handshake(ctx, c, last.Addr); err != nil {
				return err
			}
		}
		switch last.Proto {
		case SOCKS4, SOCKS4a:
			first, err = d.socks4(ctx, c, last, wire.Cmd4Bind, host, port)
		default:
			first, err = socks5(c, last, wire.CmdBind, host, port)
		}
		return err
	})
	if err != nil {
		c.Close()
		return nil, wrap(err)
	}
	if !first.Addr().IsValid() || first.Addr().IsUnspecified() {
		first = netip.AddrPortFrom(d.hopAddr(ctx, c, last), first.Port())
	}
	return &Bind{Conn: c, Addr: first, hop: last}, nil
}

// hopAddr is the address of the last hop: the peer of c when it is the
// only hop, else its host, resolved if need be.
func (d *Dialer) hopAddr(ctx context.Context, c *net.TCPConn, h Hop) netip.Addr {
	if len(d.Hops) == 1 {
		if ap, ok := c.RemoteAddr().(*net.TCPAddr); ok {
			return ap.AddrPort().Addr().Unmap()
		}
	}
	host, _, _ := net.SplitHostPort(h.Addr)
	if a, err := netip.ParseAddr(host); err == nil {
		return a.Unmap()
	}
	var r Resolver = net.DefaultResolver
	if d.Resolver != nil {
		r = d.Resolver
	}
	if ips, err := r.LookupNetIP(ctx, "ip", host); err == nil && len(ips) > 0 {
		return ips[0].Unmap()
	}
	return netip.Addr{}
}

// Accept waits for the hop's second reply, sent when the application
// server has connected to it, and returns that peer's address. ctx bounds
// the wait. A refusal (a peer the hop would not take, or its time limit)
// is a *ReplyError.
func (b *Bind) Accept(ctx context.Context) (netip.AddrPort, error) {
	var peer netip.AddrPort
	err := deadlined(ctx, b.Conn, func() (err error) {
		if b.hop.Proto == SOCKS5 {
			peer, err = reply5(b.Conn, b.hop)
		} else {
			peer, err = reply4(b.Conn, b.hop)
		}
		return err
	})
	return peer, err
}

// deadlined runs f with ctx's deadline, and cancellation, on c; it clears
// the deadline after.
func deadlined(ctx context.Context, c *net.TCPConn, f func() error) error {
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	err := f()
	if !stop() && err == nil {
		err = context.Cause(ctx)
	}
	if err != nil && ctx.Err() != nil {
		err = fmt.Errorf("%w (%w)", err, context.Cause(ctx))
	}
	if err == nil {
		err = c.SetDeadline(time.Time{})
	}
	return err
}
