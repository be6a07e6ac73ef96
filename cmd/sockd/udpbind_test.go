package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/sockd-ng/sockd/relay/relaytest"
)

// udpEchoOn runs a UDP echo server on ip and returns its address.
func udpEchoOn(t *testing.T, ip string) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	return pc.LocalAddr().String()
}

// pysocksUDP sends datagrams through a SOCKS5 proxy with PySocks (Debian's
// python3-socks), a UDP ASSOCIATE client nobody here wrote, and returns
// what came back.
func pysocksUDP(t *testing.T, proxy, target string, msgs ...string) string {
	t.Helper()
	ph, pp, _ := net.SplitHostPort(proxy)
	th, tp, _ := net.SplitHostPort(target)
	script := fmt.Sprintf(`
import socks, socket, sys
s = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
s.set_proxy(socks.SOCKS5, %q, %s)
s.settimeout(10)
for m in sys.argv[1:]:
    s.sendto(m.encode(), (%q, %s))
    data, addr = s.recvfrom(65535)
    print(data.decode(), addr[0], addr[1])
s.close()
`, ph, pp, th, tp)
	out, err := exec.Command("/usr/bin/python3", append([]string{"-c", script}, msgs...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("PySocks: %v\n%s", err, out)
	}
	return string(out)
}

// UDP ASSOCIATE with PySocks, directly and through SOCKS5 next hops: our
// own server, Dante, and chains of the two in either order.
func TestPySocksUDP(t *testing.T) {
	echo := udpEchoOn(t, "127.0.0.5") // not 127.0.0.1, which always goes direct
	h, p, _ := net.SplitHostPort(echo)
	want := fmt.Sprintf("one %[1]s %[2]s\ntwo %[1]s %[2]s\n", h, p)
	conf := writeFile(t, "sockd.conf", admitLoopback)
	direct := startSockd(t, "-config", conf)
	if out := pysocksUDP(t, direct.addr(), echo, "one", "two"); out != want {
		t.Errorf("direct: got %q, want %q", out, want)
	}
	direct.log.WaitFor(t, "cmd=udp", "dgrams_up=2", "dgrams_down=2", "via=direct")
	hop := "socks5://" + startSockd(t, "-config", conf).addr()
	dante := "socks5://" + relaytest.Dante(t, "none")
	for _, tc := range []struct{ name, via string }{
		{"sockd", hop},
		{"Dante", dante},
		{"sockd then Dante", hop + ">" + dante},
		{"Dante then sockd", dante + ">" + hop},
	} {
		t.Run("via "+tc.name, func(t *testing.T) {
			front := startSockd(t, "-config", conf, "-routes", writeFile(t, "socks.conf", "sockd @="+tc.via+" ALL 0.0.0.0\n"))
			if out := pysocksUDP(t, front.addr(), echo, "one", "two"); out != want {
				t.Errorf("got %q, want %q", out, want)
			}
			front.log.WaitFor(t, "cmd=udp", "dgrams_up=2", "dgrams_down=2", "via="+tc.via)
		})
	}
}

// BIND driven for real: an active-mode FTP download by the netkit ftp
// client under Dante's socksify (dante-client), from vsftpd. The client's
// data connection listener is our BIND listener; vsftpd connects to it.
func TestActiveFTPThroughBind(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	empty := filepath.Join(dir, "empty")
	for _, d := range []string{dir, root, empty} {
		os.MkdirAll(d, 0o755)
		os.Chmod(d, 0o755)
	}
	os.WriteFile(filepath.Join(root, "file.txt"), []byte("hello over active ftp\n"), 0o644)
	port := relaytest.FreePort(t)
	ftpConf := writeFile(t, "vsftpd.conf", fmt.Sprintf(`listen=YES
listen_ipv6=NO
listen_address=127.0.0.7
listen_port=%d
background=NO
anonymous_enable=YES
anon_root=%s
ftp_username=ftp
local_enable=NO
write_enable=NO
connect_from_port_20=NO
port_enable=YES
pasv_enable=NO
seccomp_sandbox=NO
secure_chroot_dir=%s
xferlog_enable=NO
`, port, root, empty))
	vs := relaytest.StartDaemon(t, "/usr/sbin/vsftpd", ftpConf)
	vs.WaitTCP(t, "127.0.0.7:"+strconv.Itoa(port))

	conf := writeFile(t, "sockd.conf", admitLoopback)
	p := startSockd(t, "-config", conf)
	host, sport, _ := net.SplitHostPort(p.addr())
	client := writeFile(t, "dante.conf", fmt.Sprintf(`route {
  from: 0.0.0.0/0 to: 0.0.0.0/0 via: %s port = %s
  proxyprotocol: socks_v5
  method: none
  command: connect bind
}
`, host, sport))
	cmd := exec.Command("socksify", "ftp", "-n", "-v", "127.0.0.7", strconv.Itoa(port))
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "SOCKS_CONF="+client)
	cmd.Stdin = strings.NewReader("user anonymous x\nbinary\npassive off\nget file.txt got.txt\nquit\n")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("socksify ftp: %v\n%s", err, out)
	}
	got, _ := os.ReadFile(filepath.Join(dir, "got.txt"))
	if string(got) != "hello over active ftp\n" {
		t.Fatalf("downloaded %q\nftp said:\n%s\nvsftpd:\n%s", got, out, vs.Output())
	}
	// The data connection came through a BIND from a request naming no
	// address, judged by the peer's.
	p.log.WaitFor(t, "proto=socks5", "cmd=bind", "connected=127.0.0.7:", "reply=0", "bytes_down=22")
}
