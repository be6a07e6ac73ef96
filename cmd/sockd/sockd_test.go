package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/sockd-ng/sockd/relay/relaytest"
)

// curl, through every SOCKS version, by address and by name; names are
// resolved by the server, through -nameserver, never the system resolver.
func TestCurlEveryVersion(t *testing.T) {
	url, hostport := backend(t)
	port := portOf(hostport)
	dns := relaytest.DNS(t, "host-record=backend.test,127.0.0.1")
	conf := writeFile(t, "sockd.conf", "permit 127.0.0.0 255.0.0.0\npermit [::1]\n")
	p := startSockd(t, "-config", conf, "-nameserver", dns, "-listen", "127.0.0.1:0", "-listen", "[::1]:0")
	byName := "http://backend.test:" + port + "/"
	for _, tc := range []struct {
		name string
		args []string
		user string // the user the log line must show
	}{
		{name: "socks4", args: []string{"--socks4", p.addrs[0], url}},
		{name: "socks4 with user", args: []string{"--socks4", p.addrs[0], "--proxy-user", "alice:x", url}, user: "alice"},
		{name: "socks4a", args: []string{"--socks4a", p.addrs[0], byName}},
		{name: "socks4a with user", args: []string{"--socks4a", p.addrs[0], "--proxy-user", "bob:", byName}, user: "bob"},
		{name: "socks5", args: []string{"--socks5", p.addrs[0], url}},
		{name: "socks5 with user", args: []string{"--socks5", p.addrs[0], "--proxy-user", "carol:pw", url}},
		{name: "socks5-hostname", args: []string{"--socks5-hostname", p.addrs[0], byName}},
		{name: "socks5 over IPv6", args: []string{"--socks5", p.addrs[1], url}},
		{name: "socks4a over IPv6", args: []string{"--socks4a", p.addrs[1], byName}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, code := relaytest.Curl(t, tc.args...)
			if code != 0 || out != "hello from backend" {
				t.Fatalf("curl exit %d: %s", code, out)
			}
			if tc.user != "" {
				p.log.WaitFor(t, "msg=conn", "user="+tc.user, "action=permit")
			}
		})
	}
	p.log.WaitFor(t, "proto=socks4a", "dst=backend.test:"+port, "connected=127.0.0.1:"+port)
	p.log.WaitFor(t, "client=[::1]:", "rule="+conf+":2")
}

// Source rules are tested from 127.0.0.2: on Linux all of 127/8 is local.
func TestSourceRules(t *testing.T) {
	url, _ := backend(t)
	conf := writeFile(t, "sockd.conf", "permit 127.0.0.1 255.255.255.255\ndeny ALL 0.0.0.0\n")
	p := startSockd(t, "-config", conf, "-listen", "127.0.0.1:0")
	if out, code := relaytest.Curl(t, "--socks5", p.addr(), "--interface", "127.0.0.1", url); code != 0 {
		t.Fatalf("from 127.0.0.1: exit %d %s", code, out)
	}
	for _, flag := range []string{"--socks4", "--socks5"} {
		out, code := relaytest.Curl(t, flag, p.addr(), "--interface", "127.0.0.2", url)
		if code != 97 { // CURLE_PROXY: the proxy refused
			t.Errorf("%s from 127.0.0.2: exit %d %s, want 97", flag, code, out)
		}
	}
	p.log.WaitFor(t, "proto=socks4", "client=127.0.0.2:", "rule="+conf+":2", "action=deny", "reply=91")
	p.log.WaitFor(t, "proto=socks5", "client=127.0.0.2:", "rule="+conf+":2", "action=deny", "reply=2")
}

