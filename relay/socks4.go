package relay

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
	socks4Version = 4
	socks4Connect = 1
	socks4Bind    = 2

	socks4Granted       = 90
	socks4Rejected      = 91
	socks4IdentDown     = 92
	socks4IdentMismatch = 93

	// maxField bounds the USERID and the SOCKS4a name.
	maxField = 255
	// maxSOCKS4Request is the longest request we accept.
	maxSOCKS4Request = 8 + maxField + 1 + maxField + 1
)

// errShort means the buffer holds only the start of a message: read more.
var errShort = errors.New("short message")

// A protoError is a malformed request. Reply is the code to answer with
// before closing: a SOCKS4 CD or a SOCKS5 REP, or -1 to close silently.
type protoError struct {
	reply int
	msg   string
}

func (e *protoError) Error() string { return e.msg }

type socks4Request struct {
	cmd  byte
	port uint16
	ip   [4]byte
	user string
	name string // SOCKS4a only
}

// is4a reports whether DSTIP is 0.0.0.x, x != 0: a name follows.
func (r *socks4Request) is4a() bool {
	return r.ip[0] == 0 && r.ip[1] == 0 && r.ip[2] == 0 && r.ip[3] != 0
}

// parseSOCKS4Request decodes a request from the start of b, VN included. It
// returns the number of bytes used; errShort when b ends before the request
// does; a *protoError when the request is malformed.
func parseSOCKS4Request(b []byte) (r socks4Request, n int, err error) {
	if len(b) < 8 {
		return r, 0, errShort
	}
	if b[0] != socks4Version {
		return r, 0, &protoError{socks4Rejected, "not a SOCKS4 request"}
	}
	r.cmd = b[1]
	r.port = uint16(b[2])<<8 | uint16(b[3])
	copy(r.ip[:], b[4:8])
	user, n, err := cstring(b, 8, "USERID")
	if err != nil {
		return r, 0, err
	}
	r.user = user
	if r.is4a() {
		name, m, err := cstring(b, n, "SOCKS4a name")
		if err != nil {
			return r, 0, err
		}
		if name == "" {
			return r, 0, &protoError{socks4Rejected, "empty SOCKS4a name"}
		}
		r.name, n = name, m
	}
	return r, n, nil
}

// cstring reads a NUL-terminated field of at most maxField bytes at b[off:].
func cstring(b []byte, off int, what string) (string, int, error) {
	rest := b[off:]
	if len(rest) > maxField+1 {
		rest = rest[:maxField+1]
	}
	i := bytes.IndexByte(rest, 0)
	if i < 0 {
		if len(rest) > maxField {
			return "", 0, &protoError{socks4Rejected, what + " longer than 255 bytes"}
		}
		return "", 0, errShort
	}
	return string(rest[:i]), off + i + 1, nil
}

// append encodes r, as a SOCKS4 client sends it.
func (r *socks4Request) append(b []byte) []byte {
	b = append(b, socks4Version, r.cmd, byte(r.port>>8), byte(r.port))
	b = append(b, r.ip[:]...)
	b = append(append(b, r.user...), 0)
	if r.is4a() {
		b = append(append(b, r.name...), 0)
	}
	return b
}

// appendSOCKS4Reply encodes a reply with code cd and the address ap, which
// must be IPv4 (or invalid: 0.0.0.0:0).
func appendSOCKS4Reply(b []byte, cd byte, ap netip.AddrPort) []byte {
	ip := [4]byte{}
	if a := ap.Addr().Unmap(); a.Is4() {
		ip = a.As4()
	}
	port := ap.Port()
	return append(b, 0, cd, byte(port>>8), byte(port), ip[0], ip[1], ip[2], ip[3])
}
