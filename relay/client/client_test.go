package client_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/proxy"

	"github.com/sockd-ng/sockd/relay"
	"github.com/sockd-ng/sockd/relay/client"
	"github.com/sockd-ng/sockd/relay/relaytest"
)

var (
	_ proxy.ContextDialer = (*client.Dialer)(nil)
	_ proxy.Dialer        = (*client.Dialer)(nil)
)

const (
	permit   = "permit 127.0.0.0 255.0.0.0\n"
	denyAll  = "deny ALL 0.0.0.0\n"
	tinyUser = "tiny"
	tinyPass = "t1ny-pass"
)

// peers are the real hops of one test: our server, Dante and tinyproxy,
// with and without authentication, and an echo backend.
type peers struct {
	echo                        string
	sockd, sockdPw, sockdAlice  *relaytest.Server
	sockdDeny, dante, danteUser string
	danteDeny, tiny, tinyAuth   string
}

func startPeers(t *testing.T) *peers {
	p := &peers{echo: relaytest.Echo(t)}
	p.sockd = relaytest.NewServer(t, permit)
	p.sockdPw = relaytest.NewServer(t, permit, func(s *relay.Server) {
		s.Auth = []relay.AuthMethod{relay.AuthPassword}
		s.Passwords = passwords{"alice": "wonder land"}
	})
	p.sockdAlice = relaytest.NewServer(t, "permit *=alice 127.0.0.0 255.0.0.0\n"+denyAll)
	p.sockdDeny = relaytest.NewServer(t, denyAll).Addr
	p.dante = dante(t, "none", dantePass)
	p.danteUser = dante(t, "username", dantePass)
	p.danteDeny = dante(t, "none", danteBlock)
	// tinyproxy may CONNECT to every peer but itself, so that it can sit
	// anywhere in a chain.
	allow := []string{p.echo, p.sockd.Addr, p.sockdPw.Addr, p.dante, p.danteUser}
	p.tiny = tinyproxy(t, "", "", allow...)
	p.tinyAuth = tinyproxy(t, tinyUser, tinyPass, allow...)
	return p
}

