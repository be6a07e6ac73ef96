package wire

import (
	"bytes"
	"errors"
	"net/netip"
)

// SOCKS4 and SOCKS4a (the SOCKS4 protocol notes of Ying-Da Lee).
//
// Request:
//
//	+----+----+----+----+----+----+----+----+----+----+....+----+
//	| VN | CD | DSTPORT |      DSTIP        | USERID       |NULL|
//	+----+----+----+----+----+----+----+----+----+----+....+----+
//	   1    1      2              4           variable       1
//
// SOCKS4a: DSTIP is 0.0.0.x with x != 0, and the destination's name follows
// the USERID's NUL, itself NUL-terminated.
//
// Reply:
//
//	+----+----+----+----+----+----+----+----+
//	| VN | CD | DSTPORT |      DSTIP        |
//	+----+----+----+----+----+----+----+----+
//	   1    1      2              4
//
// VN is 0 in replies (legacy sockd wrongly sent 4 with 92 and 93).

const (
	Version4    = 4
	Cmd4Connect = 1
	Cmd4Bind    = 2

	Granted4       = 90
	Rejected4      = 91
	IdentDown4     = 92
	IdentMismatch4 = 93

	// MaxField bounds the USERID and the SOCKS4a name.
	MaxField = 255
	// MaxRequest4 is the longest request we accept.
	MaxRequest4 = 8 + MaxField + 1 + MaxField + 1
)

// ErrShort means the buffer holds only the start of a message: read more.
var ErrShort = errors.New("short message")

// A ProtoError is a malformed request. Reply is the code to answer with
// before closing: a SOCKS4 CD or a SOCKS5 REP, or -1 to close silently.
type ProtoError struct {
	Reply int
	Msg   string
}

func (e *ProtoError) Error() string { return e.Msg }

type Request4 struct {
	Cmd  byte
	Port uint16
	IP   [4]byte
	User string
	Name string // SOCKS4a only
}

// Is4a reports whether DSTIP is 0.0.0.x, x != 0: a name follows.
func (r *Request4) Is4a() bool {
	return r.IP[0] == 0 && r.IP[1] == 0 && r.IP[2] == 0 && r.IP[3] != 0
}

// ParseRequest4 decodes a request from the start of b, VN included. It
// returns the number of bytes used; ErrShort when b ends before the request
// does; a *ProtoError when the request is malformed.
func ParseRequest4(b []byte) (r Request4, n int, err error) {
	if len(b) < 8 {
		return r, 0, ErrShort
	}
	if b[0] != Version4 {
		return r, 0, &ProtoError{Rejected4, "not a SOCKS4 request"}
	}
	r.Cmd = b[1]
	r.Port = uint16(b[2])<<8 | uint16(b[3])
	copy(r.IP[:], b[4:8])
	user, n, err := cstring(b, 8, "USERID")
	if err != nil {
		return r, 0, err
	}
	r.User = user
	if r.Is4a() {
		name, m, err := cstring(b, n, "SOCKS4a name")
		if err != nil {
			return r, 0, err
		}
		if name == "" {
			return r, 0, &ProtoError{Rejected4, "empty SOCKS4a name"}
		}
		r.Name, n = name, m
	}
	return r, n, nil
}

// cstring reads a NUL-terminated field of at most MaxField bytes at b[off:].
func cstring(b []byte, off int, what string) (string, int, error) {
	rest := b[off:]
	if len(rest) > MaxField+1 {
		rest = rest[:MaxField+1]
	}
	i := bytes.IndexByte(rest, 0)
	if i < 0 {
		if len(rest) > MaxField {
			return "", 0, &ProtoError{Rejected4, what + " longer than 255 bytes"}
		}
		return "", 0, ErrShort
	}
	return string(rest[:i]), off + i + 1, nil
}

// Append encodes r, as a SOCKS4 client sends it.
func (r *Request4) Append(b []byte) []byte {
	b = append(b, Version4, r.Cmd, byte(r.Port>>8), byte(r.Port))
	b = append(b, r.IP[:]...)
	b = append(append(b, r.User...), 0)
	if r.Is4a() {
		b = append(append(b, r.Name...), 0)
	}
	return b
}

// AppendReply4 encodes a reply with code cd and the address ap, which
// must be IPv4 (or invalid: 0.0.0.0:0).
func AppendReply4(b []byte, cd byte, ap netip.AddrPort) []byte {
	ip := [4]byte{}
	if a := ap.Addr().Unmap(); a.Is4() {
		ip = a.As4()
	}
	port := ap.Port()
	return append(b, 0, cd, byte(port>>8), byte(port), ip[0], ip[1], ip[2], ip[3])
}
