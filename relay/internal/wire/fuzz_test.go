package wire

import (
	"bytes"
	"errors"
	"testing"
)

// FuzzSOCKS4Request: decoding never panics, never reads past the request,
// and whatever decodes encodes back to the same bytes and decodes equal.
func FuzzSOCKS4Request(f *testing.F) {
	f.Add([]byte("\x04\x01\x00\x50\x0a\x00\x00\x01bob\x00"))                                     // CONNECT 10.0.0.1:80 as bob
	f.Add([]byte("\x04\x01\x00\x50\x00\x00\x00\x07alice\x00www.example.com\x00"))                // SOCKS4a
	f.Add([]byte("\x04\x02\x00\x15\xc0\x00\x02\x01\x00"))                                        // BIND
	f.Add([]byte("\x04\x01\x00\x50\x00\x00\x00\x00\x00"))                                        // 0.0.0.0: not 4a
	f.Add([]byte("\x04\x01\x00"))                                                                // truncated
	f.Add(append([]byte("\x04\x01\x00\x50\x0a\x00\x00\x01"), bytes.Repeat([]byte("u"), 300)...)) // USERID too long
	f.Add([]byte("\x05\x01\x00"))                                                                // not SOCKS4
	f.Fuzz(func(t *testing.T, b []byte) {
		r, n, err := ParseRequest4(b)
		if err != nil {
			var pe *ProtoError
			if err != ErrShort && !errors.As(err, &pe) {
				t.Fatalf("unexpected error type %T: %v", err, err)
			}
			return
		}
		if n > len(b) || n > MaxRequest4 {
			t.Fatalf("used %d of %d bytes", n, len(b))
		}
		enc := r.Append(nil)
		if !bytes.Equal(enc, b[:n]) {
			t.Fatalf("re-encoded %q, read %q", enc, b[:n])
		}
		r2, n2, err := ParseRequest4(enc)
		if err != nil || r2 != r || n2 != n {
			t.Fatalf("second decode: %+v %d %v, first %+v %d", r2, n2, err, r, n)
		}
	})
}

// FuzzSOCKS5Request runs the three client messages of SOCKS5 (greeting,
// RFC 1929 request, request) over the same input: no panics, no over-reads,
// and decode-encode-decode gives equal values.
func FuzzSOCKS5Request(f *testing.F) {
	f.Add([]byte{5, 1, 0})                                                                       // greeting, no auth
	f.Add([]byte{5, 2, 0, 2})                                                                    // greeting, both methods
	f.Add([]byte{5, 0})                                                                          // NMETHODS 0
	f.Add([]byte{1, 5, 'a', 'l', 'i', 'c', 'e', 2, 'p', 'w'})                                    // RFC 1929
	f.Add([]byte{5, 1, 0, 1, 192, 0, 2, 1, 0, 80})                                               // CONNECT IPv4
	f.Add([]byte{5, 1, 0, 3, 11, 'e', 'x', 'a', 'm', 'p', 'l', 'e', '.', 'c', 'o', 'm', 1, 187}) // CONNECT name
	f.Add(append([]byte{5, 3, 0, 4}, make([]byte, 18)...))                                       // UDP ASSOCIATE IPv6
	f.Add([]byte{5, 1, 0, 9, 0})                                                                 // unknown ATYP
	f.Add([]byte{5, 1, 0, 3, 0, 0, 80})                                                          // empty name
	f.Fuzz(func(t *testing.T, b []byte) {
		check := func(err error) bool {
			var pe *ProtoError
			if err != nil && err != ErrShort && !errors.As(err, &pe) {
				t.Fatalf("unexpected error type %T: %v", err, err)
			}
			return err == nil
		}
		if m, n, err := ParseGreeting(b); check(err) {
			if n > len(b) || len(m) == 0 || len(m) != int(b[1]) {
				t.Fatalf("greeting: %v %d", m, n)
			}
		}
		if up, n, err := ParseUserPass(b); check(err) {
			enc := AppendUserPass(nil, up.User, up.Pass)
			if !bytes.Equal(enc, b[:n]) {
				t.Fatalf("userpass re-encoded %q, read %q", enc, b[:n])
			}
		}
		if r, n, err := ParseRequest5(b); check(err) {
			if n > len(b) {
				t.Fatalf("request used %d of %d bytes", n, len(b))
			}
			enc := r.Append(nil)
			r2, n2, err := ParseRequest5(enc)
			if err != nil || r2 != r || n2 != len(enc) {
				t.Fatalf("second decode: %+v %d %v, first %+v", r2, n2, err, r)
			}
		}
	})
}

// FuzzUDPHeader: decoding a UDP ASSOCIATE datagram header never panics or
// reads past the datagram, and a header that decodes encodes back to the
// same bytes (FRAG 0) and decodes equal.
func FuzzUDPHeader(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1, 127, 0, 0, 1, 0, 53, 'q'})                   // IPv4, payload
	f.Add(append([]byte{0, 0, 0, 4}, append(make([]byte, 16), 0, 53)...)) // IPv6
	f.Add([]byte{0, 0, 0, 3, 4, 'h', 'o', 's', 't', 0, 53})               // name
	f.Add([]byte{0, 0, 1, 1, 10, 0, 0, 1, 0, 53})                         // FRAG 1
	f.Add([]byte{0, 0, 0, 9, 1})                                          // unknown ATYP
	f.Add([]byte{0, 0, 0, 3, 200, 'x'})                                   // name longer than the datagram
	f.Fuzz(func(t *testing.T, b []byte) {
		h, n, err := ParseUDPHeader(b)
		if err != nil {
			var pe *ProtoError
			if err != ErrShort && !errors.As(err, &pe) {
				t.Fatalf("unexpected error type %T: %v", err, err)
			}
			return
		}
		if n > len(b) {
			t.Fatalf("header of %d bytes in a datagram of %d", n, len(b))
		}
		enc := AppendUDPHeader(nil, h.Addr)
		h2, n2, err := ParseUDPHeader(append(enc, b[n:]...))
		if err != nil || h2.Addr != h.Addr || n2 != len(enc) || h2.Frag != 0 {
			t.Fatalf("second decode: %+v %d %v, first %+v", h2, n2, err, h)
		}
	})
}
