package relay

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

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
// the client has sent to. Datagrams to direct destinations leave from the
// local address sockd.route gives for them (one socket per such address,
// opened on first use); a destination no line covers is dropped.
// Destinations that route through SOCKS5 next hops (one, or a chain of
// them) go through an association of our own with the first alternative
// that works (failover and back-off as for TCP), opened again when a hop
// ends it. The association lives as long as the control connection,
// within an idle limit.

const (
	udpReadBuffer = 4 << 20
	maxDatagram   = 65535
	decisionCache = 256 // destinations remembered per association
	maxRemotes    = 4096
)

// assoc is one UDP association.
type assoc struct {
	c       *conn
	source  policy.UserSource
	client  *net.UDPConn // facing the client
	from    netip.AddrPort
	peer    atomic.Pointer[netip.AddrPort] // where the client's datagrams come from
	act     activity
	wg      sync.WaitGroup
	closing atomic.Bool

	mu      sync.Mutex
	sentTo  map[netip.AddrPort]struct{}
	cache   map[wire.Addr]*udpDecision
	version *policy.Ruleset
	remotes map[netip.Addr]*remote // facing direct destinations, by local address
	hops    map[string]*hopAssoc   // by the route's server list
	hopWait map[string]time.Time   // server lists whose hops all failed, until then

	up, down, dgUp, dgDown atomic.Int64
	dropped                drops
}

// DropReason says why a UDP datagram was dropped.
type DropReason uint8

const (
	DropSource      DropReason = iota // not from the association's client
	DropMalformed                     // a bad header, or a fragment (FRAG != 0)
	DropDenied                        // its destination is denied by the rules
	DropUnspecified                   // its destination is, or resolves only to, 0.0.0.0/8 or ::
	DropNoRoute                       // no sockd.route line, or no all-SOCKS5 alternative, for it
	DropHopDown                       // no association with its next hops could be had
	DropUnsolicited                   // a reply from a remote the client has not sent to
	DropSendFailed                    // the socket would not send it
	NumDropReasons
)

var dropNames = [NumDropReasons]string{"source", "malformed", "denied", "unspecified", "no_route", "hop_down", "unsolicited", "send_failed"}

func (r DropReason) String() string {
	if r < NumDropReasons {
		return dropNames[r]
	}
	return "unknown"
}

// drops counts dropped datagrams by reason.
type drops [NumDropReasons]atomic.Int64

// drop counts a dropped datagram.
func (a *assoc) drop(r DropReason) {
	a.dropped[r].Add(1)
	if o := a.c.s.Observer; o != nil {
		o.Dropped(r)
	}
}

// sent counts a datagram of n payload bytes relayed up (client to
// destination) or down.
func (a *assoc) sent(up bool, n int) {
	a.act.touch()
	if up {
		a.dgUp.Add(1)
		a.up.Add(int64(n))
		a.c.s.bytes[0].Add(uint64(n))
	} else {
		a.dgDown.Add(1)
		a.down.Add(int64(n))
		a.c.s.bytes[1].Add(uint64(n))
	}
	if o := a.c.s.Observer; o != nil {
		o.Datagram(up)
	}
}

// total and String sum and list the counts, for the session log line:
// "unspecified:3 denied:1".
func (d *drops) total() (n int64) {
	for i := range d {
		n += d[i].Load()
	}
	return n
}

func (d *drops) String() string {
	var b []byte
	for i := range d {
		if n := d[i].Load(); n > 0 {
			if len(b) > 0 {
				b = append(b, ' ')
			}
			b = append(b, dropNames[i]...)
			b = append(b, ':')
			b = strconv.AppendInt(b, n, 10)
		}
	}
	return string(b)
}

type udpDecision struct {
	ok     bool
	why    DropReason     // when not ok
	to     netip.AddrPort // direct: the address to send to
	src    netip.Addr     // direct: the local address to send from (sockd.route), or none
	chains [][]policy.Hop // via next hops: the alternatives that carry datagrams
	list   string         // their server list, the key of the association
	in     *policy.Interfaces
}

// hopAssoc is an association of ours through SOCKS5 next hops.
type hopAssoc struct {
	a     *client.Association
	conn  *net.UDPConn // bound to the control connection's local address
	chain string
}

