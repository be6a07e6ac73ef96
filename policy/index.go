package policy

import (
	"cmp"
	"context"
	"encoding/binary"
	"math"
	"net/netip"
	"slices"
	"strings"

	"github.com/sockd-ng/sockd/grammar"
)

// index narrows the rules that can match a request to a few candidates,
// so that a decision against 10,000 rules tries a handful instead of all.
//
// Each rule is filed under one of its tests (its dimension): its source
// address, destination address, user list, exact port, destination name or
// source name; a rule with no test that can be filed (ALL to ALL on a port
// range, say) is filed under none, in always. A request looks up, in each
// dimension, the lists its own source, destination, user, port and names
// fall in; every rule in none of those lists fails the test it is filed
// under, so it cannot match. The candidates are then tried in file order,
// merging the sorted lists, and the first that matches decides:
// first-match semantics are kept exactly.
//
// Lookups stay lazy. A rule is only skipped for a test that Decide makes
// before any lookup of its own (port, addresses, and a destination name
// compared with the name the request gave), so every rule that would ask
// identd or a reverse name is still tried, in order. A rule with a source
// name is therefore never filed under its destination name, and a rule with
// any name never under its user list: Decide asks for the name before it
// tests those. Nor is a permit line under ?=I or ?=i filed under its user
// list: for a SOCKS5 client without authentication, its user is identd's
// answer.
//
// A source name, and the destination name of a request given by address,
// are reverse lookups. Rules filed under such a name are filed a second
// time, in unknown, under a test that needs no lookup; until a rule has
// asked for the name, those lists stand in for it. Once the name is known,
// they are dropped and the rules it matches (after the one that asked)
// take their place.
//
// Addresses are looked up per distinct mask (legacy masks need not be
// prefixes, so there is no trie): (address & mask) is the key, as in
// matchAddr. Only the maxMasks commonest masks of each family are indexed;
// rules with rarer masks are filed under another test.
//
// An index is built once by Compile and only read afterwards, so it is
// safe for concurrent use; each decision keeps its cursors on its stack.
type index struct {
	table              // rules filed under a test that needs no lookup
	srcNames, dstNames nameIndex
}

const (
	// maxMasks bounds the lookups per address: masks beyond the commonest
	// maxMasks of a family are not indexed.
	maxMasks = 8
	// indexMin is the number of rules from which Compile builds an index;
	// below it, trying every rule is as fast.
	indexMin = 16
)

// table files rules under tests that need no lookup.
type table struct {
	always   []int32
	src, dst addrIndex
	ports    map[uint16][]int32
	users    map[string][]int32
}

// addrIndex files rules by (address & mask), per distinct mask.
type addrIndex struct {
	v4 []group4
	v6 []group6
}

type group4 struct {
	mask  uint32
	rules map[uint32][]int32
}

type group6 struct {
	mask  [16]byte
	rules map[[16]byte][]int32
}

// nameIndex files rules by host name: exact names and .suffix names, lower
// case. unknown files the same rules under another test, for while the
// name is not known.
type nameIndex struct {
	all           []int32 // every rule filed here, in file order
	exact, suffix map[string][]int32
	unknown       table
}

// dim is the test a rule is filed under, in order of preference when two
// narrow equally.
type dim uint8

const (
	dimAlways dim = iota
	dimSrc
	dimDst
	dimUser
	dimDstName
	dimPort
	dimSrcName
	numDims
)

// addrKey is a masked address of one family.
type addrKey struct {
	is4        bool
	mask, addr [16]byte
}

type maskKey struct {
	is4  bool
	mask [16]byte
}

type nameKey struct {
	kind grammar.HostKind
	name string
}

