package relay

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/sockd-ng/sockd/grammar"
	"github.com/sockd-ng/sockd/policy"
	"github.com/sockd-ng/sockd/relay/client"
	"github.com/sockd-ng/sockd/relay/internal/wire"
)

// errWrongPeer is an inbound BIND connection from another host than the
// request named.
var errWrongPeer = errors.New("inbound connection from a host the request did not name")

// bind serves a BIND request (SOCKS4 CD 2, SOCKS5 CMD 2; protocol.md,
// BIND): the rules judge the request's DSTIP and DSTPORT, the application
// server and the port of the primary connection. The first reply says
// where the server listens — on the address the client reached it on, or
// the sockd.route interface — and one inbound connection is awaited, which
// must come from the request's address (for a name, one of its permitted
// addresses). The second reply names the peer; then the two are relayed.
// Through a next hop, the hop listens; its replies are passed on, and the
// peer is still checked here.
func (c *conn) bind(source policy.UserSource, reply encoder, code coder) error {
	ctx, cancel := context.WithTimeout(context.Background(), c.s.connectTimeout())
	defer cancel()
	d, ok := c.admit(ctx, source, reply, code)
	if !ok {
		return nil
	}
	allowed := d.Addrs
	if !d.Resolved {
		allowed = []netip.Addr{c.rec.Dst.IP}
	}
	if d.Route.Kind == policy.RouteVia {
		return c.bindVia(ctx, &d, allowed, reply, code)
	}
	c.rec.Via = "direct"
	la := c.ownAddr()
	if d.Interfaces != nil {
		src, _, ok := d.Interfaces.Source(allowed[0])
		if !ok {
			return c.fail(reply, fmt.Errorf("bind for %s: %w", allowed[0], errNoInterface))
		}
		la = src
	}
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: la.AsSlice()})
	if err != nil {
		return c.fail(reply, fmt.Errorf("bind: %w", err))
	}
	defer ln.Close()
	if err := c.write(reply(code(policy.Granted), addrPortOf(ln.Addr()))); err != nil {
		return err
	}
	var peer *net.TCPConn
	err = c.await(func(ctx context.Context) error {
		ln.SetDeadline(time.Now().Add(c.s.bindTimeout()))
		stop := context.AfterFunc(ctx, func() { ln.SetDeadline(time.Unix(1, 0)) })
		defer stop()
		var err error
		peer, err = ln.AcceptTCP()
		return err
	})
	ln.Close()
	if err != nil {
		return c.bindFailed(reply, err)
	}
	return c.bindPeer(peer, addrPortOf(peer.RemoteAddr()), allowed, reply, code)
}

// bindVia has the first chain that works do the listening.
func (c *conn) bindVia(ctx context.Context, d *policy.Decision, allowed []netip.Addr, reply encoder, code coder) error {
	target := c.rec.Dst.String()
	if d.Resolved {
		target = netip.AddrPortFrom(allowed[0], c.rec.Dst.Port).String()
	}
	var b *client.Bind
	via, err := c.eachChain(ctx, d, func(ctx context.Context, cd *client.Dialer) (err error) {
		b, err = cd.Bind(ctx, target)
		return err
	})
	c.rec.Via = via
	if err != nil {
		return c.fail(reply, err)
	}
	c.mu.Lock()
	c.out = b.Conn // so that abort ends the wait too
	c.mu.Unlock()
	if err := c.write(reply(code(policy.Granted), b.Addr)); err != nil {
		return err
	}
	var peer netip.AddrPort
	err = c.await(func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, c.s.bindTimeout())
		defer cancel()
		var err error
		peer, err = b.Accept(ctx)
		return err
	})
	if err != nil {
		return c.bindFailed(reply, err)
	}
	return c.bindPeer(b.Conn, peer, allowed, reply, code)
}

