package ident

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// oidentdBin is where Debian's oidentd package installs the daemon. CI
// installs it; a machine without it fails the test rather than skipping it.
const oidentdBin = "/usr/sbin/oidentd"

// TestLookupOidentd asks a real oidentd, started here on a free loopback port,
// about connections made inside the test: one owned by this process and one
// owned by a helper process running as nobody.
func TestLookupOidentd(t *testing.T) {
	checkLeaks(t)
	port := startOidentd(t)
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	nobody, err := user.LookupId("65534")
	if err != nil {
		t.Fatalf("user nobody (uid 65534): %v", err)
	}
	tests := []struct {
		name   string
		nobody bool // connect from a helper process running as uid 65534
		want   string
	}{
		{name: "own connection", want: me.Username},
		{name: "connection owned by nobody", nobody: true, want: nobody.Username},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ln := listen(t, "127.0.0.1")
			lport := ln.Addr().(*net.TCPAddr).Port
			if tc.nobody {
				connectAsNobody(t, lport)
			} else {
				c, err := net.Dial("tcp", ln.Addr().String())
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { c.Close() })
			}
			ln.(*net.TCPListener).SetDeadline(time.Now().Add(10 * time.Second))
			srv, err := ln.Accept()
			if err != nil {
				t.Fatalf("accept the client's connection: %v", err)
			}
			defer srv.Close()
			local := srv.LocalAddr().(*net.TCPAddr).AddrPort()
			remote := srv.RemoteAddr().(*net.TCPAddr).AddrPort()

			c := &Client{Port: port, Timeout: 5 * time.Second}
			r, err := c.Lookup(context.Background(), local, remote)
			if err != nil {
				t.Fatalf("Lookup(%s, %s): %v\noidentd log:\n%s", local, remote, err, oidentdLog(t))
			}
			if r.User != tc.want || r.OS != "UNIX" {
				t.Errorf("Lookup(%s, %s) = %+v, want OS UNIX, User %q", local, remote, r, tc.want)
			}
		})
	}
}

// startOidentd runs oidentd in the foreground on 127.0.0.1 and a free port,
// with an empty config (its built-in defaults answer with the real owner and
// allow no user to hide or spoof), and returns the port once it accepts.
func startOidentd(t *testing.T) uint16 {
	t.Helper()
	if _, err := os.Stat(oidentdBin); err != nil {
		t.Fatalf("oidentd is required (apt-get install oidentd): %v", err)
	}
	dir := t.TempDir()
	conf := filepath.Join(dir, "oidentd.conf")
	if err := os.WriteFile(conf, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "oidentd.log"))
	if err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	cmd := exec.Command(oidentdBin, "-i", "-S", "-d", "-a", "127.0.0.1",
		"-p", strconv.Itoa(int(port)), "-C", conf, "-t", "5")
	cmd.Stdout, cmd.Stderr = logf, logf
	// oidentd forks a child per connection: give it its own process group so
	// the cleanup ends the children with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // the group we started
		cmd.Process.Kill()
		<-exited
		logf.Close()
	})
	oidentdLogPath = logf.Name()

	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port)))
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		if c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
			c.Close()
			return port
		}
		select {
		case err := <-exited:
			exited <- err // for the cleanup
			t.Fatalf("oidentd exited: %v\n%s", err, oidentdLog(t))
		case <-tick.C:
		}
	}
	t.Fatalf("oidentd did not accept on %s within 10s\n%s", addr, oidentdLog(t))
	return 0
}

// oidentdLogPath is set by startOidentd for failure messages; tests that use
// it do not run in parallel.
var oidentdLogPath string

func oidentdLog(t *testing.T) string {
	b, err := os.ReadFile(oidentdLogPath)
	if err != nil {
		return err.Error()
	}
	return string(b)
}

// connectAsNobody starts a bash running as uid/gid 65534 that connects to
// 127.0.0.1:port and holds the connection until the peer closes it (or 30 s).
func connectAsNobody(t *testing.T, port int) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("running a client as nobody needs root (setpriv); CI runs as root")
	}
	script := fmt.Sprintf("exec 3<>/dev/tcp/127.0.0.1/%d && read -r -t 30 -u 3 _", port)
	cmd := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
		"/bin/bash", "-c", script)
	if err := cmd.Start(); err != nil {
		t.Fatalf("setpriv (util-linux): %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
}

// seen is what a rogue identd received on one connection.
type seen struct {
	query string         // bytes up to and including the first '\n'
	from  netip.AddrPort // the Lookup's source address
}

// rogue is a scripted identd on a loopback listener.
type rogue struct {
	port uint16
	got  chan seen
}

// startRogue listens on ip:0 and, for every connection, reads the query line
// and calls answer. Everything it starts ends in t.Cleanup.
func startRogue(t *testing.T, ip string, answer func(c net.Conn, query string)) *rogue {
	t.Helper()
	ln := listen(t, ip)
	r := &rogue{port: uint16(ln.Addr().(*net.TCPAddr).Port), got: make(chan seen, 16)}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				q := readQuery(c)
				select {
				case r.got <- seen{query: q, from: c.RemoteAddr().(*net.TCPAddr).AddrPort()}:
				default:
				}
				answer(c, q)
			})
		}
	})
	return r
}