// identd modes against Debian's oidentd: it agrees, it reports another user
// (the client runs as nobody), it cannot be reached.
func TestIdentd(t *testing.T) {
	if os.Getuid() != 0 {
		t.Fatal("needs root: clients run as nobody for a second identity (CI runs as root)")
	}
	url, hostport := backend(t)
	identPort := relaytest.Oidentd(t)
	dead := relaytest.FreePort(t)
	conf := writeFile(t, "sockd.conf", strings.Join([]string{
		"#NO_IDENTD: echo no identd for %u",
		"#BAD_ID: echo identd says %U not %u",
		"permit ?=I *=root 127.0.0.1 255.255.255.255 ALL 0.0.0.0 eq " + portOf(hostport),
		"permit ?=i 127.0.0.2 255.255.255.255 ALL 0.0.0.0 eq " + portOf(hostport),
		"deny ALL 0.0.0.0",
	}, "\n")+"\n")
	p := startSockd(t, "-config", conf, "-ident-port", fmt.Sprint(identPort), "-ident-timeout", "3s")
	down := startSockd(t, "-config", conf, "-ident-port", fmt.Sprint(dead), "-ident-timeout", "3s")
	curl := func(t *testing.T, asNobody bool, args ...string) int {
		cmd := append([]string{"curl", "-sS", "--max-time", "20"}, args...)
		if asNobody {
			cmd = relaytest.AsNobody(cmd...)
		}
		out, err := exec.Command(cmd[0], cmd[1:]...).CombinedOutput()
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		}
		if err != nil || string(out) != "hello from backend" {
			t.Fatalf("curl: %v %s", err, out)
		}
		return 0
	}
	for _, tc := range []struct {
		name     string
		srv      *sockdProc
		nobody   bool
		args     []string
		code     int
		logParts []string
	}{
		{name: "SOCKS4 claim agrees", srv: p, args: []string{"--socks4", p.addr(), "--proxy-user", "root:", url},
			logParts: []string{"user=root", "ident=root", "reply=90"}},
		{name: "SOCKS4 claim, identd reports nobody", srv: p, nobody: true, args: []string{"--socks4", p.addr(), "--proxy-user", "root:", url},
			code: 97, logParts: []string{"user=root", "ident=nobody", "reply=93"}},
		{name: "SOCKS5 no auth: identd answer is the user", srv: p, args: []string{"--socks5", p.addr(), url},
			logParts: []string{"proto=socks5", "user=root", "ident=root", "reply=0"}},
		{name: "SOCKS5 no auth as nobody", srv: p, nobody: true, args: []string{"--socks5", p.addr(), url},
			code: 97, logParts: []string{"proto=socks5", "ident=nobody", "action=deny", "reply=2"}},
		{name: "strict, identd unreachable", srv: down, args: []string{"--socks4", down.addr(), "--proxy-user", "root:", url},
			code: 97, logParts: []string{"user=root", "ident=(down)", "reply=92"}},
		{name: "lenient, identd unreachable", srv: down, args: []string{"--socks4", down.addr(), "--interface", "127.0.0.2", "--proxy-user", "x:", url},
			logParts: []string{"client=127.0.0.2", "ident=(down)", "reply=90"}},
		{name: "lenient from 127.0.0.2, identd agrees", srv: p, args: []string{"--socks4", p.addr(), "--interface", "127.0.0.2", "--proxy-user", "root:", url},
			logParts: []string{"client=127.0.0.2", "ident=root", "reply=90"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if code := curl(t, tc.nobody, tc.args...); code != tc.code {
				t.Fatalf("curl exit %d, want %d", code, tc.code)
			}
			tc.srv.log.WaitFor(t, append([]string{"msg=conn"}, tc.logParts...)...)
		})
	}
	down.log.WaitFor(t, "msg=command", "no identd for root")
	p.log.WaitFor(t, "msg=command", "identd says nobody not root")
}

// A SOCKS5 password file in htpasswd format, written by Apache's htpasswd.
func TestPasswordFile(t *testing.T) {
	url, _ := backend(t)
	pw := filepath.Join(t.TempDir(), "passwd")
	if out, err := exec.Command("htpasswd", "-B", "-b", "-c", pw, "alice", "wonder land").CombinedOutput(); err != nil {
		t.Fatalf("htpasswd (apache2-utils): %v %s", err, out)
	}
	conf := writeFile(t, "sockd.conf", "permit *=alice 127.0.0.0/8\n")
	p := startSockd(t, "-config", conf, "-passwd", pw)
	if out, code := relaytest.Curl(t, "--socks5", p.addr(), "--proxy-user", "alice:wonder land", url); code != 0 {
		t.Fatalf("good password: exit %d %s", code, out)
	}
	if _, code := relaytest.Curl(t, "--socks5", p.addr(), "--proxy-user", "alice:guess", url); code != 97 {
		t.Errorf("wrong password: exit %d", code)
	}
	if _, code := relaytest.Curl(t, "--socks4", p.addr(), url); code != 97 {
		t.Errorf("SOCKS4 with -auth password: exit %d", code)
	}
	line := p.log.WaitFor(t, "authentication failed", "alice")
	if strings.Contains(line, "guess") {
		t.Errorf("a password reached the log: %s", line)
	}
}

