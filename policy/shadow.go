package policy

import "github.com/sockd-ng/sockd/grammar"

// shadowBudget bounds the work of checkShadowed, in rule comparisons and
// mask probes. The check is exact within it; files that only an
// adversary would write (thousands of rules that each of the four tests
// fail to tell apart, or thousands of distinct masks) run out of it, and
// then the check stops with a warning saying where, instead of taking
// time quadratic in the number of rules. 4M comparisons are some tens of
// milliseconds; the 10,000-rule files of the benchmarks need a few
// hundred thousand.
const shadowBudget = 4 << 20

// checkShadowed warns about rules that can never match because an earlier
// rule matches everything they do (see rule.covers), naming the first such
// rule. Legacy files often hold such rules, so this is a warning, not an
// error.
//
// Comparing every rule with every earlier one is quadratic: 50 million
// comparisons for 10,000 rules. Instead each rule is looked up in a
// coverIndex of the rules before it: by its source and destination
// together, by its users, and by its port. The lookup with the fewest
// candidates names a superset of the rules that cover it, and only those
// are compared.
func checkShadowed(rs *Ruleset) {
	x := newCoverIndex(len(rs.rules))
	budget := shadowBudget
	for j := range rs.rules {
		b := &rs.rules[j]
		i := x.firstCovering(rs.rules, b, &budget)
		if budget < 0 {
			rs.Warnings.Add(b.src.Pos, "rules from this one on were not checked for being shadowed by earlier ones: too many comparisons (%d rules)", len(rs.rules))
			return
		}
		if i >= 0 {
			a := &rs.rules[i]
			what := "shadowed by"
			if a.src.String() == b.src.String() {
				what = "duplicate of"
			}
			rs.Warnings.Add(b.src.Pos, "rule never matches: %s line %d", what, a.src.Pos.Line)
		}
		x.add(b, int32(j))
	}
}

// covers reports whether a matches every request b matches.
func (a *rule) covers(b *rule) bool {
	if !a.from.covers(&b.from) || !a.port.covers(&b.port) {
		return false
	}
	if a.hasTo {
		if !b.hasTo {
			all := hostMatch{kind: grammar.HostAll}
			if !a.to.covers(&all) {
				return false
			}
		} else if !a.to.covers(&b.to) {
			return false
		}
	}
	if a.users == nil {
		return true
	}
	if b.users == nil {
		return false
	}
	for u := range b.users {
		if _, ok := a.users[u]; !ok {
			return false
		}
	}
	return true
}

// coverIndex files rules, in file order, by what their tests cover, so
// that the rules that may cover a given rule can be listed without
// comparing it with all of them. Every list is sorted.
type coverIndex struct {
	all []int32
	// pairs files rules by their source and destination test together:
	// the ids of the two in from and to.
	from, to hostKeys
	pairs    map[[2]int32][]int32
	// anyUser: no user list; byUser: the rules whose list holds a user.
	anyUser []int32
	byUser  map[string][]int32
	// Port tests: those that pass every port, those of one port, and the
	// other ranges.
	anyPort, otherPort []int32
	onePort            map[uint16][]int32
}

// hostKey is a source or destination test as far as covering goes.
// Every test that matches all hosts (ALL, a zero mask, no destination) is
// the one key {kind: HostAll}; tests compared one by one (srelay.conf's
// forms, never in a sockd.conf) are {kind: keyOther}.
type hostKey struct {
	kind       grammar.HostKind
	is4        bool
	mask, addr [16]byte
	name       string
}

const keyOther grammar.HostKind = 255

// hostKeys numbers the distinct tests of one side, and lists the masks of
// its address tests.
type hostKeys struct {
	ids     map[hostKey]int32
	masks   []maskKey
	hasMask map[maskKey]bool
}

// newCoverIndex returns an empty coverIndex sized for n rules.
func newCoverIndex(n int) *coverIndex {
	return &coverIndex{
		all:   make([]int32, 0, n),
		from:  hostKeys{ids: make(map[hostKey]int32, n), hasMask: map[maskKey]bool{}},
		to:    hostKeys{ids: make(map[hostKey]int32, n), hasMask: map[maskKey]bool{}},
		pairs: make(map[[2]int32][]int32, n), byUser: map[string][]int32{}, onePort: map[uint16][]int32{},
	}
}

// keyOf returns the key of a test; present is false for an absent
// destination.
func keyOf(m *hostMatch, present bool) hostKey {
	switch {
	case !present || m.kind == grammar.HostAll || m.kind == grammar.HostAddr && m.any && !m.familyOnly:
		return hostKey{kind: grammar.HostAll}
	case m.kind == grammar.HostAddr && !m.any:
		return hostKey{kind: grammar.HostAddr, is4: m.is4, mask: m.mask, addr: m.addr}
	case m.kind == grammar.HostName || m.kind == grammar.HostSuffix:
		return hostKey{kind: m.kind, name: m.name}
	}
	return hostKey{kind: keyOther}
}

// id numbers k, adding it when new.
func (h *hostKeys) id(k hostKey) int32 {
	id, ok := h.ids[k]
	if !ok {
		id = int32(len(h.ids))
		h.ids[k] = id
		if mk := (maskKey{k.is4, k.mask}); k.kind == grammar.HostAddr && !h.hasMask[mk] {
			h.hasMask[mk] = true
			h.masks = append(h.masks, mk)
		}
	}
	return id
}

