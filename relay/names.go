package relay

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/sockd-ng/sockd/policy"
)

// LookupAddrs resolves a destination name with r, IPv4-mapped addresses
// unmapped, in the resolver's order.
func LookupAddrs(ctx context.Context, r Resolver, name string) ([]netip.Addr, error) {
	addrs, err := r.LookupNetIP(ctx, "ip", name)
	for i := range addrs {
		addrs[i] = addrs[i].Unmap()
	}
	return addrs, err
}

// errUnspecified is a destination or next hop that is, or resolves only
// to, unspecified addresses (policy.Unspecified): this host.
var errUnspecified = errors.New("unspecified address: it reaches this host")

// hopResolver resolves next-hop names, leaving out the unspecified
// addresses a name may resolve to: a hop named so would be this host. A
// name with no other address is an error wrapping errUnspecified. Policy
// judges destinations' addresses itself (policy.Unspecified); hops are
// not destinations it sees.
type hopResolver struct {
	r Resolver
	s *Server // told how long lookups take
}

func (h hopResolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	t0 := time.Now()
	addrs, err := h.r.LookupNetIP(ctx, network, host)
	h.s.lookupTook(t0)
	if err != nil {
		return nil, err
	}
	kept := addrs[:0]
	for _, a := range addrs {
		if !policy.Unspecified(a) {
			kept = append(kept, a)
		}
	}
	if len(kept) == 0 && len(addrs) > 0 {
		return nil, fmt.Errorf("next hop %s: %w", host, errUnspecified)
	}
	return kept, nil
}

func (h hopResolver) LookupAddr(ctx context.Context, addr string) ([]string, error) {
	return h.r.LookupAddr(ctx, addr)
}

// LookupConfirmed returns the forward-confirmed reverse name of a: a PTR
// name whose own addresses include a, lower case and without the trailing
// dot; "" when there is none.
func LookupConfirmed(ctx context.Context, r Resolver, a netip.Addr) string {
	a = a.Unmap()
	names, err := r.LookupAddr(ctx, a.String())
	if err != nil {
		return ""
	}
	for i, name := range names {
		if i == 4 {
			break // a PTR set that large is an attack, not a host
		}
		addrs, err := LookupAddrs(ctx, r, name)
		if err != nil {
			continue
		}
		for _, b := range addrs {
			if b == a {
				return normName(name)
			}
		}
	}
	return ""
}

// normName lower-cases a DNS name and drops its trailing dot.
func normName(n string) string {
	return strings.ToLower(strings.TrimSuffix(n, "."))
}

// Services maps TCP ports to their /etc/services names, for the %S token.
type Services map[uint16]string

// ReadServices reads the TCP names of an /etc/services file; a missing
// file gives an empty table.
func ReadServices(path string) Services {
	services := Services{}
	f, err := os.Open(path)
	if err != nil {
		return services
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		fields := strings.Fields(line)
		if len(fields) < 2 {
			continue
		}
		num, proto, ok := strings.Cut(fields[1], "/")
		n, err := strconv.ParseUint(num, 10, 16)
		if !ok || proto != "tcp" || err != nil {
			continue
		}
		if _, dup := services[uint16(n)]; !dup {
			services[uint16(n)] = fields[0]
		}
	}
	return services
}

// Name gives the service name of a TCP port, or the number.
func (s Services) Name(port uint16) string {
	if name, ok := s[port]; ok {
		return name
	}
	return strconv.Itoa(int(port))
}