// Names in rules: destination names as requested, per resolved address,
// and forward-confirmed reverse names — all against a DNS server of the
// test's own.
func TestNames(t *testing.T) {
	url, hostport := backend(t)
	port := portOf(hostport)
	dns := relaytest.DNS(t,
		"host-record=backend.test,127.0.0.1",
		"host-record=blocked.test,127.0.0.1",
		"host-record=mixed.test,127.0.0.9",
		"host-record=mixed.test,127.0.0.1",
		"host-record=client2.test,127.0.0.2",
		"ptr-record=3.0.0.127.in-addr.arpa,liar.test",
	)
	conf := writeFile(t, "sockd.conf", strings.Join([]string{
		"deny   ALL 0.0.0.0 .blocked.test 0.0.0.0",
		"permit .test 0.0.0.0 127.0.0.1 255.255.255.255",
		"permit 127.0.0.1 255.255.255.255 127.0.0.1 255.255.255.255",
		"deny   ALL 0.0.0.0",
	}, "\n")+"\n")
	p := startSockd(t, "-config", conf, "-nameserver", dns)
	for _, tc := range []struct {
		name, from, url string
		code            int
	}{
		{"name rule blocks the name", "127.0.0.1", "http://blocked.test:" + port + "/", 97},
		{"only permitted addresses are connected to", "127.0.0.1", "http://mixed.test:" + port + "/", 0},
		{"client by confirmed name", "127.0.0.2", url, 0},
		{"a PTR without its A is not a name", "127.0.0.3", url, 97},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, code := relaytest.Curl(t, "--socks5-hostname", p.addr(), "--interface", tc.from, tc.url)
			if code != tc.code {
				t.Fatalf("exit %d, want %d: %s", code, tc.code, out)
			}
		})
	}
	p.log.WaitFor(t, "dst=mixed.test:"+port, "connected=127.0.0.1:"+port)
	p.log.WaitFor(t, "client=127.0.0.2", "rule="+conf+":2", "action=permit")

	// explain resolves as the server does, and shows every address.
	out, _, code := sockd(t, "explain", "-config", conf, "-nameserver", dns, "mixed.test", port)
	want := fmt.Sprintf("permit %[1]s:3 reply 90\naddress 127.0.0.9 deny %[1]s:4\naddress 127.0.0.1 permit %[1]s:3\nroute direct\n", conf)
	if code != 0 || !sameLines(out, want) {
		t.Errorf("explain: exit %d\n%s\nwant (any address order)\n%s", code, out, want)
	}
}

// sameLines compares outputs whose first line is fixed and the rest may
// come in any order (resolvers may order addresses either way).
func sameLines(got, want string) bool {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	if len(g) != len(w) || g[0] != w[0] {
		return false
	}
	seen := map[string]int{}
	for _, l := range g[1:] {
		seen[l]++
	}
	for _, l := range w[1:] {
		seen[l]--
	}
	for _, n := range seen {
		if n != 0 {
			return false
		}
	}
	return true
}

