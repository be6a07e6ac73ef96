// Package relaytest runs a relay.Server on a loopback port for tests, in the
// style of net/http/httptest, with the backends a SOCKS test needs: an echo
// server and a sink.
package relaytest

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sockd-ng/sockd/grammar"
	"github.com/sockd-ng/sockd/policy"
	"github.com/sockd-ng/sockd/relay"
)

// Server is a relay.Server serving on 127.0.0.1 and a random port.
type Server struct {
	Addr string
	*relay.Server
	Log *LogBuffer
}

// NewServer compiles rules (sockd.conf text), starts a server with them on
// 127.0.0.1:0 and stops it when the test ends. configure, if given, sets
// more fields before the server starts.
func NewServer(t testing.TB, rules string, configure ...func(*relay.Server)) *Server {
	t.Helper()
	rs := Compile(t, rules)
	log := &LogBuffer{}
	s := &Server{Log: log, Server: &relay.Server{
		Decider:          rs,
		Logger:           slog.New(slog.NewTextHandler(log, &slog.HandlerOptions{Level: slog.LevelDebug})),
		HandshakeTimeout: 5 * time.Second,
		ConnectTimeout:   5 * time.Second,
	}}
	for _, f := range configure {
		f(s.Server)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.Addr = ln.Addr().String()
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Serve(ln)
	}()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		<-done
		if t.Failed() {
			t.Logf("server log:\n%s", log)
		}
	})
	return s
}

// Compile parses and compiles sockd.conf text named "sockd.conf".
func Compile(t testing.TB, rules string) *policy.Ruleset {
	return CompileRoutes(t, rules, "")
}

// CompileRoutes compiles sockd.conf text with socks.conf text as its
// routing table (none when empty).
func CompileRoutes(t testing.TB, rules, routes string) *policy.Ruleset {
	t.Helper()
	return CompileInterfaces(t, rules, routes, "")
}

// CompileInterfaces compiles sockd.conf text with socks.conf text as its
// routing table and sockd.route text as its outbound interfaces (each none
// when empty).
func CompileInterfaces(t testing.TB, rules, routes, interfaces string) *policy.Ruleset {
	t.Helper()
	f, err := grammar.ParseSockd("sockd.conf", strings.NewReader(rules))
	if err != nil {
		t.Fatalf("rules: %v", err)
	}
	var opt policy.Options
	if routes != "" {
		if opt.Routes, err = grammar.ParseSocks("socks.conf", strings.NewReader(routes)); err != nil {
			t.Fatalf("routes: %v", err)
		}
	}
	if interfaces != "" {
		if opt.Interfaces, err = grammar.ParseInterfaces("sockd.route", strings.NewReader(interfaces)); err != nil {
			t.Fatalf("interfaces: %v", err)
		}
	}
	rs, err := policy.Compile(f, opt)
	if err != nil {
		t.Fatalf("rules: %v", err)
	}
	return rs
}

// LogBuffer collects log output; safe for concurrent use.
type LogBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// WaitFor waits, boundedly, until the log holds a line with every one of
// parts, and returns it.
func (l *LogBuffer) WaitFor(t testing.TB, parts ...string) string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, line := range strings.Split(l.String(), "\n") {
			ok := true
			for _, p := range parts {
				ok = ok && strings.Contains(line, p)
			}
			if ok {
				return line
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log line with %q in:\n%s", parts, l)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Echo starts a TCP echo server on 127.0.0.1:0 that half-closes when its
// client does; it stops when the test ends. It copies through user space
// (io.Copy between TCP conns would splice and hold pipes), so that the
// pipes a test counts are the relay's.
func Echo(t testing.TB) string {
	return serveTCP(t, func(c net.Conn) {
		io.CopyBuffer(struct{ io.Writer }{c}, struct{ io.Reader }{c}, make([]byte, 32<<10))
		c.(*net.TCPConn).CloseWrite()
	})
}

// serveTCP runs handler for every connection to a new 127.0.0.1:0 listener.
func serveTCP(t testing.TB, handler func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handler(c)
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// Serve is serveTCP for tests that need their own backend behaviour.
func Serve(t testing.TB, handler func(net.Conn)) string { return serveTCP(t, handler) }

// CheckLeaks fails the test if, once it ended and a bounded wait passed,
// goroutines of this module are still running. Call it first in a test, so
// that its cleanup runs last.
func CheckLeaks(t testing.TB) {
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for {
			left := leaked()
			if left == "" {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("goroutines left behind:\n%s", left)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

// leaked returns the stacks of goroutines running code of the relay
// package, other than the caller's.
func leaked() string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "sockd-ng/sockd/") && !strings.Contains(g, "relaytest.leaked") && !strings.Contains(g, "testing.tRunner") {
			out = append(out, g)
		}
	}
	return strings.Join(out, "\n\n")
}

// FDs counts this process's open file descriptors whose target starts with
// kind ("socket:", "pipe:" or "" for all), from /proc/self/fd.
func FDs(t testing.TB, kind string) int {
	t.Helper()
	return ProcFDs(t, "self", kind)
}

// ProcFDs is FDs of the process with the given pid ("self": this one).
func ProcFDs(t testing.TB, pid, kind string) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/" + pid + "/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		target, err := os.Readlink("/proc/" + pid + "/fd/" + e.Name())
		if err == nil && strings.HasPrefix(target, kind) {
			n++
		}
	}
	return n
}
