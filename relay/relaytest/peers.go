package relaytest

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// The SOCKS and HTTP proxies nobody here wrote, for next-hop and chain
// tests: Dante (dante-server) and tinyproxy.

const (
	// SystemUser and SystemPassword are a system account the tests create,
	// for Dante's "socksmethod: username", which checks RFC 1929
	// passwords against the system's password database.
	SystemUser     = "sockdtest"
	SystemPassword = "S0cks-test pw"

	// DantePass and DanteBlock are Dante socks rules.
	DantePass  = "socks pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }"
	DanteBlock = "socks block { from: 0.0.0.0/0 to: 0.0.0.0/0 }"
)

// CreateSystemUser creates SystemUser with SystemPassword, idempotently.
// It needs root, as CI has.
func CreateSystemUser(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test creates a system user and must run as root (as CI does)")
	}
	if _, err := user.Lookup(SystemUser); err != nil {
		if out, err := exec.Command("useradd", "-M", "-s", "/usr/sbin/nologin", SystemUser).CombinedOutput(); err != nil {
			t.Fatalf("useradd: %v\n%s", err, out)
		}
	}
	cmd := exec.Command("chpasswd")
	cmd.Stdin = strings.NewReader(SystemUser + ":" + SystemPassword + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("chpasswd: %v\n%s", err, out)
	}
}

// Dante starts danted in the foreground on 127.0.0.1 with socksmethod
// method ("none" or "username") and the given rule lines (socks rules,
// routes), DantePass when none are given. It returns its address.
func Dante(t testing.TB, method string, rules ...string) string {
	t.Helper()
	if method == "username" {
		CreateSystemUser(t)
	}
	if len(rules) == 0 {
		rules = []string{DantePass}
	}
	port := FreePort(t)
	dir := t.TempDir()
	conf := filepath.Join(dir, "danted.conf")
	err := os.WriteFile(conf, []byte(fmt.Sprintf(`logoutput: stderr
internal: 127.0.0.1 port = %d
external: 127.0.0.1
clientmethod: none
socksmethod: %s
user.privileged: root
user.unprivileged: nobody
client pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }
%s
`, port, method, strings.Join(rules, "\n"))), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	d := StartDaemon(t, "/usr/sbin/danted", "-f", conf, "-p", filepath.Join(dir, "danted.pid"), "-N", "1")
	d.WaitTCP(t, addr)
	return addr
}

// Tinyproxy starts tinyproxy, a real HTTP proxy, in the foreground on
// 127.0.0.1, allowing CONNECT to the ports of allow (host:port) only, and
// asking for Basic authorization user:pass when user is set.
func Tinyproxy(t testing.TB, user, pass string, allow ...string) string {
	t.Helper()
	port := FreePort(t)
	dir := t.TempDir()
	var conf strings.Builder
	fmt.Fprintf(&conf, "Port %d\nListen 127.0.0.1\nTimeout 30\nMaxClients 50\nLogLevel Info\n"+
		"PidFile %q\nAllow 127.0.0.1\n", port, filepath.Join(dir, "tinyproxy.pid"))
	for _, a := range allow {
		fmt.Fprintf(&conf, "ConnectPort %d\n", netip.MustParseAddrPort(a).Port())
	}
	if user != "" {
		fmt.Fprintf(&conf, "BasicAuth %s %s\n", user, pass)
	}
	path := filepath.Join(dir, "tinyproxy.conf")
	if err := os.WriteFile(path, []byte(conf.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	d := StartDaemon(t, "/usr/bin/tinyproxy", "-d", "-c", path)
	d.WaitTCP(t, addr)
	return addr
}
