package wire

import (
	"bytes"
	"net/netip"
	"strconv"
)

// SOCKS5 (RFC 1928) and its username/password authentication (RFC 1929).

const (
	Version5 = 5

	MethodNone         = 0x00
	MethodPassword     = 0x02
	MethodNoAcceptable = 0xff // "NO ACCEPTABLE METHODS"

	CmdConnect = 1
	CmdBind    = 2
	CmdUDP     = 3

	AtypIPv4 = 1
	AtypName = 3
	AtypIPv6 = 4

	// REP codes, RFC 1928 section 6.
	RepSucceeded        = 0
	RepGeneralFailure   = 1
	RepNotAllowed       = 2
	RepNetUnreachable   = 3
	RepHostUnreachable  = 4
	RepRefused          = 5
	RepTTLExpired       = 6
	RepCmdNotSupported  = 7
	RepAddrNotSupported = 8

	// RFC 1929 sub-negotiation.
	AuthVersion = 1
	AuthOK      = 0
	AuthFailed  = 1
)

// ParseGreeting decodes the version identifier/method selection message,
// RFC 1928 section 3:
//
//	+----+----------+----------+
//	|VER | NMETHODS | METHODS  |
//	+----+----------+----------+
//	| 1  |    1     | 1 to 255 |
//	+----+----------+----------+
//
// NMETHODS 0 is malformed: it gets 0xFF and a close.
func ParseGreeting(b []byte) (methods []byte, n int, err error) {
	if len(b) < 2 {
		return nil, 0, ErrShort
	}
	if b[0] != Version5 {
		return nil, 0, &ProtoError{-1, "not a SOCKS5 greeting"}
	}
	if b[1] == 0 {
		return nil, 0, &ProtoError{MethodNoAcceptable, "greeting offers no methods"}
	}
	n = 2 + int(b[1])
	if len(b) < n {
		return nil, 0, ErrShort
	}
	return b[2:n], n, nil
}

// ParseUserPass decodes the username/password request, RFC 1929 section 2:
//
//	+----+------+----------+------+----------+
//	|VER | ULEN |  UNAME   | PLEN |  PASSWD  |
//	+----+------+----------+------+----------+
//	| 1  |  1   | 1 to 255 |  1   | 1 to 255 |
//	+----+------+----------+------+----------+
func ParseUserPass(b []byte) (up UserPass, n int, err error) {
	if len(b) < 2 {
		return up, 0, ErrShort
	}
	if b[0] != AuthVersion {
		return up, 0, &ProtoError{AuthFailed, "bad username/password version " + strconv.Itoa(int(b[0]))}
	}
	ulen := int(b[1])
	if ulen == 0 {
		return up, 0, &ProtoError{AuthFailed, "empty username"}
	}
	if len(b) < 2+ulen+1 {
		return up, 0, ErrShort
	}
	plen := int(b[2+ulen])
	if plen == 0 {
		return up, 0, &ProtoError{AuthFailed, "empty password"}
	}
	n = 3 + ulen + plen
	if len(b) < n {
		return up, 0, ErrShort
	}
	return UserPass{string(b[2 : 2+ulen]), string(b[3+ulen : n])}, n, nil
}

type UserPass struct{ User, Pass string }

// AppendUserPass encodes a username/password request, as a client sends it.
func AppendUserPass(b []byte, user, pass string) []byte {
	b = append(b, AuthVersion, byte(len(user)))
	b = append(append(b, user...), byte(len(pass)))
	return append(b, pass...)
}

// Request5 is a request, RFC 1928 section 4:
//
//	+----+-----+-------+------+----------+----------+
//	|VER | CMD |  RSV  | ATYP | DST.ADDR | DST.PORT |
//	+----+-----+-------+------+----------+----------+
//	| 1  |  1  | X'00' |  1   | Variable |    2     |
//	+----+-----+-------+------+----------+----------+
type Request5 struct {
	Cmd  byte
	Addr Addr
}

