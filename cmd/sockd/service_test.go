package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/proxy"

	"github.com/sockd-ng/sockd/relay/relaytest"
)

// notifySocket is a NOTIFY_SOCKET listener, as systemd would be: it
// returns the socket's path and the messages received.
func notifySocket(t *testing.T) (string, <-chan string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ch := make(chan string, 64)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				close(ch)
				return
			}
			ch <- string(buf[:n])
		}
	}()
	return path, ch
}

// expectNotify waits, boundedly, for a message holding every one of parts,
// skipping others (watchdog pings, status updates).
func expectNotify(t *testing.T, ch <-chan string, parts ...string) string {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case m, ok := <-ch:
			if !ok {
				t.Fatalf("notify socket closed while waiting for %q", parts)
			}
			all := true
			for _, p := range parts {
				all = all && strings.Contains(m, p)
			}
			if all {
				return m
			}
		case <-deadline:
			t.Fatalf("no notify message with %q", parts)
		}
	}
}

// sd_notify: READY=1 once listening, RELOADING=1 with MONOTONIC_USEC then
// READY=1 around a reload, STATUS= with sessions and the config in force
// or the error that kept it, WATCHDOG=1, STOPPING=1.
func TestNotify(t *testing.T) {
	sock, msgs := notifySocket(t)
	conf := writeFile(t, "sockd.conf", admitLoopback)
	t.Setenv("NOTIFY_SOCKET", sock)
	t.Setenv("WATCHDOG_USEC", "200000")
	p := startSockd(t, "-config", conf)
	expectNotify(t, msgs, "READY=1", "STATUS=0 sessions; rules sha256 ", "from "+conf)
	expectNotify(t, msgs, "WATCHDOG=1")

	os.WriteFile(conf, []byte("permit 127.0.0.0/8\nallow ALL\n"), 0o644)
	p.cmd.Process.Signal(syscall.SIGHUP)
	m := expectNotify(t, msgs, "RELOADING=1")
	if !strings.Contains(m, "\nMONOTONIC_USEC=") {
		t.Errorf("RELOADING without MONOTONIC_USEC: %q", m)
	}
	expectNotify(t, msgs, "READY=1", "last reload rejected: "+conf+":2:1: unexpected \"allow\"")

	os.WriteFile(conf, []byte("permit 127.0.0.0/8\npermit [::1]\n"), 0o644)
	p.cmd.Process.Signal(syscall.SIGHUP)
	expectNotify(t, msgs, "RELOADING=1")
	m = expectNotify(t, msgs, "READY=1")
	if strings.Contains(m, "rejected") {
		t.Errorf("status still shows the old error: %q", m)
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	expectNotify(t, msgs, "STOPPING=1")
}

// Socket activation, as systemd does it, driven by Debian's
// systemd-socket-activate: a listening socket named "socks", and with -a
// (Accept=yes) one connected socket per process, served as one session.
func TestSocketActivation(t *testing.T) {
	url, _ := backend(t)
	conf := writeFile(t, "sockd.conf", admitLoopback)
	sock, msgs := notifySocket(t)
	for _, tc := range []struct {
		name   string
		accept bool
	}{{"listening socket", false}, {"Accept=yes", true}} {
		t.Run(tc.name, func(t *testing.T) {
			addr := "127.0.0.1:" + strconv.Itoa(relaytest.FreePort(t))
			args := []string{"-l", addr, "--fdname=socks", "-E", "SOCKD_TEST_MAIN=1", "-E", "NOTIFY_SOCKET=" + sock}
			if tc.accept {
				args = append(args, "-a")
			}
			args = append(args, os.Args[0], "-config", conf)
			d := relaytest.StartDaemon(t, "systemd-socket-activate", args...)
			d.WaitTCP(t, addr)
			for range 3 {
				if out, code := relaytest.Curl(t, "--socks5", addr, url); code != 0 || out != "hello from backend" {
					t.Fatalf("curl exit %d: %s\n%s", code, out, d.Output())
				}
			}
			if !tc.accept {
				expectNotify(t, msgs, "READY=1")
				if !strings.Contains(d.Output(), "msg=listening addr="+addr) {
					t.Errorf("not serving the inherited socket:\n%s", d.Output())
				}
				return
			}
			// Each connection ran its own process, which exited after
			// its one session (WaitTCP's probe made one more, empty).
			deadline := time.Now().Add(10 * time.Second)
			for strings.Count(d.Output(), "died with code 0") < 4 && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			out := d.Output()
			if strings.Count(out, "msg=conn id=1 proto=socks5") != 3 || strings.Count(out, "died with code 0") != 4 ||
				strings.Contains(out, "msg=listening") {
				t.Errorf("want three one-session processes that exit 0, got:\n%s", out)
			}
		})
	}
}

// inetd mode, as legacy sockd ran: the connection is standard input,
// output and error; the server serves it, logs elsewhere, and exits.
func TestInetd(t *testing.T) {
	echo := relaytest.Echo(t)
	conf := writeFile(t, "sockd.conf", admitLoopback)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	f, err := server.(*net.TCPConn).File()
	if err != nil {
		t.Fatal(err)
	}
	server.Close()
	cmd := command("-config", conf)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = f, f, f
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()

	d, _ := proxy.SOCKS5("tcp", "unused", nil, nil)
	_, err = d.(interface {
		DialWithConn(context.Context, net.Conn, string, string) (net.Addr, error)
	}).DialWithConn(context.Background(), client, "tcp", echo)
	if err != nil {
		t.Fatalf("handshake over the inetd connection: %v", err)
	}
	client.SetDeadline(time.Now().Add(10 * time.Second))
	client.Write([]byte("hello"))
	buf := make([]byte, 5)
	if _, err := io.ReadFull(client, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("echo %q %v: log lines must not reach the session", buf, err)
	}
	client.(*net.TCPConn).CloseWrite()
	if rest, _ := io.ReadAll(client); len(rest) != 0 {
		t.Errorf("bytes after the session: %q", rest)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("sockd exited with %v", err)
		}
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatal("sockd did not exit after its one session")
	}
}

