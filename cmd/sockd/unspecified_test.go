package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/proxy"

	"github.com/sockd-ng/sockd/relay/relaytest"
)

// unspecifiedDNS is a DNS server of the test's own (dnsmasq) that answers
// with unspecified addresses, and names the control destination.
func unspecifiedDNS(t *testing.T) string {
	return relaytest.DNS(t,
		"host-record=zero.test,0.0.0.0",
		"host-record=six.test,::",
		"host-record=mapped.test,::ffff:0.0.0.0",
		"host-record=zero8.test,0.1.2.3",
		"address=/null.test/#", // dnsmasq's null answer: 0.0.0.0 and ::
		"host-record=hop.test,0.0.0.0",
		"host-record=ok.test,127.0.0.5",
	)
}

// countingListener accepts TCP connections on addr (host:0) and counts
// them; it returns its address and the count.
func countingListener(t *testing.T, host string) (string, *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var n atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			c.Close()
		}
	}()
	return ln.Addr().String(), &n
}

// countingUDP is a UDP echo server on host that counts what it receives.
func countingUDP(t *testing.T, host string) (netip.AddrPort, *atomic.Int64) {
	t.Helper()
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(host)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	var n atomic.Int64
	go func() {
		buf := make([]byte, 65535)
		for {
			m, from, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			n.Add(1)
			pc.WriteToUDPAddrPort(buf[:m], from)
		}
	}()
	return pc.LocalAddr().(*net.UDPAddr).AddrPort(), &n
}

// socksAddr encodes a SOCKS5 ATYP, address and port for an address or a
// name.
func socksAddr(host string, port uint16) []byte {
	var b []byte
	if a, err := netip.ParseAddr(host); err == nil && a.Is4() {
		b = append([]byte{1}, a.AsSlice()...)
	} else if err == nil {
		b = append([]byte{4}, a.AsSlice()...) // IPv6, mapped forms included
	} else {
		b = append([]byte{3, byte(len(host))}, host...)
	}
	return binary.BigEndian.AppendUint16(b, port)
}

// socks5Request sends a SOCKS5 request (no authentication) for cmd and
// host:port on a new connection to srv and returns the connection, the
// first reply's REP and its bound address.
func socks5Request(t *testing.T, srv string, cmd byte, host string, port uint16) (net.Conn, byte, netip.AddrPort) {
	t.Helper()
	c, err := net.DialTimeout("tcp", srv, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write(append([]byte{5, 1, 0, 5, cmd, 0}, socksAddr(host, port)...))
	var head [6]byte
	if _, err := io.ReadFull(c, head[:]); err != nil || head[0] != 5 || head[1] != 0 || head[2] != 5 {
		t.Fatalf("request %d %s:%d: reply %v %v", cmd, host, port, head, err)
	}
	var bound netip.AddrPort
	switch head[5] {
	case 1, 4:
		b := make([]byte, map[byte]int{1: 4, 4: 16}[head[5]]+2)
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatalf("request %d %s:%d: reply: %v", cmd, host, port, err)
		}
		a, _ := netip.AddrFromSlice(b[:len(b)-2])
		bound = netip.AddrPortFrom(a.Unmap(), binary.BigEndian.Uint16(b[len(b)-2:]))
	default:
		t.Fatalf("request %d %s:%d: reply ATYP %d", cmd, host, port, head[5])
	}
	c.SetDeadline(time.Time{})
	return c, head[3], bound
}

