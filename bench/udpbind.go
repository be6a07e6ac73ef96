package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// The client's UDP and BIND modes. Like the TCP modes, each runs a
// bounded loop and reports one JSON object.

// udpResult is what the udp mode (request-response) reports.
type udpResult struct {
	Assocs     int     `json:"associations"`
	RoundTrips int64   `json:"round_trips"` // datagrams sent and echoed back
	Lost       int64   `json:"lost"`        // no echo within udpWait
	Errors     int64   `json:"errors"`      // set-up failures, bad echoes
	Seconds    float64 `json:"seconds"`
	Rate       float64 `json:"round_trips_per_second"`
	P50us      float64 `json:"rtt_p50_us"`
	P99us      float64 `json:"rtt_p99_us"`
	FirstError string  `json:"first_error,omitempty"`
}

// udpBlastResult is what the udpblast mode (one way) reports.
type udpBlastResult struct {
	Sent        int64   `json:"sent"`
	SendErrors  int64   `json:"send_errors"`
	Delivered   int64   `json:"delivered"` // counted by the sink
	SendSeconds float64 `json:"send_seconds"`
	SinkSeconds float64 `json:"sink_seconds"` // first to last datagram at the sink
	Rate        float64 `json:"delivered_per_second"`
	LossPct     float64 `json:"loss_percent"`
	Error       string  `json:"error,omitempty"`
}

// bindResult is what the bind mode reports.
type bindResult struct {
	Clients    int     `json:"clients"`
	Setups     int64   `json:"setups"` // BIND set up, 1 KiB round trip made, closed
	Errors     int64   `json:"errors"`
	Seconds    float64 `json:"seconds"`
	Rate       float64 `json:"setups_per_second"`
	Samples    int     `json:"setup_samples"`
	P50us      float64 `json:"setup_p50_us"`
	P99us      float64 `json:"setup_p99_us"`
	RTTP50us   float64 `json:"round_trip_p50_us"`
	FirstError string  `json:"first_error,omitempty"`
}

// udpWait is how long a request waits for its echo before it counts as
// lost; the association then goes on with the next datagram.
const udpWait = 500 * time.Millisecond

// udpPath is a UDP socket to the echo server or sink, straight or through
// a SOCKS5 association (then hdr is the header every datagram carries,
// and ctrl the control connection, which must stay open).
type udpPath struct {
	conn *net.UDPConn
	ctrl net.Conn
	hdr  []byte
}

func (u *udpPath) Close() {
	u.conn.Close()
	if u.ctrl != nil {
		u.ctrl.Close()
	}
}

// openUDP opens a socket to dst, straight when proxy is empty, else
// through a new association with the proxy.
func openUDP(proxy string, dst netip.AddrPort, deadline time.Time) (*udpPath, error) {
	if proxy == "" {
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(dst))
		if err != nil {
			return nil, err
		}
		return &udpPath{conn: c}, nil
	}
	ctrl, relay, err := socks5Associate(proxy, deadline)
	if err != nil {
		return nil, err
	}
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(relay))
	if err != nil {
		ctrl.Close()
		return nil, err
	}
	return &udpPath{conn: c, ctrl: ctrl, hdr: udpHeader(dst)}, nil
}

