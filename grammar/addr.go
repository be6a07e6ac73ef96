package grammar

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// parseIPv4 parses a dotted quad: four decimal parts, 0 to 255. It refuses
// the inet_addr shorthands that legacy sockd accepted (10.1, 24, 010.0.0.1,
// 0x0a000001) with a message that says what legacy made of them, since they
// silently meant something else.
func parseIPv4(s, what string) (netip.Addr, error) {
	if a, ok := dottedQuad(s); ok {
		return a, nil
	}
	if v, ok := inetAton(s); ok {
		legacy := netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
		return netip.Addr{}, fmt.Errorf("%s %q is a legacy inet_addr shorthand for %s; write all four parts in decimal", what, s, legacy)
	}
	return netip.Addr{}, fmt.Errorf("%s %q is not an IPv4 address (want four decimal parts, a.b.c.d)", what, s)
}

// dottedQuad parses exactly four decimal parts of 0 to 255. A leading zero is
// refused because inet_addr reads it as octal.
func dottedQuad(s string) (netip.Addr, bool) {
	var b [4]byte
	for i := range 4 {
		end := strings.IndexByte(s, '.')
		if i == 3 {
			end = len(s)
		}
		if end <= 0 || end > 3 {
			return netip.Addr{}, false
		}
		part := s[:end]
		if len(part) > 1 && part[0] == '0' {
			return netip.Addr{}, false
		}
		n, err := strconv.ParseUint(part, 10, 8)
		if err != nil {
			return netip.Addr{}, false
		}
		b[i] = byte(n)
		if i < 3 {
			s = s[end+1:]
		}
	}
	return netip.AddrFrom4(b), true
}

// inetAton reads s the way BSD inet_aton does: one to four parts, each
// decimal, octal (leading 0) or hex (0x); the last part fills the bytes that
// are left. It is used only to explain what a legacy server made of a
// shorthand.
func inetAton(s string) (uint32, bool) {
	parts := strings.Split(s, ".")
	if len(parts) > 4 {
		return 0, false
	}
	var vals []uint64
	for _, p := range parts {
		if p == "" {
			return 0, false
		}
		v, err := strconv.ParseUint(p, 0, 32) // base 0: 0x.. hex, 0.. octal
		lp := strings.ToLower(p)
		if err != nil || strings.ContainsAny(p, "_") || strings.HasPrefix(lp, "0b") || strings.HasPrefix(lp, "0o") {
			return 0, false
		}
		vals = append(vals, v)
	}
	var out uint64
	last := vals[len(vals)-1]
	for i, v := range vals[:len(vals)-1] {
		if v > 255 {
			return 0, false
		}
		out |= v << (24 - 8*i)
	}
	if last >= 1<<(8*(5-len(vals))) {
		return 0, false
	}
	return uint32(out | last), true
}

// looksNumeric reports whether s can only be meant as an address: it starts
// with a digit and inet_aton takes it.
func looksNumeric(s string) bool {
	if s == "" || s[0] < '0' || s[0] > '9' {
		return false
	}
	_, ok := inetAton(s)
	return ok
}

// validHostName reports whether s is a plausible DNS name: labels of
// letters, digits, '-' and '_', separated by single dots.
func validHostName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(strings.TrimSuffix(s, "."), ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, c := range label {
			switch {
			case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
			default:
				return false
			}
		}
	}
	return true
}

// prefixMask returns the mask of bits leading one-bits in a family of
// addrBits bits.
func prefixMask(bits, addrBits int) netip.Addr {
	var b [16]byte
	for i := 0; i < bits; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	if addrBits == 32 {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16(b)
}

// maskBits returns the prefix length of mask, or -1 when it is not a
// prefix.
func maskBits(mask netip.Addr) int {
	b := mask.AsSlice()
	n := 0
	for n < len(b)*8 && b[n/8]&(0x80>>(n%8)) != 0 {
		n++
	}
	if prefixMask(n, len(b)*8) != mask {
		return -1
	}
	return n
}

// parseCIDR parses "a.b.c.d/len" into an address and a mask.
func parseCIDR(s string) (addr, mask netip.Addr, err error) {
	a, l, _ := strings.Cut(s, "/")
	addr, err = parseIPv4(a, "address")
	if err != nil {
		return
	}
	bits, perr := strconv.ParseUint(l, 10, 8)
	if perr != nil || bits > 32 {
		return netip.Addr{}, netip.Addr{}, fmt.Errorf("prefix length %q in %q is not a number from 0 to 32", l, s)
	}
	return addr, prefixMask(int(bits), 32), nil
}

// parseBracket parses "[v6]" or "[v6/len]". A bare address is a host (/128).
func parseBracket(s string) (addr, mask netip.Addr, err error) {
	inner := strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
	a, l, hasLen := strings.Cut(inner, "/")
	addr, err = netip.ParseAddr(a)
	if err != nil || !addr.Is6() {
		return netip.Addr{}, netip.Addr{}, fmt.Errorf("%q is not an IPv6 address in brackets", s)
	}
	if addr.Zone() != "" {
		return netip.Addr{}, netip.Addr{}, fmt.Errorf("%q: zones are not supported in rules", s)
	}
	bits := uint64(128)
	if hasLen {
		bits, err = strconv.ParseUint(l, 10, 8)
		if err != nil || bits > 128 {
			return netip.Addr{}, netip.Addr{}, fmt.Errorf("prefix length %q in %q is not a number from 0 to 128", l, s)
		}
	}
	return addr, prefixMask(int(bits), 128), nil
}
