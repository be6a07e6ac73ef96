package grammar

import (
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/alecthomas/participle/v2"
	"github.com/alecthomas/participle/v2/lexer"
)

// The syntax of one socks.conf line (socks.conf(5)):
//
//	deny   [*=users]            dst [op port] [: command]
//	direct [*=users]            dst [op port] [: command]
//	sockd  [@=servers] [*=users] dst [op port] [: command]
//
// and the legacy "sockd@gw1,gw2". As for sockd.conf, the grammar is
// permissive and routeCheck says what is wrong.

type socksLine struct {
	Route *routeSyntax `parser:"(  @@"`
	Stray *cmdSyntax   `parser:" | @@"`
	Junk  []*anySyntax `parser:" | @@+ )?"`
}

type routeSyntax struct {
	Pos     lexer.Position
	Legacy  *legacyAtSyntax `parser:"(  @@"`
	Action  string          `parser:" | @Word"`
	Servers *serversSyntax  `parser:"   @@? )"`
	Users   *listSyntax     `parser:"@@?"`
	Dst     *hostSyntax     `parser:"@@?"`
	Port    *portSyntax     `parser:"@@?"`
	Extra   []*anySyntax    `parser:"@@*"`
	Cmd     *cmdSyntax      `parser:"@@?"`
}

type legacyAtSyntax struct {
	Pos  lexer.Position
	Text string `parser:"SockdAt @Hops?"`
}

type serversSyntax struct {
	Pos  lexer.Position
	Text string `parser:"ServersEq @Hops?"`
}

var (
	socksLexer  = ruleLexer(true)
	socksParser = participle.MustBuild[socksLine](
		participle.Lexer(socksLexer),
		participle.CaseInsensitive("Word", "SockdAt"),
		participle.UseLookahead(2),
	)
)

// SocksEBNF returns the grammar of one socks.conf line in EBNF.
func SocksEBNF() string { return socksParser.String() }

// otherDialects are first words of socks.conf lines written for other
// SOCKS clients' libraries; such lines are skipped with a warning.
var otherDialects = map[string]bool{"domain": true, "nameserver": true, "bind": true, "findserver": true}

// ParseSocks parses a socks.conf. Errors and warnings work as for
// ParseSockd.
func ParseSocks(filename string, r io.Reader) (*RouteFile, error) {
	lines, err := splitLines(r)
	if err != nil {
		return nil, err
	}
	f := &RouteFile{Filename: filename}
	var errs ErrorList
	for _, pl := range lines {
		if tooLong(filename, pl, &errs) || blank(pl.text) {
			continue
		}
		if w := firstWord(pl.text); otherDialects[strings.ToLower(w)] {
			f.Warnings.Add(Pos{Filename: filename, Line: pl.num, Column: 1 + strings.Index(pl.text, w), Offset: pl.offset},
				"%q lines belong to another socks.conf dialect; skipped", w)
			continue
		}
		syn, perr := parseLine(socksParser, socksLexer, filename, pl)
		if perr != nil {
			errs = append(errs, perr)
			continue
		}
		switch {
		case syn.Stray != nil:
			errs.Add(syn.Stray.Pos, "a command (': ...') needs a deny, direct or sockd rule before it")
		case len(syn.Junk) > 0:
			errs.Add(syn.Junk[0].Pos, "unexpected %q, expected deny, direct or sockd", syn.Junk[0].Text)
		case syn.Route != nil:
			if rt := checkRoute(syn.Route, &errs, &f.Warnings); rt != nil {
				f.Routes = append(f.Routes, rt)
			}
		}
	}
	if err := errs.Err(); err != nil {
		return nil, err
	}
	return f, nil
}

// tooLong reports (and records) a line over the legacy limit.
func tooLong(filename string, pl physLine, errs *ErrorList) bool {
	if len(pl.text) <= MaxLine {
		return false
	}
	errs.Add(Pos{Filename: filename, Line: pl.num, Column: MaxLine + 1, Offset: pl.offset + MaxLine},
		"line is %d bytes long, the limit is %d", len(pl.text), MaxLine)
	return true
}

