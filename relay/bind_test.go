package relay_test

import (
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sockd-ng/sockd/relay"
	"github.com/sockd-ng/sockd/relay/relaytest"
)

// socks4Bind is a SOCKS4 BIND request naming the application server at
// addr.
func socks4Bind(addr string) []byte {
	b := socks4Connect(addr, "")
	b[1] = 2
	return b
}

func socks5Bind(addr string) []byte {
	b := socks5Connect(addr)
	b[1] = 2
	return b
}

// readReply reads a reply of the client's protocol and returns its code
// and address.
func readReply(t *testing.T, c net.Conn, socks5 bool) (byte, netip.AddrPort) {
	t.Helper()
	if !socks5 {
		b := make([]byte, 8)
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatalf("reply: %v", err)
		}
		return b[1], netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), binary.BigEndian.Uint16(b[2:4]))
	}
	b := make([]byte, 10)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("reply: %v", err)
	}
	if b[3] != 1 {
		t.Fatalf("reply ATYP %d, want IPv4: %v", b[3], b)
	}
	return b[1], netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), binary.BigEndian.Uint16(b[8:10]))
}

// startBind sends a BIND for app and returns the control connection and
// the address the server listens on.
func startBind(t *testing.T, srv string, socks5 bool, app string) (net.Conn, netip.AddrPort) {
	t.Helper()
	c := dial(t, srv, "")
	if socks5 {
		c.Write(append([]byte{5, 1, 0}, socks5Bind(app)...))
		expect(t, c, []byte{5, 0})
	} else {
		c.Write(socks4Bind(app))
	}
	code, addr := readReply(t, c, socks5)
	if code != 90 && code != 0 {
		t.Fatalf("first BIND reply %d", code)
	}
	return c, addr
}

// BIND, both versions, every reply path: the peer the request named, a
// peer from elsewhere, no peer in time, the client hanging up, a denial.
func TestBind(t *testing.T) {
	relaytest.CheckLeaks(t)
	rules := "deny ALL 0.0.0.0 127.0.0.9 255.255.255.255\npermit 127.0.0.0/8\n"
	srv := relaytest.NewServer(t, rules, func(s *relay.Server) { s.BindTimeout = 500 * time.Millisecond })
	const app = "127.0.0.1:21" // the application server of the primary connection
	for _, v5 := range []bool{false, true} {
		name := map[bool]string{false: "socks4", true: "socks5"}[v5]
		ok, denied := byte(90), byte(91)
		if v5 {
			ok, denied = 0, 2
		}
		t.Run(name+"/peer the request named", func(t *testing.T) {
			c, at := startBind(t, srv.Addr, v5, app)
			if at.Addr() != netip.MustParseAddr("127.0.0.1") || at.Port() == 0 {
				t.Fatalf("listening on %s, want the address the client reached", at)
			}
			peer := dial(t, at.String(), "127.0.0.1")
			code, from := readReply(t, c, v5)
			if code != ok || from.String() != peer.LocalAddr().String() {
				t.Fatalf("second reply %d %s, want %d %s", code, from, ok, peer.LocalAddr())
			}
			peer.Write([]byte("220 hello"))
			expect(t, c, []byte("220 hello"))
			c.Write([]byte("RETR x"))
			expect(t, peer, []byte("RETR x"))
		})
		t.Run(name+"/peer from another host", func(t *testing.T) {
			c, at := startBind(t, srv.Addr, v5, app)
			dial(t, at.String(), "127.0.0.2")
			if code, _ := readReply(t, c, v5); code != denied {
				t.Fatalf("second reply %d, want %d", code, denied)
			}
			expectClosed(t, c)
		})
		t.Run(name+"/no peer in time", func(t *testing.T) {
			c, _ := startBind(t, srv.Addr, v5, app)
			want := denied
			if v5 {
				want = 6 // TTL expired
			}
			if code, _ := readReply(t, c, v5); code != want {
				t.Fatalf("second reply %d, want %d", code, want)
			}
			expectClosed(t, c)
		})
		t.Run(name+"/client hangs up while waiting", func(t *testing.T) {
			c, at := startBind(t, srv.Addr, v5, app)
			c.Close()
			srv.Log.WaitFor(t, "proto="+name, "cmd=bind", "client closed while waiting")
			// The listener is gone with the session.
			if cc, err := net.DialTimeout("tcp", at.String(), time.Second); err == nil {
				cc.Close()
				t.Error("still listening after the client left")
			}
		})
		t.Run(name+"/denied", func(t *testing.T) {
			c := dial(t, srv.Addr, "")
			if v5 {
				c.Write(append([]byte{5, 1, 0}, socks5Bind("127.0.0.9:21")...))
				expect(t, c, append([]byte{5, 0}, denied5...))
			} else {
				c.Write(socks4Bind("127.0.0.9:21"))
				expect(t, c, denied4)
			}
		})
	}
	srv.Log.WaitFor(t, "cmd=bind", "connected=127.0.0.1:", "reply=90")
	srv.Log.WaitFor(t, "cmd=bind", "reply=6", "no inbound connection within the BIND time limit")
}

