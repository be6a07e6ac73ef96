package client

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"github.com/sockd-ng/sockd/relay/internal/wire"
)

// Association is a UDP ASSOCIATE (RFC 1928 section 7) at a SOCKS5 hop:
// datagrams sent to Relay with a SOCKS5 UDP header go out from the hop,
// and the replies come back from Relay with one. The association lives as
// long as Control is open.
type Association struct {
	Control *net.TCPConn
	Relay   netip.AddrPort
}

// Associate opens a UDP association at the Dialer's one hop, which must
// speak SOCKS5. from is where our datagrams will come from (the zero
// AddrPort if not known), as the request's DST.ADDR and DST.PORT say.
// Datagrams cannot cross a chain of TCP hops, so a chain is refused.
func (d *Dialer) Associate(ctx context.Context, from netip.AddrPort) (*Association, error) {
	if len(d.Hops) != 1 || d.Hops[0].Proto != SOCKS5 {
		return nil, fmt.Errorf("udp associate: needs exactly one SOCKS5 hop, not %d hops", len(d.Hops))
	}
	h := d.Hops[0]
	if d.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d.Timeout)
		defer cancel()
	}
	c, err := d.dialNear(ctx, "tcp", h.Addr)
	if err != nil {
		return nil, fmt.Errorf("udp associate via %v: %w", h, err)
	}
	host := "0.0.0.0"
	if from.Addr().IsValid() {
		host = from.Addr().String()
	}
	var relay netip.AddrPort
	err = deadlined(ctx, c, func() (err error) {
		relay, err = socks5(c, h, wire.CmdUDP, host, from.Port())
		return err
	})
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("udp associate via %v: %w", h, err)
	}
	if !relay.Addr().IsValid() || relay.Addr().IsUnspecified() {
		relay = netip.AddrPortFrom(d.hopAddr(ctx, c, h), relay.Port())
	}
	return &Association{Control: c, Relay: relay}, nil
}
