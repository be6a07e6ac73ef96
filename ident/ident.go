// Package ident is an RFC 1413 (Identification Protocol) client: it asks the
// identd on a client's host which user owns the client's TCP connection to
// us, the legacy way and bounded in time.
//
// One Lookup is one query on one fresh connection to port 113 of the client's
// host, dialled from the local address the client connected to, so that a
// multi-homed server asks from the address the identd sees in its own
// connection table. The reply is read as one line of at most 1000 bytes.
//
// It deliberately does not retry, cache, pipeline several queries on one
// connection, trust or authenticate anything (an identd answer is only the
// client host's claim, RFC 1413 section 6), or interpret the user id in a
// charset: the user id is returned as the octets received. Any error from
// Lookup means "identd down" to the caller. It imports nothing of this module.
package ident

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"syscall"
	"time"
)

const (
	defaultPort = 113 // RFC 1413 section 2
	// maxLine bounds a reply line, end of line included: "Clients should
	// feel free to abort the connection if they receive 1000 characters
	// without receiving an <EOL>" (RFC 1413 section 3).
	maxLine = 1000
	// maxUserID is the longest user id RFC 1413 section 6 allows.
	maxUserID = 512
)

// ErrMalformed is wrapped by every error for a reply that is not a valid RFC
// 1413 reply to the query asked: bad syntax, an oversized or unterminated
// line, or ports that are not the ports asked.
var ErrMalformed = errors.New("malformed identd reply")

// ErrBusy is returned by Lookup when Client.MaxConcurrent lookups are already
// running and none finished before the context ended.
var ErrBusy = errors.New("too many concurrent ident lookups")

// Reply is a successful identd answer: "USERID : <OS>[,<Charset>] : <User>".
type Reply struct {
	OS      string // operating system token, e.g. "UNIX" or "OTHER"
	Charset string // "" when absent (RFC 1413 then means US-ASCII)
	User    string // user id as received, surrounding blanks trimmed
}

// ReplyError is an identd "ERROR : <code>" answer, such as NO-USER,
// HIDDEN-USER, INVALID-PORT or UNKNOWN-ERROR (RFC 1413 section 6).
type ReplyError struct{ Code string }

func (e *ReplyError) Error() string { return "identd: ERROR " + e.Code }

// Client asks identd servers. The zero value asks port 113, sets no timeout
// beyond the context, and has no concurrency cap. A Client is safe for
// concurrent use; its fields must not change, and it must not be copied,
// after the first Lookup.
type Client struct {
	Port          uint16        // identd port; 0 means 113
	Timeout       time.Duration // bounds a whole lookup, wait for a slot included, on top of ctx; 0: only ctx
	MaxConcurrent int           // lookups in flight at once; 0: no cap

	once sync.Once
	sem  chan struct{} // nil when there is no cap
}

// Lookup asks the identd on remote.Addr() who owns the TCP connection between
// remote (the client's address and source port) and local (our address and
// the port the client connected to). It dials from local.Addr(), port 0,
// when this host has that address, else from the address the system picks.
// IPv4-mapped IPv6 addresses are unmapped first.
//
// It returns the reply, or an error: the dial's (e.g. connection refused),
// a timeout, a *ReplyError, one wrapping ErrMalformed, or one wrapping ErrBusy.
// The connection is always closed before Lookup returns.
func (c *Client) Lookup(ctx context.Context, local, remote netip.AddrPort) (Reply, error) {
	lip, rip := local.Addr().Unmap(), remote.Addr().Unmap()
	port := c.Port
	if port == 0 {
		port = defaultPort
	}
	server := netip.AddrPortFrom(rip, port)
	if !lip.IsValid() || !rip.IsValid() {
		return Reply{}, fmt.Errorf("ident %s: invalid address (local %s, remote %s)", server, local, remote)
	}
	if c.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.Timeout)
		defer cancel()
	}
	if err := c.acquire(ctx); err != nil {
		return Reply{}, fmt.Errorf("ident %s: %w", server, err)
	}
	defer c.release()

	d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(lip, 0))}
	conn, err := d.DialContext(ctx, "tcp", server.String())
	if errors.Is(err, syscall.EADDRNOTAVAIL) {
		// local is not this host's (a load balancer's address, from a
		// PROXY protocol header): ask from whatever address routes there.
		d.LocalAddr = nil
		conn, err = d.DialContext(ctx, "tcp", server.String())
	}
	if err != nil {
		return Reply{}, fmt.Errorf("ident %s: %w", server, err)
	}
	defer conn.Close()
	// The deadline bounds a peer that accepts and never answers; AfterFunc
	// also ends the I/O when ctx is cancelled without a deadline.
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	// RFC 1413 section 3: "<port-on-server> , <port-on-client>", where the
	// identd host is the "server": the client's source port comes first.
	if _, err := fmt.Fprintf(conn, "%d, %d\r\n", remote.Port(), local.Port()); err != nil {
		return Reply{}, fmt.Errorf("ident %s: %w", server, err)
	}
	line, err := readLine(conn)
	if err != nil {
		return Reply{}, fmt.Errorf("ident %s: %w", server, err)
	}
	r, err := ParseReply(line, remote.Port(), local.Port())
	if err != nil {
		return Reply{}, fmt.Errorf("ident %s: %w", server, err)
	}
	return r, nil
}