// bindPeer checks the inbound connection's source, sends the second reply
// and relays; conn is the inbound connection, or the hop's that carries it.
// A request that named no address (0.0.0.0 or ::, as RFC 1928 lets a
// client that does not know it, and as Dante's socksify does) takes any
// peer the rules permit: the peer is judged as a BIND from its address.
func (c *conn) bindPeer(conn *net.TCPConn, peer netip.AddrPort, allowed []netip.Addr, reply encoder, code coder) error {
	c.rec.Connected = peer
	if len(allowed) == 1 && (!allowed[0].IsValid() || allowed[0].IsUnspecified()) && c.peerPermitted(peer) {
		allowed = []netip.Addr{peer.Addr().Unmap()}
	}
	for _, a := range allowed {
		if a == peer.Addr().Unmap() {
			c.mu.Lock()
			c.out = conn
			c.mu.Unlock()
			c.rec.Reply = int(code(policy.Granted))
			if err := c.write(reply(code(policy.Granted), peer)); err != nil {
				conn.Close()
				return err
			}
			return c.relay(conn)
		}
	}
	conn.Close()
	rep := code(policy.Rejected)
	c.rec.Reply, c.rec.Reason, c.rec.Refusal = int(rep), "BIND peer is not the host the request named", RefusedWrongPeer
	c.refuse(reply(rep, peer))
	return fmt.Errorf("%w: %s", errWrongPeer, peer)
}

// peerPermitted judges the peer of a BIND that named no address, with
// the request's port and user, as a BIND to the peer's address.
func (c *conn) peerPermitted(peer netip.AddrPort) bool {
	ctx, cancel := context.WithTimeout(context.Background(), c.s.connectTimeout())
	defer cancel()
	d := c.s.Decider.Decide(ctx, policy.Query{
		Command: policy.Bind, Client: c.rec.Client.Addr(), User: c.rec.User, Source: c.source,
		Dst: peer.Addr().Unmap(), Port: c.rec.Dst.Port,
		Ident: c.ident, ClientName: c.clientNameOnce, DstAddrName: c.s.dstName,
	})
	if d.Action != grammar.Permit {
		c.rec.Rule = d.Rule
		return false
	}
	return true
}

// bindFailed sends the second reply for a BIND that got no peer: its time
// limit (SOCKS5 REP 6), a next hop's refusal, the client gone.
func (c *conn) bindFailed(reply encoder, err error) error {
	rep := c.failCode()
	if c.rec.Proto == "socks5" {
		rep = replyFor(err)
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, errBindTimeout) {
			rep = wire.RepTTLExpired
		}
	}
	c.rec.Reply, c.rec.Warn = int(rep), !errors.Is(err, errBindTimeout)
	c.refuse(reply(rep, netip.AddrPort{}))
	return err
}

// errBindTimeout is a BIND that no inbound connection came to in time.
var errBindTimeout = errors.New("no inbound connection within the BIND time limit")

// await runs wait (an accept) while watching the client: a client that
// hangs up cancels the wait. A client must not speak before the second
// reply; a byte it sends early is kept for the relay.
func (c *conn) await(wait func(ctx context.Context) error) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var early [1]byte
	var n int
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		n, _ = c.c.Read(early[:])
		cancel()
	}()
	err := wait(ctx)
	gone := ctx.Err() != nil // before ending the watch, which cancels ctx too
	c.c.SetReadDeadline(time.Unix(1, 0))
	<-watched
	c.c.SetReadDeadline(time.Time{})
	if n > 0 && c.buf != nil && c.w < len(c.buf) {
		c.buf[c.w] = early[0]
		c.w++
	}
	switch {
	case err == nil:
		return nil
	case gone && n == 0:
		return fmt.Errorf("client closed while waiting for the BIND peer: %w", err)
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		return errBindTimeout
	}
	return err
}

func (s *Server) bindTimeout() time.Duration {
	if s.BindTimeout > 0 {
		return s.BindTimeout
	}
	return 2 * time.Minute
}
