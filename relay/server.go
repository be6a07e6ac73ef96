// Package relay is the SOCKS server: SOCKS4 (CONNECT), SOCKS4a and SOCKS5
// (RFC 1928, CONNECT, with RFC 1929 username/password), the per-connection
// state machine, the zero-copy relay and outbound dialing.
//
// It knows nothing of configuration files: a Decider (policy.Ruleset or
// policy.Live) judges each request once, and the Server carries it out. It
// asks identd and DNS only through the funcs and interfaces its fields
// hold, and only when the Decider needs an answer.
package relay

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sockd-ng/sockd/policy"
	"github.com/sockd-ng/sockd/relay/internal/wire"
)

// A Decider decides whether a request may proceed and how to reach its
// target. Implementations must be safe for concurrent use.
type Decider interface {
	Decide(ctx context.Context, q policy.Query) policy.Decision
}

// Resolver is the DNS the server uses for destination names and reverse
// names. *net.Resolver satisfies it.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
	LookupAddr(ctx context.Context, addr string) ([]string, error)
}

// Authenticator checks SOCKS5 usernames and passwords (RFC 1929). Match
// must take about the same time whether or not the user exists.
type Authenticator interface {
	Match(user, password string) bool
}

// AuthMethod is a SOCKS5 authentication method.
type AuthMethod byte

const (
	AuthNone     AuthMethod = wire.MethodNone
	AuthPassword AuthMethod = wire.MethodPassword
)

// IdentFunc asks the identd of the client at remote who owns its connection
// to local (RFC 1413), and returns the user.
type IdentFunc func(ctx context.Context, local, remote netip.AddrPort) (string, error)

