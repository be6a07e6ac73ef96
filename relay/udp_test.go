package relay_test

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/sockd-ng/sockd/relay"
	"github.com/sockd-ng/sockd/relay/relaytest"
)

// udpEcho is a UDP echo server that remembers who sent to it.
type udpEcho struct {
	addr netip.AddrPort
	mu   sync.Mutex
	from []netip.AddrPort
}

func startUDPEcho(t *testing.T) *udpEcho { return startUDPEchoOn(t, "127.0.0.1") }

func (e *udpEcho) last() netip.AddrPort {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.from[len(e.from)-1]
}

// associate opens a UDP association and returns the control connection
// and the relay address.
func associate(t *testing.T, srv string) (net.Conn, netip.AddrPort) {
	t.Helper()
	c := dial(t, srv, "")
	c.Write([]byte{5, 1, 0, 5, 3, 0, 1, 0, 0, 0, 0, 0, 0})
	expect(t, c, []byte{5, 0})
	code, relayAddr := readReply(t, c, true)
	if code != 0 {
		t.Fatalf("UDP ASSOCIATE reply %d", code)
	}
	return c, relayAddr
}

// udpClient is the client's UDP socket.
func udpClient(t *testing.T, ip string) *net.UDPConn {
	t.Helper()
	u, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(ip)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	return u
}

// header is a SOCKS5 UDP request header: RSV, FRAG, ATYP, address, port.
func header(frag byte, to netip.AddrPort) []byte {
	ip := to.Addr().As4()
	b := append([]byte{0, 0, frag, 1}, ip[:]...)
	return binary.BigEndian.AppendUint16(b, to.Port())
}

func nameHeader(name string, port uint16) []byte {
	b := append([]byte{0, 0, 0, 3, byte(len(name))}, name...)
	return binary.BigEndian.AppendUint16(b, port)
}

// recv reads one datagram, or nothing within wait.
func recv(u *net.UDPConn, wait time.Duration) ([]byte, bool) {
	u.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 65535)
	n, _, err := u.ReadFromUDPAddrPort(buf)
	if err != nil {
		return nil, false
	}
	return buf[:n], true
}

func TestUDPAssociate(t *testing.T) {
	relaytest.CheckLeaks(t)
	echo := startUDPEcho(t)
	denied := startUDPEcho(t)
	dns := relaytest.DNS(t, "host-record=echo.test,127.0.0.1")
	rules := "deny ALL 0.0.0.0 127.0.0.1/32 eq " + itoa(denied.addr.Port()) + "\npermit 127.0.0.0/8\n"
	srv := relaytest.NewServer(t, rules, func(s *relay.Server) { s.Resolver = relaytest.Resolver(dns) })
	ctl, relayAddr := associate(t, srv.Addr)
	if relayAddr.Addr() != netip.MustParseAddr("127.0.0.1") {
		t.Errorf("relay on %s, want the address the client reached", relayAddr)
	}
	u := udpClient(t, "127.0.0.1")
	send := func(u *net.UDPConn, b []byte) {
		if _, err := u.WriteToUDPAddrPort(b, relayAddr); err != nil {
			t.Fatal(err)
		}
	}
	wantReply := func(payload string) {
		t.Helper()
		got, ok := recv(u, 5*time.Second)
		want := append(header(0, echo.addr), payload...)
		if !ok || !bytes.Equal(got, want) {
			t.Fatalf("reply %q, want %q", got, want)
		}
	}
	noReply := func(what string) {
		t.Helper()
		if got, ok := recv(u, 300*time.Millisecond); ok {
			t.Fatalf("%s: got a reply %q", what, got)
		}
	}
	t.Run("round trip", func(t *testing.T) {
		send(u, append(header(0, echo.addr), "ping"...))
		wantReply("ping")
	})
	t.Run("a name, resolved by the server", func(t *testing.T) {
		send(u, append(nameHeader("echo.test", echo.addr.Port()), "by name"...))
		wantReply("by name")
	})
	t.Run("FRAG not 0 is dropped", func(t *testing.T) {
		send(u, append(header(1, echo.addr), "fragment"...))
		noReply("fragment")
	})
	t.Run("a denied destination is dropped", func(t *testing.T) {
		send(u, append(header(0, denied.addr), "denied"...))
		noReply("denied destination")
		denied.mu.Lock()
		defer denied.mu.Unlock()
		if len(denied.from) != 0 {
			t.Error("the denied destination received a datagram")
		}
	})
	t.Run("a foreign source is dropped", func(t *testing.T) {
		other := udpClient(t, "127.0.0.2")
		other.WriteToUDPAddrPort(append(header(0, echo.addr), "foreign"...), relayAddr)
		if got, ok := recv(other, 300*time.Millisecond); ok {
			t.Fatalf("a foreign source got a reply %q", got)
		}
	})
	t.Run("a remote the client never sent to is dropped", func(t *testing.T) {
		send(u, append(header(0, echo.addr), "x"...))
		wantReply("x")
		stranger := udpClient(t, "127.0.0.1")
		stranger.WriteToUDPAddrPort([]byte("unsolicited"), echo.last()) // the server's remote-facing socket
		noReply("unsolicited datagram")
	})
	t.Run("closing the control connection ends the association", func(t *testing.T) {
		ctl.Close()
		srv.Log.WaitFor(t, "cmd=udp", "dgrams_up=3", "dgrams_down=3", "dgrams_dropped=4")
		send(u, append(header(0, echo.addr), "after"...))
		noReply("after the association ended")
	})
}