// check prints the compiled rules, or every error as FILE:LINE:COL.
func TestCheck(t *testing.T) {
	users := writeFile(t, "staff", "alice bob\n")
	good := writeFile(t, "good.conf", "permit *=carol,"+users+" 10.0.0.0/8 ALL 0.0.0.0 eq telnet\n"+
		"permit 10.0.0.0 255.0.0.0\n")
	out, stderr, code := sockd(t, "check", "-config", good)
	want := good + ":1: permit *=carol," + users + "(2 users) 10.0.0.0 255.0.0.0 ALL 0.0.0.0 eq telnet (23)\n" +
		good + ":2: permit 10.0.0.0 255.0.0.0\n"
	if code != 0 || !strings.HasPrefix(out, want) || stderr != "" {
		t.Errorf("exit %d\nstdout:\n%s\nstderr:\n%s\nwant stdout to start with:\n%s", code, out, stderr, want)
	}
	bad := writeFile(t, "bad.conf", "permit 10.0.0.0 255.0.0.0 eq telnett\nallow ALL 0.0.0.0\npermit *=/nonexistent 10.1 255.0.0.0\n")
	out, stderr, code = sockd(t, "check", "-config", bad)
	want = bad + ":2:1: unexpected \"allow\", expected permit or deny\n" +
		bad + ":3:23: source address \"10.1\" is a legacy inet_addr shorthand for 10.0.0.1; write all four parts in decimal\n"
	if code != 1 || out != "" || stderr != want {
		t.Errorf("exit %d\nstdout:\n%s\nstderr:\n%s\nwant stderr:\n%s", code, out, stderr, want)
	}
	// With the syntax right, the compiler's errors come, all of them.
	bad2 := writeFile(t, "bad2.conf", "permit 10.0.0.0 255.0.0.0 eq telnett\npermit *=/nonexistent 10.0.0.0/8\n")
	_, stderr, code = sockd(t, "check", "-config", bad2)
	want = bad2 + ":1:30: port \"telnett\" is not a number or a tcp service name (see /etc/services)\n" +
		bad2 + ":2:10: user file /nonexistent: no such file or directory\n"
	if code != 1 || stderr != want {
		t.Errorf("exit %d\nstderr:\n%s\nwant:\n%s", code, stderr, want)
	}
	// A server will not start on it either.
	cmd := command("-config", bad, "-listen", "127.0.0.1:0")
	b, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(string(b), bad+":2:1:") {
		t.Errorf("serve on a bad config: %v\n%s", err, b)
	}
}

// explain's output contract (sockd(8)).
func TestExplain(t *testing.T) {
	conf := writeFile(t, "sockd.conf", strings.Join([]string{
		"#NO_IDENTD: echo no identd on %A",
		"deny 10.0.0.0 255.0.0.0 eq telnet : echo telnet from %a by %u to %z:%S",
		"permit ?=I *=alice 10.0.0.0/8",
		"permit 127.0.0.0/8",
	}, "\n")+"\n")
	for _, tc := range []struct {
		name string
		args []string
		out  string
		code int
	}{
		{"permit", []string{"127.0.0.1", "80"}, "permit %s:4 reply 90\nroute direct\n", 0},
		{"default", []string{"-from", "192.0.2.1", "127.0.0.1", "80"}, "deny default reply 91\n", 1},
		{"command", []string{"-from", "10.1.2.3", "-user", "x;rm", "192.0.2.7", "telnet"},
			"deny %s:2 reply 91\nrun: echo telnet from 10.1.2.3 by x_rm to 192.0.2.7:telnet\n", 1},
		{"ident agrees", []string{"-from", "10.1.2.3", "-user", "alice", "192.0.2.7", "80"}, "permit %s:3 reply 90\nroute direct\n", 0},
		{"ident down", []string{"-from", "10.1.2.3", "-user", "alice", "-ident", "down", "192.0.2.7", "80"},
			"deny %s:3 reply 92\nrun: echo no identd on 10.1.2.3\n", 1},
		{"ident says another", []string{"-from", "10.1.2.3", "-user", "alice", "-ident", "says:bob", "192.0.2.7", "80"}, "deny %s:3 reply 93\n", 1},
		{"socks5 no auth", []string{"-socks5", "-from", "10.1.2.3", "-ident", "says:alice", "192.0.2.7", "80"}, "permit %s:3 reply 90\nroute direct\n", 0},
		{"bind", []string{"-command", "bind", "127.0.0.1", "21"}, "permit %s:4 reply 90\nroute direct\n", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, stderr, code := sockd(t, append([]string{"explain", "-config", conf}, tc.args...)...)
			want := strings.ReplaceAll(tc.out, "%s", conf)
			if out != want || code != tc.code {
				t.Errorf("exit %d (want %d)\ngot:\n%s%s\nwant:\n%s", code, tc.code, out, stderr, want)
			}
		})
	}
	if _, _, code := sockd(t, "explain", "-config", conf, "127.0.0.1"); code != 2 {
		t.Errorf("explain without PORT: exit %d, want 2", code)
	}
}

