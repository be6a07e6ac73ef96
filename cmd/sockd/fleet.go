package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	proxyproto "github.com/pires/go-proxyproto"

	"github.com/sockd-ng/sockd/metrics"
)

// Running as a fleet behind a load balancer: the PROXY protocol on the
// listeners (-proxy-protocol-from), and Prometheus metrics with a health
// check (-metrics-listen).

// proxyPolicy is the PROXY protocol policy of -proxy-protocol-from:
// connections from the listed sources must start with a header (v1 or
// v2), whose source becomes the client; any other connection is taken as
// it is, header or not (a header from an unlisted source then fails its
// SOCKS handshake). nil when the flag is not given.
func (o *options) proxyPolicy() (proxyproto.ConnPolicyFunc, error) {
	if o.proxyFrom == "" {
		return nil, nil
	}
	var ranges []string
	for _, r := range strings.Split(o.proxyFrom, ",") {
		if r = strings.TrimSpace(r); r != "" {
			ranges = append(ranges, r)
		}
	}
	p, err := proxyproto.PolicyFromRanges(ranges, proxyproto.REQUIRE, proxyproto.SKIP)
	if err != nil {
		return nil, fmt.Errorf("-proxy-protocol-from: %w", err)
	}
	return p, nil
}

// proxyListener wraps ln so that connections from the balancers read
// their PROXY protocol header, in the session's goroutine (relay asks for
// the client's address first), within timeout.
func proxyListener(ln net.Listener, p proxyproto.ConnPolicyFunc, timeout time.Duration) net.Listener {
	return &proxyproto.Listener{Listener: ln, ConnPolicy: p, ReadHeaderTimeout: timeout}
}

// proxyConn is proxyListener for one connection handed over by inetd or
// systemd (Accept=yes).
func proxyConn(c net.Conn, p proxyproto.ConnPolicyFunc, timeout time.Duration) net.Conn {
	pol, err := p(proxyproto.ConnPolicyOptions{Upstream: c.RemoteAddr(), Downstream: c.LocalAddr()})
	if err != nil || pol == proxyproto.SKIP {
		return c
	}
	return proxyproto.NewConn(c, proxyproto.WithPolicy(pol), proxyproto.SetReadHeaderTimeout(timeout))
}

// serveMetrics serves /metrics and /healthz on ln until ctx is done.
func serveMetrics(ctx context.Context, ln net.Listener, m *metrics.Metrics, log *slog.Logger) {
	srv := &http.Server{Handler: m.Handler(), ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	log.Info("metrics listening", "addr", ln.Addr().String())
	if err := srv.Serve(ln); err != nil && err != http.ErrServerClosed {
		log.Error("metrics listener died", "err", err)
	}
}
