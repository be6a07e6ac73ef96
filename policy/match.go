package policy

import (
	"net/netip"
	"strings"

	"github.com/sockd-ng/sockd/grammar"
)

// hostMatch is a compiled source or destination. Legacy masks need not be
// prefixes, so addresses are compared as (addr & mask) == (rule & mask), bit
// by bit, not as netip.Prefix.
type hostMatch struct {
	kind grammar.HostKind
	// For HostAddr: any is set for an all-zero mask, which matches every
	// host, IPv6 ones and hosts without an address included — unless
	// familyOnly (srelay.conf's 0.0.0.0 and [::]): then it matches the
	// addresses of its family only.
	any        bool
	familyOnly bool
	is4        bool
	addr       [16]byte // already masked
	mask       [16]byte
	name       string // lower case, no trailing dot
}

func compileHost(h grammar.Host, inverted bool) hostMatch {
	m := hostMatch{kind: h.Kind, name: h.Name, familyOnly: h.FamilyOnly}
	if h.Kind != grammar.HostAddr {
		return m
	}
	addr, mask := h.Addr, h.Mask
	if addr.Is4In6() && maskBitsAtLeast(mask, 96) {
		// [::ffff:10.0.0.0/104] is compared as IPv4 (10.0.0.0/8).
		m16 := mask.As16()
		addr, mask = addr.Unmap(), netip.AddrFrom4([4]byte(m16[12:]))
	}
	m.is4 = addr.Is4()
	a, k := addr.AsSlice(), mask.AsSlice()
	if m.is4 && inverted {
		for i := range k {
			k[i] = ^k[i]
		}
	}
	zero := true
	for i := range k {
		m.mask[i] = k[i]
		m.addr[i] = a[i] & k[i]
		if k[i] != 0 {
			zero = false
		}
	}
	m.any = zero
	return m
}

// maskBitsAtLeast reports whether the first n bits of mask are all ones.
func maskBitsAtLeast(mask netip.Addr, n int) bool {
	b := mask.AsSlice()
	for i := 0; i < n; i++ {
		if b[i/8]&(0x80>>(i%8)) == 0 {
			return false
		}
	}
	return true
}

// matchAddr reports whether a numeric rule matches address a. It must not
// be called for name rules.
func (m *hostMatch) matchAddr(a netip.Addr) bool {
	if m.any {
		return !m.familyOnly || a.IsValid() && a.Unmap().Is4() == m.is4
	}
	if !a.IsValid() {
		return false
	}
	a = a.Unmap()
	if a.Is4() != m.is4 {
		return false
	}
	if m.is4 {
		b := a.As4()
		return b[0]&m.mask[0] == m.addr[0] && b[1]&m.mask[1] == m.addr[1] &&
			b[2]&m.mask[2] == m.addr[2] && b[3]&m.mask[3] == m.addr[3]
	}
	b := a.As16()
	for i := range b {
		if b[i]&m.mask[i] != m.addr[i] {
			return false
		}
	}
	return true
}

// needsName reports whether matching needs a host name.
func (m *hostMatch) needsName() bool {
	return m.kind == grammar.HostName || m.kind == grammar.HostSuffix
}

// matchName reports whether a name rule matches host name n (any case, a
// trailing dot allowed). ".example.com" matches example.com and every name
// ending in whole labels .example.com.
func (m *hostMatch) matchName(n string) bool {
	n = strings.TrimSuffix(n, ".")
	if n == "" {
		return false
	}
	if strings.EqualFold(n, m.name) {
		return true
	}
	if m.kind != grammar.HostSuffix || len(n) <= len(m.name) {
		return false
	}
	cut := len(n) - len(m.name)
	return n[cut-1] == '.' && strings.EqualFold(n[cut:], m.name)
}

// covers reports whether every host m2 matches is matched by m, as far as
// can be told without DNS. It is used to find shadowed rules.
func (m *hostMatch) covers(m2 *hostMatch) bool {
	switch {
	case m.kind == grammar.HostAll || m.kind == grammar.HostAddr && m.any && !m.familyOnly:
		return true
	case m.kind == grammar.HostAddr:
		if m2.kind != grammar.HostAddr || m2.any || m.is4 != m2.is4 {
			return false
		}
		for i := range m.mask {
			// every bit m looks at, m2 looks at too, with the same value
			if m.mask[i]&^m2.mask[i] != 0 || m2.addr[i]&m.mask[i] != m.addr[i] {
				return false
			}
		}
		return true
	case m2.kind == grammar.HostName || m2.kind == grammar.HostSuffix:
		if m.kind == grammar.HostName {
			return m2.kind == grammar.HostName && m.name == m2.name
		}
		return m.matchName(m2.name) // suffix covers an equal or longer name or suffix
	}
	return false
}

// portMatch is a compiled port test: the port is in one of at most two
// ranges. No test means every port.
type portMatch struct {
	n      int // number of ranges; 0 means no test
	lo, hi [2]uint16
}

func compilePort(p *grammar.PortTest, lo, hi uint16) portMatch {
	var m portMatch
	add := func(l, h int) {
		if l <= h {
			m.lo[m.n], m.hi[m.n] = uint16(l), uint16(h)
			m.n++
		}
	}
	l, h := int(lo), int(hi)
	switch p.Op {
	case grammar.OpEq:
		add(l, h)
	case grammar.OpNeq:
		add(0, l-1)
		add(h+1, 65535)
	case grammar.OpLt:
		add(0, l-1)
	case grammar.OpGt:
		add(l+1, 65535)
	case grammar.OpLe:
		add(0, l)
	case grammar.OpGe:
		add(l, 65535)
	}
	if m.n == 0 {
		m.n = -1 // matches nothing (e.g. "lt 0")
	}
	return m
}

func (m *portMatch) match(p uint16) bool {
	switch m.n {
	case 0:
		return true
	case -1:
		return false
	}
	return m.lo[0] <= p && p <= m.hi[0] || m.n == 2 && m.lo[1] <= p && p <= m.hi[1]
}

// covers reports whether every port m2 matches is matched by m.
func (m *portMatch) covers(m2 *portMatch) bool {
	if m.n == 0 || m2.n == -1 {
		return true
	}
	if m2.n == 0 {
		return m.n == 1 && m.lo[0] == 0 && m.hi[0] == 65535
	}
	if m.n == -1 {
		return false
	}
	for i := 0; i < m2.n; i++ {
		ok := false
		for j := 0; j < m.n; j++ {
			if m.lo[j] <= m2.lo[i] && m2.hi[i] <= m.hi[j] {
				ok = true
			}
		}
		if !ok {
			return false
		}
	}
	return true
}
