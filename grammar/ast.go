package grammar

import "net/netip"

// File is a parsed sockd.conf: its rules in file order and its special
// command lines.
type File struct {
	Filename string
	Rules    []*Rule
	// NoIdentd and BadID are the first #NO_IDENTD: and #BAD_ID: lines, or
	// nil. Later ones are ignored, with a warning.
	NoIdentd *Special
	BadID    *Special
	// Warnings are legal lines that probably do not mean what they say.
	// They never stop a file from loading.
	Warnings ErrorList
}

// A Special is a #NO_IDENTD: or #BAD_ID: line.
type Special struct {
	Pos     Pos
	Command string
}

// Action is what a rule does with the requests it matches.
type Action uint8

const (
	Deny Action = iota
	Permit
)

func (a Action) String() string {
	if a == Permit {
		return "permit"
	}
	return "deny"
}

// IdentMode is a rule's ?= setting.
type IdentMode uint8

const (
	IdentUnset   IdentMode = iota // no ?=: the global -i/-I flag applies
	IdentOff                      // ?=n or a bare ?=
	IdentLenient                  // ?=i
	IdentStrict                   // ?=I
)

func (m IdentMode) String() string {
	switch m {
	case IdentOff:
		return "n"
	case IdentLenient:
		return "i"
	case IdentStrict:
		return "I"
	}
	return ""
}

// Rule is one permit or deny line.
type Rule struct {
	Pos    Pos
	Action Action
	Ident  IdentMode
	// Users is the *= list; nil (no list, or a bare *=) means any user.
	Users []User
	Src   Host
	// Dst is nil when the rule names no destination: every destination.
	Dst  *Host
	Port *PortTest
	// Command is the shell command after the first ':', verbatim but for
	// leading blanks; empty for none.
	Command    string
	CommandPos Pos
}

// User is one item of a *= list: a user id, or an absolute path of a file of
// user ids.
type User struct {
	Pos  Pos
	Name string
}

// IsFile reports whether u names a file of user ids.
func (u User) IsFile() bool { return len(u.Name) > 0 && u.Name[0] == '/' }

// HostKind says how a Host matches.
type HostKind uint8

const (
	HostAddr    HostKind = iota // Addr and Mask, bit by bit
	HostAll                     // ALL
	HostSuffix                  // .example.com: Name is "example.com"
	HostName                    // an exact host name
	HostAnyName                 // srelay.conf's *: every destination given as a name
)

// Host is the source or destination part of a rule.
type Host struct {
	Pos  Pos
	Kind HostKind
	// Addr and Mask are of one family; Mask need not be a prefix. For name
	// kinds, Mask is the (ignored) mask token.
	Addr, Mask netip.Addr
	Name       string
	// FamilyOnly: a zero mask matches every address of Addr's family and
	// nothing else (srelay.conf's 0.0.0.0 and [::]), not every host.
	FamilyOnly bool
}

// PortOp is a port operator.
type PortOp uint8

const (
	OpEq PortOp = iota
	OpNeq
	OpLt
	OpGt
	OpLe
	OpGe
)

var opNames = [...]string{"eq", "neq", "lt", "gt", "le", "ge"}

func (o PortOp) String() string { return opNames[o] }

// PortTest is a rule's "op port" part. The port is a number, a range lo-hi
// (only with eq and neq), or a TCP service name that the policy looks up.
type PortTest struct {
	Pos     Pos // of the operator
	PortPos Pos
	Op      PortOp
	Lo, Hi  uint16
	Service string
}

// RouteFile is a parsed routing table: socks.conf, or srelay.conf read as
// one. Routes are in file order; the first that matches decides.
type RouteFile struct {
	Filename string
	Routes   []*Route
	// DefaultDirect: a destination no route matches goes direct (srelay);
	// otherwise it is refused (socks.conf).
	DefaultDirect bool
	// Srelay: the table comes from srelay.conf, and a name no route
	// matches is resolved and its addresses tried against the routes, as
	// srelay does.
	Srelay   bool
	Warnings ErrorList
}

// RouteAction is what a route does with the requests it matches.
type RouteAction uint8

const (
	RouteDeny   RouteAction = iota // deny
	RouteDirect                    // direct
	RouteVia                       // sockd: through a next hop
)

func (a RouteAction) String() string {
	return [...]string{"deny", "direct", "sockd"}[a]
}

// Route is one socks.conf line (or srelay.conf line).
type Route struct {
	Pos    Pos
	Action RouteAction
	// Servers are the alternatives of a RouteVia line, tried in order;
	// nil means the default server (-socks-server, $SOCKS_SERVER).
	Servers    []Chain
	ServersPos Pos
	Users      []User
	Dst        Host
	Port       *PortTest
	Command    string
	CommandPos Pos
}

// Chain is one alternative of a server list: hops in the order the
// traffic flows, nearest first.
type Chain struct {
	Pos  Pos
	Hops []Hop
}

// HopProto is the protocol spoken to a next hop.
type HopProto uint8

const (
	// HopLegacy is a bare host as legacy rsockd wrote it: SOCKS4, or 4a
	// for a destination name.
	HopLegacy HopProto = iota
	HopSOCKS4
	HopSOCKS4a
	HopSOCKS5
	HopHTTP
)

var hopSchemes = [...]string{"", "socks4", "socks4a", "socks5", "http"}

func (p HopProto) String() string { return hopSchemes[p] }

// Hop is one next hop.
type Hop struct {
	Pos   Pos
	Proto HopProto
	Host  string // an address (IPv6 without brackets) or a name
	Port  uint16 // 0: the default (socks/tcp from /etc/services, or 1080; 8080 for http)
}

// InterfaceFile is a parsed sockd.route: which local address to use for
// which destinations.
type InterfaceFile struct {
	Filename string
	Lines    []*Interface
}

// Interface is one sockd.route line: connections to Dst go out from Addr.
type Interface struct {
	Pos  Pos
	Addr netip.Addr
	Dst  Host
}

// Credential is one srelay.passwd line: the user and password for a next
// hop (a host, and a port or any).
type Credential struct {
	Pos      Pos
	Host     string
	Port     uint16 // 0: any port
	User     string
	Password string
}