// A DNS query over UDP through the server to a local DNS server.
func TestUDPDNS(t *testing.T) {
	relaytest.CheckLeaks(t)
	dnsAddr := netip.MustParseAddrPort(relaytest.DNS(t, "host-record=www.test,192.0.2.80"))
	srv := relaytest.NewServer(t, loopback)
	_, relayAddr := associate(t, srv.Addr)
	u := udpClient(t, "127.0.0.1")
	q, err := (&dnsmessage.Message{
		Header:    dnsmessage.Header{ID: 4711, RecursionDesired: true},
		Questions: []dnsmessage.Question{{Name: dnsmessage.MustNewName("www.test."), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}},
	}).Pack()
	if err != nil {
		t.Fatal(err)
	}
	u.WriteToUDPAddrPort(append(header(0, dnsAddr), q...), relayAddr)
	got, ok := recv(u, 5*time.Second)
	hl := len(header(0, dnsAddr))
	if !ok || len(got) < hl || !bytes.Equal(got[:hl], header(0, dnsAddr)) {
		t.Fatalf("reply %q", got)
	}
	var m dnsmessage.Message
	if err := m.Unpack(got[hl:]); err != nil {
		t.Fatal(err)
	}
	if m.ID != 4711 || len(m.Answers) != 1 {
		t.Fatalf("answer %+v", m)
	}
	if a, ok := m.Answers[0].Body.(*dnsmessage.AResource); !ok || netip.AddrFrom4(a.A).String() != "192.0.2.80" {
		t.Fatalf("answer %+v", m.Answers[0])
	}
}