func firstWord(line string) string {
	f := strings.FieldsFunc(line, func(r rune) bool { return strings.ContainsRune(" \t\r\v\f#:", r) })
	if len(f) == 0 {
		return ""
	}
	return f[0]
}

func checkRoute(rs *routeSyntax, errs, warns *ErrorList) *Route {
	n := len(*errs)
	rt := &Route{Pos: rs.Pos}
	switch {
	case rs.Legacy != nil:
		rt.Action = RouteVia
		rt.Servers, rt.ServersPos = checkServers(rs.Legacy.Text, rs.Legacy.Pos, len("sockd@"), errs)
	default:
		switch strings.ToLower(rs.Action) {
		case "deny":
			rt.Action = RouteDeny
		case "direct":
			rt.Action = RouteDirect
		case "sockd":
			rt.Action = RouteVia
		default:
			errs.Add(rs.Pos, "unexpected %q, expected deny, direct or sockd", rs.Action)
			return nil
		}
		if rs.Servers != nil {
			if rt.Action != RouteVia {
				errs.Add(rs.Servers.Pos, "@= lists servers, which only a sockd line uses")
			} else {
				rt.Servers, rt.ServersPos = checkServers(rs.Servers.Text, rs.Servers.Pos, len("@="), errs)
			}
		}
	}
	if rs.Users != nil {
		rt.Users = checkUsers(rs.Users, errs)
	}
	extra := rs.Extra
	switch {
	case rs.Dst == nil && rs.Port == nil && len(extra) > 0:
		errs.Add(extra[0].Pos, "unexpected %q, expected a destination address", extra[0].Text)
		extra = extra[1:]
	case rs.Dst == nil:
		var p Pos
		switch {
		case rs.Port != nil:
			p = rs.Port.Pos
		case rs.Cmd != nil:
			p = rs.Cmd.Pos
		case rs.Users != nil:
			p = shift(rs.Users.Pos, 2+len(rs.Users.Text))
		case rs.Servers != nil:
			p = shift(rs.Servers.Pos, 2+len(rs.Servers.Text))
		case rs.Legacy != nil:
			p = shift(rs.Legacy.Pos, len("sockd@")+len(rs.Legacy.Text))
		default:
			p = shift(rs.Pos, len(rs.Action))
		}
		errs.Add(p, "expected a destination address")
	default:
		rt.Dst = checkHost(rs.Dst, "destination", errs, warns)
	}
	rt.Port, rt.Command, rt.CommandPos = checkTail(rs.Port, extra, rs.Cmd, errs)
	if len(*errs) > n {
		return nil
	}
	return rt
}

// checkServers splits a server list: alternatives separated by commas,
// each a chain of hops joined by '>'. skip is the length of "@=" or
// "sockd@" before the text. An empty list means the default server.
func checkServers(text string, pos Pos, skip int, errs *ErrorList) ([]Chain, Pos) {
	pos.Column += skip
	pos.Offset += skip
	if text == "" {
		return nil, pos
	}
	var out []Chain
	col := 0
	for _, alt := range strings.Split(text, ",") {
		apos := shift(pos, col)
		col += len(alt) + 1
		if alt == "" {
			errs.Add(apos, "empty server in list (remove the extra comma)")
			continue
		}
		c := Chain{Pos: apos}
		hcol := 0
		for _, h := range strings.Split(alt, ">") {
			hpos := shift(apos, hcol)
			hcol += len(h) + 1
			hop, err := parseHop(h)
			if err != nil {
				errs.Add(hpos, "%v", err)
				continue
			}
			hop.Pos = hpos
			c.Hops = append(c.Hops, hop)
		}
		out = append(out, c)
	}
	return out, pos
}

