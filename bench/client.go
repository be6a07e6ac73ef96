package main

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The "client" subcommand is the load generator. It runs in a process of
// its own (so that 9,900 idle client sockets do not share the harness's fd
// limit with anything else) and reports one JSON object per line on
// standard output.

// streamResult is what the stream mode reports.
type streamResult struct {
	Streams int     `json:"streams"`
	Bytes   int64   `json:"bytes"` // delivered to the sink, all streams
	Seconds float64 `json:"seconds"`
	Error   string  `json:"error,omitempty"`
}

// connResult is what the connrate mode reports.
type connResult struct {
	Clients    int     `json:"clients"`
	Conns      int64   `json:"conns"` // completed: handshake, 1 KiB echoed, closed
	Errors     int64   `json:"errors"`
	Seconds    float64 `json:"seconds"`
	Rate       float64 `json:"conns_per_second"`
	Samples    int     `json:"handshake_samples"`
	P50us      float64 `json:"handshake_p50_us"`
	P99us      float64 `json:"handshake_p99_us"`
	FirstError string  `json:"first_error,omitempty"`
}

// idleStep is what the idle mode reports after each step of opening.
type idleStep struct {
	Target     int     `json:"target"`
	Open       int     `json:"open"`
	Errors     int     `json:"errors"`
	Seconds    float64 `json:"seconds"`
	FirstError string  `json:"first_error,omitempty"`
}

// verifyResult is what the idle mode reports last: how many of the idle
// sessions still echoed a byte after being measured.
type verifyResult struct {
	Verified   int    `json:"verified"`
	Errors     int    `json:"errors"`
	FirstError string `json:"first_error,omitempty"`
}

// opTimeout bounds every connect+handshake and every echo exchange.
const opTimeout = 10 * time.Second

// clientMain is the "client" subcommand: "client MODE [flags]", MODE being
// stream, connrate, idle, udp, udpblast or bind.
func clientMain(args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "client: want a mode: stream, connrate, idle, udp, udpblast or bind")
		return 2
	}
	mode, args := args[0], args[1:]
	fs := flag.NewFlagSet("client "+mode, flag.ExitOnError)
	target := fs.String("target", "", "backend `addr:port`")
	proxy := fs.String("proxy", "", "SOCKS5 proxy `addr:port` (empty: direct)")
	streams := fs.Int("streams", 1, "stream: parallel streams")
	perStream := fs.Int64("bytes", 1<<30, "stream: bytes per stream")
	bufSize := fs.Int("buf", 256<<10, "stream: write buffer `bytes`")
	timeout := fs.Duration("timeout", 2*time.Minute, "stream: time limit; idle: limit per step")
	clients := fs.Int("clients", 32, "connrate, bind: concurrent clients")
	dur := fs.Duration("duration", 5*time.Second, "connrate, udp, udpblast, bind: how long to run")
	size := fs.Int("size", 1024, "connrate, bind: echo `bytes`; udp, udpblast: payload bytes")
	assocs := fs.Int("assocs", 1, "udp: concurrent associations")
	maxSetups := fs.Int("max", 10000, "bind: at most this many set-ups")
	counts := fs.String("counts", "1000", "idle: comma-separated session counts to reach in turn")
	workers := fs.Int("workers", 64, "idle: connections opened at once")
	closeFirst := fs.Bool("closefirst", false, "connrate: close once the echo is read, without waiting for the server's end of stream")
	fs.Parse(args)

	out := json.NewEncoder(os.Stdout)
	if mode == "bind" { // no target: the client is the application server
		out.Encode(runBind(*proxy, *clients, *dur, *maxSetups, *size))
		return 0
	}
	dst, err := netip.ParseAddrPort(*target)
	if err != nil {
		fmt.Fprintln(os.Stderr, "client: -target:", err)
		return 2
	}
	switch mode {
	case "udp":
		out.Encode(runUDP(*proxy, dst, *assocs, *dur, *size))
	case "udpblast":
		out.Encode(runUDPBlast(*proxy, dst, *dur, *size))
	case "stream":
		out.Encode(runStreams(*proxy, dst, *streams, *perStream, *bufSize, *timeout))
	case "connrate":
		out.Encode(runConnRate(*proxy, dst, *clients, *dur, *size, *closeFirst))
	case "idle":
		steps, err := parseCounts(*counts)
		if err != nil {
			fmt.Fprintln(os.Stderr, "client: -counts:", err)
			return 2
		}
		runIdle(out, *proxy, dst, steps, *workers, *timeout)
	default:
		fmt.Fprintf(os.Stderr, "client: unknown mode %q\n", mode)
		return 2
	}
	return 0
}

