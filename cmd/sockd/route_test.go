package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sockd-ng/sockd/relay/relaytest"
)

const admitLoopback = "permit 127.0.0.0 255.0.0.0\n"

// chainOfThree starts back (direct, resolving with dns), mid (routing to
// back) and front (routing to mid), each a sockd process with its own
// routing file, and returns them front first.
func chainOfThree(t *testing.T, dns string) (front, mid, back *sockdProc) {
	t.Helper()
	conf := writeFile(t, "sockd.conf", admitLoopback)
	back = startSockd(t, "-config", conf, "-nameserver", dns)
	mid = startSockd(t, "-config", conf, "-nameserver", dns,
		"-routes", writeFile(t, "mid.socks.conf", "sockd @=socks5://"+back.addr()+" ALL 0.0.0.0\n"))
	front = startSockd(t, "-config", conf, "-nameserver", dns,
		"-routes", writeFile(t, "front.socks.conf", "sockd @=socks5://"+mid.addr()+" ALL 0.0.0.0\n"))
	return front, mid, back
}

// curl through chains of our own servers, for every SOCKS flag: a chain of
// three servers, each routing to the next, and one server whose route is a
// two-hop chain. Names are resolved by the last hop only.
func TestChains(t *testing.T) {
	url, hostport := backendOn(t, "127.0.0.5")
	port := portOf(hostport)
	dns := relaytest.DNS(t, "host-record=backend.test,127.0.0.5")
	empty := relaytest.DNS(t) // knows no names: a front that resolved would fail
	front, mid, back := chainOfThree(t, dns)
	conf := writeFile(t, "sockd.conf", admitLoopback)
	chained := startSockd(t, "-config", conf, "-nameserver", empty,
		"-routes", writeFile(t, "chain.socks.conf", fmt.Sprintf("sockd @=socks5://%s>socks4a://%s ALL 0.0.0.0\n", mid.addr(), back.addr())))
	byName := "http://backend.test:" + port + "/"
	for _, srv := range []*sockdProc{front, chained} {
		for _, tc := range []struct {
			flag, url string
		}{{"--socks4", url}, {"--socks4a", byName}, {"--socks5", url}, {"--socks5-hostname", byName}} {
			t.Run(tc.flag, func(t *testing.T) {
				out, code := relaytest.Curl(t, tc.flag, srv.addr(), "--proxy-user", "alice:", tc.url)
				if code != 0 || out != "hello from backend" {
					t.Fatalf("curl exit %d: %s", code, out)
				}
			})
		}
	}
	front.log.WaitFor(t, "proto=socks4a", "dst=backend.test:"+port, "via=socks5://"+mid.addr(), "route=")
	back.log.WaitFor(t, "dst=backend.test:"+port, "connected=127.0.0.5:"+port, "via=direct")
	back.log.WaitFor(t, "proto=socks5", "dst=127.0.0.5:"+port, "via=direct")
	mid.log.WaitFor(t, "proto=socks5", "dst=127.0.0.5:"+port, "via=socks5://"+back.addr())
	chained.log.WaitFor(t, "via=socks5://"+mid.addr()+">socks4a://"+back.addr())
	// A SOCKS4a hop gets the client's claimed user as USERID.
	back.log.WaitFor(t, "proto=socks4a", "user=alice")
}

// A name that only the last hop can resolve: the others hand it on.
func TestNameOnlyLastHopResolves(t *testing.T) {
	_, hostport := backendOn(t, "127.0.0.5")
	port := portOf(hostport)
	knows := relaytest.DNS(t, "host-record=only.test,127.0.0.5")
	conf := writeFile(t, "sockd.conf", admitLoopback)
	back := startSockd(t, "-config", conf, "-nameserver", knows)
	frontDNS := relaytest.DNS(t)
	front := startSockd(t, "-config", conf, "-nameserver", frontDNS,
		"-routes", writeFile(t, "socks.conf", "sockd @=socks5://"+back.addr()+" .test 0.0.0.0\ndeny ALL 0.0.0.0\n"))
	if out, code := relaytest.Curl(t, "--socks5-hostname", front.addr(), "http://only.test:"+port+"/"); code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	back.log.WaitFor(t, "dst=only.test:"+port, "connected=127.0.0.5:"+port)
	// explain agrees, without resolving either.
	out, _, code := sockd(t, "explain", "-config", conf, "-nameserver", frontDNS,
		"-routes", writeFile(t, "socks2.conf", "sockd @=socks5://"+back.addr()+" .test 0.0.0.0\n"), "only.test", port)
	if want := fmt.Sprintf("permit %s:1 reply 90\nroute via socks5://%s ", conf, back.addr()); code != 0 || !strings.HasPrefix(out, want) {
		t.Errorf("explain: exit %d\n%s\nwant prefix\n%s", code, out, want)
	}
}

