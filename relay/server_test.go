package relay_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/proxy"
	"golang.org/x/sys/unix"

	"github.com/sockd-ng/sockd/relay"
	"github.com/sockd-ng/sockd/relay/relaytest"
)

const loopback = "permit 127.0.0.0 255.0.0.0\n"

// dial connects to addr from local (empty: any loopback address).
func dial(t *testing.T, addr, local string) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if local != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

// expect reads exactly len(want) bytes and compares them.
func expect(t *testing.T, c net.Conn, want []byte) {
	t.Helper()
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("reading %d bytes (want %v): %v", len(want), want, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

// expectClosed checks that the server closes c without sending more.
func expectClosed(t *testing.T, c net.Conn) {
	t.Helper()
	var b [1]byte
	n, err := c.Read(b[:])
	if n != 0 || !(errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || isReset(err)) {
		t.Fatalf("want close, got %d bytes %v, err %v", n, b[:n], err)
	}
}

func isReset(err error) bool { return err != nil && strings.Contains(err.Error(), "connection reset") }

func port(addr string) []byte {
	ap := netip.MustParseAddrPort(addr)
	return []byte{byte(ap.Port() >> 8), byte(ap.Port())}
}

func socks4Connect(addr, user string) []byte {
	ap := netip.MustParseAddrPort(addr)
	ip := ap.Addr().As4()
	b := append([]byte{4, 1}, port(addr)...)
	b = append(b, ip[:]...)
	return append(append(b, user...), 0)
}

func socks5Connect(addr string) []byte {
	ap := netip.MustParseAddrPort(addr)
	ip := ap.Addr().As4()
	b := append([]byte{5, 1, 0, 1}, ip[:]...)
	return append(b, port(addr)...)
}

var (
	granted4 = []byte{0, 90}
	denied4  = []byte{0, 91, 0, 0, 0, 0, 0, 0}
	denied5  = []byte{5, 2, 0, 1, 0, 0, 0, 0, 0, 0}
)

// roundTrip checks that a session through srv to an echo server works.
func roundTrip(t *testing.T, srv, echo string) {
	t.Helper()
	c := dial(t, srv, "")
	c.Write([]byte{5, 1, 0})
	expect(t, c, []byte{5, 0})
	c.Write(socks5Connect(echo))
	reply := make([]byte, 10)
	if _, err := io.ReadFull(c, reply); err != nil || reply[1] != 0 {
		t.Fatalf("reply %v %v", reply, err)
	}
	c.Write([]byte("ping"))
	expect(t, c, []byte("ping"))
	c.Close()
}

// A malformed handshake gets the right reply, or a close, and the server
// keeps serving everyone else — including while a client sits silent.
func TestBadHandshakes(t *testing.T) {
	relaytest.CheckLeaks(t)
	echo := relaytest.Echo(t)
	srv := relaytest.NewServer(t, loopback, func(s *relay.Server) { s.HandshakeTimeout = 300 * time.Millisecond })
	silent := dial(t, srv.Addr, "") // never finishes: must not block anyone
	silent.Write([]byte{5, 1})
	long := strings.Repeat("x", 300)
	for _, tc := range []struct {
		name  string
		send  []byte
		reply []byte // exact bytes before the close
	}{
		{name: "truncated greeting", send: []byte{5}},
		{name: "wrong version", send: []byte{6, 1, 0}},
		{name: "not SOCKS at all", send: []byte("GET / HTTP/1.0\r\n\r\n")},
		{name: "NMETHODS 0", send: []byte{5, 0}, reply: []byte{5, 0xff}},
		{name: "no acceptable method", send: []byte{5, 1, 2}, reply: []byte{5, 0xff}},
		{name: "unknown command", send: append([]byte{5, 1, 0, 5, 9, 0, 1, 127, 0, 0, 1}, port(echo)...),
			reply: []byte{5, 0, 5, 7, 0, 1, 0, 0, 0, 0, 0, 0}},
		{name: "unknown ATYP", send: []byte{5, 1, 0, 5, 1, 0, 7, 1, 2, 3, 4, 0, 80},
			reply: []byte{5, 0, 5, 8, 0, 1, 0, 0, 0, 0, 0, 0}},
		{name: "empty name", send: []byte{5, 1, 0, 5, 1, 0, 3, 0, 0, 80},
			reply: []byte{5, 0, 5, 1, 0, 1, 0, 0, 0, 0, 0, 0}},
		{name: "oversized USERID", send: append([]byte{4, 1, 0, 80, 127, 0, 0, 1}, long...), reply: denied4},
		{name: "oversized 4a name", send: append([]byte{4, 1, 0, 80, 0, 0, 0, 1, 0}, long...), reply: denied4},
		{name: "SOCKS4 unknown command", send: []byte{4, 9, 0, 80, 127, 0, 0, 1, 0}, reply: denied4},
		{name: "SOCKS4 to 0.0.0.0", send: []byte{4, 1, 0, 80, 0, 0, 0, 0, 0}, reply: denied4},
		{name: "SOCKS5 connect to 0.0.0.0", send: []byte{5, 1, 0, 5, 1, 0, 1, 0, 0, 0, 0, 0, 80},
			reply: append([]byte{5, 0}, denied5...)},
		{name: "never finishes", send: []byte{4, 1, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, srv.Addr, "")
			c.Write(tc.send)
			if tc.reply != nil {
				expect(t, c, tc.reply)
			}
			expectClosed(t, c)
			roundTrip(t, srv.Addr, echo)
		})
	}
	expectClosed(t, silent) // the handshake limit ended it
}

// Deny paths answer with the exact reply bytes, and identd outcomes map to
// 92 and 93 (SOCKS5: REP 2).
func TestDenyReplies(t *testing.T) {
	relaytest.CheckLeaks(t)
	echo := relaytest.Echo(t)
	rules := "permit ?=I *=alice 127.0.0.1 255.255.255.255 ALL 0.0.0.0 eq " + echo[strings.LastIndex(echo, ":")+1:] + "\n" +
		"deny ALL 0.0.0.0\n"
	identSays := map[string]string{}
	var mu sync.Mutex
	srv := relaytest.NewServer(t, rules, func(s *relay.Server) {
		s.Ident = func(_ context.Context, local, remote netip.AddrPort) (string, error) {
			mu.Lock()
			defer mu.Unlock()
			if u, ok := identSays[remote.String()]; ok {
				return u, nil
			}
			return "", errors.New("connection refused")
		}
	})
	for _, tc := range []struct {
		name  string
		ident string // "" means down
		send  []byte
		want  []byte
	}{
		{"socks4 granted", "alice", socks4Connect(echo, "alice"), granted4},
		{"socks4 ident down", "", socks4Connect(echo, "alice"), []byte{0, 92, 0, 0, 0, 0, 0, 0}},
		{"socks4 ident says another", "mallory", socks4Connect(echo, "alice"), []byte{0, 93, 0, 0, 0, 0, 0, 0}},
		{"socks4 denied", "alice", socks4Connect("127.0.0.1:9", "alice"), denied4},
		{"socks4 wrong user", "bob", socks4Connect(echo, "bob"), denied4},
		{"socks5 no auth, ident is the user", "alice", append([]byte{5, 1, 0}, socks5Connect(echo)...), []byte{5, 0, 5, 0}},
		{"socks5 ident down", "", append([]byte{5, 1, 0}, socks5Connect(echo)...), append([]byte{5, 0}, denied5...)},
		{"socks5 ident says bob", "bob", append([]byte{5, 1, 0}, socks5Connect(echo)...), append([]byte{5, 0}, denied5...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, srv.Addr, "")
			mu.Lock()
			if tc.ident != "" {
				identSays[c.LocalAddr().String()] = tc.ident
			}
			mu.Unlock()
			c.Write(tc.send)
			expect(t, c, tc.want)
			if tc.want[len(tc.want)-1] != 0 && !bytes.Equal(tc.want, granted4) {
				expectClosed(t, c)
			}
		})
	}
}