// Server serves SOCKS clients. Set its fields before the first Serve; they
// must not change afterwards. Serve, ServeConn, Shutdown and Sessions are
// safe for concurrent use.
type Server struct {
	// Decider judges every request; required.
	Decider Decider
	// Logger gets one "conn" line per session; nil discards.
	Logger *slog.Logger
	// Resolver looks up names; nil means net.DefaultResolver.
	Resolver Resolver
	// Ident asks the client's identd; nil means identd is always down.
	Ident IdentFunc
	// Auth lists the SOCKS5 methods offered, in preference order; empty
	// means AuthNone only. SOCKS4 requests, which carry no password, are
	// served only when AuthNone is in the list.
	Auth []AuthMethod
	// Passwords checks SOCKS5 usernames and passwords for AuthPassword.
	Passwords Authenticator
	// Observer is told what sessions do, for metrics; nil tells nobody.
	Observer Observer
	// Hooks runs the shell commands of matched rules; nil runs none.
	Hooks *Hooks
	// Dialer opens outbound connections; nil means a net.Dialer with
	// keep-alive on.
	Dialer *net.Dialer

	// HandshakeTimeout bounds the time from accept until the request is
	// read (default 30s). ConnectTimeout bounds the outbound connect
	// (default 2m, as legacy). IdleTimeout ends a session in which no
	// byte moved either way for that long (default off).
	HandshakeTimeout time.Duration
	ConnectTimeout   time.Duration
	IdleTimeout      time.Duration
	// BindTimeout bounds the wait for the inbound connection of a BIND
	// (default 2m). UDPTimeout ends a UDP association in which no datagram
	// moved for that long (default IdleTimeout, else 5m).
	BindTimeout time.Duration
	UDPTimeout  time.Duration
	// MaxSessions caps concurrent sessions; beyond it new clients are
	// refused (SOCKS4 91, SOCKS5 REP 1). 0 means no cap.
	MaxSessions int
	// MaxClientSessions caps the sessions of one client address, relayed
	// or still in handshake: a connection beyond it is closed as soon as
	// its client is known (at once, or once its PROXY protocol header is
	// read), so that one address cannot take the whole pool (or every file
	// descriptor) from the others. One log line says when a
	// client reaches its cap; the next comes only after it fell below.
	// 0 means no cap.
	MaxClientSessions int

	nextID   atomic.Uint64
	bytes    [2]atomic.Uint64 // relayed up and down: see Bytes
	backoff  backoff
	pkOnce   sync.Once
	pk       atomic.Pointer[parker]
	active   atomic.Int64
	pipes    pipePool
	initOnce sync.Once
	mu       sync.Mutex
	lns      map[net.Listener]struct{}
	conns    map[*conn]struct{}
	clients  map[netip.Addr]clientCount // with MaxClientSessions
	closing  bool
	wg       sync.WaitGroup
	// dstName is the method value s.confirmedName, made once.
	dstName func(context.Context, netip.Addr) string
	resolve func(context.Context, string) ([]netip.Addr, error)
	hops    Resolver // a hopResolver: resolves next-hop names
	dial    *net.Dialer
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("relay: server closed")

func (s *Server) init() {
	s.initOnce.Do(func() {
		s.lns = map[net.Listener]struct{}{}
		s.conns = map[*conn]struct{}{}
		s.clients = map[netip.Addr]clientCount{}
		s.pipes.max = 32
		s.dstName = s.confirmedName
		s.resolve = s.lookup
		s.hops = hopResolver{s.resolver(), s}
		s.dial = s.Dialer
		if s.dial == nil {
			s.dial = defaultDialer()
		}
	})
}

func (s *Server) dialer() *net.Dialer { return s.dial }

// parker returns the server's parker, started on first use, or nil when
// directions cannot park (or the server is closing).
func (s *Server) parker() *parker {
	s.pkOnce.Do(func() {
		s.mu.Lock()
		closing := s.closing
		s.mu.Unlock()
		if !closing {
			if pk := newParker(s.IdleTimeout); pk != nil {
				s.pk.Store(pk)
			}
		}
	})
	return s.pk.Load()
}

func (s *Server) logger() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

// Serve accepts connections on ln and serves each in its own goroutine
// until ln fails or Shutdown is called. It closes ln when it returns.
func (s *Server) Serve(ln net.Listener) error {
	s.init()
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.lns[ln] = struct{}{}
	s.mu.Unlock()
	// The parker (an epoll set, an eventfd, a thread) is the listening
	// server's fixed cost, not its first session's.
	s.parker()
	defer func() {
		s.mu.Lock()
		delete(s.lns, ln)
		s.mu.Unlock()
		ln.Close()
	}()
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && !errors.Is(err, net.ErrClosed) {
				// EMFILE and friends: wait and try again, as net/http does.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.logger().Warn("accept failed; retrying", "listener", ln.Addr().String(), "err", err, "wait", backoff)
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		sc := s.newConn(c)
		if sc == nil {
			continue
		}
		go sc.serve()
	}
}

// ServeConn serves one connection (inetd mode, or a socket passed by
// systemd) and returns when its session is over.
func (s *Server) ServeConn(c net.Conn) {
	s.init()
	if sc := s.newConn(c); sc != nil {
		sc.done = make(chan struct{})
		sc.serve()
		<-sc.done // the relay goroutines end the session
	}
}

// clientCount is one client address's sessions, and whether it has been
// refused since it last had fewer than its cap.
type clientCount struct {
	n        int
	refusing bool
}

// newConn registers c as a session, or closes it if the server is shutting
// down.
func (s *Server) newConn(c net.Conn) *conn {
	sc := &conn{s: s, c: c, rec: Record{ID: s.nextID.Add(1), Start: time.Now()}}
	n := s.active.Add(1)
	sc.overCap = s.MaxSessions > 0 && n > int64(s.MaxSessions)
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		s.active.Add(-1)
		c.Close()
		return nil
	}
	s.conns[sc] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	return sc
}

