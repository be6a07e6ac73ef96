package grammar

import (
	"io"
	"net/netip"
	"strconv"
	"strings"

	"github.com/alecthomas/participle/v2"
	"github.com/alecthomas/participle/v2/lexer"
)

// srelay.conf (socks.conf(5), srelay.conf): for sites coming from srelay.
//
//	# destination        ports    hops (farthest first)
//	10.10.0.0/16         any      10.10.10.1
//	192.168.2.128/25     512-     10.11.22.1 11080
//	Dest                 any      Socks-Island 1080 FireWall 8080/H
//	1.2.3.4              -
//
// '#' and ';' start comments, also after fields. No hops: direct. No
// matching line: direct.

var srelayLexer = lexer.MustSimple([]lexer.SimpleRule{
	{Name: "comment", Pattern: `[#;].*`},
	{Name: "space", Pattern: `[ \t\r\v\f]+`},
	{Name: "Field", Pattern: `[^ \t\r\v\f#;]+`},
})

type srelayLine struct {
	Fields []*srelayField `parser:"@@*"`
}

type srelayField struct {
	Pos  lexer.Position
	Text string `parser:"@Field"`
}

var srelayParser = participle.MustBuild[srelayLine](participle.Lexer(srelayLexer))

// ParseSrelay parses an srelay.conf into a routing table whose unmatched
// destinations go direct (Srelay set). Hops "host [port[/H|/S]]" are listed farthest
// first, as srelay writes them; the chains built are nearest first. /H is
// HTTP CONNECT; /S, the default, is SOCKS5.
func ParseSrelay(filename string, r io.Reader) (*RouteFile, error) {
	lines, err := splitLines(r)
	if err != nil {
		return nil, err
	}
	f := &RouteFile{Filename: filename, DefaultDirect: true, Srelay: true}
	var errs ErrorList
	for _, pl := range lines {
		if tooLong(filename, pl, &errs) {
			continue
		}
		lx, err := srelayLexer.LexString(filename, pl.text)
		if err != nil {
			errs.Add(Pos{Filename: filename, Line: pl.num, Column: 1}, "%v", err)
			continue
		}
		plx, err := lexer.Upgrade(shiftLexer{Lexer: lx, line: pl.num, offset: pl.offset})
		if err != nil {
			errs.Add(Pos{Filename: filename, Line: pl.num, Column: 1}, "%v", err)
			continue
		}
		l, err := srelayParser.ParseFromLexer(plx)
		if err != nil {
			errs = append(errs, syntaxError(err))
			continue
		}
		if len(l.Fields) == 0 {
			continue
		}
		if rt := checkSrelay(l.Fields, &errs); rt != nil {
			f.Routes = append(f.Routes, rt)
		}
	}
	if err := errs.Err(); err != nil {
		return nil, err
	}
	return f, nil
}

func checkSrelay(fields []*srelayField, errs *ErrorList) *Route {
	n := len(*errs)
	dst := fields[0]
	rt := &Route{Pos: dst.Pos, Action: RouteDirect}
	rt.Dst = srelayDest(dst.Text, dst.Pos, errs)
	if len(fields) < 2 {
		errs.Add(shift(dst.Pos, len(dst.Text)), "expected ports after the destination (any, n, lo-hi, lo-, -hi or -)")
		return nil
	}
	rt.Port = srelayPorts(fields[1], errs)
	var hops []Hop
	for i := 2; i < len(fields); i++ {
		f := fields[i]
		h, err := parseHop(f.Text)
		if err != nil || h.Port != 0 || h.Proto != HopLegacy {
			errs.Add(f.Pos, "hop %q is not a host name or address", f.Text)
			continue
		}
		h.Pos, h.Proto, h.Port = f.Pos, HopSOCKS5, 1080
		if i+1 < len(fields) && fields[i+1].Text[0] >= '0' && fields[i+1].Text[0] <= '9' {
			i++
			p := fields[i]
			num, kind, _ := strings.Cut(p.Text, "/")
			port, ok := parsePort(num)
			switch {
			case !ok || port == 0:
				errs.Add(p.Pos, "port %q of hop %q is not a number from 1 to 65535", p.Text, f.Text)
			case strings.EqualFold(kind, "H"):
				h.Proto = HopHTTP
			case kind != "" && !strings.EqualFold(kind, "S"):
				errs.Add(p.Pos, "hop type %q is not /H (HTTP) or /S (SOCKS)", "/"+kind)
			}
			h.Port = port
		}
		hops = append(hops, h)
	}
	if len(*errs) > n {
		return nil
	}
	if len(hops) > 0 {
		// srelay lists the farthest hop first; chains run nearest first.
		for i, j := 0, len(hops)-1; i < j; i, j = i+1, j-1 {
			hops[i], hops[j] = hops[j], hops[i]
		}
		rt.Action = RouteVia
		rt.Servers = []Chain{{Pos: fields[2].Pos, Hops: hops}}
	}
	return rt
}

