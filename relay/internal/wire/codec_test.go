package wire

import (
	"bytes"
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestSOCKS4Request(t *testing.T) {
	long := strings.Repeat("u", MaxField+1)
	for _, tc := range []struct {
		name  string
		in    []byte
		want  Request4
		n     int
		err   error // ErrShort, or nil
		reply int   // ProtoError reply, when not 0
	}{
		{name: "connect", in: []byte("\x04\x01\x00\x50\x0a\x00\x00\x01bob\x00"),
			want: Request4{Cmd: 1, Port: 80, IP: [4]byte{10, 0, 0, 1}, User: "bob"}, n: 12},
		{name: "empty user", in: []byte("\x04\x01\x01\xbb\x7f\x00\x00\x01\x00"),
			want: Request4{Cmd: 1, Port: 443, IP: [4]byte{127, 0, 0, 1}}, n: 9},
		{name: "4a", in: []byte("\x04\x01\x00\x50\x00\x00\x00\x07alice\x00www.example.com\x00"),
			want: Request4{Cmd: 1, Port: 80, IP: [4]byte{0, 0, 0, 7}, User: "alice", Name: "www.example.com"}, n: 30},
		{name: "0.0.0.0 is not 4a", in: []byte("\x04\x01\x00\x50\x00\x00\x00\x00\x00"),
			want: Request4{Cmd: 1, Port: 80}, n: 9},
		{name: "pipelined data stays", in: []byte("\x04\x01\x00\x50\x0a\x00\x00\x01\x00GET /"),
			want: Request4{Cmd: 1, Port: 80, IP: [4]byte{10, 0, 0, 1}}, n: 9},
		{name: "short header", in: []byte("\x04\x01\x00"), err: ErrShort},
		{name: "no NUL yet", in: []byte("\x04\x01\x00\x50\x0a\x00\x00\x01bo"), err: ErrShort},
		{name: "4a name not ended", in: []byte("\x04\x01\x00\x50\x00\x00\x00\x01\x00www"), err: ErrShort},
		{name: "USERID of 256 bytes", in: append([]byte("\x04\x01\x00\x50\x0a\x00\x00\x01"), long...), reply: Rejected4},
		{name: "USERID of 255 bytes", in: append(append([]byte("\x04\x01\x00\x50\x0a\x00\x00\x01"), long[1:]...), 0),
			want: Request4{Cmd: 1, Port: 80, IP: [4]byte{10, 0, 0, 1}, User: long[1:]}, n: 8 + 256},
		{name: "name of 256 bytes", in: append([]byte("\x04\x01\x00\x50\x00\x00\x00\x01\x00"), long...), reply: Rejected4},
		{name: "empty 4a name", in: []byte("\x04\x01\x00\x50\x00\x00\x00\x01\x00\x00"), reply: Rejected4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, n, err := ParseRequest4(tc.in)
			var pe *ProtoError
			switch {
			case tc.reply != 0:
				if !errors.As(err, &pe) || pe.Reply != tc.reply {
					t.Fatalf("err = %v, want ProtoError with reply %d", err, tc.reply)
				}
				return
			case tc.err != nil:
				if err != tc.err {
					t.Fatalf("err = %v, want %v", err, tc.err)
				}
				return
			case err != nil:
				t.Fatal(err)
			}
			if got != tc.want || n != tc.n {
				t.Errorf("got %+v, %d; want %+v, %d", got, n, tc.want, tc.n)
			}
			if enc := got.Append(nil); !bytes.Equal(enc, tc.in[:n]) {
				t.Errorf("re-encoded %q, want %q", enc, tc.in[:n])
			}
		})
	}
}