// runUDP opens assocs associations (or direct sockets), then on each of
// them sends a datagram of size bytes and waits for its echo, over and
// over until dur has passed.
func runUDP(proxy string, dst netip.AddrPort, assocs int, dur time.Duration, size int) udpResult {
	res := udpResult{Assocs: assocs}
	deadline := time.Now().Add(opTimeout)
	paths := make([]*udpPath, 0, assocs)
	defer func() {
		for _, p := range paths {
			p.Close()
		}
	}()
	for range assocs {
		p, err := openUDP(proxy, dst, deadline)
		if err != nil {
			res.Errors++
			res.FirstError = "set-up: " + err.Error()
			return res
		}
		paths = append(paths, p)
	}
	var trips, lost, errs atomic.Int64
	var firstErr sync.Once
	fail := func(err error) {
		errs.Add(1)
		firstErr.Do(func() { res.FirstError = err.Error() })
	}
	lat := make([][]time.Duration, assocs)
	start := time.Now()
	stop := start.Add(dur)
	var wg sync.WaitGroup
	for i, p := range paths {
		wg.Go(func() {
			hl := len(p.hdr)
			msg := append(slices.Clone(p.hdr), make([]byte, size)...)
			buf := make([]byte, len(msg)+512)
			for seq := uint64(1); time.Now().Before(stop); seq++ {
				binary.BigEndian.PutUint64(msg[hl:], seq)
				t0 := time.Now()
				if _, err := p.conn.Write(msg); err != nil {
					fail(err)
					time.Sleep(time.Millisecond)
					continue
				}
				p.conn.SetReadDeadline(t0.Add(udpWait))
				for {
					n, err := p.conn.Read(buf)
					if err != nil {
						if errors.Is(err, os.ErrDeadlineExceeded) {
							lost.Add(1)
						} else {
							fail(err)
							time.Sleep(time.Millisecond)
						}
						break
					}
					if n != len(msg) || !bytes.Equal(buf[:hl], p.hdr) {
						fail(fmt.Errorf("echo of %d bytes, header %x; want %d bytes, header %x", n, buf[:min(n, hl)], len(msg), p.hdr))
						continue
					}
					if binary.BigEndian.Uint64(buf[hl:]) != seq {
						continue // a late echo of a datagram already counted lost
					}
					lat[i] = append(lat[i], time.Since(t0))
					trips.Add(1)
					break
				}
			}
		})
	}
	wg.Wait()
	res.Seconds = time.Since(start).Seconds()
	res.RoundTrips, res.Lost, res.Errors = trips.Load(), lost.Load(), errs.Load()
	res.Rate = float64(res.RoundTrips) / res.Seconds
	all := slices.Concat(lat...)
	res.P50us = percentile(all, 0.50)
	res.P99us = percentile(all, 0.99)
	return res
}

// runUDPBlast sends datagrams of size bytes to the UDP sink as fast as it
// can for dur, on one association (or a direct socket), then asks the sink
// how many arrived and over how long.
func runUDPBlast(proxy string, dst netip.AddrPort, dur time.Duration, size int) udpBlastResult {
	var res udpBlastResult
	p, err := openUDP(proxy, dst, time.Now().Add(opTimeout))
	if err != nil {
		res.Error = "set-up: " + err.Error()
		return res
	}
	defer p.Close()
	hl := len(p.hdr)
	msg := append(slices.Clone(p.hdr), make([]byte, size)...)
	msg[hl] = udpData
	start := time.Now()
	for stop := start.Add(dur); time.Now().Before(stop); {
		if _, err := p.conn.Write(msg); err != nil {
			res.SendErrors++
			continue
		}
		res.Sent++
	}
	res.SendSeconds = time.Since(start).Seconds()
	time.Sleep(300 * time.Millisecond) // let the relay drain
	n, span, err := querySink(p)
	if err != nil {
		res.Error = "sink query: " + err.Error()
		return res
	}
	res.Delivered, res.SinkSeconds = n, span.Seconds()
	if res.SinkSeconds > 0 {
		res.Rate = float64(n) / res.SinkSeconds
	}
	if res.Sent > 0 {
		res.LossPct = 100 * float64(res.Sent-n) / float64(res.Sent)
	}
	return res
}

// querySink asks the sink for its count, trying a few times since the
// query or its answer may be lost like any datagram.
func querySink(p *udpPath) (int64, time.Duration, error) {
	hl := len(p.hdr)
	q := append(slices.Clone(p.hdr), udpQuery)
	buf := make([]byte, 64<<10)
	var last error = errors.New("no answer")
	for range 5 {
		if _, err := p.conn.Write(q); err != nil {
			last = err
			continue
		}
		p.conn.SetReadDeadline(time.Now().Add(udpWait))
		for {
			n, err := p.conn.Read(buf)
			if err != nil {
				last = err
				break
			}
			if n == hl+16 && bytes.Equal(buf[:hl], p.hdr) {
				return int64(binary.BigEndian.Uint64(buf[hl:])), time.Duration(binary.BigEndian.Uint64(buf[hl+8:])), nil
			}
		}
	}
	return 0, 0, last
}

// loopback is the address the load client uses as the BIND application
// server, and from which it connects to the bound port.
var loopback = netip.MustParseAddr("127.0.0.1")

