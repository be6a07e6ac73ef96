package relaytest

import (
	"context"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// FreePort returns a loopback port that nothing listens on right now, for
// daemons that cannot be handed a listener and cannot report the port they
// chose. It picks below the kernel's ephemeral range, so that outgoing
// connections (which take ephemeral ports) cannot grab it before the
// daemon binds it.
func FreePort(t testing.TB) int {
	t.Helper()
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil && n > 11000 {
				low = n
			}
		}
	}
	for range 1000 {
		port := 10000 + rand.IntN(low-10000)
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		pc, err := net.ListenPacket("udp", addr)
		ln.Close()
		if err != nil {
			continue
		}
		pc.Close()
		return port
	}
	t.Fatal("no free port below the ephemeral range")
	return 0
}

// Daemon is an outside program a test started, and its log.
type Daemon struct {
	Cmd *exec.Cmd
	Log string // path of its combined output
}

// Output returns what the daemon wrote so far.
func (d *Daemon) Output() string {
	b, _ := os.ReadFile(d.Log)
	return string(b)
}

// StartDaemon runs a program in its own process group, logging to a file in
// a test directory, and kills the group (by the PID it started) when the
// test ends. A missing program fails the test: CI installs every one.
func StartDaemon(t testing.TB, name string, args ...string) *Daemon {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Fatalf("%s is required (see .ci/run): %v", name, err)
	}
	logf, err := os.Create(filepath.Join(t.TempDir(), filepath.Base(name)+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &Daemon{Cmd: cmd, Log: logf.Name()}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
		logf.Close()
	})
	return d
}

// WaitTCP waits, boundedly, until addr accepts TCP connections.
func (d *Daemon) WaitTCP(t testing.TB, addr string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
			c.Close()
			return
		}
		if d.Cmd.ProcessState != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s does not accept on %s:\n%s", d.Cmd.Path, addr, d.Output())
}

// Oidentd starts Debian's oidentd, the real identd, answering on 127.0.0.1
// and 127.0.0.2 at the returned port.
func Oidentd(t testing.TB) int {
	t.Helper()
	conf := filepath.Join(t.TempDir(), "oidentd.conf")
	if err := os.WriteFile(conf, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	port := FreePort(t)
	d := StartDaemon(t, "/usr/sbin/oidentd", "-i", "-S", "-d", "-a", "127.0.0.1", "-a", "127.0.0.2",
		"-p", strconv.Itoa(port), "-C", conf, "-t", "5")
	d.WaitTCP(t, net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	return port
}

// DNS starts dnsmasq as an authoritative-only DNS server on 127.0.0.1 with
// the given records and returns its address. Records are dnsmasq options
// without the leading dashes, e.g. "host-record=www.test,127.0.0.1" or
// "ptr-record=2.0.0.127.in-addr.arpa,liar.test". Nothing is forwarded: a
// name it does not know fails.
func DNS(t testing.TB, records ...string) string {
	t.Helper()
	port := FreePort(t)
	args := []string{"-k", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--no-poll",
		"--listen-address=127.0.0.1", "--bind-interfaces", "--port=" + strconv.Itoa(port),
		"--user=root", "--pid-file=" + filepath.Join(t.TempDir(), "dnsmasq.pid"), "--log-facility=-", "--log-queries"}
	for _, r := range records {
		args = append(args, "--"+r)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	d := StartDaemon(t, "/usr/sbin/dnsmasq", args...)
	d.WaitTCP(t, addr)
	r := Resolver(addr)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := r.LookupHost(ctx, "localhost.invalid"); err == nil {
		t.Fatalf("dnsmasq forwards queries:\n%s", d.Output())
	}
	return addr
}

// Resolver is a resolver that asks only the DNS server at addr.
func Resolver(addr string) *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
}

// Curl runs curl with args (bounded by a time limit) and returns its output
// and exit status. curl is the SOCKS client nobody here wrote.
func Curl(t testing.TB, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "curl", append([]string{"-sS", "--max-time", "20"}, args...)...)
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		t.Fatalf("curl: %v", err)
	}
	return string(out), 0
}

// AsNobody returns args to run a command as user nobody (uid 65534) with
// setpriv, for identd tests that need a connection owned by another user.
func AsNobody(args ...string) []string {
	return append([]string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"}, args...)
}