// TestRealPeers dials through one hop and through chains of two and three
// of our server, Dante and tinyproxy, and checks their refusals.
func TestRealPeers(t *testing.T) {
	p := startPeers(t)
	loopback := netip.MustParseAddr("127.0.0.1")

	t.Run("one hop", func(t *testing.T) {
		for _, tc := range []struct {
			name  string
			hop   client.Hop
			bound bool // a SOCKS hop reports BND.ADDR (DSTIP in SOCKS4); HTTP does not
		}{
			{name: "sockd socks4", hop: client.Hop{Proto: client.SOCKS4, Addr: p.sockd.Addr, User: "alice"}, bound: true},
			{name: "sockd socks4a", hop: client.Hop{Proto: client.SOCKS4a, Addr: p.sockd.Addr}, bound: true},
			{name: "sockd socks5", hop: client.Hop{Proto: client.SOCKS5, Addr: p.sockd.Addr}, bound: true},
			{name: "sockd socks5 RFC 1929", hop: client.Hop{Proto: client.SOCKS5, Addr: p.sockdPw.Addr, User: "alice", Password: "wonder land"}, bound: true},
			{name: "sockd socks4 USERID checked", hop: client.Hop{Proto: client.SOCKS4, Addr: p.sockdAlice.Addr, User: "alice"}, bound: true},
			{name: "dante socks5", hop: client.Hop{Proto: client.SOCKS5, Addr: p.dante}, bound: true},
			{name: "dante socks4", hop: client.Hop{Proto: client.SOCKS4, Addr: p.dante, User: "nobody"}, bound: true},
			{name: "dante socks5 username", hop: client.Hop{Proto: client.SOCKS5, Addr: p.danteUser, User: testUser, Password: testPass}, bound: true},
			{name: "tinyproxy", hop: client.Hop{Proto: client.HTTP, Addr: p.tiny}},
			{name: "tinyproxy Basic auth", hop: client.Hop{Proto: client.HTTP, Addr: p.tinyAuth, User: tinyUser, Password: tinyPass}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				d := &client.Dialer{Hops: []client.Hop{tc.hop}, Timeout: 10 * time.Second}
				c, bound, err := d.DialTCP(context.Background(), p.echo)
				if err != nil {
					t.Fatal(err)
				}
				if tc.bound != bound.IsValid() || (tc.bound && (bound.Addr() != loopback || bound.Port() == 0)) {
					t.Errorf("bound = %v, want one: %v", bound, tc.bound)
				}
				roundTrip(t, c)
			})
		}
	})

	t.Run("chains", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			hops []client.Hop
		}{
			{name: "sockd socks4 > dante socks5 username > tinyproxy auth", hops: []client.Hop{
				{Proto: client.SOCKS4, Addr: p.sockd.Addr, User: "alice"},
				{Proto: client.SOCKS5, Addr: p.danteUser, User: testUser, Password: testPass},
				{Proto: client.HTTP, Addr: p.tinyAuth, User: tinyUser, Password: tinyPass},
			}},
			{name: "tinyproxy > sockd socks5 RFC 1929", hops: []client.Hop{
				{Proto: client.HTTP, Addr: p.tiny},
				{Proto: client.SOCKS5, Addr: p.sockdPw.Addr, User: "alice", Password: "wonder land"},
			}},
			{name: "dante socks4 > sockd socks4a", hops: []client.Hop{
				{Proto: client.SOCKS4, Addr: p.dante},
				{Proto: client.SOCKS4a, Addr: p.sockd.Addr},
			}},
			{name: "sockd socks5 > tinyproxy > dante socks5", hops: []client.Hop{
				{Proto: client.SOCKS5, Addr: p.sockd.Addr},
				{Proto: client.HTTP, Addr: p.tiny},
				{Proto: client.SOCKS5, Addr: p.dante},
			}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				d := &client.Dialer{Hops: tc.hops, Timeout: 10 * time.Second}
				c, err := d.DialContext(context.Background(), "tcp", p.echo)
				if err != nil {
					t.Fatal(err)
				}
				roundTrip(t, c)
			})
		}
	})

	t.Run("refusals", func(t *testing.T) {
		for _, tc := range []struct {
			name    string
			hops    []client.Hop
			target  string // default: the echo server
			code    int
			refuser int // index of the hop that refuses
		}{
			{name: "sockd socks5 deny", hops: []client.Hop{{Proto: client.SOCKS5, Addr: p.sockdDeny}}, code: 2},
			{name: "sockd socks4 deny", hops: []client.Hop{{Proto: client.SOCKS4, Addr: p.sockdDeny}}, code: 91},
			{name: "sockd socks4a deny", hops: []client.Hop{{Proto: client.SOCKS4a, Addr: p.sockdDeny}}, code: 91},
			{name: "sockd socks4 wrong USERID", hops: []client.Hop{{Proto: client.SOCKS4, Addr: p.sockdAlice.Addr, User: "bob"}}, code: 91},
			{name: "sockd wrong password", hops: []client.Hop{{Proto: client.SOCKS5, Addr: p.sockdPw.Addr, User: "alice", Password: "looking glass"}}, code: 0xff},
			{name: "sockd password needed", hops: []client.Hop{{Proto: client.SOCKS5, Addr: p.sockdPw.Addr}}, code: 0xff},
			{name: "dante socks5 block", hops: []client.Hop{{Proto: client.SOCKS5, Addr: p.danteDeny}}, code: 2},
			{name: "dante socks4 block", hops: []client.Hop{{Proto: client.SOCKS4, Addr: p.danteDeny}}, code: 91},
			{name: "dante wrong password", hops: []client.Hop{{Proto: client.SOCKS5, Addr: p.danteUser, User: testUser, Password: "nope"}}, code: 0xff},
			{name: "dante password needed", hops: []client.Hop{{Proto: client.SOCKS5, Addr: p.danteUser}}, code: 0xff},
			{name: "tinyproxy port not allowed", hops: []client.Hop{{Proto: client.HTTP, Addr: p.tiny}}, target: p.danteDeny, code: 403},
			{name: "tinyproxy without credentials", hops: []client.Hop{{Proto: client.HTTP, Addr: p.tinyAuth}}, code: 407},
			// tinyproxy answers wrong credentials with 401, not 407.
			{name: "tinyproxy wrong password", hops: []client.Hop{{Proto: client.HTTP, Addr: p.tinyAuth, User: tinyUser, Password: "x"}}, code: 401},
			{name: "second hop refuses", hops: []client.Hop{
				{Proto: client.SOCKS5, Addr: p.sockd.Addr},
				{Proto: client.SOCKS5, Addr: p.sockdDeny},
			}, code: 2, refuser: 1},
			{name: "first hop refuses to reach the second", hops: []client.Hop{
				{Proto: client.SOCKS5, Addr: p.danteDeny},
				{Proto: client.SOCKS5, Addr: p.sockd.Addr},
			}, code: 2, refuser: 0},
		} {
			t.Run(tc.name, func(t *testing.T) {
				target := tc.target
				if target == "" {
					target = p.echo
				}
				d := &client.Dialer{Hops: tc.hops, Timeout: 10 * time.Second}
				c, err := d.DialContext(context.Background(), "tcp", target)
				var re *client.ReplyError
				if !errors.As(err, &re) {
					if c != nil {
						c.Close()
					}
					t.Fatalf("err = %v, want a *ReplyError", err)
				}
				if re.Code != tc.code || re.Hop != tc.hops[tc.refuser] || client.Retryable(err) {
					t.Errorf("got code %d from %v, retryable %v; want %d from %v, not retryable",
						re.Code, re.Hop, client.Retryable(err), tc.code, tc.hops[tc.refuser])
				}
				if want := "dial " + target + " via " + tc.hops[0].String(); !strings.HasPrefix(err.Error(), want) {
					t.Errorf("err = %q, want it to start with %q", err, want)
				}
			})
		}
	})
}

