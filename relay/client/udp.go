package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"

	"github.com/sockd-ng/sockd/relay/internal/wire"
)

// Association is a UDP ASSOCIATE (RFC 1928 section 7) at a SOCKS5 hop, or
// at every hop of a chain of SOCKS5 hops: datagrams sent to Relay, the
// first hop's relay address, with Prefix and then a SOCKS5 UDP header
// naming their destination go out from the last hop, and the replies come
// back from Relay with Layers headers, the last naming the remote. The
// association lives as long as its control connections are open; Close
// closes them.
//
// Through a chain, the association at each farther hop is asked for over
// a connection through the hops before it, naming no client address, and
// the datagrams for it are wrapped once more for each hop before it:
// every hop unwraps one header and sends the rest on to the next hop's
// relay. Each hop must accept datagrams from the address the hop before it
// sends them from, which hops that check the client's address take to be
// the address its connection came from.
type Association struct {
	// Control is the control connection with the first hop.
	Control *net.TCPConn
	// Relay is the first hop's UDP relay address.
	Relay netip.AddrPort

	farther []net.Conn // control connections with the other hops of a chain
	prefix  []byte
}

// Prefix returns the headers every datagram sent to Relay starts with,
// before its own header: one naming the relay of each hop after the
// first, in the order the datagram travels; empty for a single hop. The
// caller must not modify it.
func (a *Association) Prefix() []byte { return a.prefix }

// Layers is the number of SOCKS5 UDP headers on every datagram that comes
// back from Relay: one per hop.
func (a *Association) Layers() int { return 1 + len(a.farther) }

// Wait blocks until the association ends at some hop: until one of its
// control connections is closed, by either side, or fails, as when a hop
// ends the association or goes away. What a hop sends on a control
// connection is discarded. Call Close once Wait has returned.
func (a *Association) Wait() error {
	conns := append([]net.Conn{a.Control}, a.farther...)
	errc := make(chan error, len(conns)) // the others finish at Close
	for _, c := range conns {
		go func() {
			_, err := io.Copy(io.Discard, c)
			errc <- err
		}()
	}
	return <-errc
}

// Close closes the control connections, which ends the association at
// every hop.
func (a *Association) Close() error {
	err := a.Control.Close()
	for _, c := range a.farther {
		err = errors.Join(err, c.Close())
	}
	return err
}

// Associate opens a UDP association through the Dialer's hops, which must
// all speak SOCKS5. from is where our datagrams will come from (the zero
// AddrPort if not known), as the first hop's request's DST.ADDR and
// DST.PORT say.
func (d *Dialer) Associate(ctx context.Context, from netip.AddrPort) (*Association, error) {
	if len(d.Hops) == 0 {
		return nil, errors.New("udp associate: no hop")
	}
	for _, h := range d.Hops {
		if h.Proto != SOCKS5 {
			return nil, fmt.Errorf("udp associate via %v: datagrams cross SOCKS5 hops only", h)
		}
	}
	if d.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d.Timeout)
		defer cancel()
	}
	h := d.Hops[0]
	c, err := d.dialNear(ctx, "tcp", h.Addr)
	if err != nil {
		return nil, fmt.Errorf("udp associate via %v: %w", h, err)
	}
	host := "0.0.0.0"
	if from.Addr().IsValid() {
		host = from.Addr().String()
	}
	relay, err := associate(ctx, c, h, host, from.Port())
	if err != nil {
		c.Close()
		return nil, err
	}
	if !relay.Addr().IsValid() || relay.Addr().IsUnspecified() {
		relay = netip.AddrPortFrom(c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap(), relay.Port())
	}
	a := &Association{Control: c, Relay: relay}
	for i := 1; i < len(d.Hops); i++ {
		if err := d.associateFarther(ctx, a, i); err != nil {
			a.Close()
			return nil, err
		}
	}
	return a, nil
}

// associateFarther opens the association at hop i, over a connection
// through the hops before it, and adds its relay to a's prefix.
func (d *Dialer) associateFarther(ctx context.Context, a *Association, i int) error {
	h := d.Hops[i]
	near := &Dialer{Hops: d.Hops[:i], Forward: d.Forward, Resolver: d.Resolver}
	c, _, err := near.dial(ctx, "tcp", h.Addr)
	if err != nil {
		return fmt.Errorf("udp associate via %v: %w", h, err)
	}
	a.farther = append(a.farther, c)
	relay, err := associate(ctx, c, h, "0.0.0.0", 0)
	if err != nil {
		return err
	}
	// A relay address the hop does not say is the hop's own, as the hop
	// before it reaches it: by name, if it is written so.
	to := wire.Addr{IP: relay.Addr().Unmap(), Port: relay.Port()}
	if !to.IP.IsValid() || to.IP.IsUnspecified() {
		host, _, _ := net.SplitHostPort(h.Addr)
		if to.IP, err = netip.ParseAddr(host); err != nil {
			to.IP, to.Name = netip.Addr{}, host
		}
	}
	a.prefix = wire.AppendUDPHeader(a.prefix, to)
	return nil
}

// associate asks hop h on c for a UDP association for datagrams from
// host:port and returns its relay address.
func associate(ctx context.Context, c *net.TCPConn, h Hop, host string, port uint16) (netip.AddrPort, error) {
	var relay netip.AddrPort
	err := deadlined(ctx, c, func() (err error) {
		relay, err = socks5(c, h, wire.CmdUDP, host, port)
		return err
	})
	if err != nil {
		return relay, fmt.Errorf("udp associate via %v: %w", h, err)
	}
	return relay, nil
}
