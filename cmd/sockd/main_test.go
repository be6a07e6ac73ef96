package main

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sockd-ng/sockd/relay/relaytest"
)

// The test binary is also the server: with SOCKD_TEST_MAIN=1 it runs main's
// logic on its arguments, so tests drive a real process with real flags.
func TestMain(m *testing.M) {
	if os.Getenv("SOCKD_TEST_MAIN") == "1" {
		os.Exit(run(filepath.Base(os.Args[0]), os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// sockdProc is a server process started by a test.
type sockdProc struct {
	cmd   *exec.Cmd
	addrs []string
	log   *relaytest.LogBuffer
	done  chan struct{}
}

// command returns an exec.Cmd running this binary as sockd.
func command(args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "SOCKD_TEST_MAIN=1")
	return cmd
}

// sockd runs "sockd check|explain ..." and returns stdout, stderr and the
// exit status.
func sockd(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	cmd := command(args...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return stdout.String(), stderr.String(), code
}

var listeningRE = regexp.MustCompile(`msg=listening addr=(\S+)`)

// startSockd starts a server listening on 127.0.0.1:0 (unless args hold
// -listen) and waits until every listener is up. It is stopped with
// SIGTERM when the test ends.
func startSockd(t *testing.T, args ...string) *sockdProc {
	t.Helper()
	return startBinary(t, "", args...)
}

// startBinary is startSockd running the sockd binary at bin instead of
// this test binary (which may be built with the race detector); "" means
// this test binary.
func startBinary(t *testing.T, bin string, args ...string) *sockdProc {
	t.Helper()
	want := 0
	for _, a := range args {
		if a == "-listen" || a == "--listen" || strings.HasPrefix(a, "-listen=") || strings.HasPrefix(a, "--listen=") {
			want++
		}
	}
	if want == 0 {
		args = append(args, "-listen", "127.0.0.1:0")
		want = 1
	}
	cmd := command(args...)
	if bin != "" {
		cmd = exec.Command(bin, args...)
	}
	p := &sockdProc{cmd: cmd, log: &relaytest.LogBuffer{}, done: make(chan struct{})}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	up := make(chan string, want)
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(p.log, line)
			if m := listeningRE.FindStringSubmatch(line); m != nil {
				up <- m[1]
			}
		}
	}()
	t.Cleanup(func() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			p.cmd.Process.Kill()
			t.Errorf("sockd did not stop on SIGTERM")
		}
		p.cmd.Wait()
		if t.Failed() {
			t.Logf("sockd log:\n%s", p.log)
		}
	})
	for len(p.addrs) < want {
		select {
		case a := <-up:
			p.addrs = append(p.addrs, a)
		case <-p.done:
			t.Fatalf("sockd exited:\n%s", p.log)
		case <-time.After(10 * time.Second):
			t.Fatalf("sockd not listening after 10s:\n%s", p.log)
		}
	}
	return p
}

func (p *sockdProc) addr() string { return p.addrs[0] }

// writeFile writes a file in a test directory and returns its path.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// backend is an HTTP server on 127.0.0.1 that says who it is.
func backend(t *testing.T) (url, hostport string) {
	return backendOn(t, "127.0.0.1")
}

// backendOn is backend on another loopback address. Routing tests use
// 127.0.0.5: a destination of exactly 127.0.0.1 always goes direct
// (socks.conf(5), legacy rule).
func backendOn(t *testing.T, ip string) (url, hostport string) {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "hello from backend")
	}))
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.URL, strings.TrimPrefix(srv.URL, "http://")
}

// portOf returns the port of host:port.
func portOf(hostport string) string { return hostport[strings.LastIndex(hostport, ":")+1:] }
