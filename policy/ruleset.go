package policy

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync/atomic"

	"github.com/sockd-ng/sockd/grammar"
)

// Ruleset is a compiled sockd.conf: immutable, safe for concurrent use.
// Rules are kept in file order; the first that matches decides; no match
// denies. From 16 rules on, an index (built by Compile) names the few
// rules a request can match, which are tried in that order.
type Ruleset struct {
	rules      []rule
	noIdentd   *Hook
	badID      *Hook
	idx        *index      // nil: every rule is tried in turn
	routes     *routeTable // nil: everything permitted goes direct
	interfaces *Interfaces
	files      []string
	// Warnings are the parser's and the compiler's warnings, sorted.
	Warnings grammar.ErrorList
}

type rule struct {
	src   *grammar.Rule // the AST, for printing
	pos   string        // FILE:LINE
	deny  bool
	ident grammar.IdentMode // effective: the rule's ?= or the global flag
	users map[string]struct{}
	from  hostMatch
	to    hostMatch
	hasTo bool
	port  portMatch
	hook  *Hook
	// userDesc says what the users set holds, for printing.
	userDesc string
}

func (r *rule) identOn() bool {
	return r.ident == grammar.IdentStrict || r.ident == grammar.IdentLenient
}

// Files returns the files the ruleset was built from besides the sockd.conf
// itself: the user files its rules name. A change to any of them calls for a
// reload.
func (rs *Ruleset) Files() []string { return rs.files }

// Len returns the number of sockd.conf rules.
func (rs *Ruleset) Len() int { return len(rs.rules) }

// HasRoutes reports whether a routing table is in use.
func (rs *Ruleset) HasRoutes() bool { return rs.routes != nil }

// String prints the compiled rules, one per line, with their FILE:LINE, the
// effective ident mode, and service names and user files resolved. It is
// what "sockd check" prints.
func (rs *Ruleset) String() string {
	var b strings.Builder
	for i := range rs.rules {
		r := &rs.rules[i]
		fmt.Fprintf(&b, "%s: %s", r.pos, r.src.Action)
		if r.identOn() || r.src.Ident == grammar.IdentOff {
			fmt.Fprintf(&b, " ?=%s", r.ident)
		}
		if r.users != nil {
			fmt.Fprintf(&b, " *=%s", r.userDesc)
		}
		fmt.Fprintf(&b, " %s", r.src.Src)
		if r.src.Dst != nil {
			fmt.Fprintf(&b, " %s", r.src.Dst)
		}
		if p := r.src.Port; p != nil {
			fmt.Fprintf(&b, " %s", p)
			if p.Service != "" {
				fmt.Fprintf(&b, " (%d)", r.port.serviceNumber(p.Op))
			}
		}
		if r.hook != nil {
			fmt.Fprintf(&b, " : %s", r.hook.Template)
		}
		b.WriteByte('\n')
	}
	if rs.noIdentd != nil {
		fmt.Fprintf(&b, "%s: #NO_IDENTD: %s\n", rs.noIdentd.Source, rs.noIdentd.Template)
	}
	if rs.badID != nil {
		fmt.Fprintf(&b, "%s: #BAD_ID: %s\n", rs.badID.Source, rs.badID.Template)
	}
	if rs.routes != nil {
		for i := range rs.routes.rules {
			rs.routes.rules[i].describe(&b)
		}
		if rs.routes.defaultDirect {
			b.WriteString("# no route matched: direct\n")
		}
	}
	if rs.interfaces != nil {
		for _, l := range rs.interfaces.lines {
			fmt.Fprintf(&b, "%s: %s from %s\n", l.rule, l.src.Dst, l.addr)
		}
	}
	return b.String()
}

// serviceNumber recovers the port a service name resolved to, for printing.
func (m *portMatch) serviceNumber(op grammar.PortOp) int {
	switch op {
	case grammar.OpEq, grammar.OpGe:
		return int(m.lo[0])
	case grammar.OpNeq, grammar.OpLt:
		return int(m.hi[0]) + 1
	case grammar.OpGt:
		return int(m.lo[0]) - 1
	case grammar.OpLe:
		return int(m.hi[0])
	}
	return 0
}

