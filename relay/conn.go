package relay

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sockd-ng/sockd/grammar"
	"github.com/sockd-ng/sockd/policy"
	"github.com/sockd-ng/sockd/relay/internal/wire"
)

// handshakeBufSize holds the longest message of either protocol (a SOCKS4a
// request of 520 bytes, an RFC 1929 request of 513) with room to spare.
const handshakeBufSize = 1024

var handshakeBufs = sync.Pool{New: func() any { return new([handshakeBufSize]byte) }}

// conn is one client connection and its session. The goroutine running
// serve owns it; abort may be called from Shutdown.
type conn struct {
	s       *Server
	c       net.Conn
	tcp     *net.TCPConn // c's socket, when it is TCP: what the relay splices and parks
	counted bool         // counted in its client's sessions (MaxClientSessions)
	overCap bool
	done    chan struct{} // closed when the session ends, for ServeConn; may be nil

	// handshake buffer: bytes [r:w] are read but not yet used. phase is
	// where a parked handshake resumes; hsEnd is its time limit.
	buf   *[handshakeBufSize]byte
	r, w  int
	phase phase
	hsEnd time.Time
	ps    parkSlot // the client's socket, while the handshake is parked

	local  netip.AddrPort
	source policy.UserSource

	// memoised lookups, each asked at most once per connection
	identDone  bool
	identRes   policy.IdentResult
	clientDone bool
	clientName string

	mu  sync.Mutex
	out net.Conn // the outbound leg, once connected

	// relay state: the directions still running, their errors, and the
	// time of the last byte for the idle limit
	running        atomic.Int32
	errUp, errDown error
	act            activity
	halves         [2]*half

	keptAlive atomic.Bool // keep-alive is on for out

	// rec is what the session did, filled in as it goes: its log line
	// and what the Observer counts.
	rec Record
}

// phase is how far a SOCKS5 handshake has got: where a parked one
// resumes. A SOCKS4 request is a single message.
type phase uint8

const (
	phaseGreeting phase = iota // SOCKS5: awaiting the greeting; SOCKS4: the request
	phaseAuth                  // SOCKS5: password method chosen, awaiting RFC 1929
	phaseRequest               // SOCKS5: awaiting the request
)

// abort closes both legs, ending the session. A parked half or handshake
// has no goroutine to see that: it is resumed, to finish.
func (c *conn) abort() {
	c.mu.Lock()
	out, halves := c.out, c.halves
	c.mu.Unlock()
	var resume [3]parkee
	if pk := c.s.pk.Load(); pk != nil {
		for i, h := range halves {
			if h != nil && pk.unpark(h) {
				resume[i] = h
			}
		}
		if c.ps.rc != nil && pk.unpark(c) {
			resume[2] = c
		}
	}
	c.c.Close()
	if out != nil {
		out.Close()
	}
	for _, x := range resume {
		if x != nil {
			go x.resume()
		}
	}
}

// A proxied connection — one accepted through a load balancer, whose
// PROXY protocol header names the real client (cmd wraps such listeners
// with github.com/pires/go-proxyproto) — reports the client's addresses
// and reads its header on the first call of either, and gives its socket
// with TCPConn. Its header reader holds at most 256 bytes, which the
// handshake's first read takes whole: from then on the socket alone
// carries the session.
type proxied interface {
	TCPConn() (*net.TCPConn, bool)
}

func (c *conn) serve() {
	c.rec.Reply = -1
	c.rec.Client = addrPortOf(c.c.RemoteAddr()) // a proxied connection reads its header here
	c.local = addrPortOf(c.c.LocalAddr())
	switch cc := c.c.(type) {
	case *net.TCPConn:
		c.tcp = cc
	case proxied:
		c.tcp, _ = cc.TCPConn()
	}
	if c.s.MaxClientSessions > 0 {
		if !c.s.countClient(c.rec.Client.Addr()) {
			if o := c.s.Observer; o != nil {
				o.Refused(RefusedClientCap)
			}
			c.c.Close()
			c.s.doneConn(c) // refused before its handshake: no log line, see countClient
			if c.done != nil {
				close(c.done)
			}
			return
		}
		c.counted = true
	}
	c.buf = handshakeBufs.Get().(*[handshakeBufSize]byte)
	c.hsEnd = c.rec.Start.Add(c.s.handshakeTimeout())
	c.c.SetDeadline(c.waitUntil())
	c.run()
}