// parseCounts parses "1000,9900": positive counts in rising order.
func parseCounts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 || (len(out) > 0 && n <= out[len(out)-1]) {
			return nil, fmt.Errorf("bad count %q: want positive counts in rising order", f)
		}
		out = append(out, n)
	}
	return out, nil
}

// runStreams opens all streams first, then times them from the first
// byte written until the last sink has acknowledged its last byte.
func runStreams(proxy string, dst netip.AddrPort, streams int, perStream int64, bufSize int, timeout time.Duration) streamResult {
	res := streamResult{Streams: streams}
	deadline := time.Now().Add(timeout)
	conns := make([]net.Conn, 0, streams)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range streams {
		c, err := dialPath(proxy, dst, deadline)
		if err != nil {
			res.Error = "connect: " + err.Error()
			return res
		}
		conns = append(conns, c)
	}
	var wg sync.WaitGroup
	var delivered atomic.Int64
	errs := make([]error, streams)
	start := time.Now()
	for i, c := range conns {
		wg.Go(func() {
			errs[i] = sendStream(c, perStream, bufSize, deadline)
			if errs[i] == nil {
				delivered.Add(perStream)
			}
		})
	}
	wg.Wait()
	res.Seconds = time.Since(start).Seconds()
	res.Bytes = delivered.Load()
	for _, err := range errs {
		if err != nil {
			res.Error = err.Error()
			break
		}
	}
	return res
}

// sendStream writes the length header and n bytes, then waits for the
// sink's one-byte acknowledgement.
func sendStream(c net.Conn, n int64, bufSize int, deadline time.Time) error {
	c.SetDeadline(deadline)
	var h [8]byte
	binary.BigEndian.PutUint64(h[:], uint64(n))
	if _, err := c.Write(h[:]); err != nil {
		return err
	}
	buf := make([]byte, bufSize)
	for left := n; left > 0; {
		m, err := c.Write(buf[:min(int64(len(buf)), left)])
		left -= int64(m)
		if err != nil {
			return err
		}
	}
	var ack [1]byte
	_, err := io.ReadFull(c, ack[:])
	return err
}

// runConnRate runs clients loops of connect, handshake, 1 KiB echo and
// close until dur has passed, and reports the rate and the handshake
// latency percentiles. With closeFirst the client closes as soon as it has
// the echo, instead of reading the server's end of stream first.
func runConnRate(proxy string, dst netip.AddrPort, clients int, dur time.Duration, size int, closeFirst bool) connResult {
	st := runLoad(clients, dur, 0, size, func(payload, buf []byte) (time.Duration, time.Duration, error) {
		hs, err := echoOnce(proxy, dst, payload, buf, closeFirst)
		return hs, 0, err
	})
	return connResult{
		Clients: clients, Conns: st.done, Errors: st.errs, Seconds: st.seconds,
		Rate:    float64(st.done) / st.seconds,
		Samples: len(st.lat), P50us: percentile(st.lat, 0.50), P99us: percentile(st.lat, 0.99),
		FirstError: st.firstErr,
	}
}

// loadStats is what runLoad measured.
type loadStats struct {
	done, errs int64
	seconds    float64
	lat        []time.Duration // set-up latency of every try that got that far
	rtt        []time.Duration // round trip of every try that succeeded
	firstErr   string
}

// runLoad runs clients loops of once until dur has passed or, when limit
// is above 0, limit tries have been made. A failed try is counted, the
// first error kept, and the loop pauses a millisecond before the next.
func runLoad(clients int, dur time.Duration, limit, size int, once func(payload, buf []byte) (lat, rtt time.Duration, err error)) loadStats {
	var st loadStats
	var done, errs, left atomic.Int64
	left.Store(math.MaxInt64)
	if limit > 0 {
		left.Store(int64(limit))
	}
	var firstErr sync.Once
	lat := make([][]time.Duration, clients)
	rtt := make([][]time.Duration, clients)
	start := time.Now()
	stop := start.Add(dur)
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() {
			payload := make([]byte, size)
			buf := make([]byte, size)
			for time.Now().Before(stop) && left.Add(-1) >= 0 {
				l, rt, err := once(payload, buf)
				if l > 0 {
					lat[i] = append(lat[i], l)
				}
				if err != nil {
					errs.Add(1)
					firstErr.Do(func() { st.firstErr = err.Error() })
					time.Sleep(time.Millisecond)
					continue
				}
				rtt[i] = append(rtt[i], rt)
				done.Add(1)
			}
		})
	}
	wg.Wait()
	st.seconds = time.Since(start).Seconds()
	st.done, st.errs = done.Load(), errs.Load()
	st.lat, st.rtt = slices.Concat(lat...), slices.Concat(rtt...)
	return st
}

