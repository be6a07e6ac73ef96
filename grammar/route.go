package grammar

import (
	"io"
	"net/netip"
	"strings"

	"github.com/alecthomas/participle/v2"
	"github.com/alecthomas/participle/v2/lexer"
)

// The syntax of one sockd.route line (socks.conf(5), Outbound interface):
//
//	if_addr dst_addr dst_mask
//
// with the destination forms of sockd.conf (addresses only: the line is
// matched against the address being dialed).

type ifaceLine struct {
	Pos   lexer.Position
	Addr  string       `parser:"(  @(Word | Bracket | CIDR)"`
	Dst   *hostSyntax  `parser:"   @@?"`
	Extra []*anySyntax `parser:"   @@*"`
	Cmd   *cmdSyntax   `parser:"   @@? )?"`
}

var ifaceParser = participle.MustBuild[ifaceLine](
	participle.Lexer(sockdLexer),
	participle.UseLookahead(2),
)

// ParseInterfaces parses a sockd.route. Errors work as for ParseSockd.
func ParseInterfaces(filename string, r io.Reader) (*InterfaceFile, error) {
	lines, err := splitLines(r)
	if err != nil {
		return nil, err
	}
	f := &InterfaceFile{Filename: filename}
	var errs, warns ErrorList
	for _, pl := range lines {
		if tooLong(filename, pl, &errs) || blank(pl.text) {
			continue
		}
		l, perr := parseLine(ifaceParser, sockdLexer, filename, pl)
		if perr != nil {
			errs = append(errs, perr)
			continue
		}
		if l.Addr == "" && l.Cmd == nil {
			continue
		}
		n := len(errs)
		in := &Interface{Pos: l.Pos}
		switch {
		case l.Cmd != nil:
			errs.Add(l.Cmd.Pos, "sockd.route lines take no command")
		case l.Dst == nil:
			errs.Add(shift(l.Pos, len(l.Addr)), "expected a destination address and mask after the interface address %q", l.Addr)
		default:
			in.Addr = parseIfaceAddr(l.Addr, l.Pos, &errs)
			in.Dst = checkHost(l.Dst, "destination", &errs, &warns)
			if in.Dst.Kind == HostName || in.Dst.Kind == HostSuffix {
				errs.Add(l.Dst.Pos, "sockd.route matches the address being dialed: use an address and mask, not a name")
			}
		}
		for _, x := range l.Extra {
			errs.Add(x.Pos, "unexpected %q, expected end of line", x.Text)
		}
		if len(errs) == n {
			f.Lines = append(f.Lines, in)
		}
	}
	if err := errs.Err(); err != nil {
		return nil, err
	}
	return f, nil
}

func parseIfaceAddr(s string, pos Pos, errs *ErrorList) netip.Addr {
	if strings.HasPrefix(s, "[") {
		a, m, err := parseBracket(s)
		if err != nil || maskBits(m) != 128 {
			errs.Add(pos, "interface address %q is not one IPv6 address in brackets", s)
		}
		return a
	}
	a, err := parseIPv4(s, "interface address")
	if err != nil {
		errs.Add(pos, "%v", err)
	}
	return a
}
