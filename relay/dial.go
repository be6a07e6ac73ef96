package relay

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"github.com/sockd-ng/sockd/relay/internal/wire"
)

// errNoAddress is a destination name without a permitted address.
var errNoAddress = errors.New("no address to connect to")

// dialDirect connects to the first of addrs that answers, in order, each
// attempt getting an equal share of the time left, as net.Dialer does for
// names.
func (s *Server) dialDirect(ctx context.Context, addrs []netip.Addr, port uint16) (*net.TCPConn, error) {
	if len(addrs) == 0 {
		return nil, errNoAddress
	}
	d := s.Dialer
	if d == nil {
		d = &net.Dialer{}
	}
	var first error
	for i, a := range addrs {
		actx := ctx
		if dl, ok := ctx.Deadline(); ok && i < len(addrs)-1 {
			share := time.Until(dl) / time.Duration(len(addrs)-i)
			var cancel context.CancelFunc
			actx, cancel = context.WithTimeout(ctx, share)
			defer cancel()
		}
		target := netip.AddrPortFrom(a, port)
		c, err := d.DialContext(actx, "tcp", target.String())
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

// replyFor picks the SOCKS5 REP for an outbound failure from the error's
// type, never its text (protocol.md).
func replyFor(err error) byte {
	var dnsErr *net.DNSError
	switch {
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