// countClient counts a session of client address a against
// MaxClientSessions; it reports false, and counts nothing, when a is at
// its cap.
func (s *Server) countClient(a netip.Addr) bool {
	max := s.MaxClientSessions
	s.mu.Lock()
	cc := s.clients[a]
	if cc.n >= max {
		first := !cc.refusing
		cc.refusing = true
		s.clients[a] = cc
		s.mu.Unlock()
		if first {
			s.logger().Warn("client at its session cap: its new connections are closed until it has fewer",
				"client", a.String(), "sessions", cc.n, "max_client_sessions", max)
		}
		return false
	}
	cc.n++
	s.clients[a] = cc
	s.mu.Unlock()
	return true
}

func (s *Server) doneConn(sc *conn) {
	s.mu.Lock()
	delete(s.conns, sc)
	if sc.counted {
		a := sc.rec.Client.Addr()
		if cc := s.clients[a]; cc.n <= 1 {
			delete(s.clients, a)
		} else {
			cc.n--
			cc.refusing = cc.refusing && cc.n >= s.MaxClientSessions
			s.clients[a] = cc
		}
	}
	s.mu.Unlock()
	s.active.Add(-1)
	s.wg.Done()
}

// Sessions returns the number of sessions open now, handshakes included.
func (s *Server) Sessions() int { return int(s.active.Load()) }

// Accepted returns the number of connections served since the start.
func (s *Server) Accepted() uint64 { return s.nextID.Load() }

// Trim closes the pipes the server keeps for reuse (up to 32, two fds
// each); the relay makes new ones when bytes flow again. It is for a
// server that has gone quiet: idle sessions hold no pipe.
func (s *Server) Trim() {
	s.init()
	s.pipes.drain()
}

// Shutdown stops accepting, lets the sessions in flight finish until ctx is
// done, then closes what is left. It returns ctx's error if it had to close
// sessions.
func (s *Server) Shutdown(ctx context.Context) error {
	s.init()
	s.mu.Lock()
	s.closing = true
	for ln := range s.lns {
		ln.Close()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
		s.mu.Lock()
		for sc := range s.conns {
			sc.abort()
		}
		s.mu.Unlock()
		<-done
	}
	s.pkOnce.Do(func() {}) // no parker from now on
	if pk := s.pk.Load(); pk != nil {
		pk.close()
	}
	s.pipes.drain()
	return err
}

func (s *Server) handshakeTimeout() time.Duration {
	if s.HandshakeTimeout > 0 {
		return s.HandshakeTimeout
	}
	return 30 * time.Second
}

func (s *Server) connectTimeout() time.Duration {
	if s.ConnectTimeout > 0 {
		return s.ConnectTimeout
	}
	return 2 * time.Minute
}

func (s *Server) resolver() Resolver {
	if s.Resolver == nil {
		return net.DefaultResolver
	}
	return s.Resolver
}

func (s *Server) lookup(ctx context.Context, name string) ([]netip.Addr, error) {
	defer s.lookupTook(time.Now())
	return LookupAddrs(ctx, s.resolver(), name)
}

func (s *Server) confirmedName(ctx context.Context, a netip.Addr) string {
	defer s.lookupTook(time.Now())
	return LookupConfirmed(ctx, s.resolver(), a)
}

// lookupTook tells the Observer how long a lookup that started at t0 took.
func (s *Server) lookupTook(t0 time.Time) {
	if s.Observer != nil {
		s.Observer.Lookup(time.Since(t0))
	}
}

// upstream tells the Observer how an attempt to reach a chain went.
func (s *Server) upstream(chain string, ok bool) {
	if s.Observer != nil {
		s.Observer.Upstream(chain, ok)
	}
}

// Bytes returns the bytes relayed since the start, up (clients to
// destinations) and down, TCP and UDP payloads alike, those of sessions
// still running included.
func (s *Server) Bytes() (up, down uint64) { return s.bytes[0].Load(), s.bytes[1].Load() }

// discard reads and drops what a client still sends, for a short while, so
// that a close after a refusal does not turn into a reset that destroys the
// reply before the client reads it.
func discard(c net.Conn) {
	c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	io.Copy(io.Discard, io.LimitReader(c, 64<<10))
}