// golang.org/x/net/proxy, a SOCKS5 client nobody here wrote, with and
// without RFC 1929.
func TestXNetProxy(t *testing.T) {
	relaytest.CheckLeaks(t)
	echo := relaytest.Echo(t)
	open := relaytest.NewServer(t, loopback)
	auth := relaytest.NewServer(t, "permit *=alice 127.0.0.0/8\n", func(s *relay.Server) {
		s.Auth = []relay.AuthMethod{relay.AuthPassword}
		s.Passwords = passwords{"alice": "wonderland", "bob": "builder"}
	})
	for _, tc := range []struct {
		name string
		srv  string
		auth *proxy.Auth
		ok   bool
	}{
		{"no auth", open.Addr, nil, true},
		{"password", auth.Addr, &proxy.Auth{User: "alice", Password: "wonderland"}, true},
		{"wrong password", auth.Addr, &proxy.Auth{User: "alice", Password: "guess"}, false},
		{"unknown user", auth.Addr, &proxy.Auth{User: "eve", Password: "x"}, false},
		{"authenticated but not in the rules", auth.Addr, &proxy.Auth{User: "bob", Password: "builder"}, false},
		{"no auth offered to a password server", auth.Addr, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := proxy.SOCKS5("tcp", tc.srv, tc.auth, &net.Dialer{Timeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			c, err := d.Dial("tcp", echo)
			if !tc.ok {
				if err == nil {
					c.Close()
					t.Fatal("dial succeeded")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.Write([]byte("hello"))
			buf := make([]byte, 5)
			if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hello" {
				t.Fatalf("echo %q %v", buf, err)
			}
		})
	}
	auth.Log.WaitFor(t, `authentication failed for user \"alice\"`, "client=127.0.0.1:")
}

type passwords map[string]string

func (p passwords) Match(u, pw string) bool { return p[u] != "" && p[u] == pw }

// Bytes flow both ways through the splice relay, large amounts intact,
// bytes sent with the request go first, and a half-close passes through.
func TestRelay(t *testing.T) {
	relaytest.CheckLeaks(t)
	srv := relaytest.NewServer(t, loopback)
	// The backend hashes what it gets until EOF, then answers with the
	// hash and 16 MiB of its own, then closes.
	backend := relaytest.Serve(t, func(c net.Conn) {
		h := sha256.New()
		io.Copy(h, c)
		c.Write(h.Sum(nil))
		io.CopyN(c, zeros{}, 16<<20)
	})
	c := dial(t, srv.Addr, "")
	c.SetDeadline(time.Now().Add(60 * time.Second))
	payload := make([]byte, 48<<20)
	rand.Read(payload)
	// Request and the first bytes in one write: the server must pass on
	// what it read past the request.
	first := append(socks4Connect(backend, ""), payload[:1000]...)
	c.Write(first)
	expect(t, c, granted4)
	io.ReadFull(c, make([]byte, 6))
	go func() {
		c.Write(payload[1000:])
		c.(*net.TCPConn).CloseWrite()
	}()
	sum := make([]byte, 32)
	if _, err := io.ReadFull(c, sum); err != nil {
		t.Fatal(err)
	}
	if want := sha256.Sum256(payload); !bytes.Equal(sum, want[:]) {
		t.Fatal("backend got other bytes than the client sent")
	}
	n, err := io.Copy(io.Discard, c)
	if err != nil || n != 16<<20 {
		t.Fatalf("got %d bytes back, err %v", n, err)
	}
	line := srv.Log.WaitFor(t, "msg=conn", "bytes_up=50331648", "bytes_down=16777248")
	if !strings.Contains(line, "proto=socks4 cmd=connect") || !strings.Contains(line, "rule=sockd.conf:1 route=\"\" action=permit") {
		t.Errorf("log line: %s", line)
	}
}

type zeros struct{}

func (zeros) Read(b []byte) (int, error) { clear(b); return len(b), nil }

// An idle session holds its two sockets and no pipe: pipes are taken only
// while bytes are in flight.
func TestIdleSessionsHoldNoPipes(t *testing.T) {
	relaytest.CheckLeaks(t)
	echo := relaytest.Echo(t)
	srv := relaytest.NewServer(t, loopback)
	before := relaytest.FDs(t, "pipe:")
	const n = 50
	for range n {
		c := dial(t, srv.Addr, "")
		c.Write(append([]byte{5, 1, 0}, socks5Connect(echo)...))
		expect(t, c, []byte{5, 0, 5, 0})
		io.ReadFull(c, make([]byte, 8))
		c.Write(bytes.Repeat([]byte("x"), 100000))
		io.ReadFull(c, make([]byte, 100000))
	}
	if after := relaytest.FDs(t, "pipe:"); after-before > 64 {
		t.Errorf("%d idle sessions hold %d pipe fds; the pool keeps at most 64", n, after-before)
	}
	// Trim closes the pool's. A direction gives its pipe back a moment
	// after its last bytes, so Trim is retried until the sessions are
	// quiet.
	after := -1
	for deadline := time.Now().Add(5 * time.Second); after != before && time.Now().Before(deadline); {
		srv.Trim()
		if after = relaytest.FDs(t, "pipe:"); after != before {
			time.Sleep(20 * time.Millisecond)
		}
	}
	if after != before {
		t.Errorf("after Trim, %d pipe fds; want %d as before the sessions", after, before)
	}
}

func TestIdleTimeout(t *testing.T) {
	relaytest.CheckLeaks(t)
	echo := relaytest.Echo(t)
	srv := relaytest.NewServer(t, loopback, func(s *relay.Server) { s.IdleTimeout = 300 * time.Millisecond })
	c := dial(t, srv.Addr, "")
	c.Write(append([]byte{5, 1, 0}, socks5Connect(echo)...))
	expect(t, c, []byte{5, 0, 5, 0})
	io.ReadFull(c, make([]byte, 8))
	// Steady traffic keeps the session alive past the limit.
	var last time.Time
	for range 6 {
		c.Write([]byte("x"))
		expect(t, c, []byte("x"))
		last = time.Now()
		time.Sleep(100 * time.Millisecond)
	}
	expectClosed(t, c)
	if d := time.Since(last); d < 250*time.Millisecond {
		t.Errorf("closed %v after the last byte; the limit is 300ms", d)
	}
	srv.Log.WaitFor(t, "msg=conn", "err=\"idle timeout\"")
}

func TestMaxSessions(t *testing.T) {
	relaytest.CheckLeaks(t)
	echo := relaytest.Echo(t)
	srv := relaytest.NewServer(t, loopback, func(s *relay.Server) { s.MaxSessions = 2 })
	var held []net.Conn
	for range 2 {
		c := dial(t, srv.Addr, "")
		c.Write(socks4Connect(echo, ""))
		expect(t, c, granted4)
		io.ReadFull(c, make([]byte, 6))
		held = append(held, c)
	}
	c := dial(t, srv.Addr, "")
	c.Write(socks4Connect(echo, ""))
	expect(t, c, denied4)
	c = dial(t, srv.Addr, "")
	c.Write(append([]byte{5, 1, 0}, socks5Connect(echo)...))
	expect(t, c, []byte{5, 0, 5, 1, 0, 1, 0, 0, 0, 0, 0, 0})
	srv.Log.WaitFor(t, "reason=\"too many sessions\"")
	held[0].Close()
	deadline := time.Now().Add(5 * time.Second)
	for srv.Sessions() > 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	roundTrip(t, srv.Addr, echo)
}

// One client address at its cap (here in stalled handshakes, the cheapest
// attack) has its further connections closed at once, with one log line
// per burst of refusals, while another address is served as usual; below
// its cap again, it is served too.
func TestMaxClientSessions(t *testing.T) {
	relaytest.CheckLeaks(t)
	echo := relaytest.Echo(t)
	srv := relaytest.NewServer(t, loopback, func(s *relay.Server) {
		s.MaxClientSessions = 3
		s.HandshakeTimeout = time.Minute // the stalled ones stay
	})
	var stalled []net.Conn
	for range 3 {
		stalled = append(stalled, dial(t, srv.Addr, "127.0.0.2"))
	}
	deadline := time.Now().Add(5 * time.Second)
	for srv.Sessions() < 3 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	// A bounded burst of refused connections from the capped address, all
	// along the sessions of the other.
	done := make(chan int)
	go func() {
		refused := 0
		for range 50 {
			c, err := net.DialTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}, net.TCPAddrFromAddrPort(netip.MustParseAddrPort(srv.Addr)))
			if err != nil {
				continue
			}
			c.SetDeadline(time.Now().Add(5 * time.Second)) // far below the handshake limit
			c.Write([]byte{5, 1, 0})
			if n, err := c.Read(make([]byte, 2)); n == 0 && (errors.Is(err, io.EOF) || isReset(err)) {
				refused++
			}
			c.Close()
		}
		done <- refused
	}()
	for range 20 { // one at a time: the server may not have ended the last yet
		c := dial(t, srv.Addr, "127.0.0.3")
		c.Write(append([]byte{5, 1, 0}, socks5Connect(echo)...))
		expect(t, c, []byte{5, 0, 5, 0, 0, 1})
		io.ReadFull(c, make([]byte, 6))
		c.Write([]byte("ping"))
		expect(t, c, []byte("ping"))
		c.Close()
	}
	if n := <-done; n != 50 {
		t.Errorf("%d of 50 connections over the cap closed at once", n)
	}
	if n := strings.Count(srv.Log.String(), "client at its session cap"); n != 1 {
		t.Errorf("%d log lines for one burst of refusals, want 1:\n%s", n, srv.Log)
	}
	srv.Log.WaitFor(t, "client at its session cap", "client=127.0.0.2", "sessions=3", "max_client_sessions=3")
	// Below the cap again, the address is served; at it again, a new
	// burst has its line.
	stalled[0].Close()
	deadline = time.Now().Add(5 * time.Second)
	for srv.Sessions() > 2 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	c := dial(t, srv.Addr, "127.0.0.2")
	c.Write(append([]byte{5, 1, 0}, socks5Connect(echo)...))
	expect(t, c, []byte{5, 0, 5, 0, 0, 1})
	expectClosed(t, dial(t, srv.Addr, "127.0.0.2"))
	deadline = time.Now().Add(5 * time.Second)
	for strings.Count(srv.Log.String(), "client at its session cap") < 2 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := strings.Count(srv.Log.String(), "client at its session cap"); n != 2 {
		t.Errorf("%d log lines after a second burst, want 2", n)
	}
}