// readQuery reads byte by byte up to the first '\n' (at most 100 bytes), so
// nothing sent after the query is consumed.
func readQuery(c net.Conn) string {
	var q []byte
	b := make([]byte, 1)
	for len(q) < 100 {
		if _, err := c.Read(b); err != nil {
			break
		}
		q = append(q, b[0])
		if b[0] == '\n' {
			break
		}
	}
	return string(q)
}

// reply answers the query with "<ports asked> : rest\r\n".
func reply(rest string) func(net.Conn, string) {
	return func(c net.Conn, q string) {
		io.WriteString(c, strings.TrimRight(q, "\r\n")+" : "+rest+"\r\n")
	}
}

func write(s string) func(net.Conn, string) {
	return func(c net.Conn, _ string) { io.WriteString(c, s) }
}

func TestLookupRogue(t *testing.T) {
	checkLeaks(t)
	tests := []struct {
		name     string
		local    string // our side, passed to Lookup; its address is the dial source
		remote   string // client side; its address is where the identd runs
		answer   func(c net.Conn, query string)
		dead     bool          // no identd: connection refused
		timeout  time.Duration // Client.Timeout; 0 means 5s
		want     Reply
		wantCode string // a *ReplyError with this code
		wantErr  error  // errors.Is
		anyErr   bool   // some error, of a kind not checked
	}{
		{name: "userid", answer: reply("USERID : UNIX : bob"), want: Reply{OS: "UNIX", User: "bob"}},
		{name: "no blanks, oidentd style", answer: write("40000,1080:USERID:UNIX:bob\r\n"), want: Reply{OS: "UNIX", User: "bob"}},
		{name: "bare LF", answer: write("40000 , 1080 : USERID : OTHER : 1234\n"), want: Reply{OS: "OTHER", User: "1234"}},
		{name: "colons in user id", answer: reply("USERID : UNIX : a:b"), want: Reply{OS: "UNIX", User: "a:b"}},
		{name: "charset", answer: reply("USERID : UNIX,UTF-8 : bob"), want: Reply{OS: "UNIX", Charset: "UTF-8", User: "bob"}},
		{name: "from 127.0.0.2", local: "127.0.0.2:1080", answer: reply("USERID : UNIX : carol"), want: Reply{OS: "UNIX", User: "carol"}},
		{name: "IPv4-mapped addresses", local: "[::ffff:127.0.0.2]:1080", remote: "[::ffff:127.0.0.1]:40000", answer: reply("USERID : UNIX : dave"), want: Reply{OS: "UNIX", User: "dave"}},
		{name: "ERROR NO-USER", answer: reply("ERROR : NO-USER"), wantCode: "NO-USER"},
		{name: "ERROR HIDDEN-USER", answer: reply("ERROR : HIDDEN-USER"), wantCode: "HIDDEN-USER"},
		{name: "wrong ports", answer: write("40001 , 1080 : USERID : UNIX : bob\r\n"), wantErr: ErrMalformed},
		{name: "ports swapped", answer: write("1080 , 40000 : USERID : UNIX : bob\r\n"), wantErr: ErrMalformed},
		{name: "garbage", answer: write("HTTP/1.1 400 Bad Request\r\n"), wantErr: ErrMalformed},
		{name: "closed without end of line", answer: write("40000 , 1080 : USERID : UNIX : bo"), wantErr: ErrMalformed},
		{name: "1500 bytes then end of line", answer: reply(strings.Repeat("x", 1500)), wantErr: ErrMalformed},
		{name: "endless line", answer: endless, timeout: time.Second, wantErr: ErrMalformed},
		{name: "never answers", answer: silent, timeout: 200 * time.Millisecond, anyErr: true},
		{name: "connection refused", dead: true, anyErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			local, remote := addrPort(t, tc.local, "127.0.0.1:1080"), addrPort(t, tc.remote, "127.0.0.1:40000")
			var rg *rogue
			c := &Client{Timeout: tc.timeout}
			if c.Timeout == 0 {
				c.Timeout = 5 * time.Second
			}
			if tc.dead {
				c.Port = freePort(t)
			} else {
				rg = startRogue(t, "127.0.0.1", tc.answer)
				c.Port = rg.port
			}

			start := time.Now()
			r, err := c.Lookup(context.Background(), local, remote)
			elapsed := time.Since(start)

			if elapsed > 5*c.Timeout {
				t.Errorf("Lookup took %v with Timeout %v", elapsed, c.Timeout)
			}
			var re *ReplyError
			switch {
			case tc.wantCode != "":
				if !errors.As(err, &re) || re.Code != tc.wantCode {
					t.Errorf("Lookup error = %v, want *ReplyError %s", err, tc.wantCode)
				}
			case tc.wantErr != nil:
				if !errors.Is(err, tc.wantErr) {
					t.Errorf("Lookup error = %v, want %v", err, tc.wantErr)
				}
			case tc.anyErr:
				if err == nil {
					t.Errorf("Lookup = %+v, want an error", r)
				}
			default:
				if err != nil || r != tc.want {
					t.Errorf("Lookup = %+v, %v; want %+v", r, err, tc.want)
				}
			}
			if err != nil && !strings.HasPrefix(err.Error(), "ident 127.0.0.1:") {
				t.Errorf("error %q does not name the identd", err)
			}
			if rg == nil {
				return
			}
			select {
			case s := <-rg.got:
				if want := fmt.Sprintf("%d, %d\r\n", remote.Port(), local.Port()); s.query != want {
					t.Errorf("identd got query %q, want %q", s.query, want)
				}
				if s.from.Addr().Unmap() != local.Addr().Unmap() {
					t.Errorf("query came from %s, want from %s", s.from.Addr(), local.Addr())
				}
			default:
				t.Error("identd got no connection")
			}
		})
	}
}

