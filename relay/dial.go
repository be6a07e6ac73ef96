package relay

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"

	"github.com/sockd-ng/sockd/relay/internal/wire"

	"github.com/sockd-ng/sockd/policy"
)

// errNoAddress is a destination name without a permitted address.
var errNoAddress = errors.New("no address to connect to")

// dialDirect connects to the first of addrs that answers, in order, each
// attempt getting an equal share of the time left, as net.Dialer does for
// names. With sockd.route (in), each address goes out from the local
// address its line names, and an address no line covers is not dialed.
func (s *Server) dialDirect(ctx context.Context, in *policy.Interfaces, addrs []netip.Addr, port uint16) (*net.TCPConn, error) {
	if len(addrs) == 0 {
		return nil, errNoAddress
	}
	d := s.dialer()
	var first error
	for i, a := range addrs {
		if policy.Unspecified(a) { // the Decider must not permit one; never dial it
			if first == nil {
				first = fmt.Errorf("connect %s: %w", a, errUnspecified)
			}
			continue
		}
		dd := d
		if in != nil {
			src, _, ok := in.Source(a)
			if !ok {
				if first == nil {
					first = fmt.Errorf("connect %s: %w", a, errNoInterface)
				}
				continue
			}
			dd = &net.Dialer{Timeout: d.Timeout, KeepAliveConfig: d.KeepAliveConfig, LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
		}
		actx, cancel := shareDeadline(ctx, len(addrs)-i)
		defer cancel()
		target := netip.AddrPortFrom(a, port)
		c, err := dd.DialContext(actx, "tcp", target.String())
		if err == nil {
			return c.(*net.TCPConn), nil
		}
		if first == nil {
			first = err // net.OpError names the address already
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, first
}

// replyForCause picks the SOCKS5 REP for a failure to connect by its
// cause.
func replyForCause(err error) byte {
	var dnsErr *net.DNSError
	switch {
	case errors.Is(err, errUnspecified):
		return wire.RepNotAllowed
	case errors.Is(err, errNoInterface):
		return wire.RepGeneralFailure // socks.conf(5), SOCKD.ROUTE
	case errors.Is(err, syscall.ECONNREFUSED):
		return wire.RepRefused
	case errors.Is(err, syscall.ENETUNREACH):
		return wire.RepNetUnreachable
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, errNoAddress), errors.As(err, &dnsErr):
		return wire.RepHostUnreachable
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, syscall.ETIMEDOUT):
		return wire.RepHostUnreachable // sockd.conf(5): a failed connect is 3, 4 or 5
	}
	return wire.RepGeneralFailure
}
