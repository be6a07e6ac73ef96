package relay

import (
	"context"
	"log/slog"
	"net/netip"
	"time"

	"github.com/sockd-ng/sockd/policy"
	"github.com/sockd-ng/sockd/relay/internal/wire"
)

// Addr is a SOCKS destination: an address, or a name, and a port.
type Addr = wire.Addr

// Record is what one session did, built once when it ends: its log line
// prints it, and an Observer counts it.
type Record struct {
	ID    uint64
	Proto string         // "socks4", "socks4a", "socks5", "unknown" (not SOCKS), or "" (no byte came)
	Cmd   policy.Command // 0 when no request was read
	// Client is the client's address: behind a load balancer, the one its
	// PROXY protocol header gives.
	Client netip.AddrPort
	User   string
	// Ident is the identd answer, "(down)", or "" when identd was not
	// asked; IdentTime is how long it took.
	Ident     string
	IdentTime time.Duration
	Dst       Addr           // as requested
	Connected netip.AddrPort // as connected (the BIND peer for a BIND)
	Rule      string         // FILE:LINE of the sockd.conf line that decided; "" for none
	Route     string         // FILE:LINE of the routing line
	Action    string         // "permit", "deny", or "" when no decision was made
	Refusal   Refusal        // why the request was refused, if it was
	Reason    string
	Via       string // "direct", or the next hops
	Reply     int    // the reply code sent, -1 for none
	BytesUp   int64  // client to destination
	BytesDown int64
	// Datagrams are a UDP association's datagrams up, down and dropped;
	// Dropped says why, "denied:2 unspecified:1".
	Datagrams [3]int64
	Dropped   string
	Start     time.Time
	Duration  time.Duration
	// Handshake is the time from accept until the request was read;
	// Connect, the time the outbound connection took (through the next
	// hops, if any).
	Handshake, Connect time.Duration
	Err                error
	// Warn: the session failed on the server's side (an outbound or next
	// hop problem).
	Warn bool
}

// Refusal says why a request was refused.
type Refusal uint8

const (
	NotRefused           Refusal = iota
	RefusedRule                  // a deny line
	RefusedNoRule                // no line matched
	RefusedIdentDown             // identd unreachable under ?=I (92)
	RefusedIdentMismatch         // identd named another user (93)
	RefusedRoute                 // the routing file denies it, or no route matched
	RefusedUnspecified           // an unspecified destination (0.0.0.0/8, ::)
	RefusedMaxSessions           // -max-sessions
	RefusedClientCap             // its client at -max-client-sessions (no session: see Observer.Refused)
	RefusedAuth                  // RFC 1929 failed, or no acceptable method
	RefusedBadRequest            // malformed, unknown command or address type, SOCKS4 without -auth none
	RefusedWrongPeer             // a BIND peer other than the one named
	NumRefusals
)

var refusalNames = [NumRefusals]string{"", "rule", "no_rule", "ident_down", "ident_mismatch", "route",
	"unspecified", "max_sessions", "client_cap", "auth", "bad_request", "wrong_peer"}

func (r Refusal) String() string {
	if r < NumRefusals {
		return refusalNames[r]
	}
	return "unknown"
}

// refusalOf classifies a refusing decision.
func refusalOf(d *policy.Decision, dst Addr) Refusal {
	switch {
	case d.Reply == policy.IdentDown:
		return RefusedIdentDown
	case d.Reply == policy.IdentMismatch:
		return RefusedIdentMismatch
	case d.Route.Kind == policy.RouteDeny:
		return RefusedRoute
	case d.Rule != "":
		return RefusedRule
	case unspecifiedOnly(d, dst):
		return RefusedUnspecified
	}
	return RefusedNoRule
}

// An Observer is told what the server does, for metrics (package metrics
// implements it). Its methods must be safe for concurrent use and quick:
// relay calls them on its hot path. A Server without one observes
// nothing.
type Observer interface {
	// SessionEnded is called once per session, when it ends, with its
	// record (valid during the call only).
	SessionEnded(r *Record)
	// Refused is called for a connection refused before it became a
	// session (RefusedClientCap).
	Refused(why Refusal)
	// Upstream is called after each attempt to reach a chain of next hops
	// ("socks5://gw:1080" or "A>B"), with whether it worked.
	Upstream(chain string, ok bool)
	// Lookup is called after each DNS lookup (forward or reverse) with
	// the time it took.
	Lookup(d time.Duration)
	// Datagram is called for each UDP datagram relayed, up (client to
	// destination) or down; Dropped for each one dropped.
	Datagram(up bool)
	Dropped(why DropReason)
}

// log writes the session's one line: level Warn when it failed on the
// server's side, else Info.
func (r *Record) log(l *slog.Logger) {
	level := slog.LevelInfo
	if r.Warn {
		level = slog.LevelWarn
	}
	if !l.Enabled(context.Background(), level) {
		return
	}
	cmd := ""
	if r.Cmd != 0 {
		cmd = r.Cmd.String()
	}
	dst := ""
	if r.Dst.Name != "" || r.Dst.IP.IsValid() {
		dst = r.Dst.String()
	}
	attrs := []slog.Attr{
		slog.Uint64("id", r.ID),
		slog.String("proto", r.Proto),
		slog.String("cmd", cmd),
		slog.String("client", r.Client.String()),
		slog.String("user", r.User),
		slog.String("ident", r.Ident),
		slog.String("dst", dst),
	}
	if r.Connected.IsValid() {
		attrs = append(attrs, slog.String("connected", r.Connected.String()))
	}
	rule := r.Rule
	if rule == "" && r.Action != "" {
		rule = "default"
	}
	attrs = append(attrs,
		slog.String("rule", rule),
		slog.String("route", r.Route),
		slog.String("action", r.Action),
		slog.String("reason", r.Reason),
		slog.String("via", r.Via),
		slog.Int("reply", r.Reply),
		slog.Int64("bytes_up", r.BytesUp),
		slog.Int64("bytes_down", r.BytesDown),
	)
	if r.Cmd == policy.UDP {
		attrs = append(attrs,
			slog.Int64("dgrams_up", r.Datagrams[0]),
			slog.Int64("dgrams_down", r.Datagrams[1]),
			slog.Int64("dgrams_dropped", r.Datagrams[2]))
		if r.Dropped != "" {
			attrs = append(attrs, slog.String("dropped", r.Dropped))
		}
	}
	attrs = append(attrs, slog.Duration("dur", r.Duration.Round(time.Microsecond)))
	if r.Err != nil {
		attrs = append(attrs, slog.String("err", r.Err.Error()))
	}
	l.LogAttrs(context.Background(), level, "conn", attrs...)
}