// acquire takes a concurrency slot, or fails with ErrBusy once ctx ends.
func (c *Client) acquire(ctx context.Context) error {
	c.once.Do(func() {
		if c.MaxConcurrent > 0 {
			c.sem = make(chan struct{}, c.MaxConcurrent)
		}
	})
	if c.sem == nil {
		return nil
	}
	select {
	case c.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%w (%w)", ErrBusy, ctx.Err())
	}
}

func (c *Client) release() {
	if c.sem != nil {
		<-c.sem
	}
}

// readLine reads up to and including the first '\n', never more than maxLine
// bytes, so a peer cannot make us buffer without bound. Bytes after the '\n'
// are ignored; a line cut off by EOF is malformed, as it may be truncated.
func readLine(r io.Reader) ([]byte, error) {
	buf := make([]byte, maxLine)
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		if i := bytes.IndexByte(buf[n:n+m], '\n'); i >= 0 {
			return buf[:n+i+1], nil
		}
		n += m
		if err == io.EOF {
			return nil, fmt.Errorf("%w: connection closed after %d bytes without end of line", ErrMalformed, n)
		}
		if err != nil {
			return nil, err
		}
	}
	return nil, fmt.Errorf("%w: no end of line in %d bytes", ErrMalformed, maxLine)
}

// ParseReply parses one identd reply line, with or without its trailing
// "\r\n", to the query "remotePort, localPort". It returns a *ReplyError for
// an ERROR reply and an error wrapping ErrMalformed for anything else that is
// not a USERID reply for exactly those ports. It is a pure function.
func ParseReply(line []byte, remotePort, localPort uint16) (Reply, error) {
	if len(line) > maxLine {
		return Reply{}, fmt.Errorf("%w: %d bytes, more than %d", ErrMalformed, len(line), maxLine)
	}
	line = bytes.TrimSuffix(line, []byte("\n"))
	line = bytes.TrimSuffix(line, []byte("\r"))
	if bytes.ContainsAny(line, "\r\n\x00") {
		return Reply{}, fmt.Errorf("%w: CR, LF or NUL inside %q", ErrMalformed, line)
	}
	// <port-pair> : <resp-type> : <add-info>; the user id, last, may itself
	// contain colons (RFC 1413 section 6), so split into at most 4 fields.
	f := bytes.SplitN(line, []byte(":"), 4)
	if len(f) < 3 {
		return Reply{}, fmt.Errorf("%w: %q", ErrMalformed, line)
	}
	ports := bytes.SplitN(f[0], []byte(","), 2)
	if len(ports) != 2 || !isPort(ports[0], remotePort) || !isPort(ports[1], localPort) {
		return Reply{}, fmt.Errorf("%w: ports %q, asked %d, %d", ErrMalformed, f[0], remotePort, localPort)
	}
	switch typ := string(trim(f[1])); typ {
	case "ERROR":
		code := trim(f[2])
		if len(f) != 3 || len(code) == 0 {
			return Reply{}, fmt.Errorf("%w: error code %q", ErrMalformed, f[2:])
		}
		return Reply{}, &ReplyError{Code: string(code)}
	case "USERID":
		if len(f) != 4 {
			return Reply{}, fmt.Errorf("%w: USERID without user id", ErrMalformed)
		}
		osys, charset, _ := bytes.Cut(f[2], []byte(","))
		r := Reply{OS: string(trim(osys)), Charset: string(trim(charset)), User: string(trim(f[3]))}
		if r.OS == "" || r.User == "" || len(r.User) > maxUserID {
			return Reply{}, fmt.Errorf("%w: USERID %q", ErrMalformed, f[2:])
		}
		return r, nil
	default:
		return Reply{}, fmt.Errorf("%w: reply type %q", ErrMalformed, typ)
	}
}

// isPort reports whether b, blanks trimmed, is the decimal port want.
func isPort(b []byte, want uint16) bool {
	n, err := strconv.ParseUint(string(trim(b)), 10, 16) // no sign, no "0x", no "_"
	return err == nil && uint16(n) == want
}

// trim removes the blanks (space and tab) RFC 1413 allows around tokens.
func trim(b []byte) []byte { return bytes.Trim(b, " \t") }