// srelayDest parses a destination: a.b.c.d, /len, /dotted.mask, [v6],
// [v6/len], a domain (suffix match on whole labels), or *. As in srelay, a
// rule matches destinations of its own type only: 0.0.0.0 means every IPv4
// address and [::] every IPv6 one, * and domains match names only, and a
// bare address is one host.
func srelayDest(s string, pos Pos, errs *ErrorList) Host {
	h := Host{Pos: pos}
	switch {
	case s == "*":
		h.Kind = HostAnyName
		return h
	case strings.HasPrefix(s, "["):
		a, m, err := parseBracket(s)
		if err != nil {
			errs.Add(pos, "%v", err)
		}
		h.Addr, h.Mask = a, m
		if a.IsUnspecified() && !strings.Contains(s, "/") {
			h.Mask, h.FamilyOnly = netip.IPv6Unspecified(), true
		}
		return h
	case looksNumeric(s) || strings.Trim(s, "0123456789./") == "":
		a, m, hasMask := strings.Cut(s, "/")
		addr, err := parseIPv4(a, "destination address")
		if err != nil {
			errs.Add(pos, "%v", err)
			return h
		}
		h.Addr, h.Mask = addr, prefixMask(32, 32)
		switch {
		case hasMask && strings.Contains(m, "."):
			if h.Mask, err = parseIPv4(m, "mask"); err != nil {
				errs.Add(shift(pos, len(a)+1), "%v", err)
			}
		case hasMask:
			bits, err := strconv.ParseUint(m, 10, 8)
			if err != nil || bits > 32 {
				errs.Add(shift(pos, len(a)+1), "prefix length %q is not a number from 0 to 32", m)
				return h
			}
			h.Mask = prefixMask(int(bits), 32)
		case addr.IsUnspecified():
			h.Mask, h.FamilyOnly = netip.IPv4Unspecified(), true
		}
		return h
	case validHostName(strings.TrimPrefix(s, ".")):
		h.Kind, h.Name = HostSuffix, strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(s, "."), "."))
		h.Mask = netip.IPv4Unspecified() // ignored for names, as in sockd.conf
		return h
	}
	errs.Add(pos, "destination %q is not an address, [v6], a domain or *", s)
	return h
}

// srelayPorts parses any, n, lo-hi, lo-, -hi or -.
func srelayPorts(f *srelayField, errs *ErrorList) *PortTest {
	s := f.Text
	if strings.EqualFold(s, "any") || s == "-" {
		return nil
	}
	p := &PortTest{Pos: f.Pos, PortPos: f.Pos, Op: OpEq, Hi: 65535}
	lo, hi, isRange := strings.Cut(s, "-")
	ok := true
	if lo != "" {
		p.Lo, ok = parsePort(lo)
	}
	switch {
	case !isRange:
		p.Hi = p.Lo
	case hi != "" && ok:
		p.Hi, ok = parsePort(hi)
	}
	if !ok || p.Hi < p.Lo {
		errs.Add(f.Pos, "ports %q are not any, n, lo-hi, lo-, -hi or -", s)
		return nil
	}
	return p
}

// ParseCredentials parses an srelay.passwd: "host[/port] user password"
// per line, '#' comments. The password is the rest of the line after the
// user, so it may hold blanks.
func ParseCredentials(filename string, r io.Reader) ([]Credential, error) {
	lines, err := splitLines(r)
	if err != nil {
		return nil, err
	}
	var out []Credential
	var errs ErrorList
	for _, pl := range lines {
		t := strings.TrimLeft(pl.text, " \t")
		if t == "" || t[0] == '#' || tooLong(filename, pl, &errs) {
			continue
		}
		pos := Pos{Filename: filename, Line: pl.num, Column: 1 + len(pl.text) - len(t), Offset: pl.offset}
		host, rest, _ := strings.Cut(t, " ")
		if i := strings.IndexAny(t, " \t"); i >= 0 {
			host, rest = t[:i], strings.TrimLeft(t[i:], " \t")
		}
		user, pass, _ := strings.Cut(rest, " ")
		if i := strings.IndexAny(rest, " \t"); i >= 0 {
			user, pass = rest[:i], strings.TrimLeft(rest[i:], " \t")
		}
		pass = strings.TrimRight(pass, " \t\r")
		if user == "" || pass == "" {
			errs.Add(pos, "expected host[/port] user password")
			continue
		}
		c := Credential{Pos: pos, User: user, Password: pass}
		h, port, hasPort := strings.Cut(host, "/")
		c.Host = strings.Trim(h, "[]")
		if hasPort {
			p, ok := parsePort(port)
			if !ok || p == 0 {
				errs.Add(shift(pos, len(h)+1), "port %q is not a number from 1 to 65535", port)
				continue
			}
			c.Port = p
		}
		out = append(out, c)
	}
	if err := errs.Err(); err != nil {
		return nil, err
	}
	return out, nil
}