// TestNames checks who resolves names: a hop whose protocol carries names
// gets them unresolved (only it can resolve them here), and only for a
// plain SOCKS4 hop does the Dialer resolve, with its Resolver.
func TestNames(t *testing.T) {
	echo := relaytest.Echo(t)
	_, echoPort, _ := net.SplitHostPort(echo)
	dns := relaytest.DNS(t, "host-record=only.test,127.0.0.1", "host-record=v6only.test,::1", "host-record=hop.test,127.0.0.1")
	dnsResolver := relaytest.Resolver(dns)
	withDNS := relaytest.NewServer(t, permit, func(s *relay.Server) { s.Resolver = dnsResolver })
	_, withDNSPort, _ := net.SplitHostPort(withDNS.Addr)
	plain := relaytest.NewServer(t, permit) // the system resolver: cannot resolve *.test
	tiny := tinyproxy(t, "", "", echo)

	for _, tc := range []struct {
		name   string
		hops   []client.Hop
		target string
		forbid []string // names the Dialer must not resolve ("*": none at all)
		asked  []string // names it must resolve, in order
		fail   bool     // want an *net.AddrError
	}{
		{name: "socks5 hop resolves", hops: []client.Hop{{Proto: client.SOCKS5, Addr: withDNS.Addr}},
			target: "only.test:" + echoPort, forbid: []string{"*"}},
		{name: "socks4a hop resolves", hops: []client.Hop{{Proto: client.SOCKS4a, Addr: withDNS.Addr}},
			target: "only.test:" + echoPort, forbid: []string{"*"}},
		{name: "http hop resolves", hops: []client.Hop{{Proto: client.HTTP, Addr: tiny}},
			target: "localhost:" + echoPort, forbid: []string{"*"}},
		{name: "socks4: the Dialer resolves", hops: []client.Hop{{Proto: client.SOCKS4, Addr: plain.Addr}},
			target: "only.test:" + echoPort, asked: []string{"only.test"}},
		{name: "socks4: IPv6-only name", hops: []client.Hop{{Proto: client.SOCKS4, Addr: plain.Addr}},
			target: "v6only.test:" + echoPort, asked: []string{"v6only.test"}, fail: true},
		{name: "socks4: IPv6 literal", hops: []client.Hop{{Proto: client.SOCKS4, Addr: plain.Addr}},
			target: "[::1]:" + echoPort, forbid: []string{"*"}, fail: true},
		{name: "first hop by name", hops: []client.Hop{{Proto: client.SOCKS5, Addr: "hop.test:" + withDNSPort}},
			target: echo, asked: []string{"hop.test"}},
		{name: "socks4 hop asked for the next hop by name", hops: []client.Hop{
			{Proto: client.SOCKS4, Addr: plain.Addr},
			{Proto: client.SOCKS5, Addr: "hop.test:" + withDNSPort},
		}, target: "only.test:" + echoPort, asked: []string{"hop.test"}, forbid: []string{"only.test"}},
		{name: "socks5 hop asked for the next hop by name", hops: []client.Hop{
			{Proto: client.SOCKS5, Addr: withDNS.Addr},
			{Proto: client.SOCKS4a, Addr: "hop.test:" + withDNSPort},
		}, target: "only.test:" + echoPort, forbid: []string{"*"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &resolver{t: t, next: dnsResolver, forbid: tc.forbid}
			d := &client.Dialer{Hops: tc.hops, Resolver: r, Timeout: 10 * time.Second}
			c, err := d.DialContext(context.Background(), "tcp", tc.target)
			var ae *net.AddrError
			switch {
			case tc.fail:
				if !errors.As(err, &ae) {
					t.Errorf("err = %v, want a *net.AddrError", err)
				}
			case err != nil:
				t.Fatal(err)
			default:
				roundTrip(t, c)
			}
			if got := r.Asked(); strings.Join(got, " ") != strings.Join(tc.asked, " ") {
				t.Errorf("the Dialer resolved %q, want %q", got, tc.asked)
			}
		})
	}
}

