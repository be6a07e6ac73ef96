package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
	"golang.org/x/net/proxy"

	"github.com/sockd-ng/sockd/relay/client"
	"github.com/sockd-ng/sockd/relay/relaytest"
)

// Running as a fleet (issue 12): Debian's HAProxy in front of two sockd
// instances sharing one configuration, with PROXY protocol v2 and a health
// check of /healthz; Debian's oidentd behind the balancer; Debian's
// Prometheus scraping both instances with the packaged alerting rules;
// promtool linting the metrics. Everything runs on loopback: clients dial
// the balancer's frontend, 127.0.0.4, from 127.0.0.2 (permitted) and
// 127.0.0.3 (denied); the instances listen on 127.0.0.1.

// patience bounds the waits of these tests: for processes to start, and
// for what they do to show. Generous, for a loaded machine: a passing test
// never waits for it.
const patience = 30 * time.Second

var metricsRE = regexp.MustCompile(`msg="metrics listening" addr=(\S+)`)

// launchSockd is startSockd for these tests: it adds -metrics-listen
// metrics to args unless metrics is "" (startSockd would count that flag as
// one more -listen, and wait for a listener that never comes), and waits
// for the server with more patience. args must not hold -listen; the
// server listens on 127.0.0.1:0.
func launchSockd(t *testing.T, metrics string, args ...string) *sockdProc {
	t.Helper()
	p, wait := spawnSockd(t, metrics, args...)
	wait()
	return p
}

// spawnSockd is launchSockd in two steps, so that servers start side by
// side: it starts the server, and wait waits until it listens.
func spawnSockd(t *testing.T, metrics string, args ...string) (p *sockdProc, wait func()) {
	t.Helper()
	args = append(args, "-listen", "127.0.0.1:0")
	if metrics != "" {
		args = append(args, "-metrics-listen", metrics)
	}
	p = &sockdProc{cmd: command(args...), log: &relaytest.LogBuffer{}, done: make(chan struct{})}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	up := make(chan string, 1)
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			fmt.Fprintln(p.log, sc.Text())
			if m := listeningRE.FindStringSubmatch(sc.Text()); m != nil {
				up <- m[1]
			}
		}
	}()
	t.Cleanup(func() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(15 * time.Second):
			p.cmd.Process.Kill()
			t.Errorf("sockd did not stop on SIGTERM")
		}
		p.cmd.Wait()
		if t.Failed() {
			t.Logf("sockd log:\n%s", p.log)
		}
	})
	return p, func() {
		t.Helper()
		select {
		case a := <-up:
			p.addrs = append(p.addrs, a)
		case <-p.done:
			t.Fatalf("sockd exited:\n%s", p.log)
		case <-time.After(patience):
			t.Fatalf("sockd not listening after %v:\n%s", patience, p.log)
		}
	}
}

// metricsAddr returns the address a server started with -metrics-listen
// serves /metrics and /healthz on.
func metricsAddr(t *testing.T, p *sockdProc) string {
	t.Helper()
	return metricsRE.FindStringSubmatch(p.log.WaitFor(t, `msg="metrics listening"`))[1]
}

// get fetches u and returns the status code and body.
func get(t *testing.T, u string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 15 * time.Second}
	resp, err := c.Get(u)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	return resp.StatusCode, string(b)
}

// statusOf is the status code of a GET of u, 0 when there is no answer.
func statusOf(u string) int {
	c := &http.Client{Timeout: 15 * time.Second}
	resp, err := c.Get(u)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// sessionsTotal sums the samples of sockd_sessions_total in a /metrics
// body.
func sessionsTotal(t *testing.T, body string) int {
	t.Helper()
	n := 0
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, "sockd_sessions_total{") {
			f := strings.Fields(line)
			v, err := strconv.ParseFloat(f[len(f)-1], 64)
			if err != nil {
				t.Fatalf("bad sample %q", line)
			}
			n += int(v)
		}
	}
	return n
}

// curlAs is relaytest.Curl, run as nobody when asNobody.
func curlAs(t *testing.T, asNobody bool, args ...string) (string, int) {
	t.Helper()
	if !asNobody {
		return relaytest.Curl(t, args...)
	}
	cmd := relaytest.AsNobody(append([]string{"curl", "-sS", "--max-time", "20"}, args...)...)
	out, err := exec.Command(cmd[0], cmd[1:]...).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		t.Fatalf("curl: %v", err)
	}
	return string(out), 0
}

// dialFrom dials addr from the loopback address src.
func dialFrom(t *testing.T, src, addr string) *net.TCPConn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(patience))
	return c.(*net.TCPConn)
}

// socks5Over makes a SOCKS5 CONNECT to target over c (x/net/proxy's
// client) and checks that the session echoes.
func socks5Over(t *testing.T, c net.Conn, target string) {
	t.Helper()
	d, _ := proxy.SOCKS5("tcp", "unused", nil, nil)
	_, err := d.(interface {
		DialWithConn(context.Context, net.Conn, string, string) (net.Addr, error)
	}).DialWithConn(context.Background(), c, "tcp", target)
	if err != nil {
		t.Fatalf("SOCKS5 handshake: %v", err)
	}
	echoes(t, c, "hello")
}

// echoes checks that what is written on c comes back.
func echoes(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(patience))
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("write: %v", err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
		t.Fatalf("echo: got %q, %v", buf, err)
	}
}

