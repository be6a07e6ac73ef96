package main

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"
)

// dialPath opens a connection to target, straight or through the SOCKS5
// proxy at proxy (when proxy is not empty), and returns it once the proxy
// has reported success. The whole exchange must end by deadline. The same
// code serves sockd and Dante.
func dialPath(proxy string, target netip.AddrPort, deadline time.Time) (net.Conn, error) {
	d := net.Dialer{Deadline: deadline}
	if proxy == "" {
		return d.Dial("tcp", target.String())
	}
	c, err := d.Dial("tcp", proxy)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(deadline)
	if err := socks5Connect(c, target); err != nil {
		c.Close()
		return nil, err
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// socks5Connect runs a no-auth SOCKS5 CONNECT on c without pipelining:
// greeting, wait for the method reply, request, wait for the reply.
func socks5Connect(c net.Conn, target netip.AddrPort) error {
	if err := socks5Greet(c); err != nil {
		return err
	}
	if _, err := c.Write(request(1, target)); err != nil {
		return err
	}
	return readReply(c)
}

// readReply reads a SOCKS5 reply, whatever the bound address type, and
// fails unless it reports success.
func readReply(c net.Conn) error {
	_, err := readReplyAddr(c)
	return err
}

// readReplyAddr reads a SOCKS5 reply and returns the address it names
// (invalid for a domain name), failing unless it reports success.
func readReplyAddr(c net.Conn) (netip.AddrPort, error) {
	var h [4]byte
	if _, err := io.ReadFull(c, h[:]); err != nil {
		return netip.AddrPort{}, fmt.Errorf("socks5 reply: %w", err)
	}
	if h[0] != 5 {
		return netip.AddrPort{}, fmt.Errorf("socks5 reply version %d", h[0])
	}
	var n int
	switch h[3] {
	case 1:
		n = 4
	case 4:
		n = 16
	case 3:
		var l [1]byte
		if _, err := io.ReadFull(c, l[:]); err != nil {
			return netip.AddrPort{}, err
		}
		n = int(l[0])
	default:
		return netip.AddrPort{}, fmt.Errorf("socks5 reply address type %d", h[3])
	}
	rest := make([]byte, n+2)
	if _, err := io.ReadFull(c, rest); err != nil {
		return netip.AddrPort{}, fmt.Errorf("socks5 reply: %w", err)
	}
	if h[1] != 0 {
		return netip.AddrPort{}, fmt.Errorf("socks5 reply code %d", h[1])
	}
	var ap netip.AddrPort
	if h[3] != 3 {
		a, _ := netip.AddrFromSlice(rest[:n])
		ap = netip.AddrPortFrom(a.Unmap(), binary.BigEndian.Uint16(rest[n:]))
	}
	return ap, nil
}

// socks5Greet sends the no-auth greeting and waits for the method reply.
func socks5Greet(c net.Conn) error {
	if _, err := c.Write([]byte{5, 1, 0}); err != nil {
		return err
	}
	var m [2]byte
	if _, err := io.ReadFull(c, m[:]); err != nil {
		return fmt.Errorf("socks5 method reply: %w", err)
	}
	if m[0] != 5 || m[1] != 0 {
		return fmt.Errorf("socks5 method reply %x", m)
	}
	return nil
}

// request encodes a SOCKS5 request of command cmd for an IPv4 or IPv6
// address.
func request(cmd byte, target netip.AddrPort) []byte {
	req := []byte{5, cmd, 0}
	a := target.Addr().Unmap()
	if a.Is4() {
		req = append(req, 1)
	} else {
		req = append(req, 4)
	}
	req = append(req, a.AsSlice()...)
	return binary.BigEndian.AppendUint16(req, target.Port())
}

// orProxyHost replaces an unspecified bound address (0.0.0.0, which a
// server may answer meaning "where you reached me") by the proxy's.
func orProxyHost(bound netip.AddrPort, proxy string) (netip.AddrPort, error) {
	if bound.Addr().IsValid() && !bound.Addr().IsUnspecified() {
		return bound, nil
	}
	pa, err := netip.ParseAddrPort(proxy)
	if err != nil {
		return netip.AddrPort{}, err
	}
	return netip.AddrPortFrom(pa.Addr(), bound.Port()), nil
}

// socks5Associate opens a control connection to proxy and asks for a UDP
// association, naming no client address (0.0.0.0:0): the reply's address
// is where the datagrams go. The control connection must stay open for
// as long as the association is used.
func socks5Associate(proxy string, deadline time.Time) (net.Conn, netip.AddrPort, error) {
	d := net.Dialer{Deadline: deadline}
	c, err := d.Dial("tcp", proxy)
	if err != nil {
		return nil, netip.AddrPort{}, err
	}
	c.SetDeadline(deadline)
	relay, err := func() (netip.AddrPort, error) {
		if err := socks5Greet(c); err != nil {
			return netip.AddrPort{}, err
		}
		if _, err := c.Write(request(3, netip.AddrPortFrom(netip.IPv4Unspecified(), 0))); err != nil {
			return netip.AddrPort{}, err
		}
		bound, err := readReplyAddr(c)
		if err != nil {
			return netip.AddrPort{}, fmt.Errorf("udp associate: %w", err)
		}
		return orProxyHost(bound, proxy)
	}()
	if err != nil {
		c.Close()
		return nil, netip.AddrPort{}, err
	}
	c.SetDeadline(time.Time{})
	return c, relay, nil
}

// udpHeader is the RFC 1928 header of a datagram to or from target
// (IPv4 only), FRAG 0.
func udpHeader(target netip.AddrPort) []byte {
	a := target.Addr().Unmap().As4()
	h := []byte{0, 0, 0, 1, a[0], a[1], a[2], a[3]}
	return binary.BigEndian.AppendUint16(h, target.Port())
}

// udpHeaderLen is the length of udpHeader's header.
const udpHeaderLen = 10
