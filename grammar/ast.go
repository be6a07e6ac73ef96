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
	HostAddr   HostKind = iota // Addr and Mask, bit by bit
	HostAll                    // ALL
	HostSuffix                 // .example.com: Name is "example.com"
	HostName                   // an exact host name
)

// Host is the source or destination part of a rule.
type Host struct {
	Pos  Pos
	Kind HostKind
	// Addr and Mask are of one family; Mask need not be a prefix. For name
	// kinds, Mask is the (ignored) mask token.
	Addr, Mask netip.Addr
	Name       string
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
