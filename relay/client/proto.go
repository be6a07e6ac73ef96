package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"

	"github.com/sockd-ng/sockd/relay/internal/wire"
)

// The handshakes. Each writes whole messages and reads replies with
// io.ReadFull, exactly as long as the protocol says, so that no byte of
// the relayed data is read here and the conn needs no wrapper.

// socks4 sends a SOCKS4 or 4a request with command cmd (connect or bind)
// for host:port and reads the (first) reply. A plain SOCKS4 hop gets an
// IPv4 address: a name is resolved here.
func (d *Dialer) socks4(ctx context.Context, c net.Conn, h Hop, cmd byte, host string, port uint16) (netip.AddrPort, error) {
	r := wire.Request4{Cmd: cmd, Port: port, User: h.User}
	ip, err := netip.ParseAddr(host)
	switch {
	case err == nil:
	case h.Proto == SOCKS4a:
		r.IP, r.Name = [4]byte{0, 0, 0, 1}, host // 0.0.0.x, x != 0: a name follows
	default:
		if ip, err = d.lookup4(ctx, host); err != nil {
			return netip.AddrPort{}, err
		}
	}
	if r.Name == "" {
		if ip = ip.Unmap(); !ip.Is4() {
			return netip.AddrPort{}, &net.AddrError{Err: "SOCKS4 carries only IPv4 addresses", Addr: host}
		}
		r.IP = ip.As4()
	}
	if len(r.User) > wire.MaxField || strings.IndexByte(r.User, 0) >= 0 {
		return netip.AddrPort{}, fmt.Errorf("%v: USERID %q is longer than 255 bytes or holds a NUL", h, r.User)
	}
	if err := write(c, h, r.Append(nil)); err != nil {
		return netip.AddrPort{}, err
	}
	return reply4(c, h)
}

// reply4 reads a SOCKS4 reply and returns its DSTIP and DSTPORT.
func reply4(c net.Conn, h Hop) (netip.AddrPort, error) {
	var b [8]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return netip.AddrPort{}, readErr(h, err)
	}
	cd, bound, _, err := wire.ParseReply4(b[:])
	switch {
	case err != nil:
		return netip.AddrPort{}, &ProtocolError{h, err}
	case cd != wire.Granted4:
		return netip.AddrPort{}, &ReplyError{h, int(cd), socks4Msg(cd)}
	}
	return bound, nil
}

// socks4Msg is CD's meaning, from the SOCKS4 protocol notes.
func socks4Msg(cd byte) string {
	switch cd {
	case wire.IdentDown4:
		return "request rejected: the hop cannot reach our identd"
	case wire.IdentMismatch4:
		return "request rejected: identd and USERID differ"
	}
	return "request rejected or failed"
}

// lookup4 resolves a name for a plain SOCKS4 hop: its first IPv4 address.
func (d *Dialer) lookup4(ctx context.Context, host string) (netip.Addr, error) {
	var r Resolver = net.DefaultResolver
	switch {
	case d.Resolver != nil:
		r = d.Resolver
	case d.Forward != nil && d.Forward.Resolver != nil:
		r = d.Forward.Resolver // as dialNear would
	}
	ips, err := r.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return netip.Addr{}, err
	}
	for _, ip := range ips {
		if ip.Unmap().Is4() {
			return ip.Unmap(), nil
		}
	}
	return netip.Addr{}, &net.AddrError{Err: "no IPv4 address for a SOCKS4 hop", Addr: host}
}

// socks5 sends a SOCKS5 request with command cmd (connect, bind or UDP
// associate) for host:port (RFC 1928 sections 3 to 6, RFC 1929) and
// returns the (first) reply's BND.ADDR and BND.PORT when they are an IP.
func socks5(c net.Conn, h Hop, cmd byte, host string, port uint16) (netip.AddrPort, error) {
	var bound netip.AddrPort
	methods := []byte{wire.MethodNone}
	auth := h.User != "" || h.Password != ""
	if auth {
		// RFC 1929 section 2: both fields are 1 to 255 bytes.
		if len(h.User) == 0 || len(h.User) > 255 || len(h.Password) > 255 {
			return bound, fmt.Errorf("%v: username and password must be 1 to 255 bytes", h)
		}
		methods = append(methods, wire.MethodPassword)
	}
	if err := write(c, h, wire.AppendGreeting(nil, methods...)); err != nil {
		return bound, err
	}
	var b [4 + 1 + 255 + 2]byte // the longest reply
	if _, err := io.ReadFull(c, b[:2]); err != nil {
		return bound, readErr(h, err)
	}
	m, _, err := wire.ParseMethod(b[:2])
	switch {
	case err != nil:
		return bound, &ProtocolError{h, err}
	case m == wire.MethodNoAcceptable:
		return bound, &ReplyError{h, wire.MethodNoAcceptable, "no acceptable authentication method"}
	case m == wire.MethodPassword && auth:
		if err := write(c, h, wire.AppendUserPass(nil, h.User, h.Password)); err != nil {
			return bound, err
		}
		if _, err := io.ReadFull(c, b[:2]); err != nil {
			return bound, readErr(h, err)
		}
		status, _, err := wire.ParseAuthStatus(b[:2])
		if err != nil {
			return bound, &ProtocolError{h, err}
		}
		if status != wire.AuthOK {
			return bound, &ReplyError{h, wire.MethodNoAcceptable, "username and password rejected"}
		}
	case m != wire.MethodNone:
		return bound, &ProtocolError{h, fmt.Errorf("hop chose method %#x, which was not offered", m)}
	}
	r := wire.Request5{Cmd: cmd, Addr: wire.Addr{Port: port}}
	if r.Addr.IP, err = netip.ParseAddr(host); err != nil {
		r.Addr.Name = host
	}
	if err := write(c, h, r.Append(nil)); err != nil {
		return bound, err
	}
	return reply5(c, h)
}