// echoOnce makes one connection and returns the time from the start of
// the TCP connect until the proxy's success reply was read (for direct:
// until the connect completed), or 0 if that failed. Unless closeFirst, it
// waits for the server's end of stream before it closes.
func echoOnce(proxy string, dst netip.AddrPort, payload, buf []byte, closeFirst bool) (time.Duration, error) {
	t0 := time.Now()
	deadline := t0.Add(opTimeout)
	c, err := dialPath(proxy, dst, deadline)
	if err != nil {
		return 0, err
	}
	hs := time.Since(t0)
	defer c.Close()
	c.SetDeadline(deadline)
	if _, err := c.Write(payload); err != nil {
		return hs, err
	}
	if _, err := io.ReadFull(c, buf); err != nil {
		return hs, err
	}
	if closeFirst {
		return hs, nil
	}
	return hs, awaitEOF(c)
}

// awaitEOF reads until the server's end of stream, so that the server
// closes first (see serveOnce).
func awaitEOF(c net.Conn) error {
	var b [1]byte
	n, err := c.Read(b[:])
	if n > 0 {
		return errors.New("echo: more bytes than were sent")
	}
	if err == io.EOF {
		return nil
	}
	return err
}

// percentile returns the q-quantile of d (nearest rank) in microseconds.
func percentile(d []time.Duration, q float64) float64 {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	i := int(q*float64(len(d))+0.5) - 1
	i = max(0, min(i, len(d)-1))
	return float64(d[i]) / float64(time.Microsecond)
}

// runIdle opens sessions up to each count in turn and leaves them idle;
// after reporting each step it waits for a line on standard input (the
// harness has sampled the server). At the end it checks that every session
// still echoes a byte, reports that, and closes them all once standard
// input ends.
func runIdle(out *json.Encoder, proxy string, dst netip.AddrPort, counts []int, workers int, stepTimeout time.Duration) {
	in := bufio.NewReader(os.Stdin)
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for _, n := range counts {
		step := openUpTo(&conns, n, proxy, dst, workers, stepTimeout)
		out.Encode(step)
		if _, err := in.ReadString('\n'); err != nil {
			return
		}
	}
	out.Encode(verifyEcho(conns, workers))
	in.ReadString('\n') // the harness stops the backend first
}

// maxIdleErrors ends a step of opening early: a proxy that has reached
// its limit would otherwise make every worker wait out its timeout.
const maxIdleErrors = 100

// openUpTo opens sessions with workers at a time until *conns holds n, the
// step's time limit passes, or maxIdleErrors attempts have failed.
func openUpTo(conns *[]net.Conn, n int, proxy string, dst netip.AddrPort, workers int, limit time.Duration) idleStep {
	step := idleStep{Target: n}
	start := time.Now()
	end := start.Add(limit)
	var mu sync.Mutex
	var left atomic.Int64
	left.Store(int64(n - len(*conns)))
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for left.Add(-1) >= 0 {
				c, err := dialPath(proxy, dst, earlier(end, time.Now().Add(opTimeout)))
				mu.Lock()
				if err == nil {
					*conns = append(*conns, c)
					mu.Unlock()
					continue
				}
				step.Errors++
				if step.FirstError == "" {
					step.FirstError = err.Error()
				}
				stop := step.Errors >= maxIdleErrors || time.Now().After(end)
				mu.Unlock()
				left.Add(1)
				if stop {
					left.Store(-1 << 40)
					return
				}
			}
		})
	}
	wg.Wait()
	step.Open = len(*conns)
	step.Seconds = time.Since(start).Seconds()
	return step
}

// earlier returns the earlier of two times.
func earlier(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// verifyEcho sends one byte on every session and reads it back.
func verifyEcho(conns []net.Conn, workers int) verifyResult {
	var res verifyResult
	var mu sync.Mutex
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			var b [1]byte
			for {
				i := int(next.Add(1)) - 1
				if i >= len(conns) {
					return
				}
				err := echoByte(conns[i], b[:])
				mu.Lock()
				if err == nil {
					res.Verified++
				} else {
					res.Errors++
					if res.FirstError == "" {
						res.FirstError = err.Error()
					}
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return res
}

func echoByte(c net.Conn, b []byte) error {
	c.SetDeadline(time.Now().Add(opTimeout))
	b[0] = 'x'
	if _, err := c.Write(b); err != nil {
		return err
	}
	_, err := io.ReadFull(c, b)
	return err
}