// waitUntil is the deadline of a handshake read: the handshake time limit,
// or, when handshakes can park, the linger time, after which the read
// gives up its goroutine until the client speaks again.
func (c *conn) waitUntil() time.Time {
	if c.s.pk.Load() == nil {
		return c.hsEnd
	}
	if t := time.Now().Add(linger); t.Before(c.hsEnd) {
		return t
	}
	return c.hsEnd
}

// run runs the handshake from where it stands until the session relays,
// parks or ends.
func (c *conn) run() {
	for {
		err := c.handshake()
		switch {
		case err == errRelaying:
			return // the relay goroutines own the session now
		case err == errPark:
			if c.park() {
				return // the parker resumes it when the client speaks
			}
			c.c.SetDeadline(c.hsEnd) // wait here instead
			continue
		case err != nil && c.rec.Err == nil:
			c.rec.Err = err
		}
		c.finish()
		return
	}
}

// errPark is a handshake read that lingered without a byte: the handshake
// parks.
var errPark = errors.New("handshake parks")

// park hands a stalled handshake to the parker, giving its buffer back if
// it holds nothing; it reports whether the handshake is parked, in which
// case the calling goroutine must leave c alone and end.
func (c *conn) park() bool {
	pk := c.s.pk.Load()
	if pk == nil {
		return false
	}
	if c.ps.rc == nil {
		if c.tcp == nil {
			return false
		}
		rc, err := c.tcp.SyscallConn()
		if err != nil {
			return false
		}
		c.ps.rc, c.ps.handshake = rc, true
	}
	if c.r == c.w && c.buf != nil {
		handshakeBufs.Put(c.buf)
		c.buf, c.r, c.w = nil, 0, 0
	}
	return pk.park(c)
}

// keepAlive turns keep-alive probes on for the outbound connection, once,
// when the session first goes quiet: a destination that vanishes without a
// word then ends the session, as a client that does already does (accepted
// sockets inherit keep-alive from the listener).
func (c *conn) keepAlive() {
	if c.keptAlive.Swap(true) {
		return
	}
	c.mu.Lock()
	out := c.out
	c.mu.Unlock()
	if tc, ok := out.(*net.TCPConn); ok {
		tc.SetKeepAlive(true)
	}
}

// ownAddr is the address the client reached the server on, for the
// sockets a BIND or a UDP association opens: behind a load balancer, the
// address its PROXY protocol header names when this host has it (the
// balancer forwards without rewriting it, as IPVS direct routing does),
// else the one the balancer connected to.
func (c *conn) ownAddr() netip.Addr {
	a := c.local.Addr()
	if c.tcp == nil || c.tcp == c.c {
		return a
	}
	if ln, err := net.ListenUDP("udp", &net.UDPAddr{IP: a.AsSlice()}); err == nil {
		ln.Close()
		return a
	}
	return addrPortOf(c.tcp.LocalAddr()).Addr()
}

// A stalled handshake is a parkee: it resumes where it stopped, and expires
// with the handshake time limit.
func (c *conn) slot() *parkSlot { return &c.ps }

func (c *conn) resume() {
	if c.buf == nil {
		c.buf = handshakeBufs.Get().(*[handshakeBufSize]byte)
	}
	c.c.SetDeadline(c.waitUntil())
	c.run()
}

// hungUp resumes a parked handshake whose client closed: it reads what
// the client sent before its FIN, and ends the session at the end of
// stream; a client that sent more goes on in a goroutine of its own.
func (c *conn) hungUp() {
	if c.buf == nil {
		c.buf = handshakeBufs.Get().(*[handshakeBufSize]byte)
	}
	c.c.SetDeadline(c.waitUntil())
	if err := c.fill(); err != nil && err != errPark {
		c.rec.Err = err
		c.finish()
		return
	}
	go c.run()
}

func (c *conn) overdue(now int64, _ time.Duration) bool { return now >= c.hsEnd.UnixNano() }

