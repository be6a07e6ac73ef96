package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/proxy"

	"github.com/sockd-ng/sockd/relay/relaytest"
)

// vmRSS reads a process's resident set size, in KiB, from /proc.
func vmRSS(t *testing.T, pid int) int {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}

// buildSockd builds the sockd binary as it ships (no race detector, which
// multiplies memory) into a test directory.
func buildSockd(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "sockd")
	cmd := exec.Command("go", "build", "-trimpath", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// A burst's memory goes back: 10 s after 5,000 stalled connections (from
// ten client addresses, under the default per-client cap) close, the
// server's resident memory is within twice its idle base. Read from /proc.
func TestMemoryReturnedAfterBurst(t *testing.T) {
	t.Parallel()
	conf := writeFile(t, "sockd.conf", admitLoopback)
	p := startBinary(t, buildSockd(t), "-config", conf, "-handshake-timeout", "2m", "-log-level", "debug")
	pid := p.cmd.Process.Pid
	// The idle base is that of a server that has served: a few sessions
	// first, then a quiet second.
	echo := relaytest.Echo(t)
	socks, _ := proxy.SOCKS5("tcp", p.addr(), nil, proxy.Direct)
	for range 20 {
		c, err := socks.Dial("tcp", echo)
		if err != nil {
			t.Fatal(err)
		}
		roundTrips(t, []net.Conn{c})
		c.Close()
	}
	time.Sleep(time.Second)
	base := vmRSS(t, pid)

	const perAddr, addrs = 500, 10
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range addrs {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i))}, Timeout: 5 * time.Second}
		for range perAddr {
			c, err := d.Dial("tcp", p.addr())
			if err != nil {
				t.Fatal(err)
			}
			conns = append(conns, c)
		}
	}
	sockets := func() int { return relaytest.ProcFDs(t, strconv.Itoa(pid), "socket:") }
	deadline := time.Now().Add(30 * time.Second)
	for sockets() < len(conns) {
		if time.Now().After(deadline) {
			t.Fatalf("the server holds %d sockets, want %d", sockets(), len(conns))
		}
		time.Sleep(50 * time.Millisecond)
	}
	peak := vmRSS(t, pid)
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	deadline = time.Now().Add(30 * time.Second)
	for sockets() > 10 {
		if time.Now().After(deadline) {
			t.Fatalf("the server still holds %d sockets", sockets())
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(10 * time.Second)
	after := vmRSS(t, pid)
	t.Logf("VmRSS: idle %d KiB, with 5,000 stalled handshakes %d KiB, 10 s after they closed %d KiB (%.2fx the idle base)",
		base, peak, after, float64(after)/float64(base))
	if after > 2*base {
		t.Errorf("10 s after the burst the server holds %d KiB, more than twice its idle %d KiB", after, base)
	}
	p.log.WaitFor(t, `msg="memory returned after a burst"`, "sessions=0")
}
