package policy

import (
	"net/netip"

	"github.com/sockd-ng/sockd/grammar"
)

// Reply is the outcome of a decision in legacy SOCKS4 terms (sockd.conf(5),
// Replies). relay maps it to SOCKS5 REP codes.
type Reply uint8

const (
	Granted       Reply = 90
	Rejected      Reply = 91
	IdentDown     Reply = 92 // identd could not be asked, under ?=I
	IdentMismatch Reply = 93 // identd reports another user
)

// Hook is a shell command that a decision asks to run: a rule's ": command",
// #NO_IDENTD: or #BAD_ID:. Template is the text before % expansion.
type Hook struct {
	Source   string // FILE:LINE
	Template string
}

// AddrVerdict is the decision for one resolved address of a destination
// name.
type AddrVerdict struct {
	Addr   netip.Addr
	Action grammar.Action
	Rule   string // FILE:LINE, or "" for the default
	Reason string
}

// Decision is what a Ruleset says about one request. It is plain data.
type Decision struct {
	Action grammar.Action
	Reply  Reply
	// Rule is the FILE:LINE of the deciding rule, "" for the default deny.
	Rule string
	// Reason says why, in a few words, for logs and explain.
	Reason string
	// User is the user the deciding rule compared: the claimed or
	// authenticated user, or, for SOCKS5 without authentication under
	// ?=I/?=i, the identd answer.
	User string
	// Ident is the identd answer, when identd was asked (IdentAsked).
	Ident      IdentResult
	IdentAsked bool
	// Hooks are the commands to run, in order: #NO_IDENTD: or #BAD_ID:,
	// the sockd.conf line's, the socks.conf line's.
	Hooks    [3]*Hook
	NumHooks int

	// Route is how a permitted request goes out. When the route refuses
	// it, Action is Deny and Rule is the route's; AccessRule keeps the
	// sockd.conf line that admitted it.
	Route      Route
	AccessRule string
	// Interfaces chooses the local address of outgoing connections
	// (sockd.route); nil leaves it to the system.
	Interfaces *Interfaces

	// For a destination name that was resolved (Resolved): Addrs are the
	// permitted addresses in resolver order, the only ones the server may
	// connect to; PerAddr is the verdict for every address. ResolveErr is
	// the resolver's error, if any.
	Resolved   bool
	Addrs      []netip.Addr
	PerAddr    []AddrVerdict
	ResolveErr error
}

// Unspecified reports whether a is an unspecified address as a
// destination: in 0.0.0.0/8, ::, or an IPv4-mapped form of one. On Linux
// a connection or a datagram to one reaches this host (the "0.0.0.0 day"
// that browsers closed in 2024), so no rule can make one a destination:
// Decide denies them, and relay refuses to dial or send to them.
func Unspecified(a netip.Addr) bool {
	a = a.Unmap()
	if a.Is4() {
		return a.As4()[0] == 0
	}
	return a.IsUnspecified()
}

// reasonUnspecified is the Reason of a destination that Unspecified
// refuses.
const reasonUnspecified = "unspecified destination address: it reaches this host"

// Permitted reports whether d lets the request through.
func (d *Decision) Permitted() bool { return d.Action == grammar.Permit }

func (d *Decision) addHook(h *Hook) {
	if h != nil && d.NumHooks < len(d.Hooks) {
		d.Hooks[d.NumHooks] = h
		d.NumHooks++
	}
}