// buildIndex files every rule under the test that narrows most: the one
// whose key the fewest rules share.
func buildIndex(rules []rule) *index {
	b := indexBuilder{
		srcMasks: commonMasks(rules, func(r *rule) *hostMatch { return &r.from }),
		dstMasks: commonMasks(rules, func(r *rule) *hostMatch {
			if !r.hasTo {
				return nil
			}
			return &r.to
		}),
		srcN: map[addrKey]int{}, dstN: map[addrKey]int{},
		srcNameN: map[nameKey]int{}, dstNameN: map[nameKey]int{},
		userN: map[string]int{}, portN: map[uint16]int{},
	}
	// How many rules share each key (source and destination apart).
	can := make([][numDims]bool, len(rules))
	for i := range rules {
		r, c := &rules[i], &can[i]
		*c = b.dims(r)
		if c[dimSrc] {
			b.srcN[b.srcKey(r)]++
		}
		if c[dimDst] {
			b.dstN[b.dstKey(r)]++
		}
		if c[dimSrcName] {
			b.srcNameN[nameKey{r.from.kind, r.from.name}]++
		}
		if c[dimDstName] {
			b.dstNameN[nameKey{r.to.kind, r.to.name}]++
		}
		if c[dimUser] {
			for u := range r.users {
				b.userN[u]++
			}
		}
		if c[dimPort] {
			b.portN[r.port.lo[0]]++
		}
	}
	x := &index{}
	for i := range rules {
		r, c, n := &rules[i], &can[i], int32(i)
		if r.port.n < 0 {
			continue // "lt 0": no port passes, so never a candidate
		}
		switch d := b.best(r, c, dimSrc, dimDst, dimUser, dimDstName, dimPort, dimSrcName); d {
		case dimSrcName:
			x.srcNames.add(&r.from, n)
			b.file(&x.srcNames.unknown, r, b.best(r, c, dimDst, dimPort), n)
		case dimDstName:
			x.dstNames.add(&r.to, n)
			b.file(&x.dstNames.unknown, r, b.best(r, c, dimSrc, dimPort), n)
		default:
			b.file(&x.table, r, d, n)
		}
	}
	return x
}

type indexBuilder struct {
	srcMasks, dstMasks map[maskKey]bool
	srcN, dstN         map[addrKey]int
	srcNameN, dstNameN map[nameKey]int
	userN              map[string]int
	portN              map[uint16]int
}

// dims says which tests rule r can be filed under.
func (b *indexBuilder) dims(r *rule) (c [numDims]bool) {
	_, c[dimSrc] = indexedAddr(&r.from, b.srcMasks)
	_, c[dimDst] = indexedAddr(&r.to, b.dstMasks)
	c[dimDst] = c[dimDst] && r.hasTo
	c[dimSrcName] = r.from.needsName()
	c[dimDstName] = r.hasTo && r.to.needsName() && !r.from.needsName()
	// For SOCKS5 without authentication, a permit line under ?=I or ?=i
	// compares identd's user: an answer not known before the line is
	// tried.
	c[dimUser] = r.users != nil && !r.from.needsName() && !(r.hasTo && r.to.needsName()) &&
		!(r.identOn() && !r.deny)
	c[dimPort] = r.port.n == 1 && r.port.lo[0] == r.port.hi[0]
	return c
}

func (b *indexBuilder) srcKey(r *rule) addrKey {
	k, _ := indexedAddr(&r.from, b.srcMasks)
	return k
}

func (b *indexBuilder) dstKey(r *rule) addrKey {
	k, _ := indexedAddr(&r.to, b.dstMasks)
	return k
}

// best returns the test among dims that the fewest other rules share
// their key of, the first on a tie, or dimAlways when r has none of them.
func (b *indexBuilder) best(r *rule, c *[numDims]bool, dims ...dim) dim {
	best, cost := dimAlways, math.MaxInt
	for _, d := range dims {
		if !c[d] {
			continue
		}
		var n int
		switch d {
		case dimSrc:
			n = b.srcN[b.srcKey(r)]
		case dimDst:
			n = b.dstN[b.dstKey(r)]
		case dimUser:
			for u := range r.users {
				n = max(n, b.userN[u])
			}
		case dimPort:
			n = b.portN[r.port.lo[0]]
		case dimSrcName:
			n = b.srcNameN[nameKey{r.from.kind, r.from.name}]
		case dimDstName:
			n = b.dstNameN[nameKey{r.to.kind, r.to.name}]
		}
		if n < cost {
			best, cost = d, n
		}
	}
	return best
}

// file files rule number n under test d of t.
func (b *indexBuilder) file(t *table, r *rule, d dim, n int32) {
	switch d {
	case dimAlways:
		t.always = append(t.always, n)
	case dimSrc:
		t.src.add(&r.from, n)
	case dimDst:
		t.dst.add(&r.to, n)
	case dimUser:
		if t.users == nil {
			t.users = map[string][]int32{}
		}
		for u := range r.users {
			t.users[u] = append(t.users[u], n)
		}
	case dimPort:
		if t.ports == nil {
			t.ports = map[uint16][]int32{}
		}
		t.ports[r.port.lo[0]] = append(t.ports[r.port.lo[0]], n)
	}
}

// lookup adds the lists of the rules of t whose test q (with destination
// address dst) can pass, tagged tag. It reports false when cs is full.
func (t *table) lookup(q *Query, dst netip.Addr, cs *cursors, tag uint8) bool {
	ok := cs.add(t.always, tag) && t.src.lookup(q.Client, cs, tag) && t.dst.lookup(dst, cs, tag) &&
		cs.add(t.ports[q.Port], tag)
	if ok && q.Source != UserNone && q.User != "" {
		// Any other request compares the empty user, which no list holds.
		ok = cs.add(t.users[q.User], tag)
	}
	return ok
}

