package policy

import (
	"context"
	"net/netip"
)

// Command is the SOCKS command of a request. It is the %c token of shell
// commands.
type Command uint8

const (
	Connect Command = iota + 1
	Bind
	UDP // a SOCKS5 UDP ASSOCIATE datagram
)

func (c Command) String() string {
	switch c {
	case Connect:
		return "connect"
	case Bind:
		return "bind"
	case UDP:
		return "udp"
	}
	return "unknown"
}

// UserSource says where a request's user comes from (sockd.conf(5), Users).
type UserSource uint8

const (
	// UserClaimed: the SOCKS4 USERID, a claim that only ?=I verifies.
	UserClaimed UserSource = iota
	// UserPassword: a SOCKS5 username checked with its password (RFC 1929).
	UserPassword
	// UserNone: SOCKS5 without authentication. For a rule in ident mode I
	// or i the identd answer is the user; for other rules the user is
	// empty.
	UserNone
)

// IdentResult is the answer of the client's identd (RFC 1413).
type IdentResult struct {
	// Down: refused, timed out, an ERROR reply, or a malformed or
	// oversized reply.
	Down bool
	User string
}

// Query is one request, as Decide sees it. The funcs are lazy lookups that
// relay builds (memoised, so each runs at most once per connection); Decide
// calls one only when a rule needs its answer. A nil func means "no
// answer": ident down, no name, nothing resolved.
type Query struct {
	Command Command
	Client  netip.Addr
	// User is the claimed user (SOCKS4 USERID) or the authenticated SOCKS5
	// username; see Source.
	User   string
	Source UserSource
	// Dst is the destination when the client gave an address; DstName when
	// it gave a name (SOCKS4a, SOCKS5 ATYP 3).
	Dst     netip.Addr
	DstName string
	Port    uint16
	// AnyDestination asks whether a request without a destination yet (a
	// UDP association, whose datagrams are judged one by one) could be
	// permitted at all: a permit line matches whatever its destination and
	// port, a deny line only when it covers every destination and port.
	AnyDestination bool

	// Ident asks the client's identd.
	Ident func(ctx context.Context) IdentResult
	// ClientName is the forward-confirmed reverse name of Client, or "".
	ClientName func(ctx context.Context) string
	// DstAddrName is the forward-confirmed reverse name of a destination
	// given as an address, or "".
	DstAddrName func(ctx context.Context, a netip.Addr) string
	// Resolve resolves DstName, when the connection goes out directly.
	// When nil, the name is handed on unresolved (a next hop that carries
	// names) and numeric rules other than mask 0.0.0.0 cannot match it.
	Resolve func(ctx context.Context, name string) ([]netip.Addr, error)
}