// Addr is a SOCKS5 address: an IP or a name (ATYP 3), and a port.
type Addr struct {
	IP   netip.Addr
	Name string
	Port uint16
}

func (a Addr) String() string {
	if a.Name != "" {
		return a.Name + ":" + strconv.Itoa(int(a.Port))
	}
	return netip.AddrPortFrom(a.IP, a.Port).String()
}

// ParseRequest5 decodes a request. RSV is ignored. An unknown CMD gets REP 7,
// an unknown ATYP REP 8. The command is checked by the caller, after the
// whole request is read.
func ParseRequest5(b []byte) (r Request5, n int, err error) {
	if len(b) < 4 {
		return r, 0, ErrShort
	}
	if b[0] != Version5 {
		return r, 0, &ProtoError{RepGeneralFailure, "bad request version " + strconv.Itoa(int(b[0]))}
	}
	r.Cmd = b[1]
	r.Addr, n, err = ParseAddr(b, 3)
	return r, n, err
}

// ParseAddr decodes ATYP, DST.ADDR and DST.PORT at b[off:].
func ParseAddr(b []byte, off int) (a Addr, n int, err error) {
	if len(b) < off+1 {
		return a, 0, ErrShort
	}
	switch b[off] {
	case AtypIPv4:
		n = off + 1 + 4
		if len(b) < n+2 {
			return a, 0, ErrShort
		}
		a.IP = netip.AddrFrom4([4]byte(b[off+1 : n]))
	case AtypIPv6:
		n = off + 1 + 16
		if len(b) < n+2 {
			return a, 0, ErrShort
		}
		// An IPv4-mapped address is an IPv4 address: rules compare it as
		// one, and it is sent back as one.
		a.IP = netip.AddrFrom16([16]byte(b[off+1 : n])).Unmap()
	case AtypName:
		if len(b) < off+2 {
			return a, 0, ErrShort
		}
		l := int(b[off+1])
		n = off + 2 + l
		if len(b) < n+2 {
			return a, 0, ErrShort
		}
		name := b[off+2 : n]
		if l == 0 || bytes.IndexByte(name, 0) >= 0 {
			return a, 0, &ProtoError{RepGeneralFailure, "malformed destination name"}
		}
		a.Name = string(name)
	default:
		return a, 0, &ProtoError{RepAddrNotSupported, "unknown address type " + strconv.Itoa(int(b[off]))}
	}
	a.Port = uint16(b[n])<<8 | uint16(b[n+1])
	return a, n + 2, nil
}

// AppendAddr encodes ATYP, ADDR and PORT. An invalid IP without a name is
// sent as 0.0.0.0.
func AppendAddr(b []byte, a Addr) []byte {
	switch {
	case a.Name != "":
		b = append(b, AtypName, byte(len(a.Name)))
		b = append(b, a.Name...)
	case a.IP.Is6() && !a.IP.Is4In6():
		s := a.IP.As16()
		b = append(append(b, AtypIPv6), s[:]...)
	default:
		var s [4]byte
		if a.IP.IsValid() {
			s = a.IP.Unmap().As4()
		}
		b = append(append(b, AtypIPv4), s[:]...)
	}
	return append(b, byte(a.Port>>8), byte(a.Port))
}

// Append encodes r, as a client sends it.
func (r *Request5) Append(b []byte) []byte {
	return AppendAddr(append(b, Version5, r.Cmd, 0), r.Addr)
}

// AppendReply5 encodes a reply with REP rep and the bound address:
//
//	+----+-----+-------+------+----------+----------+
//	|VER | REP |  RSV  | ATYP | BND.ADDR | BND.PORT |
//	+----+-----+-------+------+----------+----------+
func AppendReply5(b []byte, rep byte, bound netip.AddrPort) []byte {
	return AppendAddr(append(b, Version5, rep, 0), Addr{IP: bound.Addr(), Port: bound.Port()})
}