// reply5 reads a SOCKS5 reply: the fixed part and the first address byte,
// then the rest, whose length ParseReply5 tells. It returns BND.ADDR and
// BND.PORT when they are an IP.
func reply5(c net.Conn, h Hop) (netip.AddrPort, error) {
	var bound netip.AddrPort
	var b [4 + 1 + 255 + 2]byte // the longest reply
	for have, n := 0, 5; ; {
		if _, err := io.ReadFull(c, b[have:n]); err != nil {
			return bound, readErr(h, err)
		}
		rep, m, err := wire.ParseReply5(b[:n])
		switch {
		case err == wire.ErrShort && m > n:
			have, n = n, m
			continue
		case err != nil:
			return bound, &ProtocolError{h, err}
		case rep.Rep != wire.RepSucceeded:
			return bound, &ReplyError{h, int(rep.Rep), socks5Msg(rep.Rep)}
		case rep.Bound.IP.IsValid():
			bound = netip.AddrPortFrom(rep.Bound.IP, rep.Bound.Port)
		}
		return bound, nil
	}
}

// socks5Msg is REP's meaning, RFC 1928 section 6.
func socks5Msg(rep byte) string {
	msgs := [...]string{1: "general SOCKS server failure", 2: "connection not allowed by ruleset",
		3: "network unreachable", 4: "host unreachable", 5: "connection refused", 6: "TTL expired",
		7: "command not supported", 8: "address type not supported"}
	if int(rep) < len(msgs) {
		return msgs[rep]
	}
	return "unassigned reply code"
}

// maxHeader bounds an HTTP proxy's response header.
const maxHeader = 8 << 10

// httpConnect asks an HTTP proxy to connect to target (RFC 9110 section
// 9.3.6). The response header is read one byte at a time: it is short and
// read once, and whatever follows it is the tunnel's, left in the socket
// for the caller instead of in a buffer that would need a wrapper.
func httpConnect(c net.Conn, h Hop, target string) error {
	req := "CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\n"
	if h.User != "" {
		// RFC 7617 section 2; RFC 9110 section 11.7.2.
		req += "Proxy-Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte(h.User+":"+h.Password)) + "\r\n"
	}
	if err := write(c, h, []byte(req+"\r\n")); err != nil {
		return err
	}
	hdr := make([]byte, 0, 128)
	for end := false; !end; {
		if len(hdr) == maxHeader {
			return &ProtocolError{h, errors.New("response header longer than 8 KiB")}
		}
		var one [1]byte
		if _, err := io.ReadFull(c, one[:]); err != nil {
			return readErr(h, err)
		}
		hdr = append(hdr, one[0])
		if len(hdr) <= 5 && !bytes.HasPrefix([]byte("HTTP/"), hdr) {
			return &ProtocolError{h, fmt.Errorf("response %q is not HTTP", hdr)}
		}
		end = bytes.HasSuffix(hdr, []byte("\n\n")) || bytes.HasSuffix(hdr, []byte("\n\r\n"))
	}
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(hdr)), &http.Request{Method: http.MethodConnect})
	if err != nil {
		return &ProtocolError{h, err}
	}
	// A 2xx response to CONNECT has no body: RFC 9110 section 9.3.6 has
	// clients ignore Content-Length and Transfer-Encoding in it.
	if resp.StatusCode/100 != 2 {
		return &ReplyError{h, resp.StatusCode, strings.TrimPrefix(resp.Status, strconv.Itoa(resp.StatusCode)+" ")}
	}
	return nil
}

// write sends one whole message.
func write(c net.Conn, h Hop, b []byte) error {
	if _, err := c.Write(b); err != nil {
		return fmt.Errorf("%v: %w", h, err)
	}
	return nil
}

// readErr classifies a failed read of a reply: a hop that closes before
// its reply is complete broke the protocol.
func readErr(h Hop, err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return &ProtocolError{h, fmt.Errorf("connection closed before the reply was complete: %w", err)}
	}
	return fmt.Errorf("%v: %w", h, err)
}
