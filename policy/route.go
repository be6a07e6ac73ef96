package policy

import (
	"context"
	"net/netip"
	"strconv"
	"strings"

	"github.com/sockd-ng/sockd/grammar"
)

// RouteKind says how a permitted request reaches its destination.
type RouteKind uint8

const (
	RouteDirect RouteKind = iota
	RouteVia              // through next hops
	RouteDeny
)

// Hop is one next hop of a route, with the credentials -upstream-passwd
// gives for it.
type Hop struct {
	Proto    grammar.HopProto
	Host     string
	Port     uint16
	User     string
	Password string
}

// Addr returns host:port.
func (h Hop) Addr() string {
	if strings.Contains(h.Host, ":") {
		return "[" + h.Host + "]:" + strconv.Itoa(int(h.Port))
	}
	return h.Host + ":" + strconv.Itoa(int(h.Port))
}

// String returns the hop as socks.conf writes it, never with a password.
func (h Hop) String() string {
	if h.Proto == grammar.HopLegacy {
		return h.Addr()
	}
	return h.Proto.String() + "://" + h.Addr()
}

// CarriesNames reports whether a destination name is handed to the hop
// unresolved: SOCKS4a, SOCKS5, HTTP, and legacy hops (4a for names).
func (h Hop) CarriesNames() bool { return h.Proto != grammar.HopSOCKS4 }

// Route is how a permitted request goes out: directly, through one of
// several chains of hops tried in order, or not at all.
type Route struct {
	Kind RouteKind
	// Rule is the FILE:LINE of the socks.conf (or srelay.conf) line, or ""
	// when no line decided (no routing file, the 127.0.0.1 rule, or the
	// default).
	Rule   string
	Chains [][]Hop
}

// String gives "direct", "via HOP>HOP,HOP" or "deny".
func (r Route) String() string {
	switch r.Kind {
	case RouteDirect:
		return "direct"
	case RouteDeny:
		return "deny"
	}
	var b strings.Builder
	b.WriteString("via ")
	for i, c := range r.Chains {
		if i > 0 {
			b.WriteByte(',')
		}
		for j, h := range c {
			if j > 0 {
				b.WriteByte('>')
			}
			b.WriteString(h.String())
		}
	}
	return b.String()
}

// needsAddress reports whether the route needs the destination as an
// address: going direct, or through a chain that ends in a plain SOCKS4
// hop.
func (r *Route) needsAddress() bool {
	switch r.Kind {
	case RouteDirect:
		return true
	case RouteVia:
		for _, c := range r.Chains {
			if !c[len(c)-1].CarriesNames() {
				return true
			}
		}
	}
	return false
}

// routeRule is a compiled socks.conf line.
type routeRule struct {
	src   *grammar.Route // the AST, for printing
	route Route
	users map[string]struct{}
	to    hostMatch
	port  portMatch
	hook  *Hook
}

// routeTable is a compiled routing file.
type routeTable struct {
	rules         []routeRule
	defaultDirect bool
	srelay        bool
}

// route finds the route for q with user as the claimed user (socks.conf(5),
// Matching).
func (t *routeTable) route(ctx context.Context, q *Query, user string) (Route, *Hook) {
	if t == nil {
		return Route{Kind: RouteDirect}, nil
	}
	if q.DstName == "" {
		// Legacy: these go direct without consulting the file.
		if a := q.Dst.Unmap(); a == netip.AddrFrom4([4]byte{127, 0, 0, 1}) || a == netip.IPv4Unspecified() {
			return Route{Kind: RouteDirect}, nil
		}
	}
	if r := t.first(ctx, q, user, q.Dst); r != nil {
		return r.route, r.hook
	}
	if t.srelay && q.DstName != "" && q.Resolve != nil {
		// srelay's second stage: a name no rule matched is resolved, and
		// its addresses are tried in turn.
		addrs, _ := q.Resolve(ctx, q.DstName)
		byAddr := *q
		byAddr.DstName = ""
		for _, a := range addrs {
			if r := t.first(ctx, &byAddr, user, a); r != nil {
				return r.route, r.hook
			}
		}
	}
	if t.defaultDirect {
		return Route{Kind: RouteDirect}, nil
	}
	return Route{Kind: RouteDeny}, nil
}

// first returns the first rule that matches q with dst as its address.
func (t *routeTable) first(ctx context.Context, q *Query, user string, dst netip.Addr) *routeRule {
	for i := range t.rules {
		r := &t.rules[i]
		if !r.port.match(q.Port) {
			continue
		}
		if r.users != nil {
			if _, ok := r.users[user]; !ok || user == "" {
				continue
			}
		}
		if matchDst(ctx, &r.to, q, dst, nil) {
			return r
		}
	}
	return nil
}