// Outbound failures get the REP of their cause (SOCKS5) or 91 (SOCKS4).
func TestConnectFailures(t *testing.T) {
	relaytest.CheckLeaks(t)
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	srv := relaytest.NewServer(t, loopback)
	c := dial(t, srv.Addr, "")
	c.Write(append([]byte{5, 1, 0}, socks5Connect(dead)...))
	expect(t, c, []byte{5, 0, 5, 5, 0, 1, 0, 0, 0, 0, 0, 0})
	c = dial(t, srv.Addr, "")
	c.Write(socks4Connect(dead, ""))
	expect(t, c, denied4)
	srv.Log.WaitFor(t, "level=WARN", "connection refused")
}

// Shutdown lets sessions finish within its context, then closes them.
func TestShutdown(t *testing.T) {
	relaytest.CheckLeaks(t)
	echo := relaytest.Echo(t)
	srv := relaytest.NewServer(t, loopback)
	c := dial(t, srv.Addr, "")
	c.Write(socks4Connect(echo, ""))
	expect(t, c, granted4)
	io.ReadFull(c, make([]byte, 6))
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	done := make(chan error)
	go func() { done <- srv.Shutdown(ctx) }()
	c.Write([]byte("still here"))
	expect(t, c, []byte("still here"))
	if err := <-done; !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown = %v, want deadline exceeded", err)
	}
	expectClosed(t, c)
	if _, err := net.DialTimeout("tcp", srv.Addr, time.Second); err == nil {
		t.Error("still accepting after Shutdown")
	}
}

