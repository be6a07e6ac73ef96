package wire

import (
	"net/netip"
	"strconv"
)

// The replies a client reads. They are the server's messages decoded the
// other way round: AppendReply4 and AppendReply5 encode them.

// ParseReply4 decodes a SOCKS4 reply (the diagram is in socks4.go): the
// code CD and the address DSTIP:DSTPORT, which only BIND replies fill in.
// VN must be 0; 4 is accepted as well, since legacy sockd sent it with
// codes 92 and 93. It returns ErrShort until b holds 8 bytes.
func ParseReply4(b []byte) (cd byte, bound netip.AddrPort, n int, err error) {
	if len(b) < 8 {
		return 0, bound, 0, ErrShort
	}
	if b[0] != 0 && b[0] != Version4 {
		return 0, bound, 0, &ProtoError{-1, "bad SOCKS4 reply version " + strconv.Itoa(int(b[0]))}
	}
	port := uint16(b[2])<<8 | uint16(b[3])
	return b[1], netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), port), 8, nil
}

// Reply5 is a SOCKS5 reply, RFC 1928 section 6:
//
//	+----+-----+-------+------+----------+----------+
//	|VER | REP |  RSV  | ATYP | BND.ADDR | BND.PORT |
//	+----+-----+-------+------+----------+----------+
//	| 1  |  1  | X'00' |  1   | Variable |    2     |
//	+----+-----+-------+------+----------+----------+
type Reply5 struct {
	Rep   byte
	Bound Addr
}

// ParseReply5 decodes a reply. RSV is ignored. Its length depends on ATYP
// and, for a name, on the length byte after it, so when it returns
// ErrShort and b holds at least 5 bytes, n is the length the whole reply
// has: a client reads exactly that much, never into the data that follows.
// With fewer than 5 bytes, n is 5.
func ParseReply5(b []byte) (r Reply5, n int, err error) {
	if len(b) < 5 {
		return r, 5, ErrShort
	}
	if b[0] != Version5 {
		return r, 0, &ProtoError{-1, "bad SOCKS5 reply version " + strconv.Itoa(int(b[0]))}
	}
	switch b[3] {
	case AtypIPv4:
		n = 4 + 4 + 2
	case AtypIPv6:
		n = 4 + 16 + 2
	case AtypName:
		n = 4 + 1 + int(b[4]) + 2
	default:
		return r, 0, &ProtoError{-1, "unknown address type " + strconv.Itoa(int(b[3])) + " in SOCKS5 reply"}
	}
	if len(b) < n {
		return r, n, ErrShort
	}
	r.Rep = b[1]
	r.Bound, n, err = ParseAddr(b, 3)
	if err != nil {
		// Only a malformed name is left; a reply has no REP to answer with.
		return r, 0, &ProtoError{-1, err.Error() + " in SOCKS5 reply"}
	}
	return r, n, nil
}

// ParseMethod decodes the server's METHOD selection message, RFC 1928
// section 3:
//
//	+----+--------+
//	|VER | METHOD |
//	+----+--------+
//	| 1  |   1    |
//	+----+--------+
func ParseMethod(b []byte) (method byte, n int, err error) {
	if len(b) < 2 {
		return 0, 0, ErrShort
	}
	if b[0] != Version5 {
		return 0, 0, &ProtoError{-1, "bad SOCKS5 method selection version " + strconv.Itoa(int(b[0]))}
	}
	return b[1], 2, nil
}

// ParseAuthStatus decodes the server's answer to a username/password
// request, RFC 1929 section 2: VER 1 and STATUS, 0 for success.
func ParseAuthStatus(b []byte) (status byte, n int, err error) {
	if len(b) < 2 {
		return 0, 0, ErrShort
	}
	if b[0] != AuthVersion {
		return 0, 0, &ProtoError{-1, "bad username/password reply version " + strconv.Itoa(int(b[0]))}
	}
	return b[1], 2, nil
}

// AppendGreeting encodes the version identifier/method selection message
// (see ParseGreeting), as a client sends it. methods must hold 1 to 255
// methods.
func AppendGreeting(b []byte, methods ...byte) []byte {
	return append(append(b, Version5, byte(len(methods))), methods...)
}
