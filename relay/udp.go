package relay

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sockd-ng/sockd/grammar"
	"github.com/sockd-ng/sockd/policy"
	"github.com/sockd-ng/sockd/relay/client"
	"github.com/sockd-ng/sockd/relay/internal/wire"
)

// UDP ASSOCIATE (SOCKS5 CMD 3; RFC 1928 section 7; protocol.md): the
// client's datagrams come to a UDP socket on the address the client
// reached the server on, each with a header naming its destination. They
// are accepted only from the control connection's client IP (and port,
// when the request gave one); FRAG != 0 is dropped; each destination is
// judged against sockd.conf with command udp (a small cache of decisions,
// emptied on reload); replies are passed back, wrapped, only from remotes
// the client has sent to. Destinations that route through a SOCKS5 next
// hop go through an association of our own with that hop. The
// association lives as long as the control connection, within an idle
// limit.

const (
	maxDatagram   = 65535
	decisionCache = 256 // destinations remembered per association
	maxRemotes    = 4096
)

// assoc is one UDP association.
type assoc struct {
	c       *conn
	source  policy.UserSource
	client  *net.UDPConn // facing the client
	remote  *net.UDPConn // facing direct destinations
	from    netip.AddrPort
	peer    atomic.Pointer[netip.AddrPort] // where the client's datagrams come from
	act     activity
	wg      sync.WaitGroup
	closing atomic.Bool

	mu      sync.Mutex
	sentTo  map[netip.AddrPort]struct{}
	cache   map[wire.Addr]*udpDecision
	version *policy.Ruleset
	hops    map[string]*hopAssoc

	up, down, dgUp, dgDown, dropped atomic.Int64
}

type udpDecision struct {
	ok    bool
	to    netip.AddrPort // direct: the address to send to
	chain []policy.Hop   // via a next hop
	hop   string
}

// hopAssoc is an association of ours with a SOCKS5 next hop.
type hopAssoc struct {
	a     *client.Association
	conn  *net.UDPConn // connected to the hop's relay address
	chain string
}

func (s *Server) udpTimeout() time.Duration {
	switch {
	case s.UDPTimeout > 0:
		return s.UDPTimeout
	case s.IdleTimeout > 0:
		return s.IdleTimeout
	}
	return 5 * time.Minute
}

// udp serves an association until its control connection closes or it
// has been idle for too long.
func (c *conn) udp(source policy.UserSource, reply encoder) error {
	ctx, cancel := context.WithTimeout(context.Background(), c.s.connectTimeout())
	_, ok := c.admit(ctx, source, reply, socks5Rep)
	cancel()
	if !ok {
		return nil // no datagram of this client could pass: no sockets for it
	}
	c.via, c.reason = "direct", "udp association: each datagram judged"
	cs, err := net.ListenUDP("udp", &net.UDPAddr{IP: c.local.Addr().AsSlice()})
	if err != nil {
		return c.fail(reply, err)
	}
	rs, err := net.ListenUDP("udp", nil)
	if err != nil {
		cs.Close()
		return c.fail(reply, err)
	}
	a := &assoc{c: c, source: source, client: cs, remote: rs, sentTo: map[netip.AddrPort]struct{}{},
		cache: map[wire.Addr]*udpDecision{}, hops: map[string]*hopAssoc{}}
	if c.dst.IP.IsValid() && !c.dst.IP.IsUnspecified() {
		a.from = netip.AddrPortFrom(c.dst.IP, c.dst.Port)
	} else if c.dst.Port != 0 {
		a.from = netip.AddrPortFrom(netip.Addr{}, c.dst.Port)
	}
	a.act.touch()
	if err := c.write(reply(wire.RepSucceeded, addrPortOf(cs.LocalAddr()))); err != nil {
		a.close()
		return err
	}
	c.reply = wire.RepSucceeded
	a.wg.Add(2)
	go a.fromClient()
	go a.fromRemotes(rs, "")
	err = a.watch()
	a.close()
	a.wg.Wait()
	c.up, c.down = a.up.Load(), a.down.Load()
	c.dgrams = [3]int64{a.dgUp.Load(), a.dgDown.Load(), a.dropped.Load()}
	return err
}