// A rule's command runs with its % tokens expanded and sanitised.
func TestHooks(t *testing.T) {
	relaytest.CheckLeaks(t)
	echo := relaytest.Echo(t)
	out := filepath.Join(t.TempDir(), "out")
	hooks := &relay.Hooks{Timeout: 5 * time.Second}
	rules := fmt.Sprintf("deny 127.0.0.0/8 ALL 0.0.0.0 eq 9 : echo %%c %%u %%a %%s %%S %%z %%U >> %s\n", out) + loopback
	srv := relaytest.NewServer(t, rules, func(s *relay.Server) { s.Hooks = hooks })
	c := dial(t, srv.Addr, "")
	c.Write(socks4Connect("127.0.0.1:9", "-rf;$(id)"))
	expect(t, c, denied4)
	roundTrip(t, srv.Addr, echo)
	srv.Log.WaitFor(t, "msg=conn", "reply=91")
	hooks.Wait()
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(b), "connect _rf___id_ 127.0.0.1 9 discard 127.0.0.1 unknown\n"; got != want {
		t.Errorf("command wrote %q, want %q", got, want)
	}
}

// Commands run within their time limit (children included) and at most
// Max at once; the others are skipped with a log line. No session waits.
func TestHookLimits(t *testing.T) {
	relaytest.CheckLeaks(t)
	logs := &relaytest.LogBuffer{}
	hooks := &relay.Hooks{Timeout: 300 * time.Millisecond, Max: 1, Logger: slog.New(slog.NewTextHandler(logs, nil))}
	marker := filepath.Join(t.TempDir(), "survivor")
	rules := fmt.Sprintf("deny 127.0.0.0/8 ALL 0.0.0.0 eq 9 : sh -c 'sleep 1; touch %s' & wait\n", marker)
	srv := relaytest.NewServer(t, rules, func(s *relay.Server) { s.Hooks = hooks })
	start := time.Now()
	for range 2 {
		c := dial(t, srv.Addr, "")
		c.Write(socks4Connect("127.0.0.1:9", ""))
		expect(t, c, denied4) // the reply does not wait for the command
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("replies took %v: a session waited for its command", d)
	}
	logs.WaitFor(t, "command skipped: too many running")
	logs.WaitFor(t, "command failed", "signal: killed")
	hooks.Wait()
	time.Sleep(1500*time.Millisecond - time.Since(start)) // past the child's sleep
	if _, err := os.Stat(marker); err == nil {
		t.Error("a child of a timed-out command lived on")
	}
}

