package wire

// The header of every UDP ASSOCIATE datagram, RFC 1928 section 7:
//
//	+----+------+------+----------+----------+----------+
//	|RSV | FRAG | ATYP | DST.ADDR | DST.PORT |   DATA   |
//	+----+------+------+----------+----------+----------+
//	| 2  |  1   |  1   | Variable |    2     | Variable |
//	+----+------+------+----------+----------+----------+
//
// Fragmentation is not supported: a datagram with FRAG != 0 is dropped by
// the caller.

// UDPHeader is the header of a SOCKS5 UDP datagram.
type UDPHeader struct {
	Frag byte
	Addr Addr
}

// ParseUDPHeader decodes the header at the start of a datagram and returns
// the length of the header: the payload is b[n:]. A datagram too short for
// its header is ErrShort (a datagram is never continued, so the caller
// drops it); an unknown ATYP or a malformed name is a *ProtoError.
func ParseUDPHeader(b []byte) (h UDPHeader, n int, err error) {
	if len(b) < 4 {
		return h, 0, ErrShort
	}
	h.Frag = b[2]
	h.Addr, n, err = ParseAddr(b, 3)
	return h, n, err
}

// AppendUDPHeader encodes a header with FRAG 0, for a datagram from addr.
func AppendUDPHeader(b []byte, addr Addr) []byte {
	return AppendAddr(append(b, 0, 0, 0), addr)
}