// hopRetry is how long datagrams for a server list whose hops all failed
// are dropped before the hops are tried again, so that a client sending
// steadily does not wait out a connect time limit per datagram.
const hopRetry = 5 * time.Second

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
	c.rec.Via, c.rec.Reason = "direct", "udp association: each datagram judged"
	cs, err := net.ListenUDP("udp", &net.UDPAddr{IP: c.ownAddr().AsSlice()})
	if err != nil {
		return c.fail(reply, err)
	}
	// Room for a burst while the relay is not scheduled: a limit, not an
	// allocation (the kernel caps it at net.core.rmem_max).
	cs.SetReadBuffer(udpReadBuffer)
	a := &assoc{c: c, source: source, client: cs, sentTo: map[netip.AddrPort]struct{}{},
		cache: map[wire.Addr]*udpDecision{}, remotes: map[netip.Addr]*remote{},
		hops: map[string]*hopAssoc{}, hopWait: map[string]time.Time{}}
	if c.rec.Dst.IP.IsValid() && !c.rec.Dst.IP.IsUnspecified() {
		a.from = netip.AddrPortFrom(c.rec.Dst.IP, c.rec.Dst.Port)
	} else if c.rec.Dst.Port != 0 {
		a.from = netip.AddrPortFrom(netip.Addr{}, c.rec.Dst.Port)
	}
	a.act.touch()
	if err := c.write(reply(wire.RepSucceeded, addrPortOf(cs.LocalAddr()))); err != nil {
		a.close()
		return err
	}
	c.rec.Reply = wire.RepSucceeded
	a.wg.Add(1)
	go a.fromClient()
	err = a.watch()
	a.close()
	a.wg.Wait()
	c.rec.BytesUp, c.rec.BytesDown = a.up.Load(), a.down.Load()
	c.rec.Datagrams = [3]int64{a.dgUp.Load(), a.dgDown.Load(), a.dropped.total()}
	c.rec.Dropped = a.dropped.String()
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
	a.mu.Lock()
	for _, r := range a.remotes {
		r.conn.Close()
	}
	for _, h := range a.hops {
		h.a.Close()
		h.conn.Close()
	}
	a.mu.Unlock()
}

// fromClient takes the client's datagrams, judges and forwards them, in
// batches (udpbatch.go).
func (a *assoc) fromClient() {
	defer a.wg.Done()
	rc, err := a.client.SyscallConn()
	if err != nil {
		return
	}
	var (
		in    *udpBatch // taken only while the socket has datagrams
		n     int
		errno syscall.Errno
	)
	read := func(fd uintptr) bool {
		if in == nil {
			in = readBatches.Get().(*udpBatch)
		}
		n, errno = in.recvmmsg(fd)
		if errno == unix.EAGAIN {
			readBatches.Put(in)
			in = nil
			return false
		}
		return true
	}
	out := sendBatches.Get().(*udpBatch)
	defer sendBatches.Put(out)
	clientIP := a.c.rec.Client.Addr()
	var remembered netip.AddrPort
	for {
		if err := rc.Read(read); err != nil || errno != 0 {
			if in != nil {
				readBatches.Put(in)
			}
			return // closed
		}
		var to *remote // the socket the queued datagrams go out on
		queued := 0
		for i := range n {
			buf, src := in.datagram(i)
			if src.Addr() != clientIP || a.from.Port() != 0 && src.Port() != a.from.Port() {
				a.drop(DropSource)
				continue
			}
			h, hl, err := wire.ParseUDPHeader(buf)
			if err != nil || h.Frag != 0 {
				a.drop(DropMalformed) // fragments are not supported
				continue
			}
			if p := a.peer.Load(); p == nil || *p != src {
				peer := src
				a.peer.Store(&peer)
			}
			if h.Addr.Name != "" {
				h.Addr = destination(h.Addr.Name, h.Addr.Port)
			}
			d := a.decide(h.Addr)
			if !d.ok {
				a.drop(d.why)
				continue
			}
			payload := buf[hl:]
			if d.chains != nil {
				if !a.viaHop(d, h.Addr, payload) {
					a.drop(DropHopDown)
				}
				continue
			}
			if policy.Unspecified(d.to.Addr()) { // the Decider must not permit one; never send there
				a.drop(DropUnspecified)
				continue
			}
			r := a.remoteFor(d.src)
			if r == nil {
				a.drop(DropSendFailed)
				continue
			}
			if r != to {
				a.flush(to, out, queued)
				to, queued = r, 0
			}
			if !out.add(queued, payload, d.to, r.inet6) {
				a.drop(DropSendFailed) // an IPv6 destination from an IPv4 address
				continue
			}
			queued++
			if d.to != remembered {
				a.remember(d.to)
				remembered = d.to
			}
		}
		a.flush(to, out, queued)
	}
}

// remote is a socket facing direct destinations.
type remote struct {
	conn  *net.UDPConn
	rc    syscall.RawConn
	inet6 bool // an AF_INET6 socket (dual-stack); else AF_INET
}