// ServeConn serves one connection and returns only when its session is
// over (inetd mode exits then).
func TestServeConn(t *testing.T) {
	relaytest.CheckLeaks(t)
	echo := relaytest.Echo(t)
	srv := &relay.Server{Decider: relaytest.Compile(t, loopback)}
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c := dial(t, ln.Addr().String(), "")
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	returned := make(chan struct{})
	go func() { srv.ServeConn(sc); close(returned) }()
	c.Write(socks4Connect(echo, ""))
	expect(t, c, granted4)
	io.ReadFull(c, make([]byte, 6))
	c.Write([]byte("ping"))
	expect(t, c, []byte("ping"))
	select {
	case <-returned:
		t.Fatal("ServeConn returned while its session was relaying")
	default:
	}
	c.Close()
	select {
	case <-returned:
	case <-time.After(5 * time.Second):
		t.Fatal("ServeConn did not return after the session ended")
	}
}

// relayGoroutines counts goroutines running relay directions.
func relayGoroutines() int {
	buf := make([]byte, 1<<22)
	buf = buf[:runtime.Stack(buf, true)]
	return strings.Count(string(buf), "relay.(*half).run(")
}

// Idle sessions park: no goroutine per direction while nothing moves, and
// bytes, an EOF or the shutdown bring them back.
func TestParking(t *testing.T) {
	relaytest.CheckLeaks(t)
	echo := relaytest.Echo(t)
	srv := relaytest.NewServer(t, loopback)
	const n = 20
	var cs []net.Conn
	for range n {
		c := dial(t, srv.Addr, "")
		c.Write(append([]byte{5, 1, 0}, socks5Connect(echo)...))
		expect(t, c, []byte{5, 0, 5, 0})
		io.ReadFull(c, make([]byte, 8))
		c.Write([]byte("x"))
		expect(t, c, []byte("x"))
		cs = append(cs, c)
	}
	deadline := time.Now().Add(5 * time.Second)
	for relayGoroutines() > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if g := relayGoroutines(); g > 0 {
		t.Fatalf("%d relay goroutines for %d idle sessions; want them parked", g, n)
	}
	// Bytes wake them, both ways.
	for i, c := range cs[:n/2] {
		msg := []byte("wake up " + string(rune('a'+i)))
		c.Write(msg)
		expect(t, c, msg)
	}
	// An EOF from the client reaches a parked session too: the echo server
	// sees it and closes, and the client sees that.
	c := cs[n-1]
	time.Sleep(2 * linger())
	c.(*net.TCPConn).CloseWrite()
	if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
		t.Fatalf("after EOF: %q %v", rest, err)
	}
	srv.Log.WaitFor(t, "msg=conn", "bytes_up=1", "bytes_down=1")
	// Shutdown ends the parked rest.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown = %v", err)
	}
	for _, c := range cs[:n-1] {
		expectClosed(t, c)
	}
}