// v1Header is a PROXY protocol v1 header for a TCP4 connection.
func v1Header(src, dst string) string {
	s, _ := netip.ParseAddrPort(src)
	d, _ := netip.ParseAddrPort(dst)
	return fmt.Sprintf("PROXY TCP4 %s %s %d %d\r\n", s.Addr(), d.Addr(), s.Port(), d.Port())
}

// haproxyStats asks HAProxy's runtime API for "show stat" and returns the
// status and last check of each server of backend be.
func haproxyStats(t *testing.T, sock, be string) map[string]string {
	t.Helper()
	c, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		t.Fatalf("haproxy stats socket: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "show stat\n")
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("haproxy stats socket: %v", err)
	}
	r := csv.NewReader(strings.NewReader(strings.TrimPrefix(strings.TrimSpace(string(b)), "# ")))
	r.FieldsPerRecord = -1
	recs, err := r.ReadAll()
	if err != nil || len(recs) < 2 {
		t.Fatalf("haproxy show stat: %v\n%s", err, b)
	}
	col := map[string]int{}
	for i, name := range recs[0] {
		col[name] = i
	}
	out := map[string]string{}
	for _, rec := range recs[1:] {
		if rec[col["pxname"]] == be && rec[col["svname"]] != "BACKEND" {
			out[rec[col["svname"]]] = rec[col["status"]] + " " + rec[col["check_status"]] + " " + rec[col["check_code"]]
		}
	}
	return out
}

// within polls cond every 50ms until it holds, for at most d.
func within(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
	return true
}

// promQuery runs an instant query against Prometheus's HTTP API and
// returns the samples, as labels → value.
func promQuery(t *testing.T, prom, query string) map[string]string {
	t.Helper()
	code, body := get(t, "http://"+prom+"/api/v1/query?query="+url.QueryEscape(query))
	var r struct {
		Status string
		Data   struct {
			Result []struct {
				Metric map[string]string
				Value  [2]any
			}
		}
	}
	if err := json.Unmarshal([]byte(body), &r); err != nil || code != 200 || r.Status != "success" {
		t.Fatalf("query %q: %d %v\n%s", query, code, err, body)
	}
	out := map[string]string{}
	for _, s := range r.Data.Result {
		v, _ := s.Value[1].(string)
		out[fmt.Sprint(s.Metric)] = v
	}
	return out
}

// fleet is HAProxy in front of two sockd instances, with the programs
// around them.
type fleet struct {
	conf       string
	front      string // HAProxy's frontend, 127.0.0.4:port
	stats      string // HAProxy's runtime API socket
	sockd      [2]*sockdProc
	metrics    [2]string
	haproxy    *relaytest.Daemon
	url        string // the HTTP backend, on 127.0.0.5
	identURL   string // another, for the rules with ?=I
	byName     string // url by a name the instances resolve through -nameserver
	prom       string // Prometheus's HTTP address
	promDaemon *relaytest.Daemon
}

// waitLog waits, boundedly, until the log of either instance holds a
// line with every one of parts.
func (f *fleet) waitLog(t *testing.T, parts ...string) {
	t.Helper()
	if !within(15*time.Second, func() bool {
		for _, p := range f.sockd {
			for _, line := range strings.Split(p.log.String(), "\n") {
				all := true
				for _, part := range parts {
					all = all && strings.Contains(line, part)
				}
				if all {
					return true
				}
			}
		}
		return false
	}) {
		t.Fatalf("no log line with %q in either instance:\n--- s1\n%s--- s2\n%s", parts, f.sockd[0].log, f.sockd[1].log)
	}
}