// Decide judges one request against the rules (sockd.conf(5), Evaluation),
// then, when it is permitted, routes it (socks.conf(5), Matching).
//
// A destination given as a name is matched by name rules as requested. When
// the connection goes out directly or to a plain SOCKS4 hop (and q.Resolve
// is set), the name is resolved once and the rules are evaluated per
// resolved address: the decision is that of the first permitted address,
// and Decision.Addrs lists the permitted addresses in resolver order — the
// only ones the server may connect to. Otherwise, and for a name that does
// not resolve, only ALL, name rules and mask 0.0.0.0 can match the
// destination; routes match names the same way.
//
// identd is asked only when a matching permit rule is in mode I or i, or
// when a rule's user list needs the identd answer of a SOCKS5 client that
// did not authenticate.
func (rs *Ruleset) Decide(ctx context.Context, q Query) Decision {
	if q.AnyDestination {
		return rs.decideOne(ctx, &q, netip.Addr{})
	}
	// A destination address in 0.0.0.0/8 or :: is this host; one given
	// by name is refused per address below. A BIND naming 0.0.0.0 or ::
	// names no peer (RFC 1928: a client that does not know it): its peer
	// is judged when it connects.
	if q.DstName == "" && q.Command != Bind && (!q.Dst.IsValid() || Unspecified(q.Dst)) {
		return Decision{Action: grammar.Deny, Reply: Rejected, Reason: reasonUnspecified}
	}
	if q.DstName != "" && q.Resolve != nil {
		// Routing (srelay's second stage) and per-address evaluation may
		// both need the addresses: resolve once per decision.
		resolve, done := q.Resolve, false
		var addrs []netip.Addr
		var err error
		q.Resolve = func(ctx context.Context, name string) ([]netip.Addr, error) {
			if !done {
				addrs, err = resolve(ctx, name)
				done = true
			}
			return addrs, err
		}
	}
	// The route says whether a name is resolved here: going direct, or to
	// a plain SOCKS4 hop, it is; a hop that carries names gets it as is.
	route, hook := rs.routes.route(ctx, &q, q.User)
	resolved := q.DstName != "" && q.Resolve != nil && route.needsAddress()
	d := rs.access(ctx, &q, resolved)
	if !d.Permitted() {
		return d
	}
	if rs.routes != nil && d.User != q.User {
		// The user the rules settled on (the identd answer of a SOCKS5
		// client without authentication) is the one routes compare.
		if r, h := rs.routes.route(ctx, &q, d.User); r.Rule != route.Rule {
			route, hook = r, h
			if !resolved && q.DstName != "" && q.Resolve != nil && route.needsAddress() {
				if d = rs.access(ctx, &q, true); !d.Permitted() {
					return d
				}
			}
		}
	}
	d.Route, d.AccessRule, d.Interfaces = route, d.Rule, rs.interfaces
	d.addHook(hook)
	if route.Kind == RouteDeny {
		d.Action, d.Reply, d.Rule, d.Reason = grammar.Deny, Rejected, route.Rule, "denied by route"
		if route.Rule == "" {
			d.Reason = "no route matched"
		}
	}
	return d
}

// access judges q against sockd.conf alone. With resolve, a destination
// name is resolved and judged per address (see Decide).
func (rs *Ruleset) access(ctx context.Context, q *Query, resolve bool) Decision {
	if !resolve {
		return rs.decideOne(ctx, q, q.Dst)
	}
	addrs, err := q.Resolve(ctx, q.DstName)
	if err != nil || len(addrs) == 0 {
		d := rs.decideOne(ctx, q, netip.Addr{})
		d.Resolved, d.ResolveErr = true, err
		return d
	}
	var first, chosen Decision
	verdicts := make([]AddrVerdict, len(addrs))
	var permitted []netip.Addr
	for i, a := range addrs {
		d := Decision{Action: grammar.Deny, Reply: Rejected, Reason: reasonUnspecified, User: q.User}
		if !Unspecified(a) {
			d = rs.decideOne(ctx, q, a)
		}
		verdicts[i] = AddrVerdict{Addr: a, Action: d.Action, Rule: d.Rule, Reason: d.Reason}
		if i == 0 {
			first = d
		}
		if d.Permitted() {
			if len(permitted) == 0 {
				chosen = d
			}
			permitted = append(permitted, a)
		}
	}
	if len(permitted) == 0 {
		chosen = first
	}
	chosen.Resolved, chosen.Addrs, chosen.PerAddr = true, permitted, verdicts
	return chosen
}