// The shipped configuration parses and admits loopback clients only.
func TestShippedConfig(t *testing.T) {
	const conf = "../../etc/sockd.conf"
	if _, stderr, code := sockd(t, "check", "-config", conf); code != 0 || stderr != "" {
		t.Fatalf("check: exit %d %s", code, stderr)
	}
	for _, tc := range []struct {
		from string
		code int
	}{{"127.0.0.1", 0}, {"127.1.2.3", 0}, {"::1", 0}, {"10.0.0.1", 1}, {"192.168.1.1", 1}, {"2001:db8::1", 1}, {"::ffff:10.0.0.1", 1}} {
		if out, _, code := sockd(t, "explain", "-config", conf, "-from", tc.from, "192.0.2.1", "443"); code != tc.code {
			t.Errorf("from %s: exit %d, want %d: %s", tc.from, code, tc.code, out)
		}
	}
	if out, _, code := sockd(t, "explain", "-config", conf, "192.0.2.1", "smtp"); code != 1 {
		t.Errorf("loopback to smtp: exit %d %s", code, out)
	}
}

// SIGHUP reloads: a broken file is refused with every error and the old
// rules stay; a good one takes effect for the next session.
func TestReloadOnSIGHUP(t *testing.T) {
	url, _ := backend(t)
	conf := writeFile(t, "sockd.conf", "deny ALL 0.0.0.0\n")
	p := startSockd(t, "-config", conf)
	if _, code := relaytest.Curl(t, "--socks5", p.addr(), url); code != 97 {
		t.Fatalf("denied before reload: exit %d", code)
	}
	os.WriteFile(conf, []byte("permit 127.0.0.0/8\nallow ALL\n"), 0o644)
	p.cmd.Process.Signal(syscall.SIGHUP)
	p.log.WaitFor(t, "level=ERROR", "config reload rejected", conf+":2:1: unexpected")
	if _, code := relaytest.Curl(t, "--socks5", p.addr(), url); code != 97 {
		t.Fatalf("a bad file took effect: exit %d", code)
	}
	os.WriteFile(conf, []byte("permit 127.0.0.0/8\n"), 0o644)
	p.cmd.Process.Signal(syscall.SIGHUP)
	p.log.WaitFor(t, "msg=\"config reloaded\"", "rules=1")
	if out, code := relaytest.Curl(t, "--socks5", p.addr(), url); code != 0 {
		t.Fatalf("after reload: exit %d %s", code, out)
	}
}

func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"-ver"}} {
		out, _, code := sockd(t, args...)
		if code != 0 || !strings.HasPrefix(out, "sockd ") {
			t.Errorf("%v: exit %d %q", args, code, out)
		}
	}
}

// The legacy global identd flags apply to rules without ?=.
func TestGlobalIdentFlags(t *testing.T) {
	conf := writeFile(t, "sockd.conf", "permit 127.0.0.0/8\npermit ?=n 10.0.0.0/8\n")
	for _, tc := range []struct {
		args []string
		out  string
	}{
		{[]string{"-ident", "down", "127.0.0.1", "80"}, "permit %s:1 reply 90\n"},
		{[]string{"-I", "-ident", "down", "127.0.0.1", "80"}, "deny %s:1 reply 92\n"},
		{[]string{"-i", "-ident", "down", "127.0.0.1", "80"}, "permit %s:1 reply 90\n"},
		{[]string{"-i", "-user", "bob", "-ident", "says:eve", "127.0.0.1", "80"}, "deny %s:1 reply 93\n"},
		{[]string{"-I", "-from", "10.0.0.1", "-ident", "down", "127.0.0.1", "80"}, "permit %s:2 reply 90\n"},
	} {
		out, _, _ := sockd(t, append([]string{"explain", "-config", conf}, tc.args...)...)
		if first, _, _ := strings.Cut(out, "\n"); first+"\n" != strings.ReplaceAll(tc.out, "%s", conf) {
			t.Errorf("%v: %s", tc.args, out)
		}
	}
}