func TestSOCKS5Messages(t *testing.T) {
	t.Run("greeting", func(t *testing.T) {
		m, n, err := ParseGreeting([]byte{5, 2, 0, 2, 'x'})
		if err != nil || n != 4 || !bytes.Equal(m, []byte{0, 2}) {
			t.Errorf("got %v %d %v", m, n, err)
		}
		if _, _, err := ParseGreeting([]byte{5, 3, 0}); err != ErrShort {
			t.Errorf("truncated: %v", err)
		}
		var pe *ProtoError
		if _, _, err := ParseGreeting([]byte{5, 0}); !errors.As(err, &pe) || pe.Reply != MethodNoAcceptable {
			t.Errorf("NMETHODS 0: %v", err)
		}
		if _, _, err := ParseGreeting([]byte{6, 1, 0}); !errors.As(err, &pe) || pe.Reply != -1 {
			t.Errorf("version 6: %v", err)
		}
	})
	t.Run("userpass", func(t *testing.T) {
		in := AppendUserPass(nil, "alice", "s3cret")
		up, n, err := ParseUserPass(in)
		if err != nil || n != len(in) || up != (UserPass{"alice", "s3cret"}) {
			t.Errorf("got %+v %d %v", up, n, err)
		}
		for i := range len(in) {
			if _, _, err := ParseUserPass(in[:i]); err != ErrShort {
				t.Errorf("prefix %d: %v", i, err)
			}
		}
		var pe *ProtoError
		for _, bad := range [][]byte{{1, 0, 1, 'p'}, {1, 1, 'u', 0}, {2, 1, 'u', 1, 'p'}} {
			if _, _, err := ParseUserPass(bad); !errors.As(err, &pe) || pe.Reply != AuthFailed {
				t.Errorf("%v: %v", bad, err)
			}
		}
	})
	t.Run("requests", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			req  Request5
		}{
			{"ipv4", Request5{Cmd: CmdConnect, Addr: Addr{IP: netip.MustParseAddr("192.0.2.1"), Port: 80}}},
			{"ipv6", Request5{Cmd: CmdBind, Addr: Addr{IP: netip.MustParseAddr("2001:db8::1"), Port: 443}}},
			{"name", Request5{Cmd: CmdUDP, Addr: Addr{Name: "www.example.com", Port: 53}}},
		} {
			enc := tc.req.Append(nil)
			got, n, err := ParseRequest5(append(enc, "tail"...))
			if err != nil || n != len(enc) || got != tc.req {
				t.Errorf("%s: got %+v %d %v", tc.name, got, n, err)
			}
			for i := range len(enc) {
				if _, _, err := ParseRequest5(enc[:i]); err != ErrShort {
					t.Errorf("%s prefix %d: %v", tc.name, i, err)
				}
			}
		}
		var pe *ProtoError
		for _, tc := range []struct {
			name  string
			in    []byte
			reply int
		}{
			{"unknown ATYP", []byte{5, 1, 0, 9, 1, 2, 3, 4, 0, 80}, RepAddrNotSupported},
			{"empty name", []byte{5, 1, 0, 3, 0, 0, 80}, RepGeneralFailure},
			{"NUL in name", []byte{5, 1, 0, 3, 3, 'a', 0, 'b', 0, 80}, RepGeneralFailure},
			{"version 4", []byte{4, 1, 0, 1, 1, 2, 3, 4, 0, 80}, RepGeneralFailure},
		} {
			if _, _, err := ParseRequest5(tc.in); !errors.As(err, &pe) || pe.Reply != tc.reply {
				t.Errorf("%s: %v, want reply %d", tc.name, err, tc.reply)
			}
		}
	})
	t.Run("reply", func(t *testing.T) {
		got := AppendReply5(nil, RepSucceeded, netip.MustParseAddrPort("127.0.0.1:1080"))
		want := []byte{5, 0, 0, 1, 127, 0, 0, 1, 0x04, 0x38}
		if !bytes.Equal(got, want) {
			t.Errorf("got %v want %v", got, want)
		}
		got = AppendReply5(nil, RepNotAllowed, netip.AddrPort{})
		want = []byte{5, 2, 0, 1, 0, 0, 0, 0, 0, 0}
		if !bytes.Equal(got, want) {
			t.Errorf("got %v want %v", got, want)
		}
		got = AppendReply5(nil, RepSucceeded, netip.MustParseAddrPort("[::ffff:10.0.0.1]:1"))
		if got[3] != AtypIPv4 {
			t.Errorf("a v4-mapped address is sent as IPv4: %v", got)
		}
	})
}