// runBind runs clients loops of BIND set-up, one round trip of size bytes
// and close, until dur has passed or max set-ups have been tried.
func runBind(proxy string, clients int, dur time.Duration, maxSetups int, size int) bindResult {
	st := runLoad(clients, dur, maxSetups, size, func(payload, buf []byte) (time.Duration, time.Duration, error) {
		return bindOnce(proxy, payload, buf)
	})
	return bindResult{
		Clients: clients, Setups: st.done, Errors: st.errs, Seconds: st.seconds,
		Rate:    float64(st.done) / st.seconds,
		Samples: len(st.lat), P50us: percentile(st.lat, 0.50), P99us: percentile(st.lat, 0.99),
		RTTP50us:   percentile(st.rtt, 0.50),
		FirstError: st.firstErr,
	}
}

// bindOnce sets up one BIND session and returns the set-up time and the
// time of one round trip through it. Through a proxy: from the start of
// the control connection's TCP connect until the second reply is read,
// the load client itself being the application server that connects
// (from 127.0.0.1) to the address of the first reply. Direct: listen on
// 127.0.0.1:0, connect, accept. Then size bytes go from the control side
// to the peer and back. The peer closes first, so that its ephemeral
// port, not a listening one, holds the TIME_WAIT.
func bindOnce(proxy string, payload, buf []byte) (setup, rt time.Duration, err error) {
	t0 := time.Now()
	deadline := t0.Add(opTimeout)
	var ctrl, peer net.Conn
	defer func() {
		if peer != nil {
			peer.Close()
		}
		if ctrl != nil {
			ctrl.Close()
		}
	}()
	dialer := net.Dialer{Deadline: deadline, LocalAddr: &net.TCPAddr{IP: loopback.AsSlice()}}
	if proxy == "" {
		ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: loopback.AsSlice()})
		if err != nil {
			return 0, 0, err
		}
		ln.SetDeadline(deadline)
		peer, err = dialer.Dial("tcp", ln.Addr().String())
		if err != nil {
			ln.Close()
			return 0, 0, err
		}
		ctrl, err = ln.Accept()
		ln.Close()
		if err != nil {
			return 0, 0, err
		}
	} else {
		if ctrl, err = (&net.Dialer{Deadline: deadline}).Dial("tcp", proxy); err != nil {
			return 0, 0, err
		}
		ctrl.SetDeadline(deadline)
		if err := socks5Greet(ctrl); err != nil {
			return 0, 0, err
		}
		if _, err := ctrl.Write(request(2, netip.AddrPortFrom(loopback, bindPort))); err != nil {
			return 0, 0, err
		}
		bound, err := readReplyAddr(ctrl)
		if err != nil {
			return 0, 0, fmt.Errorf("bind, first reply: %w", err)
		}
		if bound, err = orProxyHost(bound, proxy); err != nil {
			return 0, 0, err
		}
		if peer, err = dialer.Dial("tcp", bound.String()); err != nil {
			return 0, 0, fmt.Errorf("bind, connecting to %v: %w", bound, err)
		}
		from, err := readReplyAddr(ctrl)
		if err != nil {
			return 0, 0, fmt.Errorf("bind, second reply: %w", err)
		}
		if want := netip.MustParseAddrPort(peer.LocalAddr().String()); from != want {
			return 0, 0, fmt.Errorf("bind, second reply names %v, the peer is %v", from, want)
		}
	}
	setup = time.Since(t0)
	ctrl.SetDeadline(deadline)
	peer.SetDeadline(deadline)
	t1 := time.Now()
	if _, err := ctrl.Write(payload); err != nil {
		return setup, 0, err
	}
	if _, err := io.ReadFull(peer, buf); err != nil {
		return setup, 0, err
	}
	if _, err := peer.Write(buf); err != nil {
		return setup, 0, err
	}
	if _, err := io.ReadFull(ctrl, buf); err != nil {
		return setup, 0, err
	}
	rt = time.Since(t1)
	peer.Close()
	peer = nil
	return setup, rt, awaitEOF(ctrl)
}

// bindPort is the DST.PORT of the BIND requests: the port of the
// "primary connection" in RFC 1928's terms, which neither server checks
// the inbound connection against.
const bindPort = 21
