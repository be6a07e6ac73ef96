package wire

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"
)

func TestReply4(t *testing.T) {
	for _, tc := range []struct {
		name  string
		in    []byte
		cd    byte
		bound netip.AddrPort
		err   error // ErrShort, or nil
		proto bool  // want a *ProtoError
	}{
		{name: "granted", in: []byte{0, 90, 0, 80, 10, 0, 0, 1}, cd: 90, bound: netip.MustParseAddrPort("10.0.0.1:80")},
		{name: "rejected", in: []byte{0, 91, 0, 0, 0, 0, 0, 0}, cd: 91, bound: netip.MustParseAddrPort("0.0.0.0:0")},
		{name: "legacy VN 4", in: []byte{4, 93, 0, 0, 0, 0, 0, 0}, cd: 93, bound: netip.MustParseAddrPort("0.0.0.0:0")},
		{name: "data follows", in: []byte{0, 90, 0, 0, 0, 0, 0, 0, 'x'}, cd: 90, bound: netip.MustParseAddrPort("0.0.0.0:0")},
		{name: "short", in: []byte{0, 90, 0}, err: ErrShort},
		{name: "SOCKS5 answer", in: []byte{5, 0, 0, 1, 0, 0, 0, 0, 0, 0}, proto: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cd, bound, n, err := ParseReply4(tc.in)
			var pe *ProtoError
			switch {
			case tc.proto:
				if !errors.As(err, &pe) {
					t.Fatalf("err = %v, want a ProtoError", err)
				}
			case err != tc.err:
				t.Fatalf("err = %v, want %v", err, tc.err)
			case err == nil && (cd != tc.cd || bound != tc.bound || n != 8):
				t.Errorf("got %d %v %d, want %d %v 8", cd, bound, n, tc.cd, tc.bound)
			}
		})
	}
}

func TestReply5(t *testing.T) {
	for _, tc := range []struct {
		name  string
		in    []byte
		want  Reply5
		n     int   // bytes used, or needed with ErrShort
		err   error // ErrShort, or nil
		proto bool  // want a *ProtoError
	}{
		{name: "IPv4", in: []byte{5, 0, 0, 1, 127, 0, 0, 1, 4, 56},
			want: Reply5{Bound: Addr{IP: netip.MustParseAddr("127.0.0.1"), Port: 1080}}, n: 10},
		{name: "IPv6", in: append(append([]byte{5, 0, 0, 4}, netip.IPv6Loopback().AsSlice()...), 0, 80),
			want: Reply5{Bound: Addr{IP: netip.IPv6Loopback(), Port: 80}}, n: 22},
		{name: "name", in: []byte{5, 0, 0, 3, 2, 'g', 'w', 0, 80},
			want: Reply5{Bound: Addr{Name: "gw", Port: 80}}, n: 9},
		{name: "refused", in: []byte{5, 5, 0, 1, 0, 0, 0, 0, 0, 0},
			want: Reply5{Rep: 5, Bound: Addr{IP: netip.IPv4Unspecified()}}, n: 10},
		{name: "data follows", in: []byte{5, 0, 0, 1, 0, 0, 0, 0, 0, 0, 'x'},
			want: Reply5{Bound: Addr{IP: netip.IPv4Unspecified()}}, n: 10},
		{name: "head only", in: []byte{5, 0, 0}, n: 5, err: ErrShort},
		{name: "IPv4 needs 10", in: []byte{5, 0, 0, 1, 127}, n: 10, err: ErrShort},
		{name: "IPv6 needs 22", in: []byte{5, 0, 0, 4, 0}, n: 22, err: ErrShort},
		{name: "name needs 4+1+3+2", in: []byte{5, 0, 0, 3, 3, 'g'}, n: 10, err: ErrShort},
		{name: "bad version", in: []byte{4, 90, 0, 0, 0, 0, 0, 0}, proto: true},
		{name: "HTTP answer", in: []byte("HTTP/1.0 400 Bad Request\r\n"), proto: true},
		{name: "unknown ATYP", in: []byte{5, 0, 0, 9, 0, 0, 0}, proto: true},
		{name: "empty name", in: []byte{5, 0, 0, 3, 0, 0, 80}, proto: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, n, err := ParseReply5(tc.in)
			var pe *ProtoError
			switch {
			case tc.proto:
				if !errors.As(err, &pe) {
					t.Fatalf("err = %v, want a ProtoError", err)
				}
			case err != tc.err:
				t.Fatalf("err = %v, want %v", err, tc.err)
			case got != tc.want || n != tc.n:
				t.Errorf("got %+v, %d; want %+v, %d", got, n, tc.want, tc.n)
			}
		})
	}
}