// Reload under load: a bounded client loop keeps opening sessions while the
// config is rewritten 50 times, alternating valid and invalid versions, by
// rename-save, in-place write and symlink swap. No session the rules allow
// fails, no invalid config is ever in force, sessions opened before still
// relay after, and each change takes effect for the next session within
// the settle time (shortened here) and a second.
func TestReloadUnderLoad(t *testing.T) {
	echo := relaytest.Echo(t)
	probe := relaytest.Echo(t) // permitted only by the "b" versions
	dir := t.TempDir()
	conf := filepath.Join(dir, "sockd.conf")
	versions := map[string]string{
		"a": "# version a\npermit 127.0.0.0/8 127.0.0.1/32 eq " + portOf(echo) + "\ndeny ALL 0.0.0.0\n",
		"b": "# version b\npermit 127.0.0.0/8 127.0.0.1/32 eq " + portOf(echo) + "\npermit 127.0.0.0/8 127.0.0.1/32 eq " + portOf(probe) + "\ndeny ALL 0.0.0.0\n",
		// Invalid: had a legacy server skipped the bad line, the probe
		// would be permitted.
		"bad": "permit 127.0.0.0/8 127.0.0.1/32 eq " + portOf(echo) + "\npermit 127.0.0.0/8 127.0.0.1/32 eq " + portOf(probe) + "\npermit 10.1 255.0.0.0\n",
	}
	os.WriteFile(conf, []byte(versions["a"]), 0o644)
	p := startSockd(t, "-config", conf, "-reload-settle", testSettle.String())

	socks := func() (proxy.ContextDialer, error) {
		d, err := proxy.SOCKS5("tcp", p.addr(), nil, &net.Dialer{Timeout: 5 * time.Second})
		return d.(proxy.ContextDialer), err
	}
	d, _ := socks()
	session := func(target string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := d.DialContext(ctx, "tcp", target)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("x")); err != nil {
			return err
		}
		_, err = io.ReadFull(c, make([]byte, 1))
		return err
	}
	// Sessions opened before the reloads.
	var early []net.Conn
	for range 5 {
		c, err := d.DialContext(context.Background(), "tcp", echo)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		early = append(early, c)
	}
	// The load: sessions the rules always allow, and probes that must be
	// denied whenever a valid "a" is in force or an invalid one was last
	// written.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var ok, failed atomic.Int64
	var mu sync.Mutex
	var failures []string
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; n < 20000; n++ { // bounded
				select {
				case <-stop:
					return
				default:
				}
				if err := session(echo); err != nil {
					failed.Add(1)
					mu.Lock()
					failures = append(failures, err.Error())
					mu.Unlock()
				} else {
					ok.Add(1)
				}
			}
		}()
	}
	// write puts a version in place by one of three methods.
	write := func(i int, v string) {
		data := []byte(versions[v])
		switch i % 3 {
		case 0: // rename-save, as editors do
			tmp := filepath.Join(dir, ".sockd.conf.tmp")
			os.WriteFile(tmp, data, 0o644)
			os.Rename(tmp, conf)
		case 1: // in-place write
			os.Remove(conf + ".lnk")
			if fi, err := os.Lstat(conf); err == nil && fi.Mode()&os.ModeSymlink != 0 {
				os.Remove(conf) // do not write through the link into old data
			}
			os.WriteFile(conf, data, 0o644)
		case 2: // symlink swap, as Kubernetes ConfigMaps do
			data1 := filepath.Join(dir, fmt.Sprintf("..data.%d", i))
			os.Mkdir(data1, 0o755)
			os.WriteFile(filepath.Join(data1, "sockd.conf"), data, 0o644)
			os.Symlink(filepath.Join(data1, "sockd.conf"), conf+".lnk")
			os.Rename(conf+".lnk", conf)
		}
	}
	probeAllowed := func() bool { return session(probe) == nil }
	current := "a"
	for i := range 50 {
		v := []string{"b", "bad", "a", "bad"}[i%4]
		start := time.Now()
		write(i, v)
		if v != "bad" {
			current = v
		}
		want := current == "b"
		// The change is seen within the bound; an invalid version
		// changes nothing.
		deadline := start.Add(reloadBound)
		got := probeAllowed()
		for got != want && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
			got = probeAllowed()
		}
		if got != want {
			t.Fatalf("rewrite %d (%s, method %d): probe allowed=%v %v later, want %v", i, v, i%3, got, reloadBound, want)
		}
		if v == "bad" {
			// Give the server time to see it, then check it changed nothing.
			p.log.WaitFor(t, "config reload rejected", conf+":3:8:")
			if probeAllowed() != want {
				t.Fatalf("rewrite %d: an invalid config took effect", i)
			}
		}
	}
	close(stop)
	wg.Wait()
	if n := failed.Load(); n > 0 {
		t.Errorf("%d of %d permitted sessions failed during reloads, e.g. %q", n, n+ok.Load(), failures[0])
	}
	if ok.Load() < 50 {
		t.Errorf("only %d sessions ran during the reloads", ok.Load())
	}
	for i, c := range early {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("still")); err != nil {
			t.Fatalf("early session %d: %v", i, err)
		}
		buf := make([]byte, 5)
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "still" {
			t.Fatalf("early session %d stopped relaying: %q %v", i, buf, err)
		}
	}
	t.Logf("%d sessions during 50 rewrites, none failed", ok.Load())
}

