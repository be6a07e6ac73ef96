package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// env is the harness's workspace: a temp dir for configs and logs, and the
// processes it started, which it alone stops.
type env struct {
	dir  string
	self string // this binary, re-executed for backend and client
	keep bool   // leave dir (configs and logs) in place

	mu       sync.Mutex
	children []*child
	closed   bool // cleanup has begun: start no more
	once     sync.Once
}

func newEnv() (*env, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "sockd-bench-")
	if err != nil {
		return nil, err
	}
	return &env{dir: dir, self: self}, nil
}

// cleanup stops every process still running and removes the temp dir.
// A second call (the deferred one, while the signal handler cleans up)
// waits for the first to finish.
func (e *env) cleanup() { e.once.Do(e.doCleanup) }

// stopping reports whether cleanup has begun.
func (e *env) stopping() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.closed
}

func (e *env) doCleanup() {
	e.mu.Lock()
	cs := e.children
	e.children = nil
	e.closed = true
	e.mu.Unlock()
	for _, c := range cs {
		c.stop()
	}
	if e.keep {
		fmt.Fprintf(os.Stderr, "bench: configs and logs kept in %s\n", e.dir)
		return
	}
	os.RemoveAll(e.dir)
}

// child is a process the harness started, in a process group of its own
// (so that Dante's children go with it) with stderr to a log file.
type child struct {
	name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string // stdout, line by line
	log   string      // stderr file
	done  chan struct{}
	err   error // exit status, once done is closed
}

// start runs argv. With pipes, its stdin and stdout are pipes to the
// harness; without, stdin is /dev/null and stdout goes to the log too, so
// that children a server forks hold nothing the harness waits on.
func (e *env) start(name string, pipes bool, argv ...string) (*child, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil, errors.New("stopping")
	}
	c := &child{
		name: name,
		cmd:  exec.Command(argv[0], argv[1:]...),
		log:  filepath.Join(e.dir, fmt.Sprintf("%s-%d.log", name, time.Now().UnixNano())),
		done: make(chan struct{}),
	}
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	logf, err := os.Create(c.log)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	c.cmd.Stderr = logf
	var stdout io.Reader
	if pipes {
		if c.stdin, err = c.cmd.StdinPipe(); err != nil {
			return nil, err
		}
		if stdout, err = c.cmd.StdoutPipe(); err != nil {
			return nil, err
		}
	} else {
		c.cmd.Stdout = logf
	}
	if err := c.cmd.Start(); err != nil {
		return nil, err
	}
	e.children = append(e.children, c)
	if pipes {
		c.lines = make(chan string, 16)
		go c.readLines(stdout)
	} else {
		go c.wait()
	}
	return c, nil
}

// readLines feeds stdout into c.lines, then reaps the process.
func (c *child) readLines(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		c.lines <- sc.Text()
	}
	close(c.lines)
	c.wait()
}

func (c *child) wait() {
	c.err = c.cmd.Wait()
	close(c.done)
}

func (c *child) pid() int { return c.cmd.Process.Pid }

// next returns the next line of stdout, waiting at most d.
func (c *child) next(d time.Duration) (string, error) {
	select {
	case l, ok := <-c.lines:
		if !ok {
			return "", fmt.Errorf("%s exited: %s", c.name, c.exitDetail())
		}
		return l, nil
	case <-time.After(d):
		return "", fmt.Errorf("%s: no output within %v", c.name, d)
	}
}

// exited reports whether the process has ended.
func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// exitDetail describes how the process ended and the tail of its stderr.
func (c *child) exitDetail() string {
	select {
	case <-c.done:
	case <-time.After(2 * time.Second):
	}
	s := fmt.Sprint(c.err)
	if t := c.logTail(5); t != "" {
		s += "; stderr: " + t
	}
	return s
}

// logTail returns the last n lines of stderr, joined with " | ".
func (c *child) logTail(n int) string {
	_, tail := c.logLines(n)
	return tail
}