// TestErrors checks the classification of failures against fake hops:
// unreachable, silent and rogue hops are retryable, the caller's own
// mistakes and cancellations are not.
func TestErrors(t *testing.T) {
	echo := relaytest.Echo(t)
	silent := blackhole(t)
	const timeout = 300 * time.Millisecond
	for _, tc := range []struct {
		name      string
		hops      []client.Hop
		network   string // default tcp
		target    string // default: the echo server
		cancel    bool   // cancel the context after timeout instead of Timeout
		retry     bool
		protoErr  bool // want a *ProtocolError
		errIs     error
		slowerOK  bool // may take up to the timeout
		wantInErr string
	}{
		{name: "connection refused", hops: []client.Hop{{Proto: client.SOCKS5, Addr: deadPort(t)}},
			retry: true, wantInErr: "connection refused"},
		{name: "silent socks5 hop", hops: []client.Hop{{Proto: client.SOCKS5, Addr: silent}},
			retry: true, errIs: context.DeadlineExceeded, slowerOK: true},
		{name: "silent http hop", hops: []client.Hop{{Proto: client.HTTP, Addr: silent}},
			retry: true, errIs: context.DeadlineExceeded, slowerOK: true},
		{name: "silent hop, canceled", hops: []client.Hop{{Proto: client.SOCKS4, Addr: silent}},
			cancel: true, errIs: context.Canceled, slowerOK: true},
		{name: "socks5 hop answers HTTP", hops: []client.Hop{{Proto: client.SOCKS5, Addr: fakeHop(t, []byte("HTTP/1.0 400 Bad Request\r\n\r\n"))}},
			retry: true, protoErr: true},
		{name: "socks5 hop picks GSSAPI", hops: []client.Hop{{Proto: client.SOCKS5, Addr: fakeHop(t, []byte{5, 1})}},
			retry: true, protoErr: true},
		{name: "socks5 short reply then EOF", hops: []client.Hop{{Proto: client.SOCKS5, Addr: fakeHop(t, []byte{5})}},
			retry: true, protoErr: true, errIs: io.ErrUnexpectedEOF},
		{name: "socks4 hop answers SOCKS5", hops: []client.Hop{{Proto: client.SOCKS4, Addr: fakeHop(t, []byte{5, 0, 0, 1, 0, 0, 0, 0})}},
			retry: true, protoErr: true},
		{name: "socks4 hop closes", hops: []client.Hop{{Proto: client.SOCKS4, Addr: fakeHop(t, nil)}},
			retry: true, protoErr: true, errIs: io.EOF},
		{name: "http hop answers SOCKS", hops: []client.Hop{{Proto: client.HTTP, Addr: fakeHop(t, []byte{5, 0})}},
			retry: true, protoErr: true},
		{name: "http hop answers a bad status line", hops: []client.Hop{{Proto: client.HTTP, Addr: fakeHop(t, []byte("HTTP/1.1 two hundred\r\n\r\n"))}},
			retry: true, protoErr: true},
		{name: "http header never ends", hops: []client.Hop{{Proto: client.HTTP, Addr: fakeHop(t, []byte("HTTP/1.1 200 OK\r\nX: "+strings.Repeat("x", 9000)))}},
			retry: true, protoErr: true},
		{name: "udp", hops: []client.Hop{{Proto: client.SOCKS5, Addr: silent}}, network: "udp",
			wantInErr: "unknown network udp"},
		{name: "target without port", hops: []client.Hop{{Proto: client.SOCKS5, Addr: silent}}, target: "example.com",
			wantInErr: "missing port"},
		{name: "target with CRLF", hops: []client.Hop{{Proto: client.HTTP, Addr: silent}}, target: "evil\r\nX-Evil\r\n:80",
			wantInErr: "bad host or port"},
		{name: "unknown protocol", hops: []client.Hop{{Addr: silent}}, wantInErr: "unknown protocol"},
		{name: "USERID too long", hops: []client.Hop{{Proto: client.SOCKS4, Addr: silent, User: strings.Repeat("u", 256)}},
			wantInErr: "longer than 255"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			network, target := tc.network, tc.target
			if network == "" {
				network = "tcp"
			}
			if target == "" {
				target = echo
			}
			d := &client.Dialer{Hops: tc.hops, Timeout: timeout}
			ctx := context.Background()
			if tc.cancel {
				d.Timeout = 0
				var cancel context.CancelFunc
				ctx, cancel = context.WithCancel(ctx)
				defer time.AfterFunc(timeout, cancel).Stop()
			}
			start := time.Now()
			c, err := d.DialContext(ctx, network, target)
			took := time.Since(start)
			if err == nil {
				c.Close()
				t.Fatal("dial succeeded")
			}
			var pe *client.ProtocolError
			if client.Retryable(err) != tc.retry || errors.As(err, &pe) != tc.protoErr ||
				(tc.errIs != nil && !errors.Is(err, tc.errIs)) || !strings.Contains(err.Error(), tc.wantInErr) {
				t.Errorf("err = %v: retryable %v, protocol error %v; want %v, %v, errors.Is %v, text %q",
					err, client.Retryable(err), pe != nil, tc.retry, tc.protoErr, tc.errIs, tc.wantInErr)
			}
			if limit := timeout / 2; tc.slowerOK {
				if took < timeout || took > timeout+2*time.Second {
					t.Errorf("took %v, want about %v", took, timeout)
				}
			} else if took > limit {
				t.Errorf("took %v, want under %v", took, limit)
			}
		})
	}
}

