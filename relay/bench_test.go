package relay_test

import (
	"io"
	"net"
	"testing"

	"github.com/sockd-ng/sockd/relay/relaytest"
)

// BenchmarkSession is one SOCKS5 CONNECT session on loopback: connect,
// greeting, request, 1 KiB each way through an echo server that closes
// after echoing, close. Its allocations are the server's and the client's
// together; its time includes both ends and the echo server.
func BenchmarkSession(b *testing.B) {
	echo := relaytest.Serve(b, func(c net.Conn) {
		buf := make([]byte, 1024)
		io.ReadFull(c, buf)
		c.Write(buf)
		c.Close()
	})
	srv := relaytest.NewServer(b, loopback)
	req := append([]byte{5, 1, 0}, socks5Connect(echo)...)
	payload := make([]byte, 1024)
	buf := make([]byte, 1024)
	b.ReportAllocs()
	for b.Loop() {
		c, err := net.Dial("tcp", srv.Addr)
		if err != nil {
			b.Fatal(err)
		}
		c.Write(req)
		if _, err := io.ReadFull(c, buf[:12]); err != nil || buf[3] != 0 {
			b.Fatalf("reply %v %v", buf[:12], err)
		}
		c.Write(payload)
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, c)
		c.Close()
	}
}