// linger is the relay's, as the tests see it: how long a quiet direction
// waits before it parks.
func linger() time.Duration { return 250 * time.Millisecond }

// The idle limit also ends parked sessions.
func TestIdleTimeoutParked(t *testing.T) {
	relaytest.CheckLeaks(t)
	echo := relaytest.Echo(t)
	srv := relaytest.NewServer(t, loopback, func(s *relay.Server) { s.IdleTimeout = time.Second })
	c := dial(t, srv.Addr, "")
	c.Write(append([]byte{5, 1, 0}, socks5Connect(echo)...))
	expect(t, c, []byte{5, 0, 5, 0})
	io.ReadFull(c, make([]byte, 8))
	start := time.Now()
	expectClosed(t, c)
	if d := time.Since(start); d < time.Second {
		t.Errorf("closed after %v, before the idle limit", d)
	}
	srv.Log.WaitFor(t, "msg=conn", "err=\"idle timeout\"")
}

// handshakeGoroutines counts goroutines serving handshakes.
func handshakeGoroutines() int {
	buf := make([]byte, 1<<22)
	buf = buf[:runtime.Stack(buf, true)]
	return strings.Count(string(buf), "relay.(*conn).run(")
}

// Stalled handshakes park: a client that stops before its request is
// complete holds no goroutine, wherever it stopped (before its first
// byte, within the greeting, before the password, before the request);
// when it goes on, so does its handshake; at the handshake time limit the
// parker ends it.
func TestHandshakeParking(t *testing.T) {
	relaytest.CheckLeaks(t)
	echo := relaytest.Echo(t)
	srv := relaytest.NewServer(t, loopback, func(s *relay.Server) {
		s.HandshakeTimeout = 3 * time.Second
		s.Auth = []relay.AuthMethod{relay.AuthNone, relay.AuthPassword}
		s.Passwords = passwords{"alice": "secret"}
	})
	userpass := []byte{1, 5, 'a', 'l', 'i', 'c', 'e', 6, 's', 'e', 'c', 'r', 'e', 't'}
	steps := []struct {
		name    string
		first   []byte // sent, then the client stalls
		sent    []byte // what the server answers to first
		then    []byte // sent after the stall
		replies []byte // expected in all, before the request's reply
	}{
		{"nothing yet", nil, nil, append([]byte{5, 1, 0}, socks5Connect(echo)...), []byte{5, 0}},
		{"half a greeting", []byte{5}, nil, append([]byte{1, 0}, socks5Connect(echo)...), []byte{5, 0}},
		{"greeting only", []byte{5, 1, 0}, []byte{5, 0}, socks5Connect(echo), []byte{5, 0}},
		{"before the password", []byte{5, 1, 2}, []byte{5, 2}, append(userpass, socks5Connect(echo)...), []byte{5, 2, 1, 0}},
		{"half a SOCKS4 request", socks4Connect(echo, "bob")[:5], nil, socks4Connect(echo, "bob")[5:], nil},
	}
	const each = 4 // of each kind: half go on, half stall for good
	type client struct {
		c    net.Conn
		step int
	}
	var cs []client
	for i, st := range steps {
		for range each {
			c := dial(t, srv.Addr, "")
			if st.first != nil {
				c.Write(st.first)
			}
			cs = append(cs, client{c, i})
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for handshakeGoroutines() > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if g := handshakeGoroutines(); g > 0 {
		t.Fatalf("%d handshake goroutines for %d stalled clients; want them parked", g, len(cs))
	}
	for i, cl := range cs {
		if i%2 == 1 {
			continue
		}
		st := steps[cl.step]
		cl.c.Write(st.then)
		if st.replies != nil {
			expect(t, cl.c, st.replies)
			expect(t, cl.c, []byte{5, 0, 0, 1})
			io.ReadFull(cl.c, make([]byte, 6))
		} else {
			expect(t, cl.c, granted4)
			io.ReadFull(cl.c, make([]byte, 6))
		}
		cl.c.Write([]byte("ping"))
		expect(t, cl.c, []byte("ping"))
		cl.c.Close()
	}
	// The others are ended at the time limit, by the parker.
	for i, cl := range cs {
		if i%2 == 1 {
			cl.c.SetDeadline(time.Now().Add(10 * time.Second))
			if sent := steps[cl.step].sent; sent != nil {
				expect(t, cl.c, sent)
			}
			expectClosed(t, cl.c)
		}
	}
	srv.Log.WaitFor(t, "msg=conn", "proto=socks5", "err=\"handshake: read tcp", "i/o timeout")
	srv.Log.WaitFor(t, "msg=conn", "proto=socks4", "user=bob", "reply=90")
}

// keepAliveTo reports whether this process's socket connected to peer has
// keep-alive on (the relay's outbound socket, in these tests).
func keepAliveTo(t *testing.T, peer string) bool {
	t.Helper()
	want := netip.MustParseAddrPort(peer)
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		sa, err := unix.Getpeername(fd)
		if err != nil {
			continue
		}
		if in4, ok := sa.(*unix.SockaddrInet4); !ok || netip.AddrPortFrom(netip.AddrFrom4(in4.Addr), uint16(in4.Port)) != want {
			continue
		}
		v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE)
		if err != nil {
			t.Fatal(err)
		}
		return v == 1
	}
	t.Fatalf("no socket connected to %s", peer)
	return false
}

// Keep-alive on an outbound socket is turned on when its session first
// goes quiet (parks), not for every session: a short one never pays for
// it.
func TestOutboundKeepAliveWhenQuiet(t *testing.T) {
	relaytest.CheckLeaks(t)
	echo := relaytest.Echo(t)
	srv := relaytest.NewServer(t, loopback)
	c := dial(t, srv.Addr, "")
	c.Write(append([]byte{5, 1, 0}, socks5Connect(echo)...))
	expect(t, c, []byte{5, 0, 5, 0, 0, 1})
	io.ReadFull(c, make([]byte, 6))
	c.Write([]byte("x"))
	expect(t, c, []byte("x"))
	if keepAliveTo(t, echo) {
		t.Fatal("keep-alive on before the session went quiet")
	}
	deadline := time.Now().Add(5 * time.Second)
	for relayGoroutines() > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if !keepAliveTo(t, echo) {
		t.Fatal("keep-alive off on the outbound socket of a quiet session")
	}
	c.Write([]byte("y"))
	expect(t, c, []byte("y"))
}