// TestHTTPKeepsTunnelBytes: what the tunnel sends right behind the
// proxy's response header stays in the socket for the caller.
func TestHTTPKeepsTunnelBytes(t *testing.T) {
	hop := fakeHop(t, []byte("HTTP/1.1 200 Connection established\r\nContent-Length: 5\r\n\r\nSSH-2.0-banner\r\n"))
	d := &client.Dialer{Hops: []client.Hop{{Proto: client.HTTP, Addr: hop}}, Timeout: 5 * time.Second}
	c, err := d.DialContext(context.Background(), "tcp", "192.0.2.1:22")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, ok := c.(*net.TCPConn); !ok {
		t.Fatalf("conn is a %T", c)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(c)
	if string(got) != "SSH-2.0-banner\r\n" || err != nil {
		t.Errorf("read %q, %v", got, err)
	}
}

// TestDirect: with no hops a Dialer dials the target itself, through its
// Resolver.
func TestDirect(t *testing.T) {
	echo := relaytest.Echo(t)
	_, port, _ := net.SplitHostPort(echo)
	r := &resolver{t: t, next: relaytest.Resolver(relaytest.DNS(t, "host-record=echo.test,127.0.0.1"))}
	c, err := (&client.Dialer{Resolver: r}).Dial("tcp4", "echo.test:"+port)
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, c)
	if got := r.Asked(); len(got) != 1 || got[0] != "echo.test" {
		t.Errorf("resolved %q", got)
	}
	var zero client.Dialer
	c, err = zero.Dial("tcp", echo)
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, c)
}

// TestHTTPTransport uses Dialers as http.Transport.DialContext, through
// our server and through Dante, to an httptest server.
func TestHTTPTransport(t *testing.T) {
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello "+r.URL.Path)
	}))
	defer ts.Close()
	sockd := relaytest.NewServer(t, permit)
	for _, tc := range []struct {
		name string
		url  string
	}{
		{name: "sockd", url: "socks5h://" + sockd.Addr},
		{name: "dante", url: "socks5://" + dante(t, "none", dantePass) + "?timeout=10s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := client.FromURL(tc.url)
			if err != nil {
				t.Fatal(err)
			}
			tr := &http.Transport{DialContext: d.DialContext}
			defer tr.CloseIdleConnections()
			resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get(ts.URL + "/x")
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(body) != "hello /x" || err != nil {
				t.Errorf("body %q, %v", body, err)
			}
		})
	}
}