// decideOne evaluates the rules for one destination address (invalid when
// there is none: a name that is not resolved). With an index, only the
// rules it names as candidates are tried, in file order; the rest cannot
// match (see index). Either way the first rule that matches decides.
func (rs *Ruleset) decideOne(ctx context.Context, q *Query, dst netip.Addr) Decision {
	var d Decision
	var lk lookups
	from := 0
	// A request without a destination yet matches permit rules on their
	// source alone, past the tests the index files most rules under: it
	// tries every rule (once per UDP association, not per datagram).
	if rs.idx != nil && !q.AnyDestination {
		var decided bool
		if decided, from = rs.decideIndexed(ctx, q, dst, &lk, &d); decided {
			return d
		}
	}
	for i := from; i < len(rs.rules); i++ {
		r := &rs.rules[i]
		if q.AnyDestination {
			if !r.admitsAny(ctx, q, &lk) {
				continue
			}
			if !r.deny && r.identOn() {
				// Whether identd agrees is asked when a datagram is
				// judged by a rule that needs it, not here: this line
				// may let some datagram through.
				if r.users != nil && q.Source != UserNone {
					if _, ok := r.users[q.User]; !ok || q.User == "" {
						continue
					}
				}
				return Decision{Action: grammar.Permit, Reply: Granted, Rule: r.pos, User: q.User, Reason: "permitted by rule"}
			}
		} else if !r.port.match(q.Port) || !r.matchHosts(ctx, q, dst, &lk) {
			continue // admits, with the port test inline: most rules end here
		}
		if rs.judge(ctx, q, r, &d) {
			return d
		}
	}
	return Decision{Action: grammar.Deny, Reply: Rejected, Reason: "no rule matched", User: q.User}
}

// admits tests a rule's port, source and destination: numbers first,
// names (which may need a reverse lookup) only when the numbers pass.
func (r *rule) admits(ctx context.Context, q *Query, dst netip.Addr, lk *lookups) bool {
	if q.AnyDestination {
		return r.admitsAny(ctx, q, lk)
	}
	return r.port.match(q.Port) && r.matchHosts(ctx, q, dst, lk)
}

// admitsAny is admits for a request without a destination yet: a permit
// line on its source alone, a deny line only when it covers every
// destination and port.
func (r *rule) admitsAny(ctx context.Context, q *Query, lk *lookups) bool {
	return !(r.deny && (r.hasTo || r.port.n != 0)) && r.matchSource(ctx, q, lk)
}

// judge finishes a rule that admits q: its user list and ident mode. When
// the rule decides, judge sets *out and reports true; false means the
// next rule is tried.
func (rs *Ruleset) judge(ctx context.Context, q *Query, r *rule, out *Decision) bool {
	if r.users != nil && q.Source != UserNone {
		// The common miss, before d is set up: no lookup comes first.
		if _, ok := r.users[q.User]; !ok || q.User == "" {
			return false
		}
	}
	// The user this rule compares (sockd.conf(5), Users).
	user := q.User
	var d Decision
	if q.Source == UserNone {
		user = ""
		if r.identOn() && !r.deny && r.users != nil {
			id := d.ident(ctx, q)
			if id.Down {
				if r.ident == grammar.IdentStrict {
					*out = rs.identDown(d, r)
					return true
				}
				return false // lenient: no user known, so the list cannot match
			}
			user = id.User
		}
	}
	if r.users != nil {
		if _, ok := r.users[user]; !ok || user == "" {
			return false
		}
	}
	d.Rule, d.User = r.pos, user
	if r.deny {
		d.Action, d.Reply, d.Reason = grammar.Deny, Rejected, "denied by rule"
		d.addHook(r.hook)
		*out = d
		return true
	}
	if r.identOn() {
		id := d.ident(ctx, q)
		switch {
		case id.Down && r.ident == grammar.IdentStrict:
			*out = rs.identDown(d, r)
			return true
		case id.Down:
			d.addHook(rs.noIdentd)
		case q.Source == UserNone && r.users == nil:
			d.User = id.User // the identd answer is the user
		case id.User != user:
			d.Action, d.Reply, d.Reason = grammar.Deny, IdentMismatch, "identd reports another user"
			d.addHook(rs.badID)
			*out = d
			return true
		}
	}
	d.Action, d.Reply, d.Reason = grammar.Permit, Granted, "permitted by rule"
	d.addHook(r.hook)
	*out = d
	return true
}

