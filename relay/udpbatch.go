package relay

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A busy association moves datagrams in batches: recvmmsg(2) takes up to
// batchSize of them from the client's socket in one call, and sendmmsg(2)
// sends those for one outbound socket in one call. The buffers come from a
// pool when the socket is readable and go back before it waits: an idle
// association holds none.

const batchSize = 16

// mmsghdr is struct mmsghdr.
type mmsghdr struct {
	hdr unix.Msghdr
	n   uint32
	_   [4]byte
}

// udpBatch is what one recvmmsg or sendmmsg call needs.
type udpBatch struct {
	hdrs  [batchSize]mmsghdr
	iovs  [batchSize]unix.Iovec
	names [batchSize]unix.RawSockaddrAny
	bufs  [batchSize][]byte // maxDatagram each, for reading; nil for sending
}

var readBatches = sync.Pool{New: func() any {
	b := new(udpBatch)
	for i := range b.bufs {
		b.bufs[i] = make([]byte, maxDatagram)
	}
	return b
}}

var sendBatches = sync.Pool{New: func() any { return new(udpBatch) }}

// recvmmsg reads up to batchSize datagrams from fd without waiting; it
// returns how many, or EAGAIN.
func (b *udpBatch) recvmmsg(fd uintptr) (int, syscall.Errno) {
	for i := range b.hdrs {
		b.iovs[i].Base = &b.bufs[i][0]
		b.iovs[i].SetLen(len(b.bufs[i]))
		h := &b.hdrs[i].hdr
		h.Name = (*byte)(unsafe.Pointer(&b.names[i]))
		h.Namelen = uint32(unsafe.Sizeof(b.names[i]))
		h.Iov = &b.iovs[i]
		h.SetIovlen(1)
		h.Control, h.Controllen, h.Flags = nil, 0, 0
	}
	for {
		n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&b.hdrs[0])), batchSize, unix.MSG_DONTWAIT, 0, 0)
		if errno != unix.EINTR {
			if errno != 0 {
				return 0, errno
			}
			return int(n), 0
		}
	}
}

// datagram returns the i-th datagram read and its source.
func (b *udpBatch) datagram(i int) ([]byte, netip.AddrPort) {
	return b.bufs[i][:b.hdrs[i].n], sockaddrAddrPort(&b.names[i])
}

// add makes payload the n-th datagram to send, to dst on a socket of
// family inet6 or IPv4; it reports false when that socket cannot reach
// dst.
func (b *udpBatch) add(n int, payload []byte, dst netip.AddrPort, inet6 bool) bool {
	h := &b.hdrs[n].hdr
	if h.Namelen = putSockaddr(&b.names[n], dst, inet6); h.Namelen == 0 {
		return false
	}
	if len(payload) > 0 {
		b.iovs[n].Base = &payload[0]
	} else {
		b.iovs[n].Base = nil
	}
	b.iovs[n].SetLen(len(payload))
	h.Name = (*byte)(unsafe.Pointer(&b.names[n]))
	h.Iov = &b.iovs[n]
	h.SetIovlen(1)
	h.Control, h.Controllen, h.Flags = nil, 0, 0
	return true
}

// sendmmsg sends the queued datagrams [from:to) on fd without waiting; it
// returns how many went, or EAGAIN, or the error of the first that did not.
func (b *udpBatch) sendmmsg(fd uintptr, from, to int) (int, syscall.Errno) {
	for {
		n, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&b.hdrs[from])), uintptr(to-from), unix.MSG_DONTWAIT, 0, 0)
		if errno != unix.EINTR {
			if errno != 0 {
				return 0, errno
			}
			return int(n), 0
		}
	}
}

// sockaddrAddrPort decodes a socket address, IPv4-mapped addresses
// unmapped; the zero AddrPort for another family.
func sockaddrAddrPort(sa *unix.RawSockaddrAny) netip.AddrPort {
	switch sa.Addr.Family {
	case unix.AF_INET:
		in := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(in.Addr), port(in.Port))
	case unix.AF_INET6:
		in := (*unix.RawSockaddrInet6)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom16(in.Addr).Unmap(), port(in.Port))
	}
	return netip.AddrPort{}
}

// port reads a port as the kernel stores it: in network byte order.
func port(p uint16) uint16 {
	var b [2]byte
	*(*uint16)(unsafe.Pointer(&b[0])) = p
	return binary.BigEndian.Uint16(b[:])
}

// putSockaddr encodes a for a socket of family inet6 (IPv4 destinations
// IPv4-mapped there) or IPv4, and returns its length; 0 when an IPv4
// socket cannot reach a.
func putSockaddr(sa *unix.RawSockaddrAny, a netip.AddrPort, inet6 bool) uint32 {
	if !inet6 {
		if !a.Addr().Unmap().Is4() {
			return 0
		}
		in := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		*in = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: a.Addr().Unmap().As4()}
		binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&in.Port))[:], a.Port())
		return unix.SizeofSockaddrInet4
	}
	in := (*unix.RawSockaddrInet6)(unsafe.Pointer(sa))
	*in = unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: a.Addr().As16()}
	binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&in.Port))[:], a.Port())
	return unix.SizeofSockaddrInet6
}