// TestXNetProxy plugs a Dialer in as the forward dialer of x/net/proxy's
// own SOCKS5 client: a chain where the second hop's client is not ours.
func TestXNetProxy(t *testing.T) {
	echo := relaytest.Echo(t)
	first, second := relaytest.NewServer(t, permit), relaytest.NewServer(t, permit)
	d := &client.Dialer{Hops: []client.Hop{{Proto: client.SOCKS4a, Addr: first.Addr}}}
	xd, err := proxy.SOCKS5("tcp", second.Addr, nil, d)
	if err != nil {
		t.Fatal(err)
	}
	c, err := xd.(proxy.ContextDialer).DialContext(context.Background(), "tcp", echo)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write([]byte("ping"))
	got := make([]byte, 4)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "ping" {
		t.Errorf("echo %q, %v", got, err)
	}
}

// TestConcurrent shares one Dialer between goroutines (run with -race).
func TestConcurrent(t *testing.T) {
	echo := relaytest.Echo(t)
	s := relaytest.NewServer(t, permit)
	d := &client.Dialer{Hops: []client.Hop{{Proto: client.SOCKS5, Addr: s.Addr}}, Timeout: 10 * time.Second}
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			c, err := d.DialContext(context.Background(), "tcp", echo)
			if err != nil {
				t.Error(err)
				return
			}
			roundTrip(t, c)
		})
	}
	wg.Wait()
}

func TestProtoAndHop(t *testing.T) {
	for _, tc := range []struct {
		p     client.Proto
		name  string
		names bool
	}{
		{client.SOCKS4, "socks4", false},
		{client.SOCKS4a, "socks4a", true},
		{client.SOCKS5, "socks5", true},
		{client.HTTP, "http", true},
		{0, "Proto(0)", false},
	} {
		if tc.p.String() != tc.name || tc.p.CarriesNames() != tc.names {
			t.Errorf("%d: %q %v, want %q %v", tc.p, tc.p, tc.p.CarriesNames(), tc.name, tc.names)
		}
	}
	h := client.Hop{Proto: client.SOCKS5, Addr: "[2001:db8::1]:1080", User: "u", Password: "secret"}
	if got := h.String(); got != "socks5://[2001:db8::1]:1080" {
		t.Errorf("Hop.String() = %q", got)
	}
}

func TestFromURL(t *testing.T) {
	for _, tc := range []struct {
		name    string
		url     string
		hop     client.Hop
		timeout time.Duration
		err     string // part of the error
	}{
		{name: "socks4", url: "socks4://gw", hop: client.Hop{Proto: client.SOCKS4, Addr: "gw:1080"}},
		{name: "socks4 user", url: "socks4://alice@gw:1081", hop: client.Hop{Proto: client.SOCKS4, Addr: "gw:1081", User: "alice"}},
		{name: "socks4a", url: "socks4a://10.0.0.1", hop: client.Hop{Proto: client.SOCKS4a, Addr: "10.0.0.1:1080"}},
		{name: "socks5", url: "socks5://gw:1080/", hop: client.Hop{Proto: client.SOCKS5, Addr: "gw:1080"}},
		{name: "socks5h", url: "socks5h://[2001:db8::1]", hop: client.Hop{Proto: client.SOCKS5, Addr: "[2001:db8::1]:1080"}},
		{name: "socks5 escapes", url: "socks5://al%40ice:p%3Aw%20d@gw:9050",
			hop: client.Hop{Proto: client.SOCKS5, Addr: "gw:9050", User: "al@ice", Password: "p:w d"}},
		{name: "http", url: "http://proxy", hop: client.Hop{Proto: client.HTTP, Addr: "proxy:8080"}},
		{name: "http auth and timeout", url: "http://u:p@proxy:3128?timeout=1m30s",
			hop: client.Hop{Proto: client.HTTP, Addr: "proxy:3128", User: "u", Password: "p"}, timeout: 90 * time.Second},
		{name: "unknown scheme", url: "https://proxy", err: `unknown scheme "https"`},
		{name: "no scheme", url: "gw:1080", err: `unknown scheme "gw"`},
		{name: "missing host", url: "socks5://:1080", err: "no host"},
		{name: "bad port", url: "socks5://gw:0", err: `bad port "0"`},
		{name: "port too big", url: "socks5://gw:65536", err: `bad port "65536"`},
		{name: "bad timeout", url: "socks5://gw?timeout=soon", err: `timeout "soon"`},
		{name: "negative timeout", url: "socks5://gw?timeout=-1s", err: `timeout "-1s"`},
		{name: "unknown parameter", url: "socks5://gw?retries=3", err: `unknown parameter "retries"`},
		{name: "path", url: "http://proxy/x", err: "unexpected path"},
		{name: "socks4 password", url: "socks4://u:secret@gw", err: "SOCKS4 has no password"},
		{name: "unparsable", url: "socks5://u:secret@gw:port:x", err: "invalid port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := client.FromURL(tc.url)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				if strings.Contains(err.Error(), "secret") {
					t.Errorf("error shows the password: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(d.Hops) != 1 || d.Hops[0] != tc.hop || d.Timeout != tc.timeout {
				t.Errorf("got %+v %v, want %+v %v", d.Hops, d.Timeout, tc.hop, tc.timeout)
			}
		})
	}
	d, err := client.FromURLs("socks4://a?timeout=2s", "http://b:3128?timeout=5s", "socks5://c")
	if err != nil || len(d.Hops) != 3 || d.Hops[1].Addr != "b:3128" || d.Timeout != 5*time.Second {
		t.Errorf("FromURLs = %+v, %v", d, err)
	}
	if _, err := client.FromURLs("socks5://a", "ftp://b"); err == nil {
		t.Error("FromURLs accepted ftp")
	}
}

