package relay

import (
	"bytes"
	"net/netip"
	"strconv"
)

// SOCKS5 (RFC 1928) and its username/password authentication (RFC 1929).

const (
	socks5Version = 5

	methodNone     = 0x00
	methodPassword = 0x02
	methodNoneOK   = 0xff // "NO ACCEPTABLE METHODS"

	cmdConnect = 1
	cmdBind    = 2
	cmdUDP     = 3

	atypIPv4 = 1
	atypName = 3
	atypIPv6 = 4

	// REP codes, RFC 1928 section 6.
	repSucceeded        = 0
	repGeneralFailure   = 1
	repNotAllowed       = 2
	repNetUnreachable   = 3
	repHostUnreachable  = 4
	repRefused          = 5
	repTTLExpired       = 6
	repCmdNotSupported  = 7
	repAddrNotSupported = 8

	// RFC 1929 sub-negotiation.
	authVersion = 1
	authOK      = 0
	authFailed  = 1
)

// parseGreeting decodes the version identifier/method selection message,
// RFC 1928 section 3:
//
//	+----+----------+----------+
//	|VER | NMETHODS | METHODS  |
//	+----+----------+----------+
//	| 1  |    1     | 1 to 255 |
//	+----+----------+----------+
//
// NMETHODS 0 is malformed: it gets 0xFF and a close.
func parseGreeting(b []byte) (methods []byte, n int, err error) {
	if len(b) < 2 {
		return nil, 0, errShort
	}
	if b[0] != socks5Version {
		return nil, 0, &protoError{-1, "not a SOCKS5 greeting"}
	}
	if b[1] == 0 {
		return nil, 0, &protoError{methodNoneOK, "greeting offers no methods"}
	}
	n = 2 + int(b[1])
	if len(b) < n {
		return nil, 0, errShort
	}
	return b[2:n], n, nil
}

// parseUserPass decodes the username/password request, RFC 1929 section 2:
//
//	+----+------+----------+------+----------+
//	|VER | ULEN |  UNAME   | PLEN |  PASSWD  |
//	+----+------+----------+------+----------+
//	| 1  |  1   | 1 to 255 |  1   | 1 to 255 |
//	+----+------+----------+------+----------+
func parseUserPass(b []byte) (up userPass, n int, err error) {
	if len(b) < 2 {
		return up, 0, errShort
	}
	if b[0] != authVersion {
		return up, 0, &protoError{authFailed, "bad username/password version " + strconv.Itoa(int(b[0]))}
	}
	ulen := int(b[1])
	if ulen == 0 {
		return up, 0, &protoError{authFailed, "empty username"}
	}
	if len(b) < 2+ulen+1 {
		return up, 0, errShort
	}
	plen := int(b[2+ulen])
	if plen == 0 {
		return up, 0, &protoError{authFailed, "empty password"}
	}
	n = 3 + ulen + plen
	if len(b) < n {
		return up, 0, errShort
	}
	return userPass{string(b[2 : 2+ulen]), string(b[3+ulen : n])}, n, nil
}

type userPass struct{ user, pass string }

// appendUserPass encodes a username/password request, as a client sends it.
func appendUserPass(b []byte, user, pass string) []byte {
	b = append(b, authVersion, byte(len(user)))
	b = append(append(b, user...), byte(len(pass)))
	return append(b, pass...)
}

// socks5Request is a request, RFC 1928 section 4:
//
//	+----+-----+-------+------+----------+----------+
//	|VER | CMD |  RSV  | ATYP | DST.ADDR | DST.PORT |
//	+----+-----+-------+------+----------+----------+
//	| 1  |  1  | X'00' |  1   | Variable |    2     |
//	+----+-----+-------+------+----------+----------+
type socks5Request struct {
	cmd  byte
	addr addr
}

// addr is a SOCKS5 address: an IP or a name (ATYP 3), and a port.
type addr struct {
	ip   netip.Addr
	name string
	port uint16
}

func (a addr) String() string {
	if a.name != "" {
		return a.name + ":" + strconv.Itoa(int(a.port))
	}
	return netip.AddrPortFrom(a.ip, a.port).String()
}

// parseRequest decodes a request. RSV is ignored. An unknown CMD gets REP 7,
// an unknown ATYP REP 8. The command is checked by the caller, after the
// whole request is read.
func parseRequest(b []byte) (r socks5Request, n int, err error) {
	if len(b) < 4 {
		return r, 0, errShort
	}
	if b[0] != socks5Version {
		return r, 0, &protoError{repGeneralFailure, "bad request version " + strconv.Itoa(int(b[0]))}
	}
	r.cmd = b[1]
	r.addr, n, err = parseAddr(b, 3)
	return r, n, err
}

// parseAddr decodes ATYP, DST.ADDR and DST.PORT at b[off:].
func parseAddr(b []byte, off int) (a addr, n int, err error) {
	if len(b) < off+1 {
		return a, 0, errShort
	}
	switch b[off] {
	case atypIPv4:
		n = off + 1 + 4
		if len(b) < n+2 {
			return a, 0, errShort
		}
		a.ip = netip.AddrFrom4([4]byte(b[off+1 : n]))
	case atypIPv6:
		n = off + 1 + 16
		if len(b) < n+2 {
			return a, 0, errShort
		}
		// An IPv4-mapped address is an IPv4 address: rules compare it as
		// one, and it is sent back as one.
		a.ip = netip.AddrFrom16([16]byte(b[off+1 : n])).Unmap()
	case atypName:
		if len(b) < off+2 {
			return a, 0, errShort
		}
		l := int(b[off+1])
		n = off + 2 + l
		if len(b) < n+2 {
			return a, 0, errShort
		}
		name := b[off+2 : n]
		if l == 0 || bytes.IndexByte(name, 0) >= 0 {
			return a, 0, &protoError{repGeneralFailure, "malformed destination name"}
		}
		a.name = string(name)
	default:
		return a, 0, &protoError{repAddrNotSupported, "unknown address type " + strconv.Itoa(int(b[off]))}
	}
	a.port = uint16(b[n])<<8 | uint16(b[n+1])
	return a, n + 2, nil
}

// appendAddr encodes ATYP, ADDR and PORT. An invalid IP without a name is
// sent as 0.0.0.0.
func appendAddr(b []byte, a addr) []byte {
	switch {
	case a.name != "":
		b = append(b, atypName, byte(len(a.name)))
		b = append(b, a.name...)
	case a.ip.Is6() && !a.ip.Is4In6():
		s := a.ip.As16()
		b = append(append(b, atypIPv6), s[:]...)
	default:
		var s [4]byte
		if a.ip.IsValid() {
			s = a.ip.Unmap().As4()
		}
		b = append(append(b, atypIPv4), s[:]...)
	}
	return append(b, byte(a.port>>8), byte(a.port))
}

// append encodes r, as a client sends it.
func (r *socks5Request) append(b []byte) []byte {
	return appendAddr(append(b, socks5Version, r.cmd, 0), r.addr)
}

// appendReply encodes a reply with REP rep and the bound address:
//
//	+----+-----+-------+------+----------+----------+
//	|VER | REP |  RSV  | ATYP | BND.ADDR | BND.PORT |
//	+----+-----+-------+------+----------+----------+
func appendReply(b []byte, rep byte, bound netip.AddrPort) []byte {
	return appendAddr(append(b, socks5Version, rep, 0), addr{ip: bound.Addr(), port: bound.Port()})
}