// Through a SOCKS5 next hop the server opens its own association with the
// hop and relays both ways; through a chain of them, an association at
// every hop, each reached through the hops before it.
func TestUDPViaHop(t *testing.T) {
	relaytest.CheckLeaks(t)
	// 127.0.0.1 always goes direct (the legacy rule): use 127.0.0.5.
	e2 := startUDPEchoOn(t, "127.0.0.5")
	for _, n := range []int{1, 2, 3} {
		t.Run(itoa(uint16(n))+" hops", func(t *testing.T) {
			var hops []*relaytest.Server
			var via []string
			for range n {
				h := relaytest.NewServer(t, loopback)
				hops, via = append(hops, h), append(via, "socks5://"+h.Addr)
			}
			route := strings.Join(via, ">")
			front := relaytest.NewServer(t, loopback, func(s *relay.Server) {
				s.Decider = relaytest.CompileRoutes(t, loopback, "sockd @="+route+" ALL 0.0.0.0\n")
			})
			ctl, relayAddr := associate(t, front.Addr)
			u := udpClient(t, "127.0.0.1")
			for i := range 3 {
				udpRoundTrip(t, u, relayAddr, e2.addr, "via hop "+itoa(uint16(i)))
			}
			ctl.Close()
			front.Log.WaitFor(t, "cmd=udp", "via="+route, "dgrams_up=3", "dgrams_down=3")
			for _, h := range hops {
				// Every hop relayed the 3 datagrams each way, and ended
				// its association when the front closed it.
				h.Log.WaitFor(t, "cmd=udp", "dgrams_up=3", "dgrams_down=3")
			}
		})
	}
}

// Through a list of next hops, datagrams take the first hop that answers:
// one that refuses connections is skipped.
func TestUDPViaHopFailover(t *testing.T) {
	relaytest.CheckLeaks(t)
	dead := "127.0.0.1:" + strconv.Itoa(relaytest.FreePort(t))
	hop := relaytest.NewServer(t, loopback)
	front := relaytest.NewServer(t, loopback, func(s *relay.Server) {
		s.Decider = relaytest.CompileRoutes(t, loopback, "sockd @=socks5://"+dead+",socks5://"+hop.Addr+" ALL 0.0.0.0\n")
	})
	e2 := startUDPEchoOn(t, "127.0.0.5")
	ctl, relayAddr := associate(t, front.Addr)
	u := udpClient(t, "127.0.0.1")
	for i := range 2 {
		udpRoundTrip(t, u, relayAddr, e2.addr, "failover "+itoa(uint16(i)))
	}
	ctl.Close()
	front.Log.WaitFor(t, "next hop failed; trying the next", "via=socks5://"+dead)
	front.Log.WaitFor(t, "cmd=udp", "via=socks5://"+hop.Addr, "dgrams_up=2", "dgrams_down=2")
}