func (rs *Ruleset) identDown(d Decision, r *rule) Decision {
	d.Rule = r.pos
	d.Action, d.Reply, d.Reason = grammar.Deny, IdentDown, "identd unreachable under ?=I"
	d.addHook(rs.noIdentd)
	return d
}

// ident asks q.Ident once for this decision and records the answer.
func (d *Decision) ident(ctx context.Context, q *Query) IdentResult {
	if !d.IdentAsked {
		d.IdentAsked = true
		d.Ident = IdentResult{Down: true}
		if q.Ident != nil {
			d.Ident = q.Ident(ctx)
		}
	}
	return d.Ident
}

// lookups holds the reverse names one evaluation asked for: each is asked
// at most once, when the first rule that needs it gets that far, and the
// index narrows the name rules by it from then on.
type lookups struct {
	client, dst       string
	clientSet, dstSet bool
}

// clientName returns the forward-confirmed name of the client, asking
// q.ClientName the first time.
func (lk *lookups) clientName(ctx context.Context, q *Query) string {
	if lk == nil {
		return q.ClientName(ctx)
	}
	if !lk.clientSet {
		lk.client, lk.clientSet = q.ClientName(ctx), true
	}
	return lk.client
}

// dstName returns the forward-confirmed name of destination address dst,
// asking q.DstAddrName the first time.
func (lk *lookups) dstName(ctx context.Context, q *Query, dst netip.Addr) string {
	if lk == nil {
		return q.DstAddrName(ctx, dst)
	}
	if !lk.dstSet {
		lk.dst, lk.dstSet = q.DstAddrName(ctx, dst), true
	}
	return lk.dst
}

// matchSource tests the source alone.
func (r *rule) matchSource(ctx context.Context, q *Query, lk *lookups) bool {
	if r.from.kind == grammar.HostAddr {
		return r.from.matchAddr(q.Client)
	}
	return !r.from.needsName() || q.ClientName != nil && r.from.matchName(lk.clientName(ctx, q))
}

// matchHosts tests the source and destination: numbers first, names (which
// may need a reverse lookup) only when the numbers pass.
func (r *rule) matchHosts(ctx context.Context, q *Query, dst netip.Addr, lk *lookups) bool {
	if r.from.kind == grammar.HostAddr && !r.from.matchAddr(q.Client) {
		return false
	}
	if r.hasTo && r.to.kind == grammar.HostAddr && !r.to.matchAddr(dst) {
		return false
	}
	if r.from.needsName() {
		if q.ClientName == nil || !r.from.matchName(lk.clientName(ctx, q)) {
			return false
		}
	}
	return !r.hasTo || !r.to.needsName() || matchDst(ctx, &r.to, q, dst, lk)
}

// matchDst matches a destination against m: a name rule compares the
// requested name, or for an address the forward-confirmed reverse name; a
// numeric rule compares the address (invalid for an unresolved name). lk
// memoises the reverse name; nil asks q.DstAddrName every time.
func matchDst(ctx context.Context, m *hostMatch, q *Query, dst netip.Addr, lk *lookups) bool {
	if m.kind == grammar.HostAnyName {
		return q.DstName != "" && !dst.IsValid()
	}
	if !m.needsName() {
		return m.kind == grammar.HostAll || m.matchAddr(dst)
	}
	switch {
	case q.DstName != "":
		return m.matchName(q.DstName)
	case q.DstAddrName != nil && dst.IsValid():
		return m.matchName(lk.dstName(ctx, q, dst))
	}
	return false
}

// Live holds the Ruleset in force and swaps it atomically on reload. Its
// zero value denies everything until the first Store. Safe for concurrent
// use.
type Live struct {
	p atomic.Pointer[Ruleset]
}

// Load returns the Ruleset in force, or nil.
func (l *Live) Load() *Ruleset { return l.p.Load() }

// Store puts rs in force for every request decided from now on.
func (l *Live) Store(rs *Ruleset) { l.p.Store(rs) }

// Decide decides q against the Ruleset in force: one snapshot per call.
func (l *Live) Decide(ctx context.Context, q Query) Decision {
	rs := l.p.Load()
	if rs == nil {
		return Decision{Action: grammar.Deny, Reply: Rejected, Reason: "no rules loaded"}
	}
	return rs.Decide(ctx, q)
}
