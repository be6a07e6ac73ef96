package relay

import (
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// The parker holds the relay directions whose source is quiet, so that an
// idle session costs its sockets and a little heap, and no goroutine: a
// direction that has seen no byte for the linger time registers its
// source socket in an epoll set of the parker's own (level-triggered, one
// shot) and its goroutine ends; when the socket is readable (bytes, EOF or
// an error), the parker starts a fresh goroutine for it. Go's netpoller
// keeps its own registration of the same socket; the two do not meet.
// The parker also enforces the idle limit of parked sessions.
type parker struct {
	epfd, wake int
	idle       time.Duration
	closed     atomic.Bool
	done       chan struct{}

	mu     sync.Mutex
	halves map[uint64]*half
	next   uint64
}

// newParker starts a parker; it returns nil if the system will not give
// it an epoll set (directions then wait in the netpoller, as io.Copy
// does).
func newParker(idle time.Duration) *parker {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wake, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(wake)
		return nil
	}
	p := &parker{epfd: epfd, wake: wake, idle: idle, done: make(chan struct{}), halves: map[uint64]*half{}}
	go p.run()
	return p
}

// park registers h's source and reports whether h is parked; if so, the
// calling goroutine must leave h alone and end.
func (p *parker) park(h *half) bool {
	if p.closed.Load() {
		return false
	}
	p.mu.Lock()
	if h.token == 0 {
		p.next++
		h.token = p.next
	}
	p.halves[h.token] = h
	p.mu.Unlock()
	h.state.Store(parked)
	h.st.SetReadDeadline(time.Time{})
	op := unix.EPOLL_CTL_ADD
	if h.registered {
		op = unix.EPOLL_CTL_MOD
	}
	h.registered = true // before the event can start another goroutine on h
	var err error
	// Control keeps the fd open (and its number ours) while it runs.
	cerr := h.srcRC.Control(func(fd uintptr) {
		ev := unix.EpollEvent{
			Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT,
			Fd:     int32(uint32(h.token)),
			Pad:    int32(uint32(h.token >> 32)),
		}
		err = unix.EpollCtl(p.epfd, op, int(fd), &ev)
		if err == unix.ENOENT && op == unix.EPOLL_CTL_MOD {
			err = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev)
		}
	})
	if cerr == nil && err == nil {
		return true
	}
	// Not parked after all: keep running, unless someone took h meanwhile
	// (they cannot have: no event came, and abort needs state == parked).
	h.registered = false
	if h.state.CompareAndSwap(parked, running) {
		p.mu.Lock()
		delete(p.halves, h.token)
		p.mu.Unlock()
	}
	return false
}

// unpark takes h back from the parker, for abort; it reports whether h was
// parked (the caller must then run it).
func (p *parker) unpark(h *half) bool {
	if !h.state.CompareAndSwap(parked, running) {
		return false
	}
	p.mu.Lock()
	delete(p.halves, h.token)
	p.mu.Unlock()
	h.srcRC.Control(func(fd uintptr) { unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, int(fd), nil) })
	h.registered = false
	return true
}

// run waits for parked sources to be readable and resumes their halves;
// once a second, with an idle limit, it ends parked sessions idle for
// longer.
func (p *parker) run() {
	defer close(p.done)
	events := make([]unix.EpollEvent, 256)
	timeout := -1
	if p.idle > 0 {
		timeout = 1000
	}
	lastSweep := time.Now()
	for {
		n, err := unix.EpollWait(p.epfd, events, timeout)
		if p.closed.Load() {
			return
		}
		if err != nil && err != unix.EINTR {
			return
		}
		for _, ev := range events[:max(n, 0)] {
			token := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			if token == 0 {
				continue // the wake-up eventfd
			}
			p.mu.Lock()
			h := p.halves[token]
			delete(p.halves, token)
			p.mu.Unlock()
			if h != nil && h.state.CompareAndSwap(parked, running) {
				go h.run()
			}
		}
		if p.idle > 0 && time.Since(lastSweep) >= time.Second {
			lastSweep = time.Now()
			p.sweep()
		}
	}
}

// sweep ends the parked sessions that moved nothing for the idle limit.
func (p *parker) sweep() {
	var idle []*conn
	now := time.Now().UnixNano()
	p.mu.Lock()
	for _, h := range p.halves {
		if now-h.c.act.last.Load() > int64(p.idle) {
			idle = append(idle, h.c)
		}
	}
	p.mu.Unlock()
	for _, c := range idle {
		c.idleOut()
	}
}

// close stops the parker; parked halves stay parked (their sessions are
// aborted by the server's shutdown, which resumes them).
func (p *parker) close() {
	if p.closed.Swap(true) {
		return
	}
	var one = [8]byte{1}
	unix.Write(p.wake, one[:])
	<-p.done
	unix.Close(p.epfd)
	unix.Close(p.wake)
}