func (c *conn) expire(p *parker) {
	if p.unpark(c) {
		go c.resume() // its read times out at once, and ends it
	}
}

// finish ends the session: its log line, its sockets, its place in the
// server.
func (c *conn) finish() {
	if c.buf != nil {
		handshakeBufs.Put(c.buf)
		c.buf = nil
	}
	c.end()
	c.abort()
	c.s.doneConn(c)
	if c.done != nil {
		close(c.done)
	}
}

func addrPortOf(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.TCPAddr:
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	case *net.UDPAddr:
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}

// fill reads more of the handshake into the buffer, moving unread bytes to
// its start first.
func (c *conn) fill() error {
	if c.r > 0 {
		c.w = copy(c.buf[:], c.buf[c.r:c.w])
		c.r = 0
	}
	if c.w == len(c.buf) {
		return errors.New("handshake message too long")
	}
	n, err := c.c.Read(c.buf[c.w:])
	c.w += n
	if n > 0 {
		return nil
	}
	if err == nil {
		err = errors.New("empty read")
	}
	if errors.Is(err, os.ErrDeadlineExceeded) && time.Now().Before(c.hsEnd) {
		return errPark
	}
	return fmt.Errorf("handshake: %w", err)
}

// next parses the next message with parse, reading as much as it needs.
func next[T any](c *conn, parse func([]byte) (T, int, error)) (T, error) {
	for {
		v, n, err := parse(c.buf[c.r:c.w])
		if err == wire.ErrShort {
			if err := c.fill(); err != nil {
				return v, err
			}
			continue
		}
		if err == nil {
			c.r += n
		}
		return v, err
	}
}

func (c *conn) write(b []byte) error {
	_, err := c.c.Write(b)
	return err
}

func (c *conn) handshake() error {
	if c.rec.Proto == "socks5" {
		return c.socks5() // resumed after a park
	}
	if c.w == 0 {
		if err := c.fill(); err != nil {
			return err
		}
	}
	switch c.buf[0] {
	case wire.Version4:
		return c.socks4()
	case wire.Version5:
		return c.socks5()
	}
	c.rec.Proto, c.rec.Refusal = "unknown", RefusedBadRequest
	return fmt.Errorf("not SOCKS: first byte 0x%02x", c.buf[0])
}

// refuse sends a refusal and ends the connection gently: a FIN after the
// reply, then a short drain, so that unread client bytes do not turn the
// close into a reset that could destroy the reply.
func (c *conn) refuse(reply []byte) {
	c.write(reply)
	if c.tcp != nil {
		c.tcp.CloseWrite()
	}
	discard(c.c)
}

func (c *conn) socks4() error {
	c.rec.Proto = "socks4"
	req, err := next(c, wire.ParseRequest4)
	var pe *wire.ProtoError
	if errors.As(err, &pe) {
		c.rec.Reply, c.rec.Refusal = wire.Rejected4, RefusedBadRequest
		c.refuse(wire.AppendReply4(nil, wire.Rejected4, netip.AddrPort{}))
		return err
	}
	if err != nil {
		return err
	}
	c.rec.User = req.User
	c.rec.Dst = wire.Addr{Port: req.Port, Name: req.Name}
	if req.Is4a() {
		c.rec.Proto = "socks4a"
		c.rec.Dst = destination(req.Name, req.Port)
	} else {
		c.rec.Dst.IP = netip.AddrFrom4(req.IP)
	}
	fail := func(reason string) error {
		c.rec.Reply, c.rec.Reason, c.rec.Refusal = wire.Rejected4, reason, RefusedBadRequest
		c.refuse(wire.AppendReply4(nil, wire.Rejected4, netip.AddrPort{}))
		return nil
	}
	switch {
	case req.Cmd == wire.Cmd4Connect:
		c.rec.Cmd = policy.Connect
	case req.Cmd == wire.Cmd4Bind:
		c.rec.Cmd = policy.Bind
	default:
		return fail("unknown SOCKS4 command " + strconv.Itoa(int(req.Cmd)))
	}
	if !c.s.offers(AuthNone) {
		return fail("SOCKS4 carries no password and -auth does not list none")
	}
	reply := func(code byte, bound netip.AddrPort) []byte { return wire.AppendReply4(nil, code, bound) }
	code := func(r policy.Reply) byte { return byte(r) }
	if c.rec.Cmd == policy.Bind {
		return c.bind(policy.UserClaimed, reply, code)
	}
	return c.connect(policy.UserClaimed, reply, code)
}