// Dante as the next hop, with RFC 1929 credentials from -upstream-passwd,
// and as the front hop, chaining to us.
func TestDante(t *testing.T) {
	url, _ := backendOn(t, "127.0.0.5")
	conf := writeFile(t, "sockd.conf", admitLoopback)
	dante := relaytest.Dante(t, "username")
	creds := writeFile(t, "srelay.passwd", "# next hops\n127.0.0.1 "+relaytest.SystemUser+" "+relaytest.SystemPassword+"\n")
	routes := writeFile(t, "socks.conf", "sockd @=socks5://"+dante+" ALL 0.0.0.0\n")
	p := startSockd(t, "-config", conf, "-routes", routes, "-upstream-passwd", creds)
	if out, code := relaytest.Curl(t, "--socks5", p.addr(), url); code != 0 {
		t.Fatalf("through Dante with a password: exit %d %s", code, out)
	}
	wrong := writeFile(t, "wrong.passwd", "127.0.0.1 "+relaytest.SystemUser+" not-the-password\n")
	q := startSockd(t, "-config", conf, "-routes", routes, "-upstream-passwd", wrong)
	if _, code := relaytest.Curl(t, "--socks5", q.addr(), url); code != 97 {
		t.Errorf("wrong next-hop password: exit %d, want 97", code)
	}
	q.log.WaitFor(t, "level=WARN", "via=socks5://"+dante, "reply=1")

	// Dante in front, routing to us.
	front := relaytest.Dante(t, "none", relaytest.DantePass,
		"route {\n from: 0.0.0.0/0 to: 0.0.0.0/0 via: "+strings.Replace(p.addr(), ":", " port = ", 1)+
			"\n proxyprotocol: socks_v5\n command: connect\n method: none\n}")
	if out, code := relaytest.Curl(t, "--socks5", front, url); code != 0 {
		t.Fatalf("Dante in front: exit %d %s", code, out)
	}
	p.log.WaitFor(t, "msg=conn", "client=127.0.0.1", "via=socks5://"+dante, "bytes_down=")
}

// An HTTP CONNECT hop: tinyproxy, with Basic authorization from
// -upstream-passwd.
func TestHTTPConnectHop(t *testing.T) {
	url, hostport := backendOn(t, "127.0.0.5")
	tiny := relaytest.Tinyproxy(t, "tiny", "t1ny-pass", hostport)
	conf := writeFile(t, "sockd.conf", admitLoopback)
	p := startSockd(t, "-config", conf,
		"-routes", writeFile(t, "socks.conf", "sockd @=http://"+tiny+" ALL 0.0.0.0\n"),
		"-upstream-passwd", writeFile(t, "passwd", "127.0.0.1/"+portOf(tiny)+" tiny t1ny-pass\n"))
	for _, flag := range []string{"--socks4", "--socks5"} {
		if out, code := relaytest.Curl(t, flag, p.addr(), url); code != 0 || out != "hello from backend" {
			t.Fatalf("%s: exit %d %s", flag, code, out)
		}
	}
	p.log.WaitFor(t, "via=http://"+tiny, "reply=0")
}