// flush sends the n datagrams queued in b on r, and counts them.
func (a *assoc) flush(r *remote, b *udpBatch, n int) {
	for i := 0; i < n; {
		var sent int
		var errno syscall.Errno
		err := r.rc.Write(func(fd uintptr) bool {
			sent, errno = b.sendmmsg(fd, i, n)
			return errno != unix.EAGAIN
		})
		if err != nil {
			for ; i < n; i++ {
				a.drop(DropSendFailed)
			}
			return
		}
		for range sent {
			a.sent(true, int(b.iovs[i].Len))
			i++
		}
		if errno != 0 {
			a.drop(DropSendFailed) // the i-th would not go: skip it
			i++
		}
	}
}

// remoteFor returns the socket that sends to direct destinations from src
// (any address when src is the zero Addr), opening it on first use, and
// nil if it cannot be had.
func (a *assoc) remoteFor(src netip.Addr) *remote {
	a.mu.Lock()
	defer a.mu.Unlock()
	if r, ok := a.remotes[src]; ok {
		return r
	}
	if a.closing.Load() {
		return nil
	}
	var la *net.UDPAddr
	if src.IsValid() {
		la = &net.UDPAddr{IP: src.AsSlice()}
	}
	conn, err := net.ListenUDP("udp", la)
	var rc syscall.RawConn
	if err == nil {
		rc, err = conn.SyscallConn()
	}
	if err != nil {
		a.c.s.logger().Warn("udp socket for direct destinations", "id", a.c.rec.ID, "src", src, "err", err)
		return nil
	}
	r := &remote{conn: conn, rc: rc}
	rc.Control(func(fd uintptr) {
		if sa, err := unix.Getsockname(int(fd)); err == nil {
			_, r.inet6 = sa.(*unix.SockaddrInet6)
		}
	})
	a.remotes[src] = r
	a.wg.Add(1)
	go a.fromRemotes(conn, nil)
	return r
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
// socket (hop == nil), only remotes the client has sent to pass; on an
// association through next hops, the last hop's header names the remote.
func (a *assoc) fromRemotes(sock *net.UDPConn, hop *client.Association) {
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
		if hop == nil {
			from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
			if !a.sentToOK(from) {
				a.drop(DropUnsolicited)
				continue
			}
			remote = wire.Addr{IP: from.Addr(), Port: from.Port()}
		} else {
			var ok bool
			if remote, payload, ok = unwrap(payload, hop.Layers()); !ok {
				a.drop(DropMalformed)
				continue
			}
		}
		peer := a.peer.Load()
		if peer == nil {
			a.drop(DropUnsolicited) // the client has sent nothing yet
			continue
		}
		out = append(wire.AppendUDPHeader(out[:0], remote), payload...)
		if _, err := a.client.WriteToUDPAddrPort(out, *peer); err != nil {
			a.drop(DropSendFailed)
			continue
		}
		a.sent(false, len(payload))
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
		Command: policy.UDP, Client: c.rec.Client.Addr(), User: c.rec.User, Source: a.source,
		Dst: dst.IP, DstName: dst.Name, Port: dst.Port,
		// This goroutine alone decides after the handshake: the memoised
		// lookups of the conn need no lock.
		Ident: c.ident, ClientName: c.clientNameOnce, DstAddrName: c.s.dstName, Resolve: c.s.resolve,
	}
	pd := c.s.Decider.Decide(ctx, q)
	d = &udpDecision{ok: pd.Action == grammar.Permit, why: DropDenied}
	if !d.ok && unspecifiedOnly(&pd, dst) {
		d.why = DropUnspecified
		c.s.logger().Debug("udp destination refused", "id", c.rec.ID, "dst", dst, "reason", pd.Reason)
	}
	if d.ok {
		c.rec.Rule, c.rec.Route = pd.Rule, pd.Route.Rule // the log line names the last permitting rules
	}
	if pd.NumHooks > 0 && c.s.Hooks != nil {
		c.s.Hooks.run(c, &q, &pd) // once per destination and association: decisions are cached
	}
	switch {
	case !d.ok:
	case pd.Route.Kind == policy.RouteVia:
		for _, ch := range pd.Route.Chains {
			if allSOCKS5(ch) {
				d.chains = append(d.chains, ch) // datagrams cross SOCKS5 hops only
			}
		}
		d.ok, d.list, d.in, d.why = d.chains != nil, pd.Route.String(), pd.Interfaces, DropNoRoute
		if !d.ok {
			c.s.logger().Warn("udp destination dropped: no alternative of its route is all SOCKS5",
				"id", c.rec.ID, "dst", dst, "route", d.list)
		}
	default:
		addrs := pd.Addrs
		if !pd.Resolved {
			addrs = []netip.Addr{dst.IP}
		}
		d.ok, d.why = false, DropNoRoute
		for _, ip := range addrs { // the first permitted address sockd.route covers
			if src, _, ok := pd.Interfaces.Source(ip); ok {
				d.ok, d.to, d.src = true, netip.AddrPortFrom(ip, dst.Port), src
				break
			}
		}
		if !d.ok && len(addrs) > 0 {
			c.s.logger().Warn("udp destination dropped", "id", c.rec.ID, "dst", dst, "err", errNoInterface)
		}
	}
	a.mu.Lock()
	a.cache[dst] = d
	a.mu.Unlock()
	return d
}

