package relay

import (
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The parker holds what waits for a quiet socket without a goroutine: relay
// directions whose source is quiet, so that an idle session costs its
// sockets and a little heap, and handshakes whose client stopped before
// its request was complete, so that a stalled client costs no goroutine
// (nor its stack) either. A direction that has seen no byte for the linger
// time, or a handshake that has waited for it, registers its socket in an
// epoll set of the parker's own (level-triggered, one shot) and its
// goroutine ends; when the socket is readable (bytes, EOF or an error),
// the parker starts a fresh goroutine for it. Go's netpoller keeps its own
// registration of the same socket; the two do not meet. The parker also
// ends what is parked too long: sessions past the idle limit, handshakes
// past the handshake time limit.

// A parkee is what the parker holds. resume runs in a fresh goroutine when
// the socket is readable, or to end the parkee; overdue tells the sweep
// whether to expire it, which ends it.
type parkee interface {
	slot() *parkSlot
	resume()
	overdue(now int64, idle time.Duration) bool
	expire(p *parker)
}

// parkSlot is a parkee's registration: its socket, whose goroutine owns it
// (state), and its key in the parker.
type parkSlot struct {
	rc         syscall.RawConn
	state      atomic.Int32 // running or parked
	token      uint64       // the parker's key, once parked
	registered bool         // the socket is in the parker's epoll set
	handshake  bool         // counts in parker.handshakes while parked
}

const (
	running int32 = iota
	parked
)

type parker struct {
	epfd, wake int
	idle       time.Duration
	closed     atomic.Bool
	done       chan struct{}
	handshakes atomic.Int64 // parked handshakes, whose time limit needs the sweep

	mu     sync.Mutex
	parked map[uint64]parkee
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
	p := &parker{epfd: epfd, wake: wake, idle: idle, done: make(chan struct{}), parked: map[uint64]parkee{}}
	go p.run()
	return p
}

// park registers x's socket and reports whether x is parked; if so, the
// calling goroutine must leave x alone and end.
func (p *parker) park(x parkee) bool {
	if p.closed.Load() {
		return false
	}
	ps := x.slot()
	p.mu.Lock()
	if ps.token == 0 {
		p.next++
		ps.token = p.next
	}
	p.parked[ps.token] = x
	p.mu.Unlock()
	ps.state.Store(parked)
	if ps.handshake && p.handshakes.Add(1) == 1 {
		p.poke() // the sweep runs now: it ends handshakes past their limit
	}
	op := unix.EPOLL_CTL_ADD
	if ps.registered {
		op = unix.EPOLL_CTL_MOD
	}
	ps.registered = true // before the event can start another goroutine on x
	var err error
	// Control keeps the fd open (and its number ours) while it runs.
	cerr := ps.rc.Control(func(fd uintptr) {
		ev := unix.EpollEvent{
			Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT,
			Fd:     int32(uint32(ps.token)),
			Pad:    int32(uint32(ps.token >> 32)),
		}
		err = unix.EpollCtl(p.epfd, op, int(fd), &ev)
		switch {
		case err == unix.ENOENT && op == unix.EPOLL_CTL_MOD:
			err = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev)
		case err == unix.EEXIST && op == unix.EPOLL_CTL_ADD:
			// The socket was parked before, by another parkee: its
			// handshake, then its relay direction.
			err = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_MOD, int(fd), &ev)
		}
	})
	if cerr == nil && err == nil {
		return true
	}
	// Not parked after all: keep running, unless someone took x meanwhile
	// (they cannot have: no event came, and abort needs state == parked).
	ps.registered = false
	if ps.state.CompareAndSwap(parked, running) {
		p.take(x)
	}
	return false
}

// take forgets a parkee that is running again.
func (p *parker) take(x parkee) {
	ps := x.slot()
	p.mu.Lock()
	delete(p.parked, ps.token)
	p.mu.Unlock()
	if ps.handshake {
		p.handshakes.Add(-1)
	}
}

// unpark takes x back from the parker, for abort or to expire it; it
// reports whether x was parked (the caller must then resume it).
func (p *parker) unpark(x parkee) bool {
	ps := x.slot()
	if !ps.state.CompareAndSwap(parked, running) {
		return false
	}
	p.take(x)
	ps.rc.Control(func(fd uintptr) { unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, int(fd), nil) })
	ps.registered = false
	return true
}

// poke wakes the parker's thread, to look at its timeout again or to end.
func (p *parker) poke() {
	var one = [8]byte{1}
	unix.Write(p.wake, one[:])
}

// run waits for parked sockets to be readable and resumes their parkees;
// once a second, while there is an idle limit or a parked handshake, it
// expires what is parked past its limit.
func (p *parker) run() {
	defer close(p.done)
	events := make([]unix.EpollEvent, 256)
	lastSweep := time.Now()
	for {
		timeout := -1
		if p.idle > 0 || p.handshakes.Load() > 0 {
			timeout = 1000
		}
		n, err := unix.EpollWait(p.epfd, events, timeout)
		if p.closed.Load() {
			return
		}
		if err != nil && err != unix.EINTR {
			return
		}
		var hungUp []*conn
		for _, ev := range events[:max(n, 0)] {
			token := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			if token == 0 {
				var b [8]byte
				unix.Read(p.wake, b[:]) // a poke
				continue
			}
			p.mu.Lock()
			x := p.parked[token]
			p.mu.Unlock()
			if x == nil || !x.slot().state.CompareAndSwap(parked, running) {
				continue
			}
			p.take(x)
			if c, ok := x.(*conn); ok && ev.Events&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
				hungUp = append(hungUp, c)
				continue
			}
			go x.resume()
		}
		if hungUp != nil {
			// Stalled clients that hang up, often all at once, are ended
			// by one goroutine, not one each.
			go func() {
				for _, c := range hungUp {
					c.hungUp()
				}
			}()
		}
		if timeout > 0 && time.Since(lastSweep) >= time.Second {
			lastSweep = time.Now()
			p.sweep()
		}
	}
}

// sweep expires the parkees parked past their limit.
func (p *parker) sweep() {
	var due []parkee
	now := time.Now().UnixNano()
	p.mu.Lock()
	for _, x := range p.parked {
		if x.overdue(now, p.idle) {
			due = append(due, x)
		}
	}
	p.mu.Unlock()
	for _, x := range due {
		x.expire(p)
	}
}

// close stops the parker; what is parked stays parked (the server's
// shutdown aborts its sessions, which resumes them).
func (p *parker) close() {
	if p.closed.Swap(true) {
		return
	}
	p.poke()
	<-p.done
	unix.Close(p.epfd)
	unix.Close(p.wake)
}