// Failover: the first listed server is down, the second accepts and never
// answers, the third works. Failed hops then back off.
func TestFailover(t *testing.T) {
	url, _ := backendOn(t, "127.0.0.5")
	dead := "127.0.0.1:" + fmt.Sprint(relaytest.FreePort(t))
	silent := relaytest.Serve(t, func(c net.Conn) { io.Copy(io.Discard, c) })
	conf := writeFile(t, "sockd.conf", admitLoopback)
	good := startSockd(t, "-config", conf)
	p := startSockd(t, "-config", conf, "-connect-timeout", "4s",
		"-routes", writeFile(t, "socks.conf", fmt.Sprintf("sockd @=socks5://%s,socks5://%s,socks5://%s ALL 0.0.0.0\n", dead, silent, good.addr())))
	if out, code := relaytest.Curl(t, "--socks5", p.addr(), url); code != 0 {
		t.Fatalf("exit %d %s", code, out)
	}
	p.log.WaitFor(t, "next hop failed", "via=socks5://"+dead, "connection refused")
	p.log.WaitFor(t, "next hop failed", "via=socks5://"+silent)
	p.log.WaitFor(t, "msg=conn", "via=socks5://"+good.addr(), "reply=0")
	// Both failed hops back off: the next request goes straight to the
	// third.
	before := strings.Count(p.log.String(), "next hop failed")
	if out, code := relaytest.Curl(t, "--socks5", p.addr(), url); code != 0 {
		t.Fatalf("second request: exit %d %s", code, out)
	}
	p.log.WaitFor(t, "msg=conn", "id=2", "via=socks5://"+good.addr())
	if after := strings.Count(p.log.String(), "next hop failed"); after != before {
		t.Errorf("backed-off hops were tried again")
	}
	// A next hop whose name does not resolve is logged and skipped.
	empty := relaytest.DNS(t)
	r := startSockd(t, "-config", conf, "-nameserver", empty,
		"-routes", writeFile(t, "socks3.conf", fmt.Sprintf("sockd @=socks5://nohost.test:1080,socks5://%s ALL 0.0.0.0\n", good.addr())))
	if out, code := relaytest.Curl(t, "--socks5", r.addr(), url); code != 0 {
		t.Fatalf("past an unresolvable hop: exit %d %s", code, out)
	}
	r.log.WaitFor(t, "next hop failed", "via=socks5://nohost.test:1080")
	r.log.WaitFor(t, "msg=conn", "via=socks5://"+good.addr(), "reply=0")
	// A definite refusal by a reachable hop is final: no failover.
	refusing := startSockd(t, "-config", writeFile(t, "deny.conf", "deny ALL 0.0.0.0\n"))
	q := startSockd(t, "-config", conf,
		"-routes", writeFile(t, "socks2.conf", fmt.Sprintf("sockd @=socks5://%s,socks5://%s ALL 0.0.0.0\n", refusing.addr(), good.addr())))
	if _, code := relaytest.Curl(t, "--socks5", q.addr(), url); code != 97 {
		t.Errorf("refusal: exit %d, want 97", code)
	}
	q.log.WaitFor(t, "msg=conn", "via=socks5://"+refusing.addr(), "reply=2")
}

// srelay.conf read as srelay would route: farthest hop first, /H for HTTP,
// no hops direct, no match direct.
func TestSrelayConf(t *testing.T) {
	url, hostport := backendOn(t, "127.0.0.5")
	conf := writeFile(t, "sockd.conf", admitLoopback)
	socks := startSockd(t, "-config", conf)
	tiny := relaytest.Tinyproxy(t, "", "", socks.addr(), hostport)
	host, port, _ := net.SplitHostPort(socks.addr())
	thost, tport, _ := net.SplitHostPort(tiny)
	srelay := writeFile(t, "srelay.conf", fmt.Sprintf(`# destination   ports   hops (farthest first)
127.0.0.5/32     %[5]s      %[1]s %[2]s %[3]s %[4]s/H   ; via tinyproxy, then sockd
127.0.0.0/8      any     %[1]s %[2]s
`, host, port, thost, tport, portOf(hostport)))
	p := startSockd(t, "-config", conf, "-srelay-conf", srelay)
	if out, code := relaytest.Curl(t, "--socks5", p.addr(), url); code != 0 {
		t.Fatalf("exit %d %s", code, out)
	}
	p.log.WaitFor(t, "via=http://"+tiny+">socks5://"+socks.addr(), "route="+srelay+":2")
	socks.log.WaitFor(t, "msg=conn", "dst=127.0.0.5:"+portOf(hostport), "reply=0")

	// The spec's sample, as explain sees it. As in srelay, 0.0.0.0 takes
	// every IPv4 address, so the later 1.2.3.4 line is never reached;
	// names skip it for the domain line.
	sample := writeFile(t, "sample.conf", `10.10.0.0/16         any      10.10.10.1
192.168.2.128/25     512-     10.11.22.1 11080
0.0.0.0              -        100.200.1.2
Dest                 any      Socks-Island 1080 FireWall 8080/H
1.2.3.4              -
`)
	all := writeFile(t, "all.conf", "permit ALL 0.0.0.0\n")
	for _, tc := range []struct{ dest, port, route string }{
		{"10.10.1.1", "80", "route via socks5://10.10.10.1:1080 " + sample + ":1"},
		{"192.168.2.200", "600", "route via socks5://10.11.22.1:11080 " + sample + ":2"},
		{"192.168.2.200", "80", "route via socks5://100.200.1.2:1080 " + sample + ":3"},
		{"www.dest", "80", "route via http://FireWall:8080>socks5://Socks-Island:1080 " + sample + ":4"},
		{"1.2.3.4", "80", "route via socks5://100.200.1.2:1080 " + sample + ":3"},
		{"2001:db8::1", "80", "route direct"},
	} {
		out, stderr, code := sockd(t, "explain", "-config", all, "-srelay-conf", sample, "-nameserver", relaytest.DNS(t), tc.dest, tc.port)
		if lines := strings.Split(out, "\n"); code != 0 || len(lines) < 2 || lines[1] != tc.route {
			t.Errorf("%s %s: exit %d\n%s%s\nwant second line %q", tc.dest, tc.port, code, out, stderr, tc.route)
		}
	}
}

