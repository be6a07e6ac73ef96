package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/proxy"

	"github.com/sockd-ng/sockd/relay/relaytest"
)

// Reload tests that are not about settling run with a short settle time;
// a change is then in force within it and half a second (sockd(8)), and
// half a second more on a loaded machine.
const (
	testSettle  = 200 * time.Millisecond
	reloadBound = testSettle + time.Second
)

// prober runs sessions through a server until stopped, to a port the
// rules always permit and to one they always deny, and counts what must
// never happen: a permitted session refused, a denied one let through.
type prober struct {
	stop            chan struct{}
	wg              sync.WaitGroup
	ok, refused, in atomic.Int64
	mu              sync.Mutex
	firstRefusal    string
}

func startProber(t *testing.T, srv, allowed, denied string) *prober {
	t.Helper()
	d, _ := proxy.SOCKS5("tcp", srv, nil, &net.Dialer{Timeout: 5 * time.Second})
	cd := d.(proxy.ContextDialer)
	session := func(target string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := cd.DialContext(ctx, "tcp", target)
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
	p := &prober{stop: make(chan struct{})}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for n := 0; n < 100000; n++ { // bounded
			select {
			case <-p.stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			if err := session(allowed); err != nil {
				p.refused.Add(1)
				p.mu.Lock()
				if p.firstRefusal == "" {
					p.firstRefusal = err.Error()
				}
				p.mu.Unlock()
			} else {
				p.ok.Add(1)
			}
			if session(denied) == nil {
				p.in.Add(1)
			}
		}
	}()
	return p
}

// check stops the prober and fails the test if anything it must never see
// happened.
func (p *prober) check(t *testing.T) {
	t.Helper()
	close(p.stop)
	p.wg.Wait()
	if n := p.in.Load(); n > 0 {
		t.Errorf("the denied port was reached %d times", n)
	}
	if n := p.refused.Load(); n > 0 {
		t.Errorf("%d of %d permitted sessions refused, e.g. %s", n, n+p.ok.Load(), p.firstRefusal)
	}
	if p.ok.Load() < 20 {
		t.Errorf("only %d sessions ran", p.ok.Load())
	}
	if t.Failed() {
		return
	}
	t.Logf("%d permitted sessions, none refused; the denied port never reached", p.ok.Load())
}

// Half-written files are never applied. Writers that pause mid-file, as
// slow editors, config-management tools and network file systems do —
// in place in two parts with a pause of up to a second, a truncate and
// the write 300 ms later, a truncate, a SIGHUP and the write — while a
// prober checks, all along, that the denied port is never reached (a
// torn "permit 127.0.0.0 255.0.0.0" without its destination would permit
// it) and that the permitted one is never refused (an empty rule set
// refuses everything). Every complete version is in force within the
// settle time (the default, 1.5 s) and half a second, with a second's
// slack.
func TestTornWritesNeverApplied(t *testing.T) {
	echo := relaytest.Echo(t)
	probe := relaytest.Echo(t)
	version := func(n int) string {
		return fmt.Sprintf("# version %d\npermit 127.0.0.0 255.0.0.0 127.0.0.1 255.255.255.255 eq %s\ndeny ALL 0.0.0.0\n", n, portOf(echo))
	}
	cut := func(s, at string) (string, string) {
		i := strings.Index(s, at) + len(at)
		return s[:i], s[i:]
	}
	for _, tc := range []struct {
		name  string
		write func(t *testing.T, p *sockdProc, conf, text string)
	}{
		{"two parts, 300ms apart", func(t *testing.T, p *sockdProc, conf, text string) {
			a, b := cut(text, "permit 127.0.0.0 255.0.0.0")
			writeInTwo(t, conf, a, b, 300*time.Millisecond)
		}},
		{"two parts, 1s apart", func(t *testing.T, p *sockdProc, conf, text string) {
			a, b := cut(text, "permit 127.0.0.0 255.0.0.0")
			writeInTwo(t, conf, a, b, time.Second)
		}},
		{"two parts at a line end, 1s apart", func(t *testing.T, p *sockdProc, conf, text string) {
			a, b := cut(text, "\n") // the comment alone: no rules
			writeInTwo(t, conf, a, b, time.Second)
		}},
		{"truncate, then write 300ms later", func(t *testing.T, p *sockdProc, conf, text string) {
			writeInTwo(t, conf, "", text, 300*time.Millisecond)
		}},
		{"truncate, SIGHUP, then write", func(t *testing.T, p *sockdProc, conf, text string) {
			if err := os.Truncate(conf, 0); err != nil {
				t.Fatal(err)
			}
			p.cmd.Process.Signal(syscall.SIGHUP)
			time.Sleep(300 * time.Millisecond)
			if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			conf := writeFile(t, "sockd.conf", version(0))
			p := startSockd(t, "-config", conf)
			pr := startProber(t, p.addr(), echo, probe)
			for i := 1; i <= 3; i++ {
				tc.write(t, p, conf, version(i))
				deadline := time.Now().Add(time.Second + 500*time.Millisecond + time.Second)
				for strings.Count(p.log.String(), `msg="config reloaded"`) < i {
					if time.Now().After(deadline) {
						t.Fatalf("version %d not in force 3s after its write:\n%s", i, p.log)
					}
					time.Sleep(20 * time.Millisecond)
				}
			}
			pr.check(t)
			if strings.Contains(tc.name, "SIGHUP") {
				p.log.WaitFor(t, "config reload rejected", "why=SIGHUP", "the file is empty", `write \"deny ALL 0.0.0.0\"`)
			}
		})
	}
}

// writeInTwo rewrites path in place: truncates it, writes a, waits pause,
// writes b.
func writeInTwo(t *testing.T, path, a, b string, pause time.Duration) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(a); err != nil {
		t.Fatal(err)
	}
	time.Sleep(pause)
	if _, err := f.WriteString(b); err != nil {
		t.Fatal(err)
	}
}