// destination turns a requested name into an addr; a name that is an IP
// literal is an address.
func destination(name string, port uint16) wire.Addr {
	if ip, err := netip.ParseAddr(name); err == nil && ip.Zone() == "" {
		return wire.Addr{IP: ip.Unmap(), Port: port}
	}
	return wire.Addr{Name: name, Port: port}
}

func (s *Server) offers(m AuthMethod) bool {
	if len(s.Auth) == 0 {
		return m == AuthNone
	}
	for _, a := range s.Auth {
		if a == m {
			return true
		}
	}
	return false
}

// socks5 serves a SOCKS5 handshake from where it stands (c.phase).
func (c *conn) socks5() error {
	c.rec.Proto = "socks5"
	var pe *wire.ProtoError
	if c.phase == phaseGreeting {
		methods, err := next(c, wire.ParseGreeting)
		if errors.As(err, &pe) {
			if pe.Reply >= 0 {
				c.refuse([]byte{wire.Version5, byte(pe.Reply)})
			}
			c.rec.Refusal = RefusedBadRequest
			return err
		}
		if err != nil {
			return err
		}
		method := c.s.chooseMethod(methods)
		if err := c.write([]byte{wire.Version5, method}); err != nil {
			return err
		}
		if method == wire.MethodNoAcceptable {
			c.refuse(nil)
			c.rec.Refusal = RefusedAuth
			return errors.New("no acceptable authentication method offered")
		}
		c.source, c.phase = policy.UserNone, phaseRequest
		if method == wire.MethodPassword {
			c.source, c.phase = policy.UserPassword, phaseAuth
		}
	}
	if c.phase == phaseAuth {
		if err := c.authenticate(); err != nil {
			return err
		}
		c.phase = phaseRequest
	}
	source := c.source
	req, err := next(c, wire.ParseRequest5)
	if errors.As(err, &pe) {
		c.rec.Reply = pe.Reply
		c.rec.Refusal = RefusedBadRequest
		c.refuse(wire.AppendReply5(nil, byte(pe.Reply), netip.AddrPort{}))
		return err
	}
	if err != nil {
		return err
	}
	c.rec.Dst = req.Addr
	if req.Addr.Name != "" {
		c.rec.Dst = destination(req.Addr.Name, req.Addr.Port)
	}
	reply := func(rep byte, bound netip.AddrPort) []byte {
		return wire.AppendReply5(nil, rep, bound)
	}
	switch req.Cmd {
	case wire.CmdConnect:
		c.rec.Cmd = policy.Connect
	case wire.CmdBind:
		c.rec.Cmd = policy.Bind
		return c.bind(source, reply, socks5Rep)
	case wire.CmdUDP:
		c.rec.Cmd = policy.UDP
		return c.udp(source, reply)
	default:
		c.rec.Reply, c.rec.Reason = wire.RepCmdNotSupported, "unknown command "+strconv.Itoa(int(req.Cmd))
		c.rec.Refusal = RefusedBadRequest
		c.refuse(wire.AppendReply5(nil, wire.RepCmdNotSupported, netip.AddrPort{}))
		return nil
	}
	return c.connect(source, reply, socks5Rep)
}

// socks5Rep maps a policy reply to a SOCKS5 REP: every refusal is "not
// allowed by ruleset".
func socks5Rep(r policy.Reply) byte {
	if r == policy.Granted {
		return wire.RepSucceeded
	}
	return wire.RepNotAllowed
}

// chooseMethod picks the first method of the server's list that the
// client offers.
func (s *Server) chooseMethod(offered []byte) byte {
	auth := s.Auth
	if len(auth) == 0 {
		auth = []AuthMethod{AuthNone}
	}
	for _, m := range auth {
		for _, o := range offered {
			if byte(m) == o {
				return o
			}
		}
	}
	return wire.MethodNoAcceptable
}