// commonMasks returns the maxMasks commonest masks of each family among the
// hosts that host picks (nil for none).
func commonMasks(rules []rule, host func(*rule) *hostMatch) map[maskKey]bool {
	count := map[maskKey]int{}
	for i := range rules {
		if m := host(&rules[i]); m != nil && m.kind == grammar.HostAddr && !m.any {
			count[maskKey{m.is4, m.mask}]++
		}
	}
	var keys []maskKey
	for k := range count {
		keys = append(keys, k)
	}
	// Commonest first; ties by mask, so that the choice does not depend on
	// map order.
	slices.SortFunc(keys, func(a, b maskKey) int {
		if c := cmp.Compare(count[b], count[a]); c != 0 {
			return c
		}
		if a.is4 != b.is4 {
			if a.is4 {
				return -1
			}
			return 1
		}
		return slices.Compare(a.mask[:], b.mask[:])
	})
	chosen := map[maskKey]bool{}
	var n4, n6 int
	for _, k := range keys {
		n := &n6
		if k.is4 {
			n = &n4
		}
		if *n < maxMasks {
			chosen[k] = true
			*n++
		}
	}
	return chosen
}

// indexedAddr returns the key of an address test that can be filed: a
// numeric one whose mask is not zero and is among masks.
func indexedAddr(m *hostMatch, masks map[maskKey]bool) (addrKey, bool) {
	if m.kind != grammar.HostAddr || m.any || !masks[maskKey{m.is4, m.mask}] {
		return addrKey{}, false
	}
	return addrKey{m.is4, m.mask, m.addr}, true
}

func (ai *addrIndex) add(m *hostMatch, n int32) {
	if m.is4 {
		mask, addr := binary.BigEndian.Uint32(m.mask[:4]), binary.BigEndian.Uint32(m.addr[:4])
		i := slices.IndexFunc(ai.v4, func(g group4) bool { return g.mask == mask })
		if i < 0 {
			i = len(ai.v4)
			ai.v4 = append(ai.v4, group4{mask: mask, rules: map[uint32][]int32{}})
		}
		ai.v4[i].rules[addr] = append(ai.v4[i].rules[addr], n)
		return
	}
	i := slices.IndexFunc(ai.v6, func(g group6) bool { return g.mask == m.mask })
	if i < 0 {
		i = len(ai.v6)
		ai.v6 = append(ai.v6, group6{mask: m.mask, rules: map[[16]byte][]int32{}})
	}
	ai.v6[i].rules[m.addr] = append(ai.v6[i].rules[m.addr], n)
}

// lookup adds the lists of the rules whose test a can pass, as matchAddr
// would tell (an invalid address passes none), tagged tag. It reports
// false when cs is full.
func (ai *addrIndex) lookup(a netip.Addr, cs *cursors, tag uint8) bool {
	if !a.IsValid() {
		return true
	}
	a = a.Unmap()
	if a.Is4() {
		b := a.As4()
		v := binary.BigEndian.Uint32(b[:])
		for i := range ai.v4 {
			g := &ai.v4[i]
			if !cs.add(g.rules[v&g.mask], tag) {
				return false
			}
		}
		return true
	}
	b := a.As16()
	for i := range ai.v6 {
		g := &ai.v6[i]
		var k [16]byte
		for j := range k {
			k[j] = b[j] & g.mask[j]
		}
		if !cs.add(g.rules[k], tag) {
			return false
		}
	}
	return true
}

func (ni *nameIndex) add(m *hostMatch, n int32) {
	if ni.exact == nil {
		ni.exact, ni.suffix = map[string][]int32{}, map[string][]int32{}
	}
	ni.all = append(ni.all, n)
	name := strings.ToLower(m.name) // already is: grammar lowers names
	if m.kind == grammar.HostSuffix {
		ni.suffix[name] = append(ni.suffix[name], n)
	} else {
		ni.exact[name] = append(ni.exact[name], n)
	}
}

