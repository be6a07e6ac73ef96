package main

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"time"

	"github.com/sockd-ng/sockd/relay"
)

// After a burst of new sessions the Go runtime keeps the memory the burst
// used — the stacks of finished handshake and relay goroutines, the heap
// it grew — until its next collection, which an idle server may not run
// for two minutes, and it gives the pages back to the system slowly after
// that. The trimmer gives them back as soon as the server goes quiet after
// a burst, and closes the pipes the relay kept for reuse, so that a server
// holding many idle sessions costs what the sessions hold. A busy server
// never trims: its collections free the same memory as it goes.
type trimmer struct {
	accepted func() uint64 // connections accepted so far
	sessions func() int    // sessions open now
	last     uint64        // accepted at the previous check
	trimmed  uint64        // accepted at the last trim
	peak     int           // most sessions seen open since the last trim
}

const (
	// trimEvery is how often the trimmer looks; a burst is over when a
	// whole period passes without a new connection.
	trimEvery = 500 * time.Millisecond
	// trimBurst is how many connections since the last trim, or how many
	// sessions ended since then, make a burst worth a collection.
	trimBurst = 256
)

// due reports whether the server has gone quiet after a burst — of new
// sessions, or of sessions ending, such as many stalled handshakes timing
// out together — and counts a trim if so.
func (t *trimmer) due() bool {
	n, open := t.accepted(), t.sessions()
	quiet := n == t.last
	t.last = n
	t.peak = max(t.peak, open)
	if !quiet || n-t.trimmed < trimBurst && t.peak-open < trimBurst {
		return false
	}
	t.trimmed, t.peak = n, open
	return true
}

// trim closes srv's idle pipes (nil: none), collects garbage and returns
// all the memory it can to the system. It reports the bytes the process
// had mapped before and after.
func trim(srv *relay.Server) (before, after uint64) {
	if srv != nil {
		srv.Trim()
	}
	before = mappedBytes()
	// Pooled objects outlive one collection (sync.Pool's victim cache):
	// the first collection moves them there, FreeOSMemory's frees them
	// and returns their pages.
	runtime.GC()
	debug.FreeOSMemory()
	return before, mappedBytes()
}

// mappedBytes is the memory the Go runtime holds from the system and has
// not returned to it.
func mappedBytes() uint64 {
	s := []metrics.Sample{
		{Name: "/memory/classes/total:bytes"},
		{Name: "/memory/classes/heap/released:bytes"},
	}
	metrics.Read(s)
	return s[0].Value.Uint64() - s[1].Value.Uint64()
}