// watch waits for the control connection to close, checking the idle
// limit.
func (a *assoc) watch() error {
	idle := a.c.s.udpTimeout()
	var b [512]byte
	for {
		a.c.c.SetReadDeadline(time.Now().Add(idle / 4))
		_, err := a.c.c.Read(b[:]) // a client has nothing to say here; what it says is dropped
		switch {
		case err == nil:
		case errors.Is(err, os.ErrDeadlineExceeded):
			if time.Since(time.Unix(0, a.act.last.Load())) > idle {
				return errIdle
			}
		default:
			if isClosedConn(err) || errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

func (a *assoc) close() {
	if a.closing.Swap(true) {
		return
	}
	a.client.Close()
	a.remote.Close()
	a.mu.Lock()
	for _, h := range a.hops {
		h.a.Control.Close()
		h.conn.Close()
	}
	a.mu.Unlock()
}

// fromClient takes the client's datagrams, judges and forwards them.
func (a *assoc) fromClient() {
	defer a.wg.Done()
	buf := make([]byte, maxDatagram)
	clientIP := a.c.remote.Addr()
	for {
		n, src, err := a.client.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		if src.Addr() != clientIP || a.from.Port() != 0 && src.Port() != a.from.Port() {
			a.dropped.Add(1) // not from the control connection's client
			continue
		}
		h, hl, err := wire.ParseUDPHeader(buf[:n])
		if err != nil || h.Frag != 0 {
			a.dropped.Add(1) // malformed, or a fragment: not supported
			continue
		}
		a.peer.Store(&src)
		if h.Addr.Name != "" {
			h.Addr = destination(h.Addr.Name, h.Addr.Port)
		}
		d := a.decide(h.Addr)
		if !d.ok {
			a.dropped.Add(1)
			continue
		}
		payload := buf[hl:n]
		if d.chain != nil {
			if !a.viaHop(d, h.Addr, payload) {
				a.dropped.Add(1)
			}
			continue
		}
		a.remember(d.to)
		if _, err := a.remote.WriteToUDPAddrPort(payload, d.to); err != nil {
			a.dropped.Add(1)
			continue
		}
		a.act.touch()
		a.dgUp.Add(1)
		a.up.Add(int64(len(payload)))
	}
}

// remember notes a remote the client sent to, so that its replies pass.
func (a *assoc) remember(to netip.AddrPort) {
	a.mu.Lock()
	if len(a.sentTo) >= maxRemotes {
		clear(a.sentTo) // bounded; a client that cycles this many remotes starts over
	}
	a.sentTo[to] = struct{}{}
	a.mu.Unlock()
}

func (a *assoc) sentToOK(from netip.AddrPort) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	_, ok := a.sentTo[from]
	return ok
}

// fromRemotes passes replies back to the client, wrapped. On a direct
// socket (hop == ""), only remotes the client has sent to pass; on an
// association with a next hop, the hop's header names the remote.
func (a *assoc) fromRemotes(sock *net.UDPConn, hop string) {
	defer a.wg.Done()
	buf := make([]byte, maxDatagram)
	out := make([]byte, 0, 262+maxDatagram)
	for {
		n, from, err := sock.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		payload := buf[:n]
		var remote wire.Addr
		if hop == "" {
			from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
			if !a.sentToOK(from) {
				a.dropped.Add(1)
				continue
			}
			remote = wire.Addr{IP: from.Addr(), Port: from.Port()}
		} else {
			h, hl, err := wire.ParseUDPHeader(payload)
			if err != nil || h.Frag != 0 {
				a.dropped.Add(1)
				continue
			}
			remote, payload = h.Addr, payload[hl:]
		}
		peer := a.peer.Load()
		if peer == nil {
			a.dropped.Add(1)
			continue
		}
		out = append(wire.AppendUDPHeader(out[:0], remote), payload...)
		if _, err := a.client.WriteToUDPAddrPort(out, *peer); err != nil {
			a.dropped.Add(1)
			continue
		}
		a.act.touch()
		a.dgDown.Add(1)
		a.down.Add(int64(len(payload)))
	}
}

// decide judges a destination with command udp, through a small cache
// that a reload empties.
func (a *assoc) decide(dst wire.Addr) *udpDecision {
	var version *policy.Ruleset
	if l, ok := a.c.s.Decider.(interface{ Load() *policy.Ruleset }); ok {
		version = l.Load()
	}
	a.mu.Lock()
	if version != a.version || len(a.cache) >= decisionCache {
		clear(a.cache)
		a.version = version
	}
	d, ok := a.cache[dst]
	a.mu.Unlock()
	if ok {
		return d
	}
	c := a.c
	ctx, cancel := context.WithTimeout(context.Background(), c.s.connectTimeout())
	defer cancel()
	q := policy.Query{
		Command: policy.UDP, Client: c.remote.Addr(), User: c.user, Source: a.source,
		Dst: dst.IP, DstName: dst.Name, Port: dst.Port,
		// This goroutine alone decides after the handshake: the memoised
		// lookups of the conn need no lock.
		Ident: c.ident, ClientName: c.clientNameOnce, DstAddrName: c.s.dstName, Resolve: c.s.resolve,
	}
	pd := c.s.Decider.Decide(ctx, q)
	d = &udpDecision{ok: pd.Action == grammar.Permit}
	if d.ok {
		c.rule, c.route = pd.Rule, pd.Route.Rule // the log line names the last permitting rules
	}
	if pd.NumHooks > 0 && c.s.Hooks != nil {
		c.s.Hooks.run(c, &q, &pd) // once per destination and association: decisions are cached
	}
	switch {
	case !d.ok:
	case pd.Route.Kind == policy.RouteVia:
		for _, ch := range pd.Route.Chains {
			if len(ch) == 1 && ch[0].Proto == grammar.HopSOCKS5 {
				d.chain, d.hop = ch, chainString(ch)
				break
			}
		}
		d.ok = d.chain != nil // datagrams cross only a single SOCKS5 hop
	case pd.Resolved && len(pd.Addrs) > 0:
		d.to = netip.AddrPortFrom(pd.Addrs[0], dst.Port)
	case pd.Resolved:
		d.ok = false
	default:
		d.to = netip.AddrPortFrom(dst.IP, dst.Port)
	}
	a.mu.Lock()
	a.cache[dst] = d
	a.mu.Unlock()
	return d
}

// viaHop sends a datagram through the association with the decision's
// next hop, opening it on first use.
func (a *assoc) viaHop(d *udpDecision, dst wire.Addr, payload []byte) bool {
	a.mu.Lock()
	h, ok := a.hops[d.hop]
	a.mu.Unlock()
	if !ok {
		ctx, cancel := context.WithTimeout(context.Background(), a.c.s.connectTimeout())
		defer cancel()
		var pd policy.Decision
		cd, err := a.c.chainDialer(ctx, &pd, d.chain)
		if err != nil {
			return false
		}
		conn, err := net.ListenUDP("udp", nil)
		if err != nil {
			return false
		}
		as, err := cd.Associate(ctx, netip.AddrPort{})
		if err != nil {
			conn.Close()
			a.c.s.logger().Warn("udp associate with next hop failed", "id", a.c.id, "via", d.hop, "err", err)
			return false
		}
		h = &hopAssoc{a: as, conn: conn, chain: d.hop}
		a.mu.Lock()
		if a.closing.Load() {
			a.mu.Unlock()
			as.Control.Close()
			conn.Close()
			return false
		}
		a.hops[d.hop] = h
		a.wg.Add(1)
		a.mu.Unlock()
		a.c.via = d.hop
		go a.fromRemotes(conn, d.hop)
	}
	msg := append(wire.AppendUDPHeader(nil, dst), payload...)
	if _, err := h.conn.WriteToUDPAddrPort(msg, h.a.Relay); err != nil {
		return false
	}
	a.act.touch()
	a.dgUp.Add(1)
	a.up.Add(int64(len(payload)))
	return true
}