// logLines returns how many lines the process wrote to stderr, leaving
// out Dante's "info:" lines, and the last n of them, joined with " | ".
func (c *child) logLines(n int) (int, string) {
	b, _ := os.ReadFile(c.log)
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.Contains(l, " info: ") {
			lines = append(lines, l)
		}
	}
	total := len(lines)
	if total > n {
		lines = lines[total-n:]
	}
	return total, strings.Join(lines, " | ")
}

// stop closes stdin and sends SIGTERM to the process (Dante's mother
// process then stops its children itself); if it has not ended within
// 10 s, it sends SIGKILL to the process group the harness made for it.
// Then it waits up to 5 s for the rest of the group (Dante's children) to
// exit, and kills what is left of it. A group id is not reused while the
// group has members, so the signal reaches only processes started here.
func (c *child) stop() {
	if c.stdin != nil {
		c.stdin.Close()
	}
	pgid := c.pid()
	if !c.exited() {
		syscall.Kill(pgid, syscall.SIGTERM)
		select {
		case <-c.done:
		case <-time.After(10 * time.Second):
			syscall.Kill(-pgid, syscall.SIGKILL)
			<-c.done
		}
	}
	for end := time.Now().Add(5 * time.Second); groupMembers(pgid) > 0; {
		if time.Now().After(end) {
			syscall.Kill(-pgid, syscall.SIGKILL)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// backendHost is the loopback address the backend listens on, for every
// path. It is not 127.0.0.1 because sockd sends a destination of exactly
// 127.0.0.1 (or 0.0.0.0) direct whatever its routing file says (a legacy
// rule), and the chain paths need the backend reached through the hops.
// The load client, the proxies and their outbound sockets stay on
// 127.0.0.1: to the kernel, both are the same loopback device.
const backendHost = "127.0.0.5"

// backend is a running "bench backend" process: the addresses of its
// sink, its echo server, its echo-once server, its UDP echo server and
// its UDP sink.
type backend struct {
	*child
	sink, echo, once, udpEcho, udpSink string
}

func (e *env) startBackend(bufSize, onceSize int) (*backend, error) {
	c, err := e.start("backend", true, e.self, "backend", "-host", backendHost,
		"-buf", fmt.Sprint(bufSize), "-once", fmt.Sprint(onceSize))
	if err != nil {
		return nil, err
	}
	line, err := c.next(10 * time.Second)
	if err != nil {
		c.stop()
		return nil, err
	}
	f := strings.Fields(line)
	if len(f) != 5 {
		c.stop()
		return nil, fmt.Errorf("backend said %q", line)
	}
	return &backend{child: c, sink: f[0], echo: f[1], once: f[2], udpEcho: f[3], udpSink: f[4]}, nil
}

// proxy is a running server under test: a SOCKS server listening on
// addr, or (HAProxy) a TCP forwarder with one frontend per backend
// service, fwd mapping each backend address to the frontend that forwards
// to it (addr is then empty).
type proxy struct {
	*child
	addr string
	fwd  map[string]string
}

// freePort returns a loopback address whose port was free a moment ago.
func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// startProxy writes conf, picks a port and starts the server with argv
// (the address substituted for "{addr}", the config path for "{conf}"),
// then waits until the port accepts connections.
func (e *env) startProxy(name, confText string, argv ...string) (*proxy, error) {
	conf := filepath.Join(e.dir, name+".conf")
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	_, port, _ := net.SplitHostPort(addr)
	confText = strings.ReplaceAll(confText, "{port}", port)
	if err := os.WriteFile(conf, []byte(confText), 0o644); err != nil {
		return nil, err
	}
	for i, a := range argv {
		a = strings.ReplaceAll(a, "{addr}", addr)
		a = strings.ReplaceAll(a, "{conf}", conf)
		a = strings.ReplaceAll(a, "{dir}", e.dir)
		argv[i] = a
	}
	c, err := e.start(name, false, argv...)
	if err != nil {
		return nil, err
	}
	if err := waitListening(c, addr, 15*time.Second); err != nil {
		c.stop()
		return nil, err
	}
	return &proxy{child: c, addr: addr}, nil
}

// waitListening polls addr until it accepts a connection, the process
// exits, or d passes.
func waitListening(c *child, addr string, d time.Duration) error {
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		if c.exited() {
			return fmt.Errorf("%s exited at start: %s", c.name, c.exitDetail())
		}
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			conn.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s: %s not accepting after %v", c.name, addr, d)
}

const sockdConf = "permit 127.0.0.0 255.0.0.0\n"

// sockdArgs are sockd's flags besides -config and -listen (and a chain's
// -routes). -max-client-sessions 0 lifts the per-client cap, which by
// default is a tenth of what the fd limit allows (996 here): all the load
// comes from 127.0.0.1, and the idle runs hold up to 9,900 sessions.
var sockdArgs = []string{"-log-level", "warn", "-max-client-sessions", "0"}

func (e *env) startSockd(bin string) (*proxy, error) {
	return e.startProxy("sockd", sockdConf,
		append([]string{bin, "-config", "{conf}", "-listen", "{addr}"}, sockdArgs...)...)
}

// startChain starts the n sockd processes of a chain path, all with the
// same sockd.conf: the last goes direct, each other one routes every
// destination through the next with a routing file (socks.conf) of one
// line, "sockd @=socks5://NEXT ALL 0.0.0.0". They are started from the
// last, whose address the one before needs, and returned front first,
// named name-a, name-b, ...
func (e *env) startChain(bin, name string, n int) ([]*proxy, error) {
	procs := make([]*proxy, n)
	stopAll := func() {
		for _, px := range procs {
			if px != nil {
				px.stop()
			}
		}
	}
	for i := n - 1; i >= 0; i-- {
		pname := fmt.Sprintf("%s-%c", name, 'a'+i)
		argv := append([]string{bin, "-config", "{conf}", "-listen", "{addr}"}, sockdArgs...)
		if i < n-1 {
			routes := filepath.Join(e.dir, pname+".routes")
			line := fmt.Sprintf("sockd @=socks5://%s ALL 0.0.0.0\n", procs[i+1].addr)
			if err := os.WriteFile(routes, []byte(line), 0o644); err != nil {
				stopAll()
				return nil, err
			}
			argv = append(argv, "-routes", routes)
		}
		px, err := e.startProxy(pname, sockdConf, argv...)
		if err != nil {
			stopAll()
			return nil, err
		}
		procs[i] = px
	}
	return procs, nil
}

// danteConf is Dante's configuration: no authentication, loopback only,
// no logging of sessions. Everything else is Dante's default. CONNECT
// matches the first socks rule, as before the UDP and BIND measurements
// were added; the second admits BIND and UDP ASSOCIATE from loopback
// clients, the third the inbound BIND connection and the UDP replies,
// from loopback only, to loopback clients (for these two commands "from"
// is the remote side and "to" the client).
const danteConf = `logoutput: stderr
internal: 127.0.0.1 port = {port}
external: 127.0.0.1
clientmethod: none
socksmethod: none
user.privileged: root
user.unprivileged: nobody
client pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }
socks pass { from: 127.0.0.0/8 to: 0.0.0.0/0 command: connect }
socks pass { from: 127.0.0.0/8 to: 0.0.0.0/0 command: bind udpassociate }
socks pass { from: 127.0.0.0/8 to: 127.0.0.0/8 command: bindreply udpreply }
`

// startDante runs danted in the foreground (no -D), one mother process
// (-N 1), with its pid file in the temp dir.
func (e *env) startDante(bin string) (*proxy, error) {
	return e.startProxy("dante", danteConf,
		bin, "-f", "{conf}", "-N", "1", "-p", "{dir}/danted.pid")
}

// startGlider runs glider as a SOCKS5 server on a loopback port, without
// forwarders (it connects direct) and so without health checks, which
// "-check disable" makes sure of; -verbose is off by default, so it logs
// nothing per connection. It also serves SOCKS5 UDP on the same port. It
// takes no config file (the empty one startProxy writes goes unused).
func (e *env) startGlider(bin string) (*proxy, error) {
	return e.startProxy("glider", "",
		bin, "-listen", "socks5://{addr}", "-check", "disable")
}

// haproxyConf is HAProxy's configuration, TCP mode, one frontend per
// backend service, "{frontends}" standing for them. No logging (no "log"
// line at all), no health checks (no "check" on the server), balance
// first with a single server, two threads (one per core here), timeouts
// long enough that nothing is cut. maxconn is as high as the 20,000-fd
// limit allows (HAProxy cannot raise it here, and refuses to start if
// maxconn does not fit): two fds per connection, plus 16 splice pipes
// (maxpipes; by default it would reserve maxconn/4 of them). It splices
// both ways (splice-request, splice-response), as sockd and glider do:
// that cost it about 0.55 s of CPU per GiB on one stream here, against
// about 1 s with splice-auto or no splicing at all. With its pipes all in
// use it falls back to recv and send.
const haproxyConf = `global
    nbthread 2
    maxconn 9950
    maxpipes 16

defaults
    mode tcp
    maxconn 9950
    timeout connect 10s
    timeout client 1h
    timeout server 1h
    option splice-request
    option splice-response
{frontends}`

// haproxyFrontend is one frontend and its backend of haproxyConf.
const haproxyFrontend = `
frontend %[1]s
    bind %[2]s
    default_backend %[1]s

backend %[1]s
    balance first
    server %[1]s %[3]s
`

// startHAProxy runs HAProxy in the foreground (-db) with haproxyConf, a
// frontend on a free loopback port for each of targets (name → backend
// address), and waits until all of them accept connections.
func (e *env) startHAProxy(bin string, targets map[string]string) (*proxy, error) {
	names := slices.Sorted(maps.Keys(targets))
	fwd := map[string]string{}
	var fronts strings.Builder
	for _, name := range names {
		addr, err := freePort()
		if err != nil {
			return nil, err
		}
		fwd[targets[name]] = addr
		fmt.Fprintf(&fronts, haproxyFrontend, name, addr, targets[name])
	}
	conf := filepath.Join(e.dir, "haproxy.conf")
	text := strings.ReplaceAll(haproxyConf, "{frontends}", fronts.String())
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		return nil, err
	}
	c, err := e.start("haproxy", false, bin, "-f", conf, "-db")
	if err != nil {
		return nil, err
	}
	for _, name := range names {
		if err := waitListening(c, fwd[targets[name]], 15*time.Second); err != nil {
			c.stop()
			return nil, err
		}
	}
	return &proxy{child: c, fwd: fwd}, nil
}

// checkSockdConfig runs "sockd check" on the harness's config.
func (e *env) checkSockdConfig(bin string) error {
	conf := filepath.Join(e.dir, "sockd-check.conf")
	if err := os.WriteFile(conf, []byte(sockdConf), 0o644); err != nil {
		return err
	}
	out, err := exec.Command(bin, "check", "-config", conf).CombinedOutput()
	if err != nil {
		return fmt.Errorf("sockd check: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// buildSockd builds ./cmd/sockd of the module the harness runs in.
func (e *env) buildSockd() (string, error) {
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %v", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(gomod)))
	if root == "." || root == "" {
		return "", errors.New("not inside a Go module; pass -sockd")
	}
	out := filepath.Join(e.dir, "sockd")
	cmd := exec.Command("go", "build", "-o", out, "./cmd/sockd")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/sockd: %v: %s", err, strings.TrimSpace(string(b)))
	}
	return out, nil
}