// lookup adds the lists of the rules whose name test name can pass, as
// matchName would tell, leaving out those before rule after. A name the
// maps cannot key (longer than a DNS name, or not ASCII, which
// strings.EqualFold may fold onto ASCII) adds every rule filed here. It
// reports false when cs is full.
func (ni *nameIndex) lookup(name string, after int32, cs *cursors) bool {
	if len(ni.all) == 0 {
		return true
	}
	if len(name) > 0 && name[len(name)-1] == '.' {
		name = name[:len(name)-1]
	}
	if name == "" {
		return true // matchName: no name matches nothing
	}
	var buf [255]byte
	if len(name) > len(buf) {
		return cs.add(from(ni.all, after), 0)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c >= 0x80 {
			return cs.add(from(ni.all, after), 0)
		}
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		buf[i] = c
	}
	b := buf[:len(name)]
	if !cs.add(from(ni.exact[string(b)], after), 0) || !cs.add(from(ni.suffix[string(b)], after), 0) {
		return false
	}
	// ".example.com" matches every name ending in whole labels .example.com.
	for i, c := range b {
		if c == '.' && !cs.add(from(ni.suffix[string(b[i+1:])], after), 0) {
			return false
		}
	}
	return true
}

// from returns the rules of sorted list l after rule after.
func from(l []int32, after int32) []int32 {
	i, _ := slices.BinarySearch(l, after+1)
	return l[i:]
}

// maxCursors bounds the lists one decision merges; it is far above what
// real files need (a list per mask, per label of a name, and a few more).
// Past it, the decision tries every rule in turn from where it is.
const maxCursors = 64

// cursors merges sorted lists of rule numbers, lowest first. A list may
// be tagged, to be dropped when the name it stands in for is known.
type cursors struct {
	n    int
	list [maxCursors][]int32
	tag  [maxCursors]uint8
}

// Tags of the lists that stand in for a name not yet known.
const (
	tagSrcName = 1 + iota
	tagDstName
)

// add adds list l, reporting false when there is no room for it.
func (cs *cursors) add(l []int32, tag uint8) bool {
	if len(l) == 0 {
		return true
	}
	if cs.n == maxCursors {
		return false
	}
	cs.list[cs.n], cs.tag[cs.n] = l, tag
	cs.n++
	return true
}

// drop removes the lists tagged tag.
func (cs *cursors) drop(tag uint8) {
	for i := 0; i < cs.n; {
		if cs.tag[i] == tag {
			cs.remove(i)
		} else {
			i++
		}
	}
}

func (cs *cursors) remove(i int) {
	cs.n--
	cs.list[i], cs.tag[i] = cs.list[cs.n], cs.tag[cs.n]
	cs.list[cs.n] = nil
}

// next removes and returns the lowest rule number left, or -1.
func (cs *cursors) next() int32 {
	if cs.n == 0 {
		return -1
	}
	at, low := 0, cs.list[0][0]
	for i := 1; i < cs.n; i++ {
		if h := cs.list[i][0]; h < low {
			at, low = i, h
		}
	}
	if l := cs.list[at][1:]; len(l) > 0 {
		cs.list[at] = l
	} else {
		cs.remove(at)
	}
	return low
}

// decideIndexed tries the candidates the index names for q, in file
// order. decided reports that a rule decided (*out is set). Otherwise,
// from is where trying every rule in turn must go on: past the last rule
// when the candidates ran out, or after the last candidate tried when the
// lists did not fit in cursors.
func (rs *Ruleset) decideIndexed(ctx context.Context, q *Query, dst netip.Addr, lk *lookups, out *Decision) (decided bool, from int) {
	x := rs.idx
	var cs cursors
	ok := x.table.lookup(q, dst, &cs, 0)
	// Destination names: the name as requested, or the reverse name of
	// the address, asked for only by a rule that needs it.
	dstLazy := false
	switch {
	case !ok:
	case q.DstName != "":
		ok = x.dstNames.lookup(q.DstName, -1, &cs)
	case dst.IsValid() && q.DstAddrName != nil:
		ok, dstLazy = x.dstNames.unknown.lookup(q, dst, &cs, tagDstName), len(x.dstNames.all) > 0
	}
	srcLazy := false
	if ok && q.ClientName != nil {
		ok, srcLazy = x.srcNames.unknown.lookup(q, dst, &cs, tagSrcName), len(x.srcNames.all) > 0
	}
	if !ok {
		return false, 0
	}
	last := int32(-1)
	for {
		i := cs.next()
		if i < 0 {
			return false, len(rs.rules)
		}
		if i <= last {
			continue // in two lists: tried already
		}
		last = i
		r := &rs.rules[i]
		if r.admits(ctx, q, dst, lk) && rs.judge(ctx, q, r, out) {
			return true, 0
		}
		if srcLazy && lk.clientSet {
			srcLazy = false
			cs.drop(tagSrcName)
			if !x.srcNames.lookup(lk.client, i, &cs) {
				return false, int(i) + 1
			}
		}
		if dstLazy && lk.dstSet {
			dstLazy = false
			cs.drop(tagDstName)
			if !x.dstNames.lookup(lk.dst, i, &cs) {
				return false, int(i) + 1
			}
		}
	}
}