// sockd.route chooses the source address of outgoing connections; a
// destination no line covers fails (91 / REP 1).
func TestInterfaces(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		fmt.Fprint(w, host)
	}))
	t.Cleanup(srv.Close)
	conf := writeFile(t, "sockd.conf", admitLoopback)
	p := startSockd(t, "-config", conf,
		"-interfaces", writeFile(t, "sockd.route", "127.0.0.2 127.0.0.1 255.255.255.255\n"))
	if out, code := relaytest.Curl(t, "--socks5", p.addr(), srv.URL); code != 0 || out != "127.0.0.2" {
		t.Fatalf("exit %d, backend saw %q, want 127.0.0.2", code, out)
	}
	if _, code := relaytest.Curl(t, "--socks5", p.addr(), strings.Replace(srv.URL, "127.0.0.1", "127.0.0.3", 1)); code != 97 {
		t.Errorf("uncovered destination: exit %d, want 97", code)
	}
	p.log.WaitFor(t, "msg=conn", "dst=127.0.0.3", "reply=1", "no sockd.route line")
}

// proxychains4 (Debian) sends a program's connections through our server.
func TestProxychains(t *testing.T) {
	url, _ := backend(t)
	conf := writeFile(t, "sockd.conf", admitLoopback)
	p := startSockd(t, "-config", conf)
	host, port, _ := net.SplitHostPort(p.addr())
	pc := writeFile(t, "proxychains.conf", "strict_chain\nquiet_mode\ntcp_read_time_out 15000\ntcp_connect_time_out 8000\n[ProxyList]\nsocks5 "+host+" "+port+"\n")
	out, err := exec.Command("proxychains4", "-f", pc, "curl", "-sS", "--max-time", "20", url).CombinedOutput()
	if err != nil || !strings.HasSuffix(string(out), "hello from backend") {
		t.Fatalf("proxychains4: %v\n%s", err, out)
	}
	p.log.WaitFor(t, "msg=conn", "proto=socks5", "reply=0")
}

// Invoked as rsockd, the server reads /etc/socks.conf by default.
func TestRsockdName(t *testing.T) {
	if _, err := os.Stat("/etc/socks.conf"); err == nil {
		t.Fatal("/etc/socks.conf exists on this machine; this test needs it absent")
	}
	link := filepath.Join(t.TempDir(), "rsockd")
	if err := os.Symlink(os.Args[0], link); err != nil {
		t.Fatal(err)
	}
	conf := writeFile(t, "sockd.conf", admitLoopback)
	cmd := exec.Command(link, "check", "-config", conf)
	cmd.Env = append(os.Environ(), "SOCKD_TEST_MAIN=1")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "/etc/socks.conf") {
		t.Errorf("rsockd check: %v\n%s", err, out)
	}
	routes := writeFile(t, "socks.conf", "direct ALL 0.0.0.0\n")
	cmd = exec.Command(link, "check", "-config", conf, "-routes", routes)
	cmd.Env = append(os.Environ(), "SOCKD_TEST_MAIN=1")
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), routes+":1: direct ALL 0.0.0.0") {
		t.Errorf("rsockd check -routes: %v\n%s", err, out)
	}
}