// Every file in use is watched: a user file and the password file reload
// too, without SIGHUP.
func TestReloadOtherFiles(t *testing.T) {
	url, _ := backend(t)
	users := writeFile(t, "staff", "alice\n")
	pw := filepath.Join(t.TempDir(), "passwd")
	if out, err := exec.Command("htpasswd", "-B", "-b", "-c", pw, "carol", "old").CombinedOutput(); err != nil {
		t.Fatalf("htpasswd: %v %s", err, out)
	}
	conf := writeFile(t, "sockd.conf", "permit *="+users+" 127.0.0.0/8\n")
	p := startSockd(t, "-config", conf, "-passwd", pw, "-auth", "password,none", "-reload-settle", testSettle.String())
	within := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(reloadBound)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not in force %v after the write\n%s", what, reloadBound, p.log)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	as := func(user string) bool {
		_, code := relaytest.Curl(t, "--socks4", p.addr(), "--proxy-user", user+":", url)
		return code == 0
	}
	if as("bob") {
		t.Fatal("bob admitted before the user file lists him")
	}
	os.WriteFile(users, []byte("alice bob\n"), 0o644)
	within("user file", func() bool { return as("bob") })

	login := func(pass string) bool {
		_, code := relaytest.Curl(t, "--socks5", p.addr(), "--proxy-user", "carol:"+pass, url)
		return code == 0
	}
	os.WriteFile(users, []byte("alice bob carol\n"), 0o644)
	within("user file", func() bool { return login("old") })
	if out, err := exec.Command("htpasswd", "-B", "-b", pw, "carol", "new").CombinedOutput(); err != nil {
		t.Fatalf("htpasswd: %v %s", err, out)
	}
	within("password file", func() bool { return login("new") && !login("old") })
}