// No path reaches an unspecified address (0.0.0.0/8, ::, their IPv4-mapped
// forms), which on Linux is this host, behind a rule that denies loopback
// destinations: TCP CONNECT by address and by name over SOCKS4, 4a and 5,
// UDP datagrams by address and by name, BIND's expected peer, a next hop
// given by name, and explain.
func TestUnspecifiedDestinations(t *testing.T) {
	dns := unspecifiedDNS(t)
	// What an unspecified address reaches: listeners on this host's
	// loopback, which the rules deny as destinations.
	v4, hits4 := countingListener(t, "127.0.0.1")
	v6, hits6 := countingListener(t, "::1")
	p4, p6 := portOf(v4), portOf(v6)
	controlURL, _ := backendOn(t, "127.0.0.5") // permitted: the server relays at all
	conf := writeFile(t, "sockd.conf", strings.Join([]string{
		"deny ALL 0.0.0.0 127.0.0.1 255.255.255.255",
		"deny ALL 0.0.0.0 [::1]",
		"permit 127.0.0.0 255.0.0.0",
	}, "\n")+"\n")
	p := startSockd(t, "-config", conf, "-nameserver", dns)
	if out, code := relaytest.Curl(t, "--socks5-hostname", p.addr(), controlURL); code != 0 {
		t.Fatalf("control: curl exit %d %s", code, out)
	}

	t.Run("tcp", func(t *testing.T) {
		for _, tc := range []struct{ flag, url string }{
			{"--socks5-hostname", "http://zero.test:" + p4 + "/"},
			{"--socks5-hostname", "http://null.test:" + p4 + "/"},
			{"--socks5-hostname", "http://six.test:" + p6 + "/"},
			{"--socks5-hostname", "http://mapped.test:" + p4 + "/"},
			{"--socks5-hostname", "http://zero8.test:" + p4 + "/"},
			{"--socks5-hostname", "http://0.0.0.0:" + p4 + "/"}, // an address sent as a name
			{"--socks4a", "http://zero.test:" + p4 + "/"},
			{"--socks4a", "http://null.test:" + p4 + "/"},
			{"--socks5", "http://0.0.0.0:" + p4 + "/"},
			{"--socks5", "http://[::]:" + p6 + "/"},
			{"--socks4", "http://0.0.0.0:" + p4 + "/"},
		} {
			t.Run(tc.flag+" "+tc.url, func(t *testing.T) {
				// 97: curl's "proxy handshake error", here a refusal
				// (SOCKS5 REP 2, SOCKS4 91) rather than a failure to
				// connect.
				if out, code := relaytest.Curl(t, tc.flag, p.addr(), tc.url); code != 97 {
					t.Errorf("curl exit %d, want 97: %s", code, out)
				}
			})
		}
		// SOCKS5 replies exactly "not allowed by ruleset" (REP 2), for the
		// IPv4-mapped forms too, through a client nobody here wrote and
		// on the wire.
		xd, _ := proxy.SOCKS5("tcp", p.addr(), nil, &net.Dialer{Timeout: 5 * time.Second})
		for _, target := range []string{"[::ffff:0.0.0.0]:" + p4, "[::ffff:0.0.0.7]:" + p4, "zero.test:" + p4, "six.test:" + p6} {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			c, err := xd.(proxy.ContextDialer).DialContext(ctx, "tcp", target)
			cancel()
			if err == nil {
				c.Close()
				t.Errorf("x/net/proxy reached %s", target)
			} else if !strings.Contains(err.Error(), "not allowed by ruleset") {
				t.Errorf("x/net/proxy %s: %v, want not allowed by ruleset", target, err)
			}
		}
		for _, host := range []string{"::ffff:0.0.0.0", "0.9.9.9", "mapped.test", "null.test"} {
			if _, rep, _ := socks5Request(t, p.addr(), 1, host, mustPort(p4)); rep != 2 {
				t.Errorf("CONNECT %s: REP %d, want 2", host, rep)
			}
		}
		if n := hits4.Load() + hits6.Load(); n != 0 {
			t.Fatalf("%d connections reached this host through an unspecified address", n)
		}
		p.log.WaitFor(t, "dst=zero.test:"+p4, "action=deny", "reason=\"unspecified destination address: it reaches this host\"", "reply=2")
		p.log.WaitFor(t, "proto=socks4a", "dst=zero.test:"+p4, "reason=\"unspecified destination address", "reply=91")
		p.log.WaitFor(t, "dst=[::]:"+p6, "reason=\"unspecified destination address", "reply=2")
	})

	t.Run("udp", func(t *testing.T) {
		e4, got4 := countingUDP(t, "127.0.0.1")
		e6, got6 := countingUDP(t, "::1")
		control, _ := countingUDP(t, "127.0.0.5")
		ctl, rep, relayAddr := socks5Request(t, p.addr(), 3, "0.0.0.0", 0)
		if rep != 0 {
			t.Fatalf("UDP ASSOCIATE: REP %d", rep)
		}
		u, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		defer u.Close()
		dsts := []struct {
			host string
			port uint16
		}{
			{"0.0.0.0", e4.Port()}, {"0.1.2.3", e4.Port()}, {"::", e6.Port()}, {"::ffff:0.0.0.0", e4.Port()},
			{"zero.test", e4.Port()}, {"six.test", e6.Port()}, {"mapped.test", e4.Port()}, {"null.test", e4.Port()},
			{"0.0.0.0", e4.Port()}, // again: from the decision cache
		}
		for _, d := range dsts {
			u.WriteToUDPAddrPort(append(append([]byte{0, 0, 0}, socksAddr(d.host, d.port)...), "x"...), relayAddr)
		}
		// The control datagram goes last; once its echo is back, the ones
		// before it were judged.
		u.WriteToUDPAddrPort(append(append([]byte{0, 0, 0}, socksAddr("ok.test", control.Port())...), "ok"...), relayAddr)
		u.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 2048)
		n, _, err := u.ReadFromUDPAddrPort(buf)
		if err != nil || !strings.HasSuffix(string(buf[:n]), "ok") {
			t.Fatalf("control datagram: %q %v", buf[:n], err)
		}
		time.Sleep(200 * time.Millisecond) // any datagram let through would have arrived
		if n := got4.Load() + got6.Load(); n != 0 {
			t.Fatalf("%d datagrams reached this host through an unspecified address", n)
		}
		ctl.Close()
		p.log.WaitFor(t, "cmd=udp", "dgrams_up=1", "dgrams_down=1", fmt.Sprintf("dgrams_dropped=%d", len(dsts)), fmt.Sprintf("dropped=unspecified:%d", len(dsts)))
	})

	t.Run("bind", func(t *testing.T) {
		for _, host := range []string{"zero.test", "six.test", "null.test"} {
			if _, rep, _ := socks5Request(t, p.addr(), 2, host, 21); rep != 2 {
				t.Errorf("BIND expecting %s: REP %d, want 2", host, rep)
			}
		}
		p.log.WaitFor(t, "cmd=bind", "dst=zero.test:21", "reason=\"unspecified destination address")
	})

	t.Run("next hop by name", func(t *testing.T) {
		hop, hopHits := countingListener(t, "127.0.0.1")
		hp := portOf(hop)
		routed := startSockd(t, "-config", writeFile(t, "all.conf", admitLoopback), "-nameserver", dns,
			"-routes", writeFile(t, "socks.conf", "sockd @=socks5://hop.test:"+hp+",hop.test:"+hp+" ALL 0.0.0.0\n"))
		for _, flag := range []string{"--socks5", "--socks4"} {
			if out, code := relaytest.Curl(t, flag, routed.addr(), controlURL); code != 97 {
				t.Errorf("%s through a hop named as this host: curl exit %d, want 97: %s", flag, code, out)
			}
		}
		if n := hopHits.Load(); n != 0 {
			t.Fatalf("%d connections to a next hop that resolves to 0.0.0.0", n)
		}
		// Both alternatives were tried: the first fails over to the second.
		routed.log.WaitFor(t, "next hop failed; trying the next", "via=socks5://hop.test:"+hp, "next hop hop.test: unspecified address")
		routed.log.WaitFor(t, "proto=socks5", "via=hop.test:"+hp, "reply=2", "next hop hop.test: unspecified address")
		// A hop written as an unspecified address is a configuration error.
		_, stderr, code := sockd(t, "check", "-config", conf, "-routes", writeFile(t, "bad.conf", "sockd @=socks5://0.0.0.0:1080 ALL 0.0.0.0\n"))
		if code != 1 || !strings.Contains(stderr, "bad.conf:1:9: next hop 0.0.0.0 is an unspecified address") {
			t.Errorf("check: exit %d %s", code, stderr)
		}
	})

	t.Run("explain", func(t *testing.T) {
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"zero.test", p4}, "deny default reply 91\naddress 0.0.0.0 deny default\n# 0.0.0.0 is an unspecified address: it reaches this host, so it is never a destination\n"},
			{[]string{"0.0.0.0", p4}, "deny default reply 91\n# 0.0.0.0 is an unspecified address: it reaches this host, so it is never a destination\n"},
			{[]string{"-command", "udp", "::", p6}, "deny default reply 91\n# :: is an unspecified address: it reaches this host, so it is never a destination\n"},
			{[]string{"ok.test", "80"}, "permit " + conf + ":3 reply 90\naddress 127.0.0.5 permit " + conf + ":3\nroute direct\n"},
		} {
			out, _, _ := sockd(t, append([]string{"explain", "-config", conf, "-nameserver", dns}, tc.args...)...)
			if out != tc.want {
				t.Errorf("explain %v:\n%s\nwant:\n%s", tc.args, out, tc.want)
			}
		}
	})
}

func mustPort(s string) uint16 {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		panic(err)
	}
	return uint16(n)
}
