package client_test

// The peers nobody here wrote, Dante and tinyproxy, and the fake hops.

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sockd-ng/sockd/relay/relaytest"
)

// TestMain fails the run if goroutines of this module outlive the tests
// that started them, after a bounded wait.
func TestMain(m *testing.M) {
	code := m.Run()
	deadline := time.Now().Add(5 * time.Second)
	for code == 0 {
		left := leaked()
		if left == "" {
			break
		}
		if time.Now().After(deadline) {
			fmt.Fprintf(os.Stderr, "goroutines left behind:\n%s\n", left)
			code = 1
		}
		time.Sleep(20 * time.Millisecond)
	}
	os.Exit(code)
}

// leaked returns the stacks of goroutines running code of this module
// (relay, relay/client and the tests' own fake hops), other than the
// caller's.
func leaked() string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "github.com/sockd-ng/sockd/") && !strings.Contains(g, "client_test.leaked") &&
			!strings.Contains(g, "client_test.TestMain") {
			out = append(out, g)
		}
	}
	return strings.Join(out, "\n\n")
}

const (
	testUser   = relaytest.SystemUser
	testPass   = relaytest.SystemPassword
	dantePass  = relaytest.DantePass
	danteBlock = relaytest.DanteBlock
)

// dante starts Dante with socksmethod method and socksRule.
func dante(t *testing.T, method, socksRule string) string {
	return relaytest.Dante(t, method, socksRule)
}

// tinyproxy starts tinyproxy (see relaytest.Tinyproxy).
func tinyproxy(t *testing.T, user, pass string, allow ...string) string {
	return relaytest.Tinyproxy(t, user, pass, allow...)
}

// fakeHop is a hop that reads what the client sends first, answers
// reply and closes: garbage, a short reply, another protocol.
func fakeHop(t *testing.T, reply []byte) string {
	return relaytest.Serve(t, func(c net.Conn) {
		c.Read(make([]byte, 512))
		c.Write(reply)
	})
}

// blackhole is a hop that accepts and never answers.
func blackhole(t *testing.T) string {
	return relaytest.Serve(t, func(c net.Conn) { io.Copy(io.Discard, c) })
}

// deadPort is a loopback address nothing listens on.
func deadPort(t *testing.T) string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(relaytest.FreePort(t)))
}

// passwords is a relay.Authenticator.
type passwords map[string]string

func (p passwords) Match(user, pass string) bool { q, ok := p[user]; return ok && q == pass }

// resolver asks next, if any, and records the names asked; it fails the
// test when asked for one of forbid.
type resolver struct {
	t    *testing.T
	next interface {
		LookupNetIP(context.Context, string, string) ([]netip.Addr, error)
	}
	forbid []string
	mu     sync.Mutex
	asked  []string
}

func (r *resolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	r.mu.Lock()
	r.asked = append(r.asked, host)
	r.mu.Unlock()
	for _, f := range r.forbid {
		if f == "*" || f == host {
			r.t.Errorf("the Dialer resolved %q itself", host)
		}
	}
	if r.next == nil {
		return nil, &net.DNSError{Err: "no resolver in this test", Name: host, IsNotFound: true}
	}
	return r.next.LookupNetIP(ctx, network, host)
}

func (r *resolver) Asked() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.asked...)
}

// roundTrip checks that c is the *net.TCPConn itself, that data goes
// through it to an echo server and back, and that a half-close ends it.
// (tinyproxy closes both ways when its client half-closes, so the echo is
// read before.)
func roundTrip(t *testing.T, c net.Conn) {
	t.Helper()
	defer c.Close()
	tc, ok := c.(*net.TCPConn)
	if !ok {
		t.Fatalf("conn is a %T, want *net.TCPConn", c)
	}
	msg := []byte("through the hops and back\n")
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != string(msg) {
		t.Fatalf("echo = %q, %v; want %q", got, err, msg)
	}
	tc.CloseWrite()
	if rest, err := io.ReadAll(c); len(rest) != 0 || err != nil {
		t.Fatalf("after the echo: %q, %v; want EOF", rest, err)
	}
}
