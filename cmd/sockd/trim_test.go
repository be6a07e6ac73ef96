package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/proxy"

	"github.com/sockd-ng/sockd/relay/relaytest"
)

func TestTrimmerDue(t *testing.T) {
	var n uint64
	var open int
	tr := trimmer{accepted: func() uint64 { return n }, sessions: func() int { return open }}
	const b = trimBurst
	steps := []struct {
		accepted uint64
		open     int
		want     bool
	}{
		{0, 0, false},          // nothing yet
		{100, 100, false},      // busy
		{100, 100, false},      // quiet, but no burst
		{200, 200, false},      // busy
		{300, 300, false},      // busy
		{300, 300, true},       // quiet after 300: trim
		{300, 300, false},      // still quiet: once is enough
		{300 + b, 300, false},  // busy
		{300 + b, 300, true},   // quiet after another burst
		{301 + b, 300, false},  // one more
		{301 + b, 300, false},  // is no burst
		{301 + b, 200, false},  // 100 sessions ended: no burst
		{301 + b, 44, true},    // 256 ended since the trim: a burst of ends
		{301 + b, 0, false},    // 44 more: no burst
		{302 + b, 0, false},    // busy
		{302 + b, 0, false},    // quiet, nothing to return
		{400 + b, 300, false},  // stalled handshakes arrive
		{400 + b, 300, false},  // no burst yet: 98 since the last trim
		{1000 + b, 900, false}, // more
		{1000 + b, 900, true},  // quiet, all held: trim
		{1000 + b, 0, true},    // they time out together: trim again
	}
	for i, s := range steps {
		n, open = s.accepted, s.open
		if got := tr.due(); got != s.want {
			t.Errorf("step %d (accepted %d, open %d): due = %v, want %v", i, s.accepted, s.open, got, s.want)
		}
	}
}

// The memory a burst of goroutines left behind (their stacks) goes back to
// the system.
func TestTrimReturnsStacks(t *testing.T) {
	const n = 2000 // goroutines alive at once, each with a 32 KiB stack
	var started, wg sync.WaitGroup
	release := make(chan struct{})
	started.Add(n)
	for range n {
		wg.Go(func() { deep(64, &started, release) })
	}
	started.Wait()
	close(release)
	wg.Wait()
	before, after := trim(nil)
	if after >= before || before-after < n*16<<10 {
		t.Fatalf("mapped %d KiB before the trim, %d KiB after; want at least %d KiB less",
			before>>10, after>>10, n*16)
	}
	t.Logf("mapped %d KiB before the trim, %d KiB after", before>>10, after>>10)
}

// deep grows its goroutine's stack by about n × 256 bytes, then says so
// and waits for release.
//
//go:noinline
func deep(n int, started *sync.WaitGroup, release chan struct{}) byte {
	var pad [256]byte
	pad[n%len(pad)] = byte(n)
	if n == 0 {
		started.Done()
		<-release
		return pad[0]
	}
	return deep(n-1, started, release) + pad[n%len(pad)]
}

// After a burst of sessions, once no new one comes, the server returns the
// memory the burst used; the sessions it holds go on relaying.
func TestTrimAfterBurst(t *testing.T) {
	echo := relaytest.Echo(t)
	conf := writeFile(t, "sockd.conf", "permit 127.0.0.0/8\n")
	p := startSockd(t, "-config", conf, "-log-level", "debug")
	socks, err := proxy.SOCKS5("tcp", p.addr(), nil, proxy.Direct)
	if err != nil {
		t.Fatal(err)
	}
	pid := strconv.Itoa(p.cmd.Process.Pid)
	stdio := relaytest.ProcFDs(t, pid, "pipe:") // stderr, to the test
	const n = trimBurst + 44
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range n {
		c, err := socks.Dial("tcp", echo)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		roundTrips(t, conns[len(conns)-1:]) // pipes go to the pool
	}
	line := p.log.WaitFor(t, `msg="memory returned after a burst"`, fmt.Sprintf("sessions=%d", n))
	t.Log(line)
	// The pipes the relay kept for reuse are closed too.
	if pipes := relaytest.ProcFDs(t, pid, "pipe:"); pipes != stdio {
		t.Errorf("after the trim the server holds %d pipe fds; want %d (its stdio)", pipes, stdio)
	}
	roundTrips(t, conns)
}

// roundTrips sends a line on every connection and reads it back.
func roundTrips(t *testing.T, conns []net.Conn) {
	t.Helper()
	for i, c := range conns {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		msg := []byte(fmt.Sprintf("session %d", i))
		got := make([]byte, len(msg))
		if _, err := c.Write(msg); err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("session %d: read %q, %v", i, got, err)
		}
	}
}