// authenticate runs the RFC 1929 sub-negotiation.
func (c *conn) authenticate() error {
	up, err := next(c, wire.ParseUserPass)
	var pe *wire.ProtoError
	if errors.As(err, &pe) {
		c.rec.Refusal = RefusedAuth
		c.refuse([]byte{wire.AuthVersion, wire.AuthFailed})
		return fmt.Errorf("authentication: %w", err)
	}
	if err != nil {
		return err
	}
	c.rec.User = up.User
	if c.s.Passwords == nil || !c.s.Passwords.Match(up.User, up.Pass) {
		c.refuse([]byte{wire.AuthVersion, wire.AuthFailed})
		c.rec.Action, c.rec.Refusal = "deny", RefusedAuth
		return fmt.Errorf("authentication failed for user %q", up.User)
	}
	return c.write([]byte{wire.AuthVersion, wire.AuthOK})
}

// encoder encodes a reply in the client's protocol; coder maps a policy
// reply to that protocol's code.
type (
	encoder func(code byte, bound netip.AddrPort) []byte
	coder   func(policy.Reply) byte
)

// admit decides the request read into c (the command in c.rec.Cmd) and sends
// the refusal when it is refused; ok reports that the request goes on. The
// handshake time limit ends here; ctx bounds the decision and what follows.
func (c *conn) admit(ctx context.Context, source policy.UserSource, reply encoder, code coder) (d policy.Decision, ok bool) {
	c.rec.Handshake = time.Since(c.rec.Start)
	if c.overCap {
		fail := c.failCode()
		c.rec.Reply, c.rec.Reason, c.rec.Refusal = int(fail), "too many sessions", RefusedMaxSessions
		c.refuse(reply(fail, netip.AddrPort{}))
		return d, false
	}
	c.c.SetDeadline(time.Time{})
	q := policy.Query{
		Command:     c.rec.Cmd,
		Client:      c.rec.Client.Addr(),
		User:        c.rec.User,
		Source:      source,
		Dst:         c.rec.Dst.IP,
		DstName:     c.rec.Dst.Name,
		Port:        c.rec.Dst.Port,
		Ident:       c.ident,
		ClientName:  c.clientNameOnce,
		DstAddrName: c.s.dstName,
		Resolve:     c.s.resolve,
		// A UDP association names no destination yet: its datagrams are
		// judged one by one. Here it is refused only when none could pass.
		AnyDestination: c.rec.Cmd == policy.UDP,
	}
	d = c.s.Decider.Decide(ctx, q)
	c.source = source
	c.rec.Rule, c.rec.Reason, c.rec.User = d.Rule, d.Reason, d.User
	c.rec.Action = d.Action.String()
	c.rec.Route = d.Route.Rule
	if d.NumHooks > 0 && c.s.Hooks != nil && !q.AnyDestination {
		c.s.Hooks.run(c, &q, &d)
	}
	if d.Action != grammar.Permit {
		rep := code(d.Reply)
		c.rec.Reply, c.rec.Refusal = int(rep), refusalOf(&d, c.rec.Dst)
		c.refuse(reply(rep, netip.AddrPort{}))
		return d, false
	}
	return d, true
}

// failCode is the reply for a failure of ours: SOCKS4 91, SOCKS5 REP 1.
func (c *conn) failCode() byte {
	if c.rec.Proto == "socks5" {
		return wire.RepGeneralFailure
	}
	return wire.Rejected4
}

// fail sends the reply for an outbound failure, chosen by its cause, and
// ends the connection.
func (c *conn) fail(reply encoder, err error) error {
	rep := c.failCode()
	if c.rec.Proto == "socks5" {
		rep = replyFor(err)
	}
	c.rec.Reply, c.rec.Warn = int(rep), true
	c.refuse(reply(rep, netip.AddrPort{}))
	return err
}