// SIGHUP applies a complete file at once, but neither a file that became
// empty nor one whose last line has no newline (a write in progress, left
// to settle: here the settle time is an hour). A file event alone waits
// for the settle time.
func TestSIGHUPSettles(t *testing.T) {
	url, _ := backend(t)
	conf := writeFile(t, "sockd.conf", "deny ALL 0.0.0.0\n")
	p := startSockd(t, "-config", conf, "-reload-settle", "1h", "-log-level", "debug")
	admitted := func() bool {
		_, code := relaytest.Curl(t, "--socks5", p.addr(), url)
		return code == 0
	}
	reloaded := func() int { return strings.Count(p.log.String(), `msg="config reloaded"`) }

	os.WriteFile(conf, []byte("permit 127.0.0.0/8\n"), 0o644)
	p.log.WaitFor(t, "config changed; applying it once it has settled", "why=\"file changed\"")
	if admitted() || reloaded() != 0 {
		t.Fatal("a file event applied a change before it settled")
	}
	p.cmd.Process.Signal(syscall.SIGHUP)
	p.log.WaitFor(t, `msg="config reloaded"`, "why=SIGHUP", "rules=1")
	if !admitted() {
		t.Fatal("SIGHUP did not apply a complete file")
	}

	os.WriteFile(conf, []byte("deny ALL 0.0.0.0"), 0o644) // no newline: in progress
	p.cmd.Process.Signal(syscall.SIGHUP)
	p.log.WaitFor(t, "config changed; applying it once it has settled", "why=SIGHUP", "unterminated=["+conf+"]")
	if !admitted() || reloaded() != 1 {
		t.Fatal("SIGHUP applied a file whose last line has no newline")
	}

	os.WriteFile(conf, nil, 0o644)
	p.cmd.Process.Signal(syscall.SIGHUP)
	p.log.WaitFor(t, "level=ERROR", "config reload rejected; keeping the rules in force", "why=SIGHUP",
		conf+": the file is empty", `to empty it on purpose, write \"deny ALL 0.0.0.0\"`)
	if !admitted() || reloaded() != 1 {
		t.Fatal("an empty file was applied")
	}

	// Refusing everything on purpose works as the log says.
	os.WriteFile(conf, []byte("deny ALL 0.0.0.0\n"), 0o644)
	p.cmd.Process.Signal(syscall.SIGHUP)
	p.log.WaitFor(t, `msg="config reloaded"`, "why=SIGHUP", "rules=1")
	if admitted() {
		t.Fatal("deny ALL 0.0.0.0 not in force")
	}
}
