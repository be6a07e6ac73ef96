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

// close empties the pool.
func (pp *pipePool) close() {
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

// copyHalf relays src to dst until src reaches EOF, then half-closes dst.
// It splices when both ends are TCP sockets and falls back to a user-space
// copy otherwise (or when no pipe can be had). With idle > 0, it gives up
// when neither direction of the session (act) has moved a byte for idle.
func copyHalf(pool *pipePool, dst, src net.Conn, idle time.Duration, act *activity) (int64, error) {
	var n int64
	var err error
	st, sok := src.(*net.TCPConn)
	dt, dok := dst.(*net.TCPConn)
	if sok && dok {
		n, err = spliceCopy(pool, dt, st, idle, act)
	} else {
		n, err = plainCopy(dst, src, idle, act)
	}
	if err == nil {
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite() // propagate the FIN; the other direction goes on
		}
	}
	return n, err
}

// errIdle ends a session that moved nothing for the idle limit.
var errIdle = errors.New("idle timeout")

// waitErr decides what a deadline during a wait means: with an idle limit,
// the session is idle only if the other direction was quiet too.
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

func spliceCopy(pool *pipePool, dst, src *net.TCPConn, idle time.Duration, act *activity) (int64, error) {
	srcRC, err := src.SyscallConn()
	if err != nil {
		return 0, err
	}
	dstRC, err := dst.SyscallConn()
	if err != nil {
		return 0, err
	}
	if idle > 0 {
		src.SetReadDeadline(time.Now().Add(idle))
	}
	var written int64
	var p *pipe
	var in int64
	var serr, perr error
	// readF splices what src has into a pipe. It takes the pipe only once
	// src is readable and gives it back at EAGAIN, before waiting.
	readF := func(fd uintptr) bool {
		if p == nil {
			if p, perr = pool.get(); perr != nil {
				return true
			}
		}
		for {
			in, serr = unix.Splice(int(fd), nil, p.w, nil, p.size, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			if serr != unix.EINTR {
				break
			}
		}
		if serr == unix.EAGAIN {
			pool.put(p)
			p = nil
			return false
		}
		return true
	}
	var out int64
	writeF := func(fd uintptr) bool {
		for {
			out, serr = unix.Splice(p.r, nil, int(fd), nil, p.n, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			if serr != unix.EINTR {
				break
			}
		}
		return serr != unix.EAGAIN
	}
	for {
		if err := srcRC.Read(readF); err != nil {
			if p != nil {
				pool.put(p)
				p = nil
			}
			if wait, err := idleExpired(err, src, idle, act); wait {
				continue
			} else {
				return written, err
			}
		}
		if perr != nil {
			// No pipe (EMFILE or the like): copy through user space.
			n, err := plainCopy(dst, src, idle, act)
			return written + n, err
		}
		if serr != nil {
			pool.put(p)
			p = nil
			return written, os.NewSyscallError("splice", serr)
		}
		if in == 0 {
			pool.put(p)
			p = nil
			return written, nil // EOF
		}
		p.n = int(in)
		for p.n > 0 {
			if err := dstRC.Write(writeF); err != nil {
				pool.put(p) // not empty: closed, not pooled
				p = nil
				return written, err
			}
			if serr != nil {
				pool.put(p)
				p = nil
				return written, os.NewSyscallError("splice", serr)
			}
			p.n -= int(out)
			written += out
		}
		if idle > 0 {
			act.touch()
			src.SetReadDeadline(time.Now().Add(idle))
		}
		// Keep the pipe: more data is likely; readF gives it back at
		// EAGAIN.
	}
}

// plainCopy is the user-space relay, for non-TCP ends and when no pipe can
// be had. Its buffer is taken only while bytes are in flight, too.
func plainCopy(dst, src net.Conn, idle time.Duration, act *activity) (int64, error) {
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