// endless sends 1 MiB of a line that never ends and then holds the
// connection open: a client that reads until end of line or EOF would wait for
// its timeout instead of reporting ErrMalformed.
func endless(c net.Conn, _ string) {
	chunk := []byte(strings.Repeat("A", 4096))
	for range 1 << 20 / len(chunk) {
		if _, err := c.Write(chunk); err != nil {
			return
		}
	}
	io.Copy(io.Discard, c)
}

// silent accepts the query and never answers, until the client closes.
func silent(c net.Conn, _ string) { io.Copy(io.Discard, c) }

func TestMaxConcurrent(t *testing.T) {
	checkLeaks(t)
	release := make(chan struct{})
	var n atomic.Int32
	rg := startRogue(t, "127.0.0.1", func(c net.Conn, q string) {
		if n.Add(1) == 1 { // hold the first query until released
			select {
			case <-release:
			case <-time.After(10 * time.Second):
			}
		}
		reply("USERID : UNIX : bob")(c, q)
	})
	c := &Client{Port: rg.port, Timeout: 5 * time.Second, MaxConcurrent: 1}
	local, remote := netip.MustParseAddrPort("127.0.0.1:1080"), netip.MustParseAddrPort("127.0.0.1:40000")

	first := make(chan error, 1)
	go func() {
		_, err := c.Lookup(context.Background(), local, remote)
		first <- err
	}()
	select {
	case <-rg.got: // the first lookup holds the only slot now
	case <-time.After(5 * time.Second):
		t.Fatal("first lookup never reached the identd")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := c.Lookup(ctx, local, remote); !errors.Is(err, ErrBusy) {
		t.Errorf("second Lookup with the cap reached: error %v, want ErrBusy", err)
	}
	close(release)
	if err := <-first; err != nil {
		t.Errorf("first Lookup: %v", err)
	}
	if r, err := c.Lookup(context.Background(), local, remote); err != nil || r.User != "bob" {
		t.Errorf("third Lookup after the first finished = %+v, %v; want bob", r, err)
	}
}

func TestLookupContextCancel(t *testing.T) {
	checkLeaks(t)
	rg := startRogue(t, "127.0.0.1", silent)
	c := &Client{Port: rg.port} // no Timeout: only ctx bounds the lookup
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-rg.got
		cancel()
	}()
	done := make(chan error, 1)
	go func() {
		_, err := c.Lookup(ctx, netip.MustParseAddrPort("127.0.0.1:1080"), netip.MustParseAddrPort("127.0.0.1:40000"))
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Error("Lookup with a cancelled context succeeded")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Lookup did not return after its context was cancelled")
	}
}

