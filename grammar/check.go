package grammar

import (
	"strconv"
	"strings"

	"github.com/alecthomas/participle/v2/lexer"
)

// addSockdLine turns one parsed line into AST, adding what it finds wrong to
// errs.
func (f *File) addSockdLine(l *sockdLine, errs *ErrorList) {
	switch {
	case l.Special != nil:
		s := &Special{Pos: l.Special.Pos, Command: trimCommand(l.Special.Cmd)}
		kind := strings.TrimSuffix(strings.TrimPrefix(l.Special.Kind, "#"), ":")
		slot := &f.NoIdentd
		if kind == "BAD_ID" {
			slot = &f.BadID
		}
		switch {
		case *slot != nil:
			f.Warnings.Add(s.Pos, "#%s: already given at line %d; this one is ignored", kind, (*slot).Pos.Line)
		case s.Command == "":
			errs.Add(s.Pos, "#%s: has no command after it", kind)
		default:
			*slot = s
		}
	case l.Stray != nil:
		errs.Add(l.Stray.Pos, "a command (': ...') needs a permit or deny rule before it")
	case len(l.Junk) > 0:
		errs.Add(l.Junk[0].Pos, "unexpected %q, expected permit or deny", l.Junk[0].Text)
	case l.Rule != nil:
		if r := checkRule(l.Rule, errs, &f.Warnings); r != nil {
			f.Rules = append(f.Rules, r)
		}
	}
}

// checkRule builds a Rule, or reports what is wrong with it.
func checkRule(rs *ruleSyntax, errs, warns *ErrorList) *Rule {
	n := len(*errs)
	r := &Rule{Pos: rs.Pos}
	switch strings.ToLower(rs.Action) {
	case "permit":
		r.Action = Permit
	case "deny":
		r.Action = Deny
	default:
		errs.Add(rs.Pos, "unexpected %q, expected permit or deny", rs.Action)
		return nil
	}
	if rs.Ident != nil {
		r.Ident = checkIdent(rs.Ident, errs)
	}
	if rs.Users != nil {
		r.Users = checkUsers(rs.Users, errs)
	}
	extra := rs.Extra
	switch {
	case rs.Src == nil && rs.Dst == nil && rs.Port == nil && len(extra) > 0:
		errs.Add(extra[0].Pos, "unexpected %q, expected a source address", extra[0].Text)
		extra = extra[1:]
	case rs.Src == nil:
		errs.Add(nextPos(rs), "expected a source address after %q", lastWord(rs))
	default:
		r.Src = checkHost(rs.Src, "source", errs, warns)
	}
	if rs.Dst != nil {
		h := checkHost(rs.Dst, "destination", errs, warns)
		r.Dst = &h
	}
	r.Port, r.Command, r.CommandPos = checkTail(rs.Port, extra, rs.Cmd, errs)
	if len(*errs) > n {
		return nil
	}
	return r
}

// checkTail checks how a sockd.conf or socks.conf line ends: the port
// test, words that nothing expects, and the command.
func checkTail(port *portSyntax, extra []*anySyntax, cmd *cmdSyntax, errs *ErrorList) (*PortTest, string, Pos) {
	var pt *PortTest
	if port != nil {
		pt = checkPort(port, errs)
	}
	for _, x := range extra {
		errs.Add(x.Pos, "unexpected %q, expected end of line or ': command'", x.Text)
	}
	if cmd == nil {
		return pt, "", Pos{}
	}
	return pt, trimCommand(cmd.Text), cmd.Pos
}

// trimCommand drops the blanks at the end of a command, CR among them
// (sockd.conf(5): CR is a blank): they mean nothing to the shell, and a
// CR there would read back as the end of a CRLF line.
func trimCommand(s string) string { return strings.TrimRight(s, " \t\r\v\f") }

// nextPos is where the source address of rs should have been: at the first
// token after the action and its options, or just after the last of them.
func nextPos(rs *ruleSyntax) Pos {
	switch {
	case rs.Dst != nil:
		return rs.Dst.Pos
	case rs.Port != nil:
		return rs.Port.Pos
	case len(rs.Extra) > 0:
		return rs.Extra[0].Pos
	case rs.Cmd != nil:
		return rs.Cmd.Pos
	}
	p := rs.Pos
	end := len(rs.Action)
	switch {
	case rs.Users != nil:
		p, end = rs.Users.Pos, 2+len(rs.Users.Text)
	case rs.Ident != nil:
		p, end = rs.Ident.Pos, len(rs.Ident.Text)
	}
	p.Column += end
	p.Offset += end
	return p
}

func lastWord(rs *ruleSyntax) string {
	switch {
	case rs.Users != nil:
		return "*=" + rs.Users.Text
	case rs.Ident != nil:
		return rs.Ident.Text
	}
	return rs.Action
}

func checkIdent(s *identSyntax, errs *ErrorList) IdentMode {
	switch v := strings.TrimPrefix(s.Text, "?="); v {
	case "I":
		return IdentStrict
	case "i":
		return IdentLenient
	case "n", "":
		return IdentOff
	default:
		errs.Add(s.Pos, "?= mode %q is not I (strict), i (lenient) or n (off)", v)
		return IdentUnset
	}
}