// compileRoutes compiles a routing file with the default server (a hop as
// socks.conf writes one) and next-hop credentials.
func (c *compiler) compileRoutes(f *grammar.RouteFile, warns *grammar.ErrorList) *routeTable {
	t := &routeTable{defaultDirect: f.DefaultDirect, srelay: f.Srelay}
	var defaultChains [][]Hop
	if c.opt.DefaultServer != "" {
		chains, err := parseServerList(c.opt.DefaultServer)
		if err != nil {
			c.errs.Add(grammar.Pos{Filename: f.Filename}, "default server %q: %v", c.opt.DefaultServer, err)
		}
		for _, ch := range chains {
			defaultChains = append(defaultChains, c.hops(ch))
		}
	}
	for _, gr := range f.Routes {
		r := routeRule{src: gr, route: Route{Rule: posString(gr.Pos)}}
		switch gr.Action {
		case grammar.RouteDeny:
			r.route.Kind = RouteDeny
		case grammar.RouteDirect:
			r.route.Kind = RouteDirect
		case grammar.RouteVia:
			r.route.Kind = RouteVia
			for _, ch := range gr.Servers {
				r.route.Chains = append(r.route.Chains, c.hops(ch))
			}
			if len(gr.Servers) == 0 {
				if defaultChains == nil {
					c.errs.Add(gr.Pos, "sockd line without a server list, and no default server: give @=servers, -socks-server or $SOCKS_SERVER")
					continue
				}
				r.route.Chains = defaultChains
			}
		}
		r.to = c.host(gr.Dst, warns)
		if gr.Port != nil {
			r.port = c.port(gr.Port)
		}
		r.users = c.users(gr.Users)
		if gr.Command != "" {
			r.hook = &Hook{Source: r.route.Rule, Template: gr.Command}
		}
		t.rules = append(t.rules, r)
	}
	return t
}

// parseServerList reads a server list as socks.conf writes it after @=.
func parseServerList(s string) ([]grammar.Chain, error) {
	f, err := grammar.ParseSocks("-socks-server", strings.NewReader("sockd @="+s+" ALL 0.0.0.0\n"))
	if err != nil {
		return nil, err
	}
	return f.Routes[0].Servers, nil
}

// hops compiles a chain: default ports filled in, credentials attached.
func (c *compiler) hops(ch grammar.Chain) []Hop {
	out := make([]Hop, len(ch.Hops))
	for i, gh := range ch.Hops {
		h := Hop{Proto: gh.Proto, Host: gh.Host, Port: gh.Port}
		if a, err := netip.ParseAddr(h.Host); err == nil && Unspecified(a) {
			c.errs.Add(gh.Pos, "next hop %s is an unspecified address: it would reach this host; name the hop's own address", h.Host)
		}
		if h.Port == 0 {
			h.Port = c.defaultPort(h.Proto)
		}
		for _, cr := range c.opt.Credentials {
			if strings.EqualFold(cr.Host, h.Host) && (cr.Port == 0 || cr.Port == h.Port) {
				h.User, h.Password = cr.User, cr.Password
				break
			}
		}
		out[i] = h
	}
	return out
}

// defaultPort is socks/tcp from /etc/services, else 1080; 8080 for HTTP.
func (c *compiler) defaultPort(p grammar.HopProto) uint16 {
	if p == grammar.HopHTTP {
		return 8080
	}
	if n, err := c.opt.LookupPort("socks"); err == nil && n > 0 && n < 65536 {
		return uint16(n)
	}
	return 1080
}

// Interfaces is a compiled sockd.route: the local address of outgoing
// connections and BIND listeners, by destination address. Immutable; a nil
// *Interfaces leaves the choice to the system.
type Interfaces struct {
	lines []ifaceRule
}

type ifaceRule struct {
	src  *grammar.Interface
	addr netip.Addr
	to   hostMatch
	rule string
}

// Source returns the local address for connections to dst, and the
// FILE:LINE that chose it. ok is false when sockd.route is in use and no
// line matches: the request must fail (socks.conf(5), deviation from
// legacy, which exited). For a nil Interfaces, it returns no address and
// ok.
func (in *Interfaces) Source(dst netip.Addr) (addr netip.Addr, rule string, ok bool) {
	if in == nil {
		return netip.Addr{}, "", true
	}
	for i := range in.lines {
		l := &in.lines[i]
		if l.to.kind == grammar.HostAll || l.to.matchAddr(dst) {
			return l.addr, l.rule, true
		}
	}
	return netip.Addr{}, "", false
}

func (c *compiler) compileInterfaces(f *grammar.InterfaceFile, warns *grammar.ErrorList) *Interfaces {
	in := &Interfaces{}
	for _, l := range f.Lines {
		in.lines = append(in.lines, ifaceRule{src: l, addr: l.Addr, to: c.host(l.Dst, warns), rule: posString(l.Pos)})
	}
	return in
}

// describe prints a compiled route line for "sockd check": the server list
// with default ports filled in and the users of credentials shown (never a
// password).
func (r *routeRule) describe(b *strings.Builder) {
	b.WriteString(r.route.Rule + ": " + r.src.Action.String())
	if r.route.Kind == RouteVia {
		b.WriteString(" @=")
		for i, c := range r.route.Chains {
			if i > 0 {
				b.WriteByte(',')
			}
			for j, h := range c {
				if j > 0 {
					b.WriteByte('>')
				}
				switch {
				case h.User == "":
					b.WriteString(h.String())
				case h.Proto == grammar.HopLegacy:
					b.WriteString(h.User + "@" + h.Addr())
				default:
					b.WriteString(h.Proto.String() + "://" + h.User + "@" + h.Addr())
				}
			}
		}
	}
	rest := r.src.String()
	rest = rest[len(r.src.Action.String()):]
	if r.src.Action == grammar.RouteVia && len(r.src.Servers) > 0 {
		rest = rest[strings.IndexByte(rest[1:], ' ')+1:]
	}
	b.WriteString(rest + "\n")
}
