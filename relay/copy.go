package relay

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The relay moves bytes socket to pipe to socket with splice(2), so they
// never enter user space. Unlike io.Copy between *net.TCPConn (which also
// splices), it holds a pipe only while bytes are in flight: it waits for
// readability without one, takes a pipe from a small pool, drains it into
// the destination and gives it back. An idle session therefore costs its two
// sockets and nothing else, where io.Copy pins one pipe (two fds) per
// direction for the whole session.

// pipeSize is the capacity asked of every pipe (F_SETPIPE_SZ): the largest
// step of one splice. If the kernel refuses (the per-user pipe page limit),
// the pipe keeps its default of 64 KiB.
const pipeSize = 1 << 20

type pipe struct {
	r, w int
	size int // capacity
	n    int // bytes in the pipe
}

// pipePool keeps a few idle pipes for reuse; extra ones are closed when
// given back, so the pool never holds more than max pipes (2*max fds).
// Safe for concurrent use.
type pipePool struct {
	mu   sync.Mutex
	free []*pipe
	max  int
}

func (pp *pipePool) get() (*pipe, error) {
	pp.mu.Lock()
	if n := len(pp.free); n > 0 {
		p := pp.free[n-1]
		pp.free = pp.free[:n-1]
		pp.mu.Unlock()
		return p, nil
	}
	pp.mu.Unlock()
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, os.NewSyscallError("pipe2", err)
	}
	p := &pipe{r: fds[0], w: fds[1], size: 64 << 10}
	if n, err := unix.FcntlInt(uintptr(p.w), unix.F_SETPIPE_SZ, pipeSize); err == nil {
		p.size = n
	}
	return p, nil
}

func (pp *pipePool) put(p *pipe) {
	if p.n == 0 {
		pp.mu.Lock()
		if len(pp.free) < pp.max {
			pp.free = append(pp.free, p)
			pp.mu.Unlock()
			return
		}
		pp.mu.Unlock()
	}
	unix.Close(p.r)
	unix.Close(p.w)
}

// drain closes the pipes in the pool; get makes new ones as needed.
func (pp *pipePool) drain() {
	pp.mu.Lock()
	free := pp.free
	pp.free = nil
	pp.mu.Unlock()
	for _, p := range free {
		unix.Close(p.r)
		unix.Close(p.w)
	}
}

// copyBufPool holds the buffers of the user-space fallback copy.
var copyBufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// activity is the time of the last byte relayed in either direction of a
// session, for the idle limit.
type activity struct{ last atomic.Int64 }

func (a *activity) touch() { a.last.Store(time.Now().UnixNano()) }

// linger is how long a direction waits for bytes in the netpoller before
// it parks (park.go): busy and short sessions never park; idle ones hold
// no goroutine.
const linger = 250 * time.Millisecond

// errIdle ends a session that moved nothing for the idle limit.
var errIdle = errors.New("idle timeout")

// idleExpired decides what a deadline during a wait means: with an idle
// limit, the session is idle only if the other direction was quiet too.
// (Used when directions cannot park; parked ones are swept by the parker.)
func idleExpired(err error, src net.Conn, idle time.Duration, act *activity) (bool, error) {
	if idle <= 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		return false, err
	}
	last := time.Unix(0, act.last.Load())
	if rest := time.Until(last.Add(idle)); rest > 0 {
		src.SetReadDeadline(time.Now().Add(rest))
		return true, nil // the other direction was busy: wait on
	}
	return false, errIdle
}

// half is one direction of a session's relay: src to dst. It runs in a
// goroutine while bytes flow, and parks (no goroutine) while src is quiet;
// a fresh goroutine resumes it. Its fields belong to whichever goroutine
// runs it; state tells the parker and abort who that is.
type half struct {
	c        *conn
	dst, src net.Conn
	n        int64 // bytes moved
	err      *error
	count    *int64         // the session's bytes this way, added to at the end
	total    *atomic.Uint64 // the server's, added to as they go

	st, dt     *net.TCPConn // both set when the halves can splice
	dstRC      syscall.RawConn
	p          *pipe
	in, out    int64
	serr, perr error
	readF      func(fd uintptr) bool
	writeF     func(fd uintptr) bool

	ps parkSlot // src, while parked
}

// A half is a parkee: it resumes by running on, and expires with its
// session's idle limit.
func (h *half) slot() *parkSlot { return &h.ps }
func (h *half) resume()         { h.run() }
func (h *half) overdue(now int64, idle time.Duration) bool {
	return idle > 0 && now-h.c.act.last.Load() > int64(idle)
}
func (h *half) expire(*parker) { h.c.idleOut() }

