package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"syscall"

	"github.com/coreos/go-systemd/v22/activation"
	sd "github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sys/unix"
)

// notifier sends sd_notify(3) messages to systemd; outside systemd it does
// nothing. The environment is never unset: a daemon that reloads and pings
// the watchdog keeps notifying (libraries.md §3.2).
type notifier struct{ log *slog.Logger }

func (n notifier) send(lines ...string) {
	if _, err := sd.SdNotify(false, strings.Join(lines, "\n")); err != nil {
		n.log.Warn("sd_notify failed", "err", err)
	}
}

// inherited is what the process was handed instead of -listen: listening
// sockets from systemd or inetd ("wait"), or one connected socket (systemd
// Accept=yes, or inetd "nowait" on standard input) to serve as one session.
type inherited struct {
	listeners []net.Listener
	conn      net.Conn
	metrics   net.Listener // the socket named "metrics", for -metrics-listen
}

// inheritedSockets looks for sockets passed by systemd (LISTEN_FDS) and,
// failing that, a socket on standard input (inetd). With several sockets
// from systemd, those named "socks" (FileDescriptorName=socks) are used
// when there are any.
func inheritedSockets() (*inherited, error) {
	files := activation.Files(true)
	if len(files) == 0 {
		if isInetSocket(os.Stdin) {
			files = []*os.File{os.Stdin}
		} else {
			return nil, nil
		}
	}
	in := &inherited{}
	var named, rest []*os.File
	for _, f := range files {
		switch f.Name() {
		case "socks":
			named = append(named, f)
		case "metrics":
			ln, err := net.FileListener(f)
			if err != nil {
				return nil, fmt.Errorf("inherited listener %s: %w", f.Name(), err)
			}
			f.Close()
			in.metrics = ln
		default:
			rest = append(rest, f)
		}
	}
	files = rest
	if len(named) > 0 {
		files = named
	}
	for _, f := range files {
		listening, err := unix.GetsockoptInt(int(f.Fd()), unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
		if err != nil {
			return nil, fmt.Errorf("inherited fd %d (%s): %w", f.Fd(), f.Name(), err)
		}
		if listening == 0 {
			c, err := net.FileConn(f)
			if err != nil {
				return nil, fmt.Errorf("inherited connection %s: %w", f.Name(), err)
			}
			if in.conn != nil {
				return nil, errors.New("more than one connected socket inherited")
			}
			in.conn = c
		} else {
			ln, err := net.FileListener(f)
			if err != nil {
				return nil, fmt.Errorf("inherited listener %s: %w", f.Name(), err)
			}
			in.listeners = append(in.listeners, ln)
		}
		if f != os.Stdin {
			f.Close() // FileConn and FileListener dup the fd
		}
	}
	if in.conn != nil && len(in.listeners) > 0 {
		return nil, errors.New("inherited both listening and connected sockets")
	}
	return in, nil
}

// isInetSocket reports whether f is an IPv4 or IPv6 socket (inetd's
// standard input; a unix socket there is something else).
func isInetSocket(f *os.File) bool {
	fi, err := f.Stat()
	if err != nil || fi.Mode()&os.ModeSocket == 0 {
		return false
	}
	sa, err := unix.Getsockname(int(f.Fd()))
	if err != nil {
		return false
	}
	switch sa.(type) {
	case *unix.SockaddrInet4, *unix.SockaddrInet6:
		return true
	}
	return false
}

// sameFile reports whether two open files are the same file (inetd hands
// the connection as standard input, output and error alike).
func sameFile(a, b *os.File) bool {
	var sa, sb syscall.Stat_t
	if syscall.Fstat(int(a.Fd()), &sa) != nil || syscall.Fstat(int(b.Fd()), &sb) != nil {
		return false
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino
}