// viaHop sends a datagram through the association with the decision's
// next hops, opening it on first use.
func (a *assoc) viaHop(d *udpDecision, dst wire.Addr, payload []byte) bool {
	h := a.hopFor(d)
	if h == nil {
		return false
	}
	msg := append(wire.AppendUDPHeader(append([]byte(nil), h.a.Prefix()...), dst), payload...)
	if _, err := h.conn.WriteToUDPAddrPort(msg, h.a.Relay); err != nil {
		return false
	}
	a.sent(true, len(payload))
	return true
}

// hopFor returns the association for d's server list, opening one with the
// first alternative that works (in order, skipping hops backing off), or
// nil when none does.
func (a *assoc) hopFor(d *udpDecision) *hopAssoc {
	a.mu.Lock()
	h, ok := a.hops[d.list]
	wait := time.Until(a.hopWait[d.list])
	a.mu.Unlock()
	if ok {
		return h
	}
	if wait > 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), a.c.s.connectTimeout())
	defer cancel()
	pd := policy.Decision{Route: policy.Route{Kind: policy.RouteVia, Chains: d.chains}, Interfaces: d.in}
	var as *client.Association
	via, err := a.c.eachChain(ctx, &pd, func(ctx context.Context, cd *client.Dialer) (err error) {
		as, err = cd.Associate(ctx, netip.AddrPort{})
		return err
	})
	var conn *net.UDPConn
	if err == nil {
		// Datagrams leave from the address the control connection has, as
		// a hop that checks their source expects.
		local := as.Control.LocalAddr().(*net.TCPAddr)
		if conn, err = net.ListenUDP("udp", &net.UDPAddr{IP: local.IP}); err != nil {
			as.Close()
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if err != nil {
		a.hopWait[d.list] = time.Now().Add(hopRetry)
		a.c.s.logger().Warn("udp associate with next hop failed", "id", a.c.rec.ID, "via", via, "err", err)
		return nil
	}
	if a.closing.Load() {
		as.Close()
		conn.Close()
		return nil
	}
	h = &hopAssoc{a: as, conn: conn, chain: via}
	a.hops[d.list] = h
	a.wg.Add(2)
	a.c.rec.Via = via
	go a.fromRemotes(conn, as)
	go func() {
		// A hop that ends the association (its idle limit, a restart)
		// closes a control connection: forget it, so that the next
		// datagram opens another.
		defer a.wg.Done()
		as.Wait()
		a.mu.Lock()
		if a.hops[d.list] == h {
			delete(a.hops, d.list)
		}
		a.mu.Unlock()
		as.Close()
		conn.Close()
	}()
	return h
}

// unspecifiedOnly reports whether a refused destination is, or resolves
// only to, unspecified addresses.
func unspecifiedOnly(pd *policy.Decision, dst wire.Addr) bool {
	if !pd.Resolved {
		return dst.IP.IsValid() && policy.Unspecified(dst.IP)
	}
	for _, v := range pd.PerAddr {
		if !policy.Unspecified(v.Addr) {
			return false
		}
	}
	return len(pd.PerAddr) > 0
}

// allSOCKS5 reports whether every hop of a chain speaks SOCKS5, so that
// datagrams can cross it.
func allSOCKS5(chain []policy.Hop) bool {
	for _, h := range chain {
		if h.Proto != grammar.HopSOCKS5 {
			return false
		}
	}
	return true
}

// unwrap takes the layers SOCKS5 UDP headers off a datagram that came
// through next hops and returns what the innermost one names, and the
// payload; ok is false for a malformed datagram or a fragment.
func unwrap(b []byte, layers int) (remote wire.Addr, payload []byte, ok bool) {
	for range layers {
		h, hl, err := wire.ParseUDPHeader(b)
		if err != nil || h.Frag != 0 {
			return remote, nil, false
		}
		remote, b = h.Addr, b[hl:]
	}
	return remote, b, true
}