func newHalf(c *conn, dst, src net.Conn, count *int64, total *atomic.Uint64, errp *error) *half {
	h := &half{c: c, dst: dst, src: src, count: count, total: total, err: errp}
	st, sok := src.(*net.TCPConn)
	dt, dok := dst.(*net.TCPConn)
	if !sok || !dok {
		return h
	}
	var err1, err2 error
	h.ps.rc, err1 = st.SyscallConn()
	h.dstRC, err2 = dt.SyscallConn()
	if err1 != nil || err2 != nil {
		return h
	}
	h.st, h.dt = st, dt
	pool := &c.s.pipes
	// readF splices what src has into a pipe. It takes the pipe only once
	// src is readable and gives it back at EAGAIN, before waiting.
	h.readF = func(fd uintptr) bool {
		if h.p == nil {
			if h.p, h.perr = pool.get(); h.perr != nil {
				return true
			}
		}
		for {
			h.in, h.serr = unix.Splice(int(fd), nil, h.p.w, nil, h.p.size, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			if h.serr != unix.EINTR {
				break
			}
		}
		if h.serr == unix.EAGAIN {
			pool.put(h.p)
			h.p = nil
			return false
		}
		return true
	}
	h.writeF = func(fd uintptr) bool {
		for {
			h.out, h.serr = unix.Splice(h.p.r, nil, int(fd), nil, h.p.n, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			if h.serr != unix.EINTR {
				break
			}
		}
		return h.serr != unix.EAGAIN
	}
	return h
}

// run relays until src reaches EOF (then it half-closes dst), an error, or
// a park; it is the body of the half's goroutine.
func (h *half) run() {
	if h.st == nil {
		n, err := plainCopy(h.dst, h.src, h.c.s.IdleTimeout, &h.c.act, h.total)
		h.n += n
		h.finish(err)
		return
	}
	pk := h.c.s.parker()
	idle := h.c.s.IdleTimeout
	pool := &h.c.s.pipes
	// With a parker, the read deadline is the linger time after the last
	// byte, re-armed only when less than half of it is left: one timer
	// change per half linger time of traffic, not one per read.
	var last, armed time.Time
	if pk != nil {
		last = time.Now()
	} else {
		h.c.keepAlive() // it will never park
	}
	for {
		switch {
		case pk != nil:
			if armed.Sub(last) < linger/2 {
				armed = last.Add(linger)
				h.st.SetReadDeadline(armed)
			}
		case idle > 0:
			h.st.SetReadDeadline(time.Now().Add(idle))
		}
		if err := h.ps.rc.Read(h.readF); err != nil {
			if h.p != nil {
				pool.put(h.p)
				h.p = nil
			}
			if pk != nil && errors.Is(err, os.ErrDeadlineExceeded) {
				if time.Since(last) < linger {
					armed = time.Time{} // bytes came meanwhile: wait on
					continue
				}
				h.c.keepAlive()
				if pk.park(h) {
					return // a fresh goroutine takes over when src has bytes
				}
				last, armed = time.Now(), time.Time{}
				continue
			}
			if wait, err := idleExpired(err, h.st, idle, &h.c.act); wait {
				continue
			} else {
				h.finish(err)
				return
			}
		}
		if h.perr != nil {
			// No pipe (EMFILE or the like): copy through user space.
			h.st.SetReadDeadline(time.Time{})
			n, err := plainCopy(h.dst, h.src, idle, &h.c.act, h.total)
			h.n += n
			h.finish(err)
			return
		}
		if h.serr != nil || h.in == 0 {
			pool.put(h.p)
			h.p = nil
			var err error
			if h.serr != nil {
				err = os.NewSyscallError("splice", h.serr)
			}
			h.finish(err) // in == 0: EOF
			return
		}
		h.p.n = int(h.in)
		for h.p.n > 0 {
			err := h.dstRC.Write(h.writeF)
			if err == nil && h.serr != nil {
				err = os.NewSyscallError("splice", h.serr)
			}
			if err != nil {
				pool.put(h.p) // not empty: closed, not pooled
				h.p = nil
				h.finish(err)
				return
			}
			h.p.n -= int(h.out)
			h.n += h.out
			h.total.Add(uint64(h.out))
		}
		if idle > 0 {
			h.c.act.touch()
		}
		if pk != nil {
			last = time.Now()
		}
		// Keep the pipe: more data is likely; readF gives it back at
		// EAGAIN.
	}
}

// finish ends the half: at EOF it passes the FIN on, unless the other
// direction is over already (then closing both says it); on error it ends
// the whole session. The last half out ends the session.
func (h *half) finish(err error) {
	*h.count += h.n
	*h.err = err
	c := h.c
	if err != nil {
		c.abort()
	} else if c.running.Load() > 1 {
		if cw, ok := h.dst.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
	}
	if c.running.Add(-1) > 0 {
		return
	}
	c.endRelay()
}

// plainCopy is the user-space relay, for non-TCP ends and when no pipe can
// be had. Its buffer is taken only while bytes are in flight, too.
func plainCopy(dst, src net.Conn, idle time.Duration, act *activity, total *atomic.Uint64) (int64, error) {
	var written int64
	bp := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(bp)
	buf := *bp
	for {
		if idle > 0 {
			src.SetReadDeadline(time.Now().Add(idle))
		}
		nr, rerr := src.Read(buf)
		if nr > 0 {
			nw, werr := dst.Write(buf[:nr])
			written += int64(nw)
			total.Add(uint64(nw))
			if werr != nil {
				return written, werr
			}
			if idle > 0 {
				act.touch()
			}
		}
		if rerr == io.EOF {
			return written, nil
		}
		if rerr != nil {
			if wait, err := idleExpired(rerr, src, idle, act); wait {
				continue
			} else {
				return written, err
			}
		}
	}
}

// isClosedConn reports errors that only say the other direction closed the
// session already.
func isClosedConn(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET)
}