func shift(p Pos, n int) Pos {
	p.Column += n
	p.Offset += n
	return p
}

// parseHop reads one hop: "gw", "gw:1081", "[2001:db8::1]:1080",
// "socks4://h:p", "socks4a://", "socks5://", "http://".
func parseHop(s string) (Hop, error) {
	var h Hop
	rest := s
	if scheme, after, ok := strings.Cut(s, "://"); ok {
		switch strings.ToLower(scheme) {
		case "socks4":
			h.Proto = HopSOCKS4
		case "socks4a":
			h.Proto = HopSOCKS4a
		case "socks5", "socks5h":
			h.Proto = HopSOCKS5
		case "http":
			h.Proto = HopHTTP
		default:
			return h, portError("server " + strconv.Quote(s) + ": unknown protocol " + strconv.Quote(scheme) + " (want socks4, socks4a, socks5 or http)")
		}
		rest = strings.TrimSuffix(after, "/")
	}
	if rest == "" {
		return h, portError("empty server " + strconv.Quote(s))
	}
	if strings.ContainsAny(rest, "@/?") {
		return h, portError("server " + strconv.Quote(s) + ": credentials and paths do not belong in socks.conf (use -upstream-passwd)")
	}
	host, port := rest, ""
	if strings.HasPrefix(rest, "[") || strings.Count(rest, ":") == 1 {
		var err error
		if host, port, err = net.SplitHostPort(rest); err != nil {
			if !strings.HasPrefix(rest, "[") || !strings.HasSuffix(rest, "]") {
				return h, portError("server " + strconv.Quote(s) + " is not host, host:port or [v6]:port")
			}
			host, port = strings.Trim(rest, "[]"), ""
		}
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if a.Zone() != "" {
			return h, portError("server " + strconv.Quote(s) + ": zones are not supported")
		}
		if a.Is6() && !strings.HasPrefix(rest, "[") {
			return h, portError("server " + strconv.Quote(s) + ": write IPv6 addresses in brackets, [" + host + "]:1080")
		}
	} else if _, ok := dottedQuad(host); !ok && (looksNumeric(host) || !validHostName(host)) {
		return h, portError("server " + strconv.Quote(s) + ": " + strconv.Quote(host) + " is not an address or a host name")
	}
	h.Host = host
	if port != "" {
		p, ok := parsePort(port)
		if !ok || p == 0 {
			return h, portError("server " + strconv.Quote(s) + ": port " + strconv.Quote(port) + " is not a number from 1 to 65535")
		}
		h.Port = p
	}
	return h, nil
}

// String returns h as it is written in a server list.
func (h Hop) String() string {
	host := h.Host
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	if h.Port != 0 {
		host += ":" + strconv.Itoa(int(h.Port))
	}
	if h.Proto == HopLegacy {
		return host
	}
	return h.Proto.String() + "://" + host
}

// String returns c as it is written in a server list.
func (c Chain) String() string {
	parts := make([]string, len(c.Hops))
	for i, h := range c.Hops {
		parts[i] = h.String()
	}
	return strings.Join(parts, ">")
}

// String returns rt as one canonical socks.conf line.
func (rt *Route) String() string {
	var b strings.Builder
	b.WriteString(rt.Action.String())
	if rt.Action == RouteVia && len(rt.Servers) > 0 {
		b.WriteString(" @=")
		for i, c := range rt.Servers {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(c.String())
		}
	}
	writeUsers(&b, rt.Users)
	b.WriteString(" " + rt.Dst.String())
	if rt.Port != nil {
		b.WriteString(" " + rt.Port.String())
	}
	if rt.Command != "" {
		b.WriteString(" : " + rt.Command)
	}
	return b.String()
}

// Format prints f as canonical socks.conf text.
func (f *RouteFile) Format() []byte {
	var b strings.Builder
	for _, rt := range f.Routes {
		b.WriteString(rt.String() + "\n")
	}
	return []byte(b.String())
}