// checkUsers splits a *= list. An empty item is an error: legacy sockd let
// it match the empty user id.
func checkUsers(s *listSyntax, errs *ErrorList) []User {
	if s.Text == "" {
		return nil // a bare *= means any user
	}
	var out []User
	col := 2 // past "*="
	for _, item := range strings.Split(s.Text, ",") {
		pos := s.Pos
		pos.Column += col
		pos.Offset += col
		col += len(item) + 1
		if item == "" {
			errs.Add(pos, "empty user name in *= list (remove the extra comma)")
			continue
		}
		out = append(out, User{Pos: pos, Name: item})
	}
	return out
}

// checkHost builds a Host from "addr mask", a CIDR or bracketed IPv6.
func checkHost(s *hostSyntax, what string, errs, warns *ErrorList) Host {
	h := Host{Pos: s.Pos}
	n := len(*errs)
	var err error
	switch {
	case s.CIDR != "":
		h.Addr, h.Mask, err = parseCIDR(s.CIDR)
		if err != nil {
			errs.Add(s.Pos, "%v", err)
		}
	case s.V6 != "":
		h.Addr, h.Mask, err = parseBracket(s.V6)
		if err != nil {
			errs.Add(s.Pos, "%v", err)
		}
	default:
		w := s.Word
		switch {
		case w == "ALL":
			h.Kind = HostAll
		case looksNumeric(w) || strings.Trim(w, "0123456789.") == "":
			if h.Addr, err = parseIPv4(w, what+" address"); err != nil {
				errs.Add(s.Pos, "%v", err)
			}
		case w[0] == '.' && validHostName(w[1:]):
			h.Kind, h.Name = HostSuffix, strings.ToLower(strings.TrimSuffix(w[1:], "."))
		case validHostName(w):
			h.Kind, h.Name = HostName, strings.ToLower(strings.TrimSuffix(w, "."))
			if h.Name == "all" {
				warns.Add(s.Pos, "%q is the host named %q; ALL (upper case) means every host", w, h.Name)
			}
		default:
			errs.Add(s.Pos, "%s %q is not an address or a host name", what, w)
		}
		if s.Mask == "" {
			*errs = (*errs)[:n] // a missing mask says more than a bad address
			if strings.Trim(w, "0123456789") == "" {
				errs.Add(s.Pos, "%q needs a mask after it (for a port test write \"eq %s\")", w, w)
			} else {
				p := s.Pos
				p.Column += len(w)
				p.Offset += len(w)
				errs.Add(p, "expected a mask after %s %q (e.g. %s)", what, w, exampleMask(h.Kind))
			}
			return h
		}
		if h.Mask, err = parseIPv4(s.Mask, "mask"); err != nil {
			errs.Add(tokenPos(s.Tokens, 1), "%v", err)
		}
	}
	return h
}

func exampleMask(k HostKind) string {
	if k == HostAddr {
		return "255.255.255.255 for one host"
	}
	return "0.0.0.0, which is ignored for names"
}

// tokenPos is the position of the i-th token of a node.
func tokenPos(toks []lexer.Token, i int) Pos {
	if i < len(toks) {
		return toks[i].Pos
	}
	return toks[len(toks)-1].Pos
}

// checkPort parses "op port": a decimal port, lo-hi, or a service name.
func checkPort(s *portSyntax, errs *ErrorList) *PortTest {
	p := &PortTest{Pos: s.Pos}
	for i, name := range opNames {
		if strings.EqualFold(s.Op, name) {
			p.Op = PortOp(i)
		}
	}
	if s.Port == "" {
		pos := s.Pos
		pos.Column += len(s.Op)
		pos.Offset += len(s.Op)
		errs.Add(pos, "expected a port number or service name after %q", s.Op)
		return nil
	}
	p.PortPos = tokenPos(s.Tokens, 1)
	if err := parsePortSpec(s.Port, p); err != nil {
		errs.Add(p.PortPos, "%s", err)
		return nil
	}
	if p.Lo != p.Hi && p.Op != OpEq && p.Op != OpNeq {
		errs.Add(p.PortPos, "a port range goes with eq or neq, not %s", p.Op)
		return nil
	}
	return p
}

type portError string

func (e portError) Error() string { return string(e) }

// parsePortSpec fills p from "80", "8000-8100" or a service name.
func parsePortSpec(s string, p *PortTest) error {
	if s[0] >= '0' && s[0] <= '9' {
		lo, hi, isRange := strings.Cut(s, "-")
		l, ok := parsePort(lo)
		if !ok {
			return portError("port " + strconv.Quote(s) + " is not a number from 0 to 65535")
		}
		h := l
		if isRange {
			if h, ok = parsePort(hi); !ok {
				return portError("port range " + strconv.Quote(s) + " is not lo-hi with numbers from 0 to 65535")
			}
			if h < l {
				return portError("port range " + strconv.Quote(s) + " goes backwards")
			}
		}
		p.Lo, p.Hi = l, h
		return nil
	}
	if !validServiceName(s) {
		return portError("port " + strconv.Quote(s) + " is not a number or a tcp service name")
	}
	p.Service = s
	return nil
}

// parsePort parses a decimal port. Leading zeros are decimal, as atol read
// them in legacy sockd (never octal).
func parsePort(s string) (uint16, bool) {
	if s == "" || strings.Trim(s, "0123456789") != "" {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 16)
	return uint16(n), err == nil
}

func validServiceName(s string) bool {
	for i, c := range s {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z':
		case i > 0 && (c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' || c == '+'):
		default:
			return false
		}
	}
	return s != ""
}