// connect decides a CONNECT request, connects, replies and relays.
func (c *conn) connect(source policy.UserSource, reply encoder, code coder) error {
	ctx, cancel := context.WithTimeout(context.Background(), c.s.connectTimeout())
	defer cancel()
	d, ok := c.admit(ctx, source, reply, code)
	if !ok {
		return nil
	}
	t0 := time.Now()
	out, via, err := c.dialRoute(ctx, &d)
	c.rec.Via, c.rec.Connect = via, time.Since(t0)
	if err != nil {
		if d.ResolveErr != nil {
			err = fmt.Errorf("resolve %s: %w", c.rec.Dst.Name, d.ResolveErr)
		}
		return c.fail(reply, err)
	}
	c.mu.Lock()
	c.out = out
	c.mu.Unlock() // from here on, finish (abort) closes out
	c.rec.Connected = addrPortOf(out.RemoteAddr())
	c.rec.Reply = int(code(policy.Granted))
	if err := c.write(reply(code(policy.Granted), addrPortOf(out.LocalAddr()))); err != nil {
		return err
	}
	return c.relay(out)
}

// errRelaying tells serve that the session went on in the relay
// goroutines, which end it.
var errRelaying = errors.New("relaying")

// relay runs the session's two directions, one in a new goroutine and one
// in this one, and returns errRelaying once this one has parked or ended:
// an idle session holds neither goroutine. The second direction to finish
// ends the session. Bytes the client sent after its request, while we
// connected, go first.
func (c *conn) relay(out net.Conn) error {
	if c.r < c.w {
		n, err := out.Write(c.buf[c.r:c.w])
		c.rec.BytesUp += int64(n)
		c.s.bytes[0].Add(uint64(n))
		if err != nil {
			return err
		}
	}
	handshakeBufs.Put(c.buf)
	c.buf = nil
	if c.s.IdleTimeout > 0 {
		c.act.touch()
	}
	c.running.Store(2)
	client := c.c
	if c.tcp != nil {
		client = c.tcp
	}
	up := newHalf(c, out, client, &c.rec.BytesUp, &c.s.bytes[0], &c.errUp)
	down := newHalf(c, client, out, &c.rec.BytesDown, &c.s.bytes[1], &c.errDown)
	c.mu.Lock()
	c.halves = [2]*half{up, down}
	c.mu.Unlock()
	go up.run()
	down.run() // in this goroutine: it parks, or ends the session, soon enough
	return errRelaying
}

// endRelay ends a relayed session once both halves are done.
func (c *conn) endRelay() {
	// Report the error that started the end, not the "use of closed
	// connection" it caused in the other direction.
	err := c.errUp
	if err == nil || isClosedConn(err) && c.errDown != nil {
		err = c.errDown
	}
	c.mu.Lock()
	if err != nil && !isClosedConn(err) && c.rec.Err == nil {
		c.rec.Err = err
	}
	c.mu.Unlock()
	c.finish()
}

func (c *conn) ident(ctx context.Context) policy.IdentResult {
	if !c.identDone {
		c.identDone = true
		c.identRes = policy.IdentResult{Down: true}
		if c.s.Ident != nil {
			t0 := time.Now()
			user, err := c.s.Ident(ctx, c.local, c.rec.Client)
			c.rec.IdentTime = time.Since(t0)
			if err == nil {
				c.identRes = policy.IdentResult{User: user}
			} else {
				c.s.logger().Debug("identd down", "id", c.rec.ID, "client", c.rec.Client.String(), "err", err)
			}
		}
	}
	return c.identRes
}

func (c *conn) clientNameOnce(ctx context.Context) string {
	if !c.clientDone {
		c.clientDone = true
		c.clientName = c.s.confirmedName(ctx, c.rec.Client.Addr())
	}
	return c.clientName
}

// end completes the session's record, logs it and reports it.
func (c *conn) end() {
	r := &c.rec
	if c.identDone {
		r.Ident = c.identRes.User
		if c.identRes.Down {
			r.Ident = "(down)"
		}
	}
	r.Duration = time.Since(r.Start)
	r.log(c.s.logger())
	if o := c.s.Observer; o != nil {
		o.SessionEnded(r)
	}
}

// idleOut ends a session the parker found idle.
func (c *conn) idleOut() {
	c.mu.Lock()
	if c.rec.Err == nil {
		c.rec.Err = errIdle
	}
	c.mu.Unlock()
	c.abort()
}