// BIND through a next hop: the hop listens; its replies are passed on and
// the peer is still checked here — also when the hop (Dante, whose
// bindreply rules allow any peer here) would let another one through.
func TestBindViaHop(t *testing.T) {
	relaytest.CheckLeaks(t)
	const rules = "permit 127.0.0.0/8\n"
	for _, tc := range []struct {
		name string
		hop  string
	}{
		{"our server as the hop", relaytest.NewServer(t, rules).Addr},
		{"Dante as the hop", relaytest.Dante(t, "none")},
		{"a SOCKS4 hop", "socks4://" + relaytest.NewServer(t, rules).Addr},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hop := tc.hop
			if !strings.Contains(hop, "://") {
				hop = "socks5://" + hop
			}
			front := relaytest.NewServer(t, rules, func(s *relay.Server) {
				s.Decider = relaytest.CompileRoutes(t, rules, "sockd @="+hop+" ALL 0.0.0.0\n")
			})
			c, at := startBind(t, front.Addr, true, "127.0.0.5:21")
			peer := dial(t, at.String(), "127.0.0.5")
			code, from := readReply(t, c, true)
			if code != 0 || from.String() != peer.LocalAddr().String() {
				t.Fatalf("second reply %d %s, want 0 %s", code, from, peer.LocalAddr())
			}
			peer.Write([]byte("via hop"))
			expect(t, c, []byte("via hop"))
			c.Write([]byte("and back"))
			expect(t, peer, []byte("and back"))
			c.Close()
			peer.Close()
			front.Log.WaitFor(t, "cmd=bind", "via="+hop, "connected=127.0.0.5")
		})
	}
	t.Run("a peer the request did not name", func(t *testing.T) {
		// A rogue hop that reports any peer: the check here must catch it.
		rogue := relaytest.Serve(t, func(c net.Conn) {
			buf := make([]byte, 64)
			io.ReadFull(c, buf[:3]) // greeting: 5, 1, 0
			c.Write([]byte{5, 0})
			io.ReadFull(c, buf[:10])                              // BIND request, IPv4
			c.Write([]byte{5, 0, 0, 1, 127, 0, 0, 1, 0x30, 0x39}) // listening on 127.0.0.1:12345
			c.Write([]byte{5, 0, 0, 1, 127, 0, 0, 6, 0x04, 0xd2}) // peer 127.0.0.6:1234
			io.Copy(io.Discard, c)
		})
		front := relaytest.NewServer(t, rules, func(s *relay.Server) {
			s.Decider = relaytest.CompileRoutes(t, rules, "sockd @=socks5://"+rogue+" ALL 0.0.0.0\n")
		})
		c, at := startBind(t, front.Addr, true, "127.0.0.5:21")
		if at.String() != "127.0.0.1:12345" {
			t.Errorf("first reply %s, want the hop's 127.0.0.1:12345", at)
		}
		if code, from := readReply(t, c, true); code != 2 || from.String() != "127.0.0.6:1234" {
			t.Fatalf("second reply %d %s, want 2 (not allowed) for 127.0.0.6:1234", code, from)
		}
		expectClosed(t, c)
		front.Log.WaitFor(t, "cmd=bind", "connected=127.0.0.6:1234", "BIND peer is not the host the request named")
	})
}

// A BIND that names no address (0.0.0.0, as Dante's socksify sends) takes
// any peer the rules permit as a BIND from its address.
func TestBindUnspecified(t *testing.T) {
	relaytest.CheckLeaks(t)
	rules := "deny ALL 0.0.0.0 127.0.0.2 255.255.255.255\npermit 127.0.0.0/8\n"
	srv := relaytest.NewServer(t, rules)
	for _, tc := range []struct {
		from string
		code byte
	}{{"127.0.0.7", 0}, {"127.0.0.2", 2}} {
		c, at := startBind(t, srv.Addr, true, "0.0.0.0:0")
		peer := dial(t, at.String(), tc.from)
		code, from := readReply(t, c, true)
		if code != tc.code || from.String() != peer.LocalAddr().String() {
			t.Errorf("peer from %s: second reply %d %s, want %d", tc.from, code, from, tc.code)
		}
	}
	srv.Log.WaitFor(t, "cmd=bind", "dst=0.0.0.0:0", "connected=127.0.0.2", "rule=sockd.conf:1", "reply=2")
}