// TestAssociate sends datagrams through a UDP association at one hop and
// through chains of our server and Dante: every datagram is the prefix,
// then a header naming the echo server, and comes back with one header per
// hop, the last naming the echo server.
func TestAssociate(t *testing.T) {
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 5)}) // not 127.0.0.1, which sockd sends direct
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			pc.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	echo := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	// RSV RSV FRAG ATYP=1 127.0.0.5 port
	header := append([]byte{0, 0, 0, 1, 127, 0, 0, 5}, byte(echo.Port()>>8), byte(echo.Port()))
	sockd := client.Hop{Proto: client.SOCKS5, Addr: relaytest.NewServer(t, permit).Addr}
	danteHop := client.Hop{Proto: client.SOCKS5, Addr: dante(t, "none", dantePass)}
	for _, hops := range [][]client.Hop{{sockd}, {danteHop}, {sockd, danteHop}, {danteHop, sockd}, {sockd, danteHop, sockd}} {
		d := &client.Dialer{Hops: hops, Timeout: 10 * time.Second}
		t.Run(chainName(hops), func(t *testing.T) {
			a, err := d.Associate(context.Background(), netip.AddrPort{})
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			if a.Layers() != len(hops) || len(a.Prefix()) != 10*(len(hops)-1) {
				t.Fatalf("Layers %d, prefix % x, for %d hops", a.Layers(), a.Prefix(), len(hops))
			}
			u, err := net.ListenUDP("udp", &net.UDPAddr{IP: a.Control.LocalAddr().(*net.TCPAddr).IP})
			if err != nil {
				t.Fatal(err)
			}
			defer u.Close()
			msg := append(append(append([]byte(nil), a.Prefix()...), header...), "datagram"...)
			if _, err := u.WriteToUDPAddrPort(msg, a.Relay); err != nil {
				t.Fatal(err)
			}
			u.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 2048)
			n, _, err := u.ReadFromUDPAddrPort(buf)
			if err != nil {
				t.Fatal(err)
			}
			// Back: the prefix's headers (each hop names the next one's
			// relay), then the echo server's, then the payload.
			if want := msg; string(buf[:n]) != string(want) {
				t.Errorf("reply % x\nwant  % x", buf[:n], want)
			}
			// Wait returns once the association ends.
			done := make(chan error, 1)
			go func() { done <- a.Wait() }()
			a.Close()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Error("Wait did not return after Close")
			}
		})
	}
	t.Run("an HTTP hop carries no datagrams", func(t *testing.T) {
		d := &client.Dialer{Hops: []client.Hop{sockd, {Proto: client.HTTP, Addr: "127.0.0.1:8080"}}}
		if _, err := d.Associate(context.Background(), netip.AddrPort{}); err == nil || !strings.Contains(err.Error(), "SOCKS5 hops only") {
			t.Errorf("err %v", err)
		}
	})
}

func chainName(hops []client.Hop) string {
	s := make([]string, len(hops))
	for i, h := range hops {
		s[i] = h.String()
	}
	return strings.Join(s, ">")
}
