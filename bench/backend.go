package main

import (
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"time"
)

// echoBuf is the per-connection buffer of the echo server. It is small so
// that the backend's own cost per idle connection, measured as the direct
// reference, stays modest.
const echoBuf = 2 << 10

// backendMain is the "backend" subcommand: a sink, an echo server and an
// echo-once server on TCP, a UDP echo server and a UDP sink, on loopback,
// in a process of their own so that their sockets count against their own
// fd limit. It prints "SINK ECHO ONCE UDPECHO UDPSINK" addresses on one
// line and runs until its standard input closes.
func backendMain(args []string) int {
	fs := flag.NewFlagSet("backend", flag.ExitOnError)
	host := fs.String("host", backendHost, "address to listen on")
	bufSize := fs.Int("buf", 256<<10, "sink read buffer `bytes`")
	onceSize := fs.Int("once", 1024, "bytes the echo-once server echoes before it closes")
	fs.Parse(args)

	sink, err := net.Listen("tcp", net.JoinHostPort(*host, "0"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "backend:", err)
		return 1
	}
	echo, err := net.Listen("tcp", net.JoinHostPort(*host, "0"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "backend:", err)
		return 1
	}
	once, err := net.Listen("tcp", net.JoinHostPort(*host, "0"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "backend:", err)
		return 1
	}
	uecho, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(*host), 0)))
	if err != nil {
		fmt.Fprintln(os.Stderr, "backend:", err)
		return 1
	}
	usink, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(*host), 0)))
	if err != nil {
		fmt.Fprintln(os.Stderr, "backend:", err)
		return 1
	}
	go acceptLoop("sink", sink, func(c net.Conn) { serveSink(c, *bufSize) })
	go acceptLoop("echo", echo, serveEcho)
	go acceptLoop("once", once, func(c net.Conn) { serveOnce(c, *onceSize) })
	for range udpEchoReaders {
		go serveUDPEcho(uecho)
	}
	go serveUDPSink(usink)
	fmt.Printf("%s %s %s %s %s\n", sink.Addr(), echo.Addr(), once.Addr(), uecho.LocalAddr(), usink.LocalAddr())
	io.Copy(io.Discard, os.Stdin) // the harness closes it to stop us
	return 0
}

// acceptLoop serves ln until it is closed. Temporary failures such as
// EMFILE are reported once and retried after a pause.
func acceptLoop(name string, ln net.Listener, serve func(net.Conn)) {
	var reported atomic.Bool
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if !reported.Swap(true) {
				fmt.Fprintf(os.Stderr, "backend %s: accept: %v\n", name, err)
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		go serve(c)
	}
}

// serveSink reads an 8-byte big-endian length, then that many bytes, and
// answers with one byte. The length header lets the client know when the
// sink has everything without relying on the proxy to relay a half-close.
func serveSink(c net.Conn, bufSize int) {
	defer c.Close()
	var h [8]byte
	if _, err := io.ReadFull(c, h[:]); err != nil {
		return
	}
	left := int64(binary.BigEndian.Uint64(h[:]))
	buf := make([]byte, bufSize)
	for left > 0 {
		n, err := c.Read(buf[:min(int64(len(buf)), left)])
		left -= int64(n)
		if err != nil {
			return
		}
	}
	c.Write([]byte{1})
}

// serveEcho writes back whatever it reads until EOF.
func serveEcho(c net.Conn) {
	defer c.Close()
	buf := make([]byte, echoBuf)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// serveOnce echoes the first size bytes and closes: the connection-rate
// server. Closing first puts the TIME_WAIT state on this listening port
// (and, through a proxy that relays the FIN, on the proxy's listening
// port) rather than on an ephemeral port of the client or of the proxy's
// outbound side. At tens of thousands of connections a run, TIME_WAITs on
// ephemeral ports would use up the range (28,232 ports here) and starve
// later runs, notably Dante, which binds its outbound sockets to a port
// before connecting.
func serveOnce(c net.Conn, size int) {
	defer c.Close()
	buf := make([]byte, size)
	if _, err := io.ReadFull(c, buf); err != nil {
		return
	}
	c.Write(buf)
}

// udpEchoReaders is how many goroutines read the UDP echo socket: one per
// core, so that 16 associations' round trips are not served one by one.
const udpEchoReaders = 2

// serveUDPEcho sends every datagram back to where it came from.
func serveUDPEcho(c *net.UDPConn) {
	buf := make([]byte, 64<<10)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		c.WriteToUDPAddrPort(buf[:n], from)
	}
}

// UDP sink messages: the first byte of a datagram says what it is.
const (
	udpData  = 'D' // counted
	udpQuery = 'Q' // answered with the count so far from that source
)

// udpCount is what the UDP sink knows of one source.
type udpCount struct {
	n           int64
	first, last time.Time
}

// maxUDPSources bounds the sink's table; past it, it starts over.
const maxUDPSources = 4096

// serveUDPSink counts the data datagrams of each source and answers a
// query with 16 bytes: the count and the nanoseconds from the first to
// the last of them.
func serveUDPSink(c *net.UDPConn) {
	buf := make([]byte, 64<<10)
	counts := map[netip.AddrPort]*udpCount{}
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		if n == 0 {
			continue
		}
		switch buf[0] {
		case udpData:
			now := time.Now()
			k := counts[from]
			if k == nil {
				if len(counts) >= maxUDPSources {
					clear(counts)
				}
				k = &udpCount{first: now}
				counts[from] = k
			}
			k.n++
			k.last = now
		case udpQuery:
			var out [16]byte
			if k := counts[from]; k != nil {
				binary.BigEndian.PutUint64(out[:8], uint64(k.n))
				binary.BigEndian.PutUint64(out[8:], uint64(k.last.Sub(k.first)))
			}
			c.WriteToUDPAddrPort(out[:], from)
		}
	}
}