// A hop that ends its association (here at its idle limit) is asked for a
// new one when the next datagram comes.
func TestUDPViaHopReassociates(t *testing.T) {
	relaytest.CheckLeaks(t)
	hop := relaytest.NewServer(t, loopback, func(s *relay.Server) { s.UDPTimeout = 400 * time.Millisecond })
	front := relaytest.NewServer(t, loopback, func(s *relay.Server) {
		s.Decider = relaytest.CompileRoutes(t, loopback, "sockd @=socks5://"+hop.Addr+" ALL 0.0.0.0\n")
	})
	e2 := startUDPEchoOn(t, "127.0.0.5")
	ctl, relayAddr := associate(t, front.Addr)
	u := udpClient(t, "127.0.0.1")
	udpRoundTrip(t, u, relayAddr, e2.addr, "first")
	hop.Log.WaitFor(t, "cmd=udp", "idle timeout", "dgrams_up=1", "dgrams_down=1")
	// The front learns of it when the control connection closes; until
	// then a datagram may still go to the old relay and be lost.
	deadline := time.Now().Add(5 * time.Second)
	for {
		u.WriteToUDPAddrPort(append(header(0, e2.addr), "again"...), relayAddr)
		got, ok := recv(u, 200*time.Millisecond)
		if ok {
			if want := append(header(0, e2.addr), "again"...); !bytes.Equal(got, want) {
				t.Fatalf("reply %q, want %q", got, want)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no reply after the hop ended the first association")
		}
	}
	ctl.Close()
	// The second association carried the second datagram and ended with
	// ours.
	if line := hop.Log.WaitFor(t, "id=2", "cmd=udp", "dgrams_up=1", "dgrams_down=1"); strings.Contains(line, "err=") {
		t.Errorf("the second association ended with an error: %s", line)
	}
}

// HTTP and SOCKS4 hops carry no datagrams: a route with no alternative of
// SOCKS5 hops only drops them, with a log line.
func TestUDPRouteWithoutSOCKS5(t *testing.T) {
	relaytest.CheckLeaks(t)
	srv := relaytest.NewServer(t, loopback, func(s *relay.Server) {
		s.Decider = relaytest.CompileRoutes(t, loopback, "sockd @=http://127.0.0.1:3128,socks5://127.0.0.1:1081>socks4://127.0.0.1:1082 ALL 0.0.0.0\n")
	})
	e2 := startUDPEchoOn(t, "127.0.0.5")
	ctl, relayAddr := associate(t, srv.Addr)
	u := udpClient(t, "127.0.0.1")
	u.WriteToUDPAddrPort(append(header(0, e2.addr), "dropped"...), relayAddr)
	if got, ok := recv(u, 300*time.Millisecond); ok {
		t.Fatalf("got a reply %q", got)
	}
	ctl.Close()
	srv.Log.WaitFor(t, "udp destination dropped", "dst="+e2.addr.String(), "http://127.0.0.1:3128")
	srv.Log.WaitFor(t, "cmd=udp", "dgrams_up=0", "dgrams_down=0", "dgrams_dropped=1")
}

// sockd.route chooses the source of datagrams to direct destinations; a
// destination no line covers is dropped.
func TestUDPInterfaces(t *testing.T) {
	relaytest.CheckLeaks(t)
	covered := startUDPEchoOn(t, "127.0.0.5")
	uncovered := startUDPEchoOn(t, "127.0.0.6")
	srv := relaytest.NewServer(t, loopback, func(s *relay.Server) {
		s.Decider = relaytest.CompileInterfaces(t, loopback, "", "127.0.0.2 127.0.0.5 255.255.255.255\n")
	})
	ctl, relayAddr := associate(t, srv.Addr)
	u := udpClient(t, "127.0.0.1")
	udpRoundTrip(t, u, relayAddr, covered.addr, "covered")
	if from := covered.last().Addr(); from != netip.MustParseAddr("127.0.0.2") {
		t.Errorf("datagram came from %s, want 127.0.0.2 (sockd.route)", from)
	}
	u.WriteToUDPAddrPort(append(header(0, uncovered.addr), "uncovered"...), relayAddr)
	if got, ok := recv(u, 300*time.Millisecond); ok {
		t.Fatalf("uncovered destination: got a reply %q", got)
	}
	uncovered.mu.Lock()
	n := len(uncovered.from)
	uncovered.mu.Unlock()
	if n != 0 {
		t.Error("a destination sockd.route does not cover received a datagram")
	}
	ctl.Close()
	srv.Log.WaitFor(t, "udp destination dropped", "dst=127.0.0.6", "no sockd.route line")
	srv.Log.WaitFor(t, "cmd=udp", "dgrams_up=1", "dgrams_down=1", "dgrams_dropped=1")
}

// udpRoundTrip sends msg to an echo server at to through the association
// and expects it back, wrapped.
func udpRoundTrip(t *testing.T, u *net.UDPConn, relayAddr, to netip.AddrPort, msg string) {
	t.Helper()
	u.WriteToUDPAddrPort(append(header(0, to), msg...), relayAddr)
	got, ok := recv(u, 5*time.Second)
	if want := append(header(0, to), msg...); !ok || !bytes.Equal(got, want) {
		t.Fatalf("reply %q, want %q", got, want)
	}
}

func startUDPEchoOn(t *testing.T, ip string) *udpEcho {
	t.Helper()
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(ip)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	e := &udpEcho{addr: pc.LocalAddr().(*net.UDPAddr).AddrPort()}
	go func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			e.mu.Lock()
			e.from = append(e.from, from)
			e.mu.Unlock()
			pc.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	return e
}

func itoa(n uint16) string { return netip.AddrPortFrom(netip.IPv4Unspecified(), n).String()[8:] }

// A client that no rule could ever let send a datagram gets no association
// (and no sockets): REP 2.
func TestUDPAssociateRefused(t *testing.T) {
	relaytest.CheckLeaks(t)
	srv := relaytest.NewServer(t, "deny 127.0.0.2/32\npermit 127.0.0.0/8 192.0.2.53/32 eq 53\n")
	c := dial(t, srv.Addr, "127.0.0.2")
	c.Write([]byte{5, 1, 0, 5, 3, 0, 1, 0, 0, 0, 0, 0, 0})
	expect(t, c, append([]byte{5, 0}, denied5...))
	// One who may reach a DNS server gets one.
	_, relayAddr := associate(t, srv.Addr)
	if !relayAddr.IsValid() {
		t.Fatal("no association")
	}
	srv.Log.WaitFor(t, "cmd=udp", "client=127.0.0.2", "rule=sockd.conf:1", "action=deny", "reply=2")
}

// A burst of datagrams, read and sent in batches, arrives whole and in
// order: sizes from empty to 60,000 bytes, two destinations interleaved (so
// batches split between them), with a datagram to a denied destination and
// a malformed one among them.
func TestUDPBurst(t *testing.T) {
	relaytest.CheckLeaks(t)
	type sink struct {
		addr netip.AddrPort
		mu   sync.Mutex
		got  [][]byte
	}
	start := func() *sink {
		pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		pc.SetReadBuffer(8 << 20)
		t.Cleanup(func() { pc.Close() })
		s := &sink{addr: pc.LocalAddr().(*net.UDPAddr).AddrPort()}
		go func() {
			buf := make([]byte, 65535)
			for {
				n, _, err := pc.ReadFromUDPAddrPort(buf)
				if err != nil {
					return
				}
				s.mu.Lock()
				s.got = append(s.got, bytes.Clone(buf[:n]))
				s.mu.Unlock()
			}
		}()
		return s
	}
	a, b, denied := start(), start(), start()
	srv := relaytest.NewServer(t, "deny ALL 0.0.0.0 127.0.0.1/32 eq "+itoa(denied.addr.Port())+"\n"+loopback)
	ctl, relayAddr := associate(t, srv.Addr)
	defer ctl.Close()
	u := udpClient(t, "127.0.0.1")
	const n = 300
	var want [2][][]byte
	for i := range n {
		size := (i * 137) % 1400
		if i%50 == 7 {
			size = 60000
		}
		p := make([]byte, size)
		for j := range p {
			p[j] = byte(i + j)
		}
		to := [2]*sink{a, b}[i%2]
		want[i%2] = append(want[i%2], p)
		if _, err := u.WriteToUDPAddrPort(append(header(0, to.addr), p...), relayAddr); err != nil {
			t.Fatal(err)
		}
		if i == 100 {
			u.WriteToUDPAddrPort(append(header(0, denied.addr), "no"...), relayAddr)
			u.WriteToUDPAddrPort([]byte{0, 0}, relayAddr) // malformed
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		a.mu.Lock()
		b.mu.Lock()
		done := len(a.got) == len(want[0]) && len(b.got) == len(want[1])
		b.mu.Unlock()
		a.mu.Unlock()
		if done || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	for k, s := range []*sink{a, b} {
		s.mu.Lock()
		if len(s.got) != len(want[k]) {
			t.Errorf("destination %d: %d datagrams, want %d", k, len(s.got), len(want[k]))
		}
		for i := range min(len(s.got), len(want[k])) {
			if !bytes.Equal(s.got[i], want[k][i]) {
				t.Errorf("destination %d, datagram %d: %d bytes, want %d (or other bytes)", k, i, len(s.got[i]), len(want[k][i]))
				break
			}
		}
		s.mu.Unlock()
	}
	if len(denied.got) != 0 {
		t.Error("the denied destination got a datagram")
	}
	ctl.Close()
	srv.Log.WaitFor(t, "cmd=udp", "dgrams_up="+strconv.Itoa(n), "dgrams_dropped=2", "dropped=\"malformed:1 denied:1\"")
}