// The fleet, end to end: the balancer spreads clients over both instances,
// whose rules see the clients' own addresses; identd answers for the real
// client behind the balancer; UDP associations work through it;
// Prometheus scrapes both instances, and the packaged alerting rules
// evaluate; promtool finds no problem in the metrics; and a draining
// instance fails its health check while its sessions go on.
func TestFleet(t *testing.T) {
	if os.Getuid() != 0 {
		t.Fatal("needs root: a client runs as nobody for a second identity (CI runs as root)")
	}
	f := &fleet{}
	// Prometheus first, as it takes the longest to start: it scrapes
	// the metrics addresses the instances will have.
	ports := map[int]bool{}
	for len(ports) < 3 {
		ports[relaytest.FreePort(t)] = true
	}
	var addrs []string
	for port := range ports {
		addrs = append(addrs, "127.0.0.1:"+strconv.Itoa(port))
	}
	f.metrics[0], f.metrics[1], f.prom = addrs[0], addrs[1], addrs[2]
	rules, err := filepath.Abs("../../packaging/fleet/sockd.rules.yml")
	if err != nil {
		t.Fatal(err)
	}
	promConf := writeFile(t, "prometheus.yml", fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - %s
scrape_configs:
  - job_name: sockd
    static_configs:
      - targets: [%q, %q]
`, rules, f.metrics[0], f.metrics[1]))
	f.promDaemon = relaytest.StartDaemon(t, "/usr/bin/prometheus", "--config.file="+promConf,
		"--storage.tsdb.path="+filepath.Join(t.TempDir(), "data"), "--web.listen-address="+f.prom, "--log.level=warn")

	var hostport, identHostport string
	f.url, hostport = backendOn(t, "127.0.0.5")
	f.identURL, identHostport = backendOn(t, "127.0.0.5")
	dns := relaytest.DNS(t, "host-record=www.fleet.test,127.0.0.5")
	f.byName = "http://www.fleet.test:" + portOf(hostport) + "/"
	identPort := relaytest.Oidentd(t)

	// One configuration for both instances, as in one directory shared
	// by the instances of a host. Line 3 is the one that permits.
	f.conf = writeFile(t, "sockd.conf", strings.Join([]string{
		"permit ?=I *=root,alice 127.0.0.2 255.255.255.255 127.0.0.5 255.255.255.255 eq " + portOf(identHostport),
		"deny 127.0.0.2 255.255.255.255 127.0.0.5 255.255.255.255 eq " + portOf(identHostport),
		"permit 127.0.0.2 255.255.255.255",
		"deny ALL 0.0.0.0",
	}, "\n")+"\n")
	var wait [2]func()
	for i := range f.sockd {
		f.sockd[i], wait[i] = spawnSockd(t, f.metrics[i], "-config", f.conf, "-proxy-protocol-from", "127.0.0.1",
			"-nameserver", dns, "-ident-port", strconv.Itoa(identPort), "-ident-timeout", "3s", "-grace", "10s")
	}
	for i := range f.sockd {
		wait[i]()
		if m := metricsAddr(t, f.sockd[i]); m != f.metrics[i] {
			t.Fatalf("instance %d serves metrics on %s, want %s", i+1, m, f.metrics[i])
		}
	}

	f.front = "127.0.0.4:" + strconv.Itoa(relaytest.FreePort(t))
	f.stats = filepath.Join(t.TempDir(), "haproxy.sock")
	hcfg := writeFile(t, "haproxy.cfg", fmt.Sprintf(`global
	stats socket %s level admin
defaults
	mode tcp
	timeout connect 5s
	timeout client 30s
	timeout server 30s
	timeout check 2s
frontend socks
	bind %s
	default_backend sockd
backend sockd
	balance roundrobin
	option httpchk GET /healthz
	http-check expect status 200
	default-server check inter 200ms fall 2 rise 1 send-proxy-v2
	server s1 %s check port %s
	server s2 %s check port %s
`, f.stats, f.front, f.sockd[0].addr(), portOf(f.metrics[0]), f.sockd[1].addr(), portOf(f.metrics[1])))
	f.haproxy = relaytest.StartDaemon(t, "/usr/sbin/haproxy", "-f", hcfg, "-db")
	// Both instances pass their health check. (No probe of the frontend:
	// it would be a session of an instance.)
	if !within(patience, func() bool {
		if _, err := os.Stat(f.stats); err != nil {
			return false
		}
		st := haproxyStats(t, f.stats, "sockd")
		return strings.HasPrefix(st["s1"], "UP L7OK 200") && strings.HasPrefix(st["s2"], "UP L7OK 200")
	}) {
		t.Fatalf("HAProxy does not see both instances healthy:\n%s", f.haproxy.Output())
	}

	t.Run("balancer", f.testBalancer)
	t.Run("ident", f.testIdent)
	t.Run("udp", f.testUDP)
	t.Run("prometheus", f.testPrometheus)
	t.Run("promtool", f.testPromtool)
	t.Run("drain", f.testDrain)
}

// Clients of every SOCKS version reach the balancer from 127.0.0.2 and
// 127.0.0.3; the rules decide by those addresses, and round robin spreads
// the sessions over both instances.
func (f *fleet) testBalancer(t *testing.T) {
	for _, args := range [][]string{
		{"--socks4", f.front, f.url},
		{"--socks4a", f.front, f.byName},
		{"--socks5", f.front, f.url},
		{"--socks5-hostname", f.front, f.byName},
	} {
		out, code := relaytest.Curl(t, append([]string{"--interface", "127.0.0.2"}, args...)...)
		if code != 0 || out != "hello from backend" {
			t.Fatalf("curl %s from 127.0.0.2: exit %d %s", args[0], code, out)
		}
	}
	for i, p := range f.sockd {
		if !within(15*time.Second, func() bool { return strings.Contains(p.log.String(), "client=127.0.0.2:") }) {
			t.Errorf("no session of 127.0.0.2 reached instance %d:\n%s", i+1, p.log)
		}
	}
	rule := "rule=" + f.conf + ":3"
	f.waitLog(t, "msg=conn", "proto=socks4 ", "client=127.0.0.2:", "dst=127.0.0.5:", rule, "action=permit", "reply=90")
	f.waitLog(t, "msg=conn", "proto=socks4a", "client=127.0.0.2:", "dst=www.fleet.test:", "connected=127.0.0.5:", rule, "reply=90")
	f.waitLog(t, "msg=conn", "proto=socks5", "client=127.0.0.2:", "dst=127.0.0.5:", rule, "reply=0")
	f.waitLog(t, "msg=conn", "proto=socks5", "client=127.0.0.2:", "dst=www.fleet.test:", rule, "reply=0")

	for _, args := range [][]string{
		{"--socks4", f.front, f.url},
		{"--socks5", f.front, f.url},
		{"--socks5-hostname", f.front, f.byName},
	} {
		if out, code := relaytest.Curl(t, append([]string{"--interface", "127.0.0.3"}, args...)...); code != 97 {
			t.Errorf("curl %s from 127.0.0.3: exit %d %s, want 97 (refused)", args[0], code, out)
		}
	}
	deny := "rule=" + f.conf + ":4"
	f.waitLog(t, "msg=conn", "proto=socks4 ", "client=127.0.0.3:", deny, "action=deny", "reply=91")
	f.waitLog(t, "msg=conn", "proto=socks5", "client=127.0.0.3:", "dst=127.0.0.5:", deny, "action=deny", "reply=2")
	f.waitLog(t, "msg=conn", "proto=socks5", "client=127.0.0.3:", "dst=www.fleet.test:", deny, "action=deny", "reply=2")
	for i, p := range f.sockd {
		if s := p.log.String(); strings.Contains(s, "client=127.0.0.1:") {
			t.Errorf("instance %d saw the balancer as a client:\n%s", i+1, s)
		}
	}
}

// identd (?=I) behind the balancer: the server asks oidentd on 127.0.0.2
// about the client's connection to the frontend, from the frontend's
// address 127.0.0.4 (the header's destination, which this host has), and
// oidentd finds the connection by that address. Only the right connection
// can name nobody for a client curl runs as nobody: HAProxy and the
// instances run as root.
func (f *fleet) testIdent(t *testing.T) {
	rule := "rule=" + f.conf + ":1"
	for _, tc := range []struct {
		name     string
		nobody   bool
		args     []string
		code     int
		logParts []string
	}{
		{name: "SOCKS4 claim agrees", args: []string{"--socks4", f.front, "--proxy-user", "root:", f.identURL},
			logParts: []string{"proto=socks4 ", "user=root", "ident=root", rule, "action=permit", "reply=90"}},
		{name: "SOCKS5 no auth: identd answer is the user", args: []string{"--socks5", f.front, f.identURL},
			logParts: []string{"proto=socks5", "user=root", "ident=root", rule, "action=permit", "reply=0"}},
		{name: "SOCKS4 claim of another listed user", args: []string{"--socks4", f.front, "--proxy-user", "alice:", f.identURL},
			code: 97, logParts: []string{"proto=socks4 ", "user=alice", "ident=root", rule, "action=deny", "reply=93"}},
		{name: "SOCKS4 claim root, client runs as nobody", nobody: true, args: []string{"--socks4", f.front, "--proxy-user", "root:", f.identURL},
			code: 97, logParts: []string{"proto=socks4 ", "user=root", "ident=nobody", rule, "action=deny", "reply=93"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, code := curlAs(t, tc.nobody, append([]string{"--interface", "127.0.0.2"}, tc.args...)...)
			if code != tc.code || (code == 0 && out != "hello from backend") {
				t.Fatalf("curl exit %d, want %d: %s", code, tc.code, out)
			}
			f.waitLog(t, append([]string{"msg=conn", "client=127.0.0.2:"}, tc.logParts...)...)
		})
	}
}

// A UDP association through the balancer: its relay socket is on the
// frontend's address, the header's destination, which this host has; it
// takes datagrams from the client's address as the header gives it.
func (f *fleet) testUDP(t *testing.T) {
	echo := udpEchoOn(t, "127.0.0.5")
	d := &client.Dialer{Hops: []client.Hop{{Proto: client.SOCKS5, Addr: f.front}},
		Forward: &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}, Timeout: patience}
	a, err := d.Associate(context.Background(), netip.AddrPort{})
	if err != nil {
		t.Fatalf("UDP ASSOCIATE through the balancer: %v", err)
	}
	defer a.Close()
	if a.Relay.Addr() != netip.MustParseAddr("127.0.0.4") {
		t.Errorf("relay at %v, want the frontend's address 127.0.0.4", a.Relay)
	}
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP("127.0.0.2")})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	to := netip.MustParseAddrPort(echo)
	// RFC 1928 section 7: RSV, FRAG 0, IPv4, address, port, data.
	dgram := append([]byte{0, 0, 0, 1}, to.Addr().AsSlice()...)
	dgram = binary.BigEndian.AppendUint16(dgram, to.Port())
	dgram = append(dgram, "ping"...)
	pc.SetDeadline(time.Now().Add(patience))
	if _, err := pc.WriteToUDPAddrPort(dgram, a.Relay); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 512)
	n, err := pc.Read(buf)
	if err != nil || n != len(dgram) || string(buf[10:n]) != "ping" {
		t.Fatalf("reply %q %v, want %q", buf[:n], err, dgram)
	}
	a.Close()
	f.waitLog(t, "msg=conn", "proto=socks5", "cmd=udp", "client=127.0.0.2:", "action=permit", "dgrams_up=1", "dgrams_down=1")
}

// Prometheus scrapes both instances: its query API gives the sessions the
// instances counted, and the packaged rules evaluate without error.
func (f *fleet) testPrometheus(t *testing.T) {
	if !within(2*patience, func() bool { return statusOf("http://"+f.prom+"/-/ready") == 200 }) {
		t.Fatalf("Prometheus not ready:\n%s", f.promDaemon.Output())
	}
	want := 0
	for _, m := range f.metrics {
		_, body := get(t, "http://"+m+"/metrics")
		want += sessionsTotal(t, body)
	}
	if want < 12 { // the sessions of the subtests before
		t.Fatalf("the instances count %d sessions, want at least 12", want)
	}
	var got map[string]string
	if !within(patience, func() bool {
		got = promQuery(t, f.prom, "sum(sockd_sessions_total)")
		return got["map[]"] == strconv.Itoa(want)
	}) {
		t.Fatalf("Prometheus: sum(sockd_sessions_total) = %v, want %d", got, want)
	}
	got = promQuery(t, f.prom, `sum by (action) (sockd_sessions_total{proto="socks5"})`)
	t.Logf("sum by (action) (sockd_sessions_total{proto=\"socks5\"}) = %v", got)
	if got["map[action:deny]"] == "" || got["map[action:permit]"] == "" {
		t.Errorf("no socks5 sessions by action: %v", got)
	}
	if got := promQuery(t, f.prom, `count(up{job="sockd"} == 1)`); got["map[]"] != "2" {
		t.Errorf("count(up == 1) = %v, want 2", got)
	}
	if got := promQuery(t, f.prom, `sum(sockd_rule_matches_total{rule="`+f.conf+`:4"})`); got["map[]"] != "3" {
		t.Errorf("matches of the deny line = %v, want 3", got)
	}

	// The alerting rules of packaging/fleet: evaluated, healthy, none
	// firing for a healthy fleet.
	var r struct {
		Data struct {
			Groups []struct {
				Rules []struct {
					Name, Health, State, LastError string
				}
			}
		}
	}
	if !within(patience, func() bool {
		_, body := get(t, "http://"+f.prom+"/api/v1/rules")
		if err := json.Unmarshal([]byte(body), &r); err != nil || len(r.Data.Groups) == 0 {
			return false
		}
		for _, rule := range r.Data.Groups[0].Rules {
			if rule.Health != "ok" {
				return false
			}
		}
		return true
	}) {
		t.Fatalf("the packaged rules do not all evaluate: %+v", r)
	}
	if n := len(r.Data.Groups[0].Rules); n != 5 {
		t.Errorf("%d rules loaded, want 5", n)
	}
	for _, rule := range r.Data.Groups[0].Rules {
		if rule.State != "inactive" {
			t.Errorf("alert %s is %s for a healthy fleet", rule.Name, rule.State)
		}
	}
}

// promtool, Prometheus's own linter, finds no problem in the metrics, and
// accepts the packaged rules.
func (f *fleet) testPromtool(t *testing.T) {
	_, body := get(t, "http://"+f.metrics[0]+"/metrics")
	cmd := exec.Command("promtool", "check", "metrics")
	cmd.Stdin = strings.NewReader(body)
	if out, err := cmd.CombinedOutput(); err != nil || len(out) != 0 {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
	if out, err := exec.Command("promtool", "check", "rules", "../../packaging/fleet/sockd.rules.yml").CombinedOutput(); err != nil {
		t.Errorf("promtool check rules: %v\n%s", err, out)
	}
}

// A drain behind the balancer: on SIGTERM, instance 1 answers 503 on
// /healthz, HAProxy marks it down and sends every new client to instance 2,
// while instance 1's session in progress goes on relaying; it exits once
// that session ends. Prometheus then sees it down.
func (f *fleet) testDrain(t *testing.T) {
	echo := relaytest.Echo(t)
	s1 := f.sockd[0]
	active := func() string {
		_, body := get(t, "http://"+f.metrics[0]+"/metrics")
		for _, line := range strings.Split(body, "\n") {
			if strings.HasPrefix(line, "sockd_sessions_active ") {
				return strings.TrimPrefix(line, "sockd_sessions_active ")
			}
		}
		return ""
	}
	// Sessions through the balancer until one is on instance 1 (round
	// robin: the first or the second).
	var held []net.Conn
	for len(held) < 4 && active() != "1" {
		c := dialFrom(t, "127.0.0.2", f.front)
		socks5Over(t, c, echo)
		held = append(held, c)
	}
	if active() != "1" {
		t.Fatalf("no session on instance 1 after %d through the balancer", len(held))
	}

	s1.cmd.Process.Signal(syscall.SIGTERM)
	s1.log.WaitFor(t, "msg=stopping", "sessions=1")
	if code, body := get(t, "http://"+f.metrics[0]+"/healthz"); code != 503 {
		t.Errorf("/healthz while draining: %d %q, want 503", code, body)
	}
	var st map[string]string
	if !within(patience, func() bool {
		st = haproxyStats(t, f.stats, "sockd")
		return strings.HasPrefix(st["s1"], "DOWN L7STS 503") && strings.HasPrefix(st["s2"], "UP ")
	}) {
		t.Fatalf("HAProxy does not take the draining instance out: %v", st)
	}
	before := strings.Count(f.sockd[1].log.String(), "msg=conn")
	for range 3 {
		if out, code := relaytest.Curl(t, "--interface", "127.0.0.2", "--socks5", f.front, f.url); code != 0 {
			t.Fatalf("curl while instance 1 drains: exit %d %s", code, out)
		}
	}
	if !within(15*time.Second, func() bool { return strings.Count(f.sockd[1].log.String(), "msg=conn") == before+3 }) {
		t.Errorf("instance 2 did not take the 3 new sessions:\n%s", f.sockd[1].log)
	}
	for _, c := range held {
		echoes(t, c, "still")
	}
	if code, _ := get(t, "http://"+f.metrics[0]+"/healthz"); code != 503 {
		t.Errorf("/healthz after the sessions: %d, want 503", code)
	}
	for _, c := range held {
		c.Close()
	}
	select {
	case <-s1.done:
	case <-time.After(patience):
		t.Fatalf("instance 1 did not exit once its session ended:\n%s", s1.log)
	}
	if err := s1.cmd.Wait(); err != nil {
		t.Errorf("instance 1 exited with %v", err)
	}
	if strings.Contains(s1.log.String(), "grace period over") {
		t.Errorf("instance 1 closed its session instead of letting it end:\n%s", s1.log)
	}

	// Prometheus no longer scrapes it: up == 0, the alert pending.
	if !within(patience, func() bool {
		got := promQuery(t, f.prom, `ALERTS{alertname="SockdInstanceDown"}`)
		for k, v := range got {
			if strings.Contains(k, "instance:"+f.metrics[0]) && strings.Contains(k, "alertstate:pending") && v == "1" {
				return true
			}
		}
		return false
	}) {
		t.Errorf("SockdInstanceDown not pending for %s: %v", f.metrics[0], promQuery(t, f.prom, `ALERTS`))
	}
}

// The PROXY protocol is honoured only from the listed sources: from them a
// v1 or v2 header names the client, and a connection without one is
// closed; from any other source a connection is taken as it is, so a
// header from it fails the SOCKS handshake.
func TestProxyProtocolSources(t *testing.T) {
	echo := relaytest.Echo(t)
	conf := writeFile(t, "sockd.conf", admitLoopback)
	p := launchSockd(t, "", "-config", conf, "-proxy-protocol-from", "127.0.0.1/32, 127.0.0.9")
	greeting := []byte{5, 1, 0} // SOCKS5, one method: no authentication
	// refused checks that the server does not answer the greeting as a
	// SOCKS5 server would.
	refused := func(t *testing.T, c net.Conn) {
		t.Helper()
		if _, err := c.Write(greeting); err != nil {
			return // closed already
		}
		b, _ := io.ReadAll(c)
		if len(b) >= 2 && b[0] == 5 && b[1] == 0 {
			t.Errorf("the server answered the greeting: % x", b)
		}
	}

	t.Run("v1 from a listed source", func(t *testing.T) {
		c := dialFrom(t, "127.0.0.1", p.addr())
		io.WriteString(c, v1Header("127.0.0.2:40001", p.addr()))
		socks5Over(t, c, echo)
		c.Close()
		p.log.WaitFor(t, "msg=conn", "proto=socks5", "client=127.0.0.2:40001 ", "action=permit")
	})
	t.Run("v2 from a listed source", func(t *testing.T) {
		c := dialFrom(t, "127.0.0.1", p.addr())
		h := proxyproto.HeaderProxyFromAddrs(2, &net.TCPAddr{IP: net.ParseIP("127.0.0.2"), Port: 40002}, c.RemoteAddr())
		if _, err := h.WriteTo(c); err != nil {
			t.Fatal(err)
		}
		socks5Over(t, c, echo)
		c.Close()
		p.log.WaitFor(t, "msg=conn", "proto=socks5", "client=127.0.0.2:40002 ", "action=permit")
	})
	t.Run("no header from a listed source", func(t *testing.T) {
		c := dialFrom(t, "127.0.0.1", p.addr())
		local := c.LocalAddr().String()
		refused(t, c)
		line := p.log.WaitFor(t, "msg=conn", "client="+local+" ")
		if !strings.Contains(line, "proxy protocol signature not present") || strings.Contains(line, "action=permit") {
			t.Errorf("want the missing header as the error, and no session: %s", line)
		}
	})
	t.Run("header from an unlisted source", func(t *testing.T) {
		c := dialFrom(t, "127.0.0.3", p.addr())
		local := c.LocalAddr().String()
		io.WriteString(c, v1Header("127.0.0.2:40004", p.addr()))
		refused(t, c)
		line := p.log.WaitFor(t, "msg=conn", "client="+local+" ")
		if !strings.Contains(line, "proto=unknown") || strings.Contains(line, "action=permit") {
			t.Errorf("want a failed handshake: %s", line)
		}
		if s := p.log.String(); strings.Contains(s, "127.0.0.2:40004") {
			t.Errorf("the header of an unlisted source was honoured:\n%s", s)
		}
	})
	t.Run("no header from an unlisted source", func(t *testing.T) {
		c := dialFrom(t, "127.0.0.3", p.addr())
		local := c.LocalAddr().String()
		socks5Over(t, c, echo)
		c.Close()
		p.log.WaitFor(t, "msg=conn", "proto=socks5", "client="+local+" ", "action=permit")
	})
}

// The PROXY protocol on sockets passed by systemd (driven by Debian's
// systemd-socket-activate): a listening socket named "socks" with the
// metrics socket named "metrics", and Accept=yes, one process per
// connection. The header's source is the client.
func TestProxyProtocolSocketActivation(t *testing.T) {
	echo := relaytest.Echo(t)
	conf := writeFile(t, "sockd.conf", admitLoopback)
	for _, tc := range []struct {
		name   string
		accept bool
	}{{"listening sockets", false}, {"Accept=yes", true}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel() // most of the time goes into starting processes
			addr := "127.0.0.1:" + strconv.Itoa(relaytest.FreePort(t))
			maddr := "127.0.0.1:" + strconv.Itoa(relaytest.FreePort(t))
			args := []string{"-l", addr, "--fdname=socks", "-E", "SOCKD_TEST_MAIN=1"}
			if tc.accept {
				args = append(args, "-a")
			} else {
				args = []string{"-l", addr, "-l", maddr, "--fdname=socks:metrics", "-E", "SOCKD_TEST_MAIN=1"}
			}
			args = append(args, os.Args[0], "-config", conf, "-proxy-protocol-from", "127.0.0.1")
			d := relaytest.StartDaemon(t, "systemd-socket-activate", args...)
			if !tc.accept {
				// The first connection, to the metrics socket, starts
				// the server; /healthz answers 200 once it serves.
				if !within(patience, func() bool { return statusOf("http://"+maddr+"/healthz") == 200 }) {
					t.Fatalf("/healthz on the inherited metrics socket is not 200:\n%s", d.Output())
				}
				if !strings.Contains(d.Output(), "msg=listening addr="+addr) {
					t.Fatalf("not serving the inherited socket:\n%s", d.Output())
				}
			} else if !within(patience, func() bool { return strings.Contains(d.Output(), "Listening on "+addr) }) {
				t.Fatalf("systemd-socket-activate does not listen:\n%s", d.Output())
			}
			c := dialFrom(t, "127.0.0.1", addr)
			io.WriteString(c, v1Header("127.0.0.2:40011", addr))
			socks5Over(t, c, echo)
			c.Close()
			if !within(patience, func() bool {
				return regexp.MustCompile(`msg=conn .*proto=socks5 .*client=127\.0\.0\.2:40011 .*action=permit`).MatchString(d.Output())
			}) {
				t.Fatalf("no session of the header's client:\n%s", d.Output())
			}
			if !tc.accept {
				_, body := get(t, "http://"+maddr+"/metrics")
				if !strings.Contains(body, `sockd_sessions_total{action="permit",command="connect",proto="socks5"} 1`) {
					t.Errorf("the session is not counted:\n%s", body)
				}
			}
		})
	}
}

// /healthz during a drain: 200 while serving; from SIGTERM on 503, while
// the session in progress still relays; the server exits once it ends.
func TestMetricsHealthzDrain(t *testing.T) {
	echo := relaytest.Echo(t)
	conf := writeFile(t, "sockd.conf", admitLoopback)
	p := launchSockd(t, "127.0.0.1:0", "-config", conf, "-grace", "10s")
	m := metricsAddr(t, p)
	if code, body := get(t, "http://"+m+"/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("/healthz while serving: %d %q", code, body)
	}
	c := dialFrom(t, "127.0.0.1", p.addr())
	socks5Over(t, c, echo)

	p.cmd.Process.Signal(syscall.SIGTERM)
	p.log.WaitFor(t, "msg=stopping", "sessions=1")
	if code, body := get(t, "http://"+m+"/healthz"); code != 503 || body != "not serving\n" {
		t.Errorf("/healthz while draining: %d %q, want 503", code, body)
	}
	// New clients are refused, the session in progress goes on, and it
	// is still counted.
	if !within(15*time.Second, func() bool {
		nc, err := net.DialTimeout("tcp", p.addr(), time.Second)
		if err == nil {
			nc.Close()
		}
		return err != nil
	}) {
		t.Errorf("the listener still accepts while draining")
	}
	echoes(t, c, "still relaying")
	_, body := get(t, "http://"+m+"/metrics")
	if !strings.Contains(body, "\nsockd_sessions_active 1\n") {
		t.Errorf("sockd_sessions_active is not 1 while draining")
	}
	if code, _ := get(t, "http://"+m+"/healthz"); code != 503 {
		t.Errorf("/healthz later in the drain: %d, want 503", code)
	}
	c.Close()
	select {
	case <-p.done:
	case <-time.After(patience):
		t.Fatalf("sockd did not exit once its session ended:\n%s", p.log)
	}
	if err := p.cmd.Wait(); err != nil {
		t.Errorf("sockd exited with %v", err)
	}
	p.log.WaitFor(t, "msg=conn", "proto=socks5", "bytes_up=19", "bytes_down=19")
}

// socks4Request sends a SOCKS4 request (cmd 1 CONNECT, 2 BIND) for dst as
// user over c and returns the reply's code and address.
func socks4Request(t *testing.T, c net.Conn, cmd byte, dst netip.AddrPort, user string) (byte, netip.AddrPort) {
	t.Helper()
	req := binary.BigEndian.AppendUint16([]byte{4, cmd}, dst.Port())
	req = append(append(append(req, dst.Addr().AsSlice()...), user...), 0)
	if _, err := c.Write(req); err != nil {
		t.Fatal(err)
	}
	var rep [8]byte
	if _, err := io.ReadFull(c, rep[:]); err != nil {
		t.Fatalf("SOCKS4 reply: %v", err)
	}
	ip, _ := netip.AddrFromSlice(rep[4:8])
	return rep[1], netip.AddrPortFrom(ip, binary.BigEndian.Uint16(rep[2:4]))
}

// socks5Associate asks for a UDP association over c, without
// authentication, and returns the relay's address.
func socks5Associate(t *testing.T, c net.Conn) netip.AddrPort {
	t.Helper()
	c.Write([]byte{5, 1, 0})
	var rep [10]byte
	if _, err := io.ReadFull(c, rep[:2]); err != nil || rep[1] != 0 {
		t.Fatalf("SOCKS5 method reply % x: %v", rep[:2], err)
	}
	c.Write([]byte{5, 3, 0, 1, 0, 0, 0, 0, 0, 0}) // from anywhere on the client's address
	if _, err := io.ReadFull(c, rep[:]); err != nil || rep[1] != 0 || rep[3] != 1 {
		t.Fatalf("UDP ASSOCIATE reply % x: %v", rep, err)
	}
	ip, _ := netip.AddrFromSlice(rep[4:8])
	return netip.AddrPortFrom(ip, binary.BigEndian.Uint16(rep[8:10]))
}

// Behind a balancer whose address this host has (same host), identd is
// asked from that address, and BIND and UDP sockets are opened on it. With
// a header naming an address this host lacks (a balancer on another host
// that terminates TCP, stood in for by 192.0.2.1), identd is asked from
// this host's address, about a connection the client never made: identd
// finds none, so ?=I refuses with 92 and ?=i degrades to "identd down";
// BIND and UDP sockets are opened on the address the balancer connected to.
func TestProxyProtocolForeignFrontend(t *testing.T) {
	if ln, err := net.Listen("tcp", "192.0.2.1:0"); err == nil {
		ln.Close()
		t.Fatal("this host has 192.0.2.1, the stand-in for a balancer elsewhere")
	}
	echo := relaytest.Echo(t)
	_, strict := backendOn(t, "127.0.0.5")
	udpEcho := udpEchoOn(t, "127.0.0.5")
	identPort := relaytest.Oidentd(t)
	conf := writeFile(t, "sockd.conf", strings.Join([]string{
		"permit ?=I *=root 127.0.0.2 255.255.255.255 127.0.0.5 255.255.255.255",
		"permit ?=i 127.0.0.2 255.255.255.255",
		"permit 127.0.0.3 255.255.255.255",
		"deny ALL 0.0.0.0",
	}, "\n")+"\n")
	p := launchSockd(t, "", "-config", conf, "-proxy-protocol-from", "127.0.0.1", "-ident-port", strconv.Itoa(identPort), "-ident-timeout", "3s")

	// The client's connection to the balancer, on this host: 127.0.0.2 to
	// 127.0.0.4. Its owner, for oidentd, is this test's user, root.
	front, err := net.Listen("tcp", "127.0.0.4:0")
	if err != nil {
		t.Fatal(err)
	}
	defer front.Close()
	clientAddr := dialFrom(t, "127.0.0.2", front.Addr().String()).LocalAddr().String()
	frontPort := portOf(front.Addr().String())
	// through opens a connection as the balancer would for the client,
	// its header naming dst as the address the client connected to.
	through := func(src, dst string) net.Conn {
		c := dialFrom(t, "127.0.0.1", p.addr())
		io.WriteString(c, v1Header(src, dst+":"+frontPort))
		return c
	}
	own := netip.MustParseAddr("127.0.0.1") // the address the balancer connects to
	for _, tc := range []struct {
		name, frontend string
		dst            string
		code           byte
		logParts       []string
	}{
		{"same host, ?=I", "127.0.0.4", strict, 90, []string{"ident=root", "rule=" + conf + ":1", "reply=90"}},
		{"other host, ?=I", "192.0.2.1", strict, 92, []string{"ident=(down)", "rule=" + conf + ":1", "reply=92"}},
		{"other host, ?=i", "192.0.2.1", echo, 90, []string{"ident=(down)", "rule=" + conf + ":2", "reply=90"}},
	} {
		t.Run("ident, "+tc.name, func(t *testing.T) {
			c := through(clientAddr, tc.frontend)
			if code, _ := socks4Request(t, c, 1, netip.MustParseAddrPort(tc.dst), "root"); code != tc.code {
				t.Fatalf("reply %d, want %d", code, tc.code)
			}
			c.Close()
			p.log.WaitFor(t, append([]string{"msg=conn", "proto=socks4 ", "client=" + clientAddr + " ", "user=root"}, tc.logParts...)...)
		})
	}

	for _, tc := range []struct {
		name, frontend string
		want           netip.Addr
	}{
		{"same host", "127.0.0.4", netip.MustParseAddr("127.0.0.4")},
		{"other host", "192.0.2.1", own},
	} {
		t.Run("BIND, "+tc.name, func(t *testing.T) {
			c := through("127.0.0.3:40031", tc.frontend)
			code, at := socks4Request(t, c, 2, netip.MustParseAddrPort("127.0.0.1:21"), "")
			if code != 90 || at.Addr() != tc.want {
				t.Fatalf("first BIND reply %d %v, want 90 on %v", code, at, tc.want)
			}
			c.Close()
		})
		t.Run("UDP, "+tc.name, func(t *testing.T) {
			c := through("127.0.0.3:40032", tc.frontend)
			relay := socks5Associate(t, c)
			if relay.Addr() != tc.want {
				t.Fatalf("relay at %v, want %v", relay, tc.want)
			}
			// Clients send to it directly, from their own address.
			pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP("127.0.0.3")})
			if err != nil {
				t.Fatal(err)
			}
			defer pc.Close()
			to := netip.MustParseAddrPort(udpEcho)
			dgram := binary.BigEndian.AppendUint16(append([]byte{0, 0, 0, 1}, to.Addr().AsSlice()...), to.Port())
			dgram = append(dgram, "ping"...)
			pc.SetDeadline(time.Now().Add(patience))
			pc.WriteToUDPAddrPort(dgram, relay)
			buf := make([]byte, 512)
			if n, err := pc.Read(buf); err != nil || string(buf[10:n]) != "ping" {
				t.Fatalf("reply %q %v", buf[:n], err)
			}
			c.Close()
		})
	}
	p.log.WaitFor(t, "msg=conn", "cmd=udp", "client=127.0.0.3:40032 ", "dgrams_up=1", "dgrams_down=1")
}
