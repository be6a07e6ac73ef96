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
	if _, err := c.Write(connectRequest(target)); err != nil {
		return err
	}
	return readReply(c)
}

// connectRequest encodes a CONNECT to an IPv4 or IPv6 address.
func connectRequest(target netip.AddrPort) []byte {
	req := []byte{5, 1, 0}
	a := target.Addr().Unmap()
	if a.Is4() {
		req = append(req, 1)
	} else {
		req = append(req, 4)
	}
	req = append(req, a.AsSlice()...)
	return binary.BigEndian.AppendUint16(req, target.Port())
}

// readReply reads a SOCKS5 reply, whatever the bound address type, and
// fails unless it reports success.
func readReply(c net.Conn) error {
	var h [4]byte
	if _, err := io.ReadFull(c, h[:]); err != nil {
		return fmt.Errorf("socks5 reply: %w", err)
	}
	if h[0] != 5 {
		return fmt.Errorf("socks5 reply version %d", h[0])
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
			return err
		}
		n = int(l[0])
	default:
		return fmt.Errorf("socks5 reply address type %d", h[3])
	}
	rest := make([]byte, n+2)
	if _, err := io.ReadFull(c, rest); err != nil {
		return fmt.Errorf("socks5 reply: %w", err)
	}
	if h[1] != 0 {
		return fmt.Errorf("socks5 reply code %d", h[1])
	}
	return nil
}
