package relay

import (
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Keep-alive probes find peers that vanished without a word, so that their
// sessions end. Go sets four options on every socket it accepts or dials;
// accepted sockets inherit them from the listening socket instead, so
// ListenConfig sets them once there, and an outbound socket takes the
// system's timers with one option, set when its session first goes quiet.

// Keep-alive timers of accepted connections: a silent peer is probed after
// a minute, then every 15s, and given up after 4 unanswered probes.
const (
	keepIdle     = 60 * time.Second
	keepInterval = 15 * time.Second
	keepCount    = 4
)

// ListenConfig returns the listen configuration of SOCKS listeners: keep-
// alive set on the listening socket, inherited by every accepted one.
func ListenConfig() *net.ListenConfig {
	return &net.ListenConfig{
		KeepAlive: -1, // not per connection: inherited from the listener
		Control: func(network, address string, c syscall.RawConn) error {
			return setsockopts(c, [][3]int{
				{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
				{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, int(keepIdle / time.Second)},
				{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, int(keepInterval / time.Second)},
				{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, keepCount},
			})
		},
	}
}

// defaultDialer dials outbound connections, without keep-alive: a
// session turns it on, at the system's timers, when it goes quiet
// (conn.keepAlive), so that short sessions do not pay for it.
func defaultDialer() *net.Dialer {
	return &net.Dialer{KeepAlive: -1}
}

func setsockopts(c syscall.RawConn, opts [][3]int) error {
	var err error
	cerr := c.Control(func(fd uintptr) {
		for _, o := range opts {
			if err = unix.SetsockoptInt(int(fd), o[0], o[1], o[2]); err != nil {
				return
			}
		}
	})
	if cerr != nil {
		return cerr
	}
	return err
}