func TestParseReply(t *testing.T) {
	tests := []struct {
		name     string
		line     string
		want     Reply
		wantCode string
		wantErr  bool // an ErrMalformed
	}{
		{name: "RFC example", line: "6193, 23 : USERID : UNIX : stjohns\r\n", want: Reply{OS: "UNIX", User: "stjohns"}},
		{name: "no line end", line: "6193, 23 : USERID : UNIX : stjohns", want: Reply{OS: "UNIX", User: "stjohns"}},
		{name: "tabs and blanks", line: "\t6193 ,23\t:\tUSERID :  UNIX , US-ASCII  :   joe  \r\n", want: Reply{OS: "UNIX", Charset: "US-ASCII", User: "joe"}},
		{name: "user id with colons and blanks inside", line: "6193, 23 : USERID : OTHER : a b:c\r\n", want: Reply{OS: "OTHER", User: "a b:c"}},
		{name: "ERROR INVALID-PORT", line: "6193, 23 : ERROR : INVALID-PORT\r\n", wantCode: "INVALID-PORT"},
		{name: "ERROR UNKNOWN-ERROR", line: "6193, 23 : ERROR : UNKNOWN-ERROR", wantCode: "UNKNOWN-ERROR"},
		{name: "empty", line: "", wantErr: true},
		{name: "only CRLF", line: "\r\n", wantErr: true},
		{name: "empty user", line: "6193, 23 : USERID : UNIX :  \r\n", wantErr: true},
		{name: "empty OS", line: "6193, 23 : USERID : ,UTF-8 : joe\r\n", wantErr: true},
		{name: "USERID without user field", line: "6193, 23 : USERID : UNIX\r\n", wantErr: true},
		{name: "ERROR without code", line: "6193, 23 : ERROR : \r\n", wantErr: true},
		{name: "ERROR with extra field", line: "6193, 23 : ERROR : X : Y\r\n", wantErr: true},
		{name: "unknown type", line: "6193, 23 : USER : UNIX : joe\r\n", wantErr: true},
		{name: "one port", line: "6193 : USERID : UNIX : joe\r\n", wantErr: true},
		{name: "port out of range", line: "71729, 23 : USERID : UNIX : joe\r\n", wantErr: true},
		{name: "signed port", line: "+6193, 23 : USERID : UNIX : joe\r\n", wantErr: true},
		{name: "CR inside", line: "6193, 23 : USERID : UNIX : jo\re\r\n", wantErr: true},
		{name: "NUL inside", line: "6193, 23 : USERID : UNIX : jo\x00e\r\n", wantErr: true},
		{name: "two lines", line: "6193, 23 : USERID : UNIX : joe\r\nmore\r\n", wantErr: true},
		{name: "user id over 512 octets", line: "6193, 23 : USERID : UNIX : " + strings.Repeat("u", 513), wantErr: true},
		{name: "over 1000 bytes", line: "6193, 23 : USERID : UNIX : joe" + strings.Repeat(" ", 1000), wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := ParseReply([]byte(tc.line), 6193, 23)
			var re *ReplyError
			switch {
			case tc.wantCode != "":
				if !errors.As(err, &re) || re.Code != tc.wantCode {
					t.Errorf("ParseReply(%q) error = %v, want ERROR %s", tc.line, err, tc.wantCode)
				}
			case tc.wantErr:
				if !errors.Is(err, ErrMalformed) {
					t.Errorf("ParseReply(%q) = %+v, %v; want ErrMalformed", tc.line, r, err)
				}
			default:
				if err != nil || r != tc.want {
					t.Errorf("ParseReply(%q) = %+v, %v; want %+v", tc.line, r, err, tc.want)
				}
			}
		})
	}
}

func TestReplyErrorString(t *testing.T) {
	if got, want := (&ReplyError{Code: "NO-USER"}).Error(), "identd: ERROR NO-USER"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}

func TestLookupInvalidAddress(t *testing.T) {
	var c Client
	if _, err := c.Lookup(context.Background(), netip.AddrPort{}, netip.MustParseAddrPort("127.0.0.1:40000")); err == nil {
		t.Error("Lookup with an invalid local address succeeded")
	}
}

func listen(t *testing.T, ip string) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// freePort returns a loopback port that nothing listens on (right now).
func freePort(t *testing.T) uint16 {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

func addrPort(t *testing.T, s, def string) netip.AddrPort {
	t.Helper()
	if s == "" {
		s = def
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		t.Fatal(err)
	}
	return ap
}

// checkLeaks fails the test if, once it and its cleanups are done, any
// goroutine with a frame of this package is still running, after waiting a
// little for goroutines that are on their way out.
func checkLeaks(t *testing.T) {
	t.Helper()
	t.Cleanup(func() {
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		deadline := time.Now().Add(5 * time.Second)
		for {
			left := identGoroutines()
			if len(left) == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("%d goroutines of package ident left:\n\n%s", len(left), strings.Join(left, "\n\n"))
				return
			}
			<-tick.C
		}
	})
}

// identGoroutines returns the stacks of goroutines, other than the caller's,
// that run code of this package.
func identGoroutines() []string {
	buf := make([]byte, 1<<16)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var left []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "sockd/ident.") && !strings.Contains(g, "ident.identGoroutines") {
			left = append(left, g)
		}
	}
	return left
}