func TestMethodAndAuthStatus(t *testing.T) {
	if m, n, err := ParseMethod([]byte{5, 2}); m != MethodPassword || n != 2 || err != nil {
		t.Errorf("ParseMethod = %d %d %v", m, n, err)
	}
	if _, _, err := ParseMethod([]byte{5}); err != ErrShort {
		t.Errorf("ParseMethod(short) = %v", err)
	}
	if _, _, err := ParseMethod([]byte{4, 0}); err == nil {
		t.Error("ParseMethod accepted VER 4")
	}
	if s, n, err := ParseAuthStatus([]byte{1, 1}); s != AuthFailed || n != 2 || err != nil {
		t.Errorf("ParseAuthStatus = %d %d %v", s, n, err)
	}
	if _, _, err := ParseAuthStatus([]byte{5, 0}); err == nil {
		t.Error("ParseAuthStatus accepted VER 5")
	}
	g := AppendGreeting(nil, MethodNone, MethodPassword)
	if m, n, err := ParseGreeting(g); !bytes.Equal(m, []byte{0, 2}) || n != 4 || err != nil {
		t.Errorf("greeting %v round trip: %v %d %v", g, m, n, err)
	}
}

// FuzzReply runs the client-side parsers over the same input: no panics,
// no over-reads, a length hint that only grows, and decode-encode-decode
// gives equal values.
func FuzzReply(f *testing.F) {
	f.Add([]byte{0, 90, 0, 80, 10, 0, 0, 1})                     // SOCKS4 granted
	f.Add([]byte{4, 92, 0, 0, 0, 0, 0, 0})                       // legacy VN 4
	f.Add([]byte{5, 0, 0, 1, 127, 0, 0, 1, 4, 56})               // SOCKS5 IPv4
	f.Add(append([]byte{5, 0, 0, 4}, make([]byte, 18)...))       // SOCKS5 IPv6
	f.Add([]byte{5, 1, 0, 3, 4, 'h', 'o', 's', 't', 0, 80})      // SOCKS5 name
	f.Add([]byte{5, 0, 0, 3, 0, 0, 80})                          // empty name
	f.Add([]byte{5, 0, 0, 1, 0})                                 // short IPv4
	f.Add([]byte{5, 0xff})                                       // method refused
	f.Add([]byte{1, 0})                                          // RFC 1929 success
	f.Add([]byte("HTTP/1.1 200 Connection established\r\n\r\n")) // not SOCKS
	f.Fuzz(func(t *testing.T, b []byte) {
		check := func(err error) bool {
			var pe *ProtoError
			if err != nil && err != ErrShort && !errors.As(err, &pe) {
				t.Fatalf("unexpected error type %T: %v", err, err)
			}
			return err == nil
		}
		if cd, bound, n, err := ParseReply4(b); check(err) {
			cd2, bound2, _, err := ParseReply4(AppendReply4(nil, cd, bound))
			if n != 8 || err != nil || cd2 != cd || bound2 != bound {
				t.Fatalf("reply4 round trip: %d %v, then %d %v %v", cd, bound, cd2, bound2, err)
			}
		}
		r, n, err := ParseReply5(b)
		if err == ErrShort && (n < 5 || (len(b) >= 5 && n <= len(b))) {
			t.Fatalf("reply5: ErrShort with hint %d for %d bytes", n, len(b))
		}
		if check(err) {
			if n > len(b) {
				t.Fatalf("reply5 used %d of %d bytes", n, len(b))
			}
			enc := AppendAddr(append([]byte(nil), Version5, r.Rep, 0), r.Bound)
			r2, n2, err := ParseReply5(enc)
			if err != nil || r2 != r || n2 != len(enc) {
				t.Fatalf("reply5 second decode: %+v %d %v, first %+v", r2, n2, err, r)
			}
		}
		if _, n, err := ParseMethod(b); check(err) && n != 2 {
			t.Fatalf("method used %d bytes", n)
		}
		if _, n, err := ParseAuthStatus(b); check(err) && n != 2 {
			t.Fatalf("auth status used %d bytes", n)
		}
	})
}