func (x *coverIndex) add(r *rule, n int32) {
	x.all = append(x.all, n)
	p := [2]int32{x.from.id(keyOf(&r.from, true)), x.to.id(keyOf(&r.to, r.hasTo))}
	x.pairs[p] = append(x.pairs[p], n)
	if r.users == nil {
		x.anyUser = append(x.anyUser, n)
	}
	for u := range r.users {
		x.byUser[u] = append(x.byUser[u], n)
	}
	switch p := &r.port; {
	case p.n == 0 || p.n == 1 && p.lo[0] == 0 && p.hi[0] == 65535:
		x.anyPort = append(x.anyPort, n)
	case p.n == 1 && p.lo[0] == p.hi[0]:
		x.onePort[p.lo[0]] = append(x.onePort[p.lo[0]], n)
	case p.n > 0:
		x.otherPort = append(x.otherPort, n)
	} // p.n < 0 ("lt 0") covers only rules like it, which every rule covers
}

// covering appends to ids the ids of the tests that may cover m: a
// superset of those whose hostMatch.covers(m) holds.
func (h *hostKeys) covering(m *hostMatch, ids []int32, budget *int) []int32 {
	add := func(k hostKey) {
		*budget--
		if id, ok := h.ids[k]; ok {
			ids = append(ids, id)
		}
	}
	add(hostKey{kind: grammar.HostAll})
	add(hostKey{kind: keyOther})
	switch {
	case m.kind == grammar.HostAddr && !m.any:
		for _, mk := range h.masks {
			*budget--
			if mk.is4 != m.is4 || !maskWithin(&mk.mask, &m.mask) {
				continue
			}
			k := hostKey{kind: grammar.HostAddr, is4: m.is4, mask: mk.mask}
			for j := range k.addr {
				k.addr[j] = m.addr[j] & mk.mask[j]
			}
			add(k)
		}
	case m.kind == grammar.HostName || m.kind == grammar.HostSuffix:
		if m.kind == grammar.HostName {
			add(hostKey{kind: grammar.HostName, name: m.name})
		}
		// A suffix covers an equal name or suffix, and those ending in
		// whole labels with it.
		add(hostKey{kind: grammar.HostSuffix, name: m.name})
		for i := 0; i < len(m.name); i++ {
			if m.name[i] == '.' {
				add(hostKey{kind: grammar.HostSuffix, name: m.name[i+1:]})
			}
		}
	}
	return ids
}

// maskWithin reports whether every bit of mask a is set in mask b.
func maskWithin(a, b *[16]byte) bool {
	for i := range a {
		if a[i]&^b[i] != 0 {
			return false
		}
	}
	return true
}

func total(lists [][]int32) int {
	n := 0
	for _, l := range lists {
		n += len(l)
	}
	return n
}

// firstCovering returns the first rule filed in x that covers b, or -1.
// It takes the lookup (source and destination together, users, or port)
// with the fewest candidates and compares b with those, spending budget.
func (x *coverIndex) firstCovering(rules []rule, b *rule, budget *int) int32 {
	var bufs [3][16][]int32
	var cands [3][][]int32
	var fbuf, tbuf [8]int32
	from := x.from.covering(&b.from, fbuf[:0], budget)
	to, all := &b.to, hostMatch{kind: grammar.HostAll}
	if !b.hasTo {
		to = &all
	}
	tos := x.to.covering(to, tbuf[:0], budget)
	cands[0] = bufs[0][:0]
	for _, f := range from {
		for _, t := range tos {
			*budget--
			if l := x.pairs[[2]int32{f, t}]; len(l) > 0 {
				cands[0] = append(cands[0], l)
			}
		}
	}
	switch {
	case b.users == nil:
		cands[1] = append(bufs[1][:0], x.anyUser)
	case len(b.users) == 0:
		cands[1] = append(bufs[1][:0], x.all) // every list holds all of none
	default:
		// A list that covers b's holds each of its users: look up the
		// rarest.
		var rarest []int32
		first := true
		for u := range b.users {
			if l := x.byUser[u]; first || len(l) < len(rarest) {
				rarest, first = l, false
			}
		}
		cands[1] = append(bufs[1][:0], x.anyUser, rarest)
	}
	switch p := &b.port; {
	case p.n < 0:
		cands[2] = append(bufs[2][:0], x.all)
	case p.n == 0:
		cands[2] = append(bufs[2][:0], x.anyPort)
	case p.lo[0] == p.hi[0]:
		cands[2] = append(bufs[2][:0], x.anyPort, x.otherPort, x.onePort[p.lo[0]])
	default:
		cands[2] = append(bufs[2][:0], x.anyPort, x.otherPort)
	}

	best, least := 0, total(cands[0])
	for d := 1; d < len(cands); d++ {
		if n := total(cands[d]); n < least {
			best, least = d, n
		}
	}
	// Each list is sorted: walk each only up to the first covering rule
	// found so far.
	first := int32(-1)
	for _, l := range cands[best] {
		for _, i := range l {
			if first >= 0 && i >= first {
				break
			}
			*budget--
			if rules[i].covers(b) {
				first = i
				break
			}
		}
	}
	return first
}
