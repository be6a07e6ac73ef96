// Package metrics exports what a sockd server does to Prometheus, with
// github.com/prometheus/client_golang: it implements relay.Observer, reads
// the server's live counters when scraped, and serves /metrics and
// /healthz. cmd/sockd wires it in; relay and policy never import it.
//
// Counting costs a session a few atomic additions: sessions, rule matches,
// refusals and the histograms are counted once, when a session ends, from
// its relay.Record, through counters resolved ahead of time; bytes and
// active sessions are read from the server only when Prometheus scrapes.
package metrics

import (
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sockd-ng/sockd/policy"
	"github.com/sockd-ng/sockd/relay"
)

// Source is what is read from the server when Prometheus scrapes:
// *relay.Server satisfies it.
type Source interface {
	Sessions() int
	Bytes() (up, down uint64)
}

// Metrics holds sockd's collectors. Its methods are safe for concurrent
// use. It implements relay.Observer.
type Metrics struct {
	reg *prometheus.Registry

	sessions   *prometheus.CounterVec
	sessionIdx [numProtos][numCmds][numActions]atomic.Pointer[prometheus.Counter]
	ruleVec    *prometheus.CounterVec
	rules      atomic.Pointer[map[string]prometheus.Counter]
	refusals   [relay.NumRefusals]prometheus.Counter
	handshake  prometheus.Histogram
	connect    prometheus.Histogram
	dns        prometheus.Histogram
	ident      prometheus.Histogram
	datagrams  [2]prometheus.Counter // up, down
	dropped    [relay.NumDropReasons]prometheus.Counter
	upUp       *prometheus.GaugeVec
	upFailures *prometheus.CounterVec
	reloads    *prometheus.CounterVec
	lastOK     prometheus.Gauge
	lastOKTime prometheus.Gauge

	serving atomic.Bool
	mu      sync.Mutex // creating session counters
}

const (
	numProtos  = 5 // socks4, socks4a, socks5, unknown, none
	numCmds    = 4 // connect, bind, udp, none
	numActions = 3 // permit, deny, none
)

// latency buckets, in seconds: from half a millisecond (loopback) to the
// time limits of a slow identd or next hop.
var buckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

// New returns the metrics of a server, with Go's runtime and the process's
// collectors, and the build's version as sockd_build_info.
func New(src Source, version string) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	}
	histogram := func(name, help string) prometheus.Histogram {
		return prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets})
	}
	m.sessions = counter("sockd_sessions_total", "Sessions ended, by protocol, command and decision.", "proto", "command", "action")
	m.ruleVec = counter("sockd_rule_matches_total", "Sessions decided, by the rule that decided (FILE:LINE of sockd.conf or the routing file, or default); reset when the rules change.", "rule")
	refusals := counter("sockd_refusals_total", "Requests and connections refused, by reason.", "reason")
	for r := relay.Refusal(1); r < relay.NumRefusals; r++ {
		m.refusals[r] = refusals.WithLabelValues(r.String())
	}
	m.handshake = histogram("sockd_handshake_duration_seconds", "Time from accept until the request was read.")
	m.connect = histogram("sockd_connect_duration_seconds", "Time the outbound connection took, through the next hops if any.")
	m.dns = histogram("sockd_dns_duration_seconds", "Time each DNS lookup took.")
	m.ident = histogram("sockd_ident_duration_seconds", "Time each identd (RFC 1413) query took.")
	dgrams := counter("sockd_udp_datagrams_total", "UDP datagrams relayed, by direction.", "direction")
	m.datagrams = [2]prometheus.Counter{dgrams.WithLabelValues("up"), dgrams.WithLabelValues("down")}
	dropped := counter("sockd_udp_dropped_total", "UDP datagrams dropped, by reason.", "reason")
	for r := relay.DropReason(0); r < relay.NumDropReasons; r++ {
		m.dropped[r] = dropped.WithLabelValues(r.String())
	}
	m.upUp = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "sockd_upstream_up",
		Help: "Whether the last attempt to reach a chain of next hops worked (1) or failed (0)."}, []string{"hop"})
	m.upFailures = counter("sockd_upstream_failures_total", "Failed attempts to reach a chain of next hops.", "hop")
	m.reloads = counter("sockd_config_reloads_total", "Reloads of the configuration, by result.", "result")
	m.reloads.WithLabelValues("success")
	m.reloads.WithLabelValues("failure")
	m.lastOK = prometheus.NewGauge(prometheus.GaugeOpts{Name: "sockd_config_last_reload_successful",
		Help: "Whether the last reload of the configuration succeeded (1) or was rejected (0)."})
	m.lastOKTime = prometheus.NewGauge(prometheus.GaugeOpts{Name: "sockd_config_last_reload_success_timestamp_seconds",
		Help: "When the configuration in force was loaded, in seconds since the epoch."})
	active := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sockd_sessions_active",
		Help: "Sessions open now, handshakes included."}, func() float64 { return float64(src.Sessions()) })
	bytes := func(dir string, i int) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "sockd_bytes_total",
			Help: "Bytes relayed (TCP and UDP payloads), up from clients or down to them.", ConstLabels: prometheus.Labels{"direction": dir}},
			func() float64 { up, down := src.Bytes(); return float64([2]uint64{up, down}[i]) })
	}
	info := prometheus.NewGauge(prometheus.GaugeOpts{Name: "sockd_build_info", Help: "The sockd version, as a label.",
		ConstLabels: prometheus.Labels{"version": version}})
	info.Set(1)
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.sessions, m.ruleVec, refusals, m.handshake, m.connect, m.dns, m.ident, dgrams, dropped,
		m.upUp, m.upFailures, m.reloads, m.lastOK, m.lastOKTime, active, bytes("up", 0), bytes("down", 1), info)
	return m
}

// Loaded sets the rules counted per match (one series each, from zero:
// FILE:LINE names another rule once a file changes) and records a
// configuration put in force at t.
func (m *Metrics) Loaded(rules []string, t time.Time) {
	cs := make(map[string]prometheus.Counter, len(rules)+1)
	m.ruleVec.Reset()
	for _, r := range rules {
		cs[r] = m.ruleVec.WithLabelValues(r)
	}
	cs["default"] = m.ruleVec.WithLabelValues("default")
	m.rules.Store(&cs)
	m.lastOK.Set(1)
	m.lastOKTime.Set(float64(t.UnixNano()) / 1e9)
}

// Reloaded counts a reload: applied (after Loaded) or rejected.
func (m *Metrics) Reloaded(ok bool) {
	if ok {
		m.reloads.WithLabelValues("success").Inc()
		return
	}
	m.reloads.WithLabelValues("failure").Inc()
	m.lastOK.Set(0)
}

// SetServing says whether the server takes new clients: /healthz answers
// 503 until it is first told so, and whenever it does not (draining after
// SIGTERM, or no listener up).
func (m *Metrics) SetServing(ok bool) { m.serving.Store(ok) }

// Handler serves /metrics (the Prometheus text format) and /healthz.
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !m.serving.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte("not serving\n"))
			return
		}
		w.Write([]byte("ok\n"))
	})
	return mux
}

// SessionEnded counts a session (relay.Observer).
func (m *Metrics) SessionEnded(r *relay.Record) {
	m.sessionCounter(r).Inc()
	if rules := m.rules.Load(); rules != nil && r.Action != "" {
		rule := r.Rule
		if rule == "" {
			rule = "default"
		}
		if c, ok := (*rules)[rule]; ok {
			c.Inc()
		}
	}
	if r.Refusal != relay.NotRefused && r.Refusal < relay.NumRefusals {
		m.refusals[r.Refusal].Inc()
	}
	if r.Cmd != 0 {
		m.handshake.Observe(r.Handshake.Seconds())
	}
	if r.Connect > 0 {
		m.connect.Observe(r.Connect.Seconds())
	}
	if r.Ident != "" {
		m.ident.Observe(r.IdentTime.Seconds())
	}
}

// sessionCounter returns the counter of r's labels, made on first use.
func (m *Metrics) sessionCounter(r *relay.Record) prometheus.Counter {
	p, c, a := protoIndex(r.Proto), cmdIndex(r.Cmd), actionIndex(r.Action)
	slot := &m.sessionIdx[p][c][a]
	if pc := slot.Load(); pc != nil {
		return *pc
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if pc := slot.Load(); pc != nil {
		return *pc
	}
	ctr := m.sessions.WithLabelValues(
		[numProtos]string{"socks4", "socks4a", "socks5", "unknown", "none"}[p],
		[numCmds]string{"connect", "bind", "udp", "none"}[c],
		[numActions]string{"permit", "deny", "none"}[a])
	slot.Store(&ctr)
	return ctr
}

func protoIndex(p string) int {
	switch p {
	case "socks4":
		return 0
	case "socks4a":
		return 1
	case "socks5":
		return 2
	case "unknown":
		return 3
	}
	return 4
}

func cmdIndex(c policy.Command) int {
	switch c {
	case policy.Connect:
		return 0
	case policy.Bind:
		return 1
	case policy.UDP:
		return 2
	}
	return 3
}

func actionIndex(a string) int {
	switch a {
	case "permit":
		return 0
	case "deny":
		return 1
	}
	return 2
}

// Refused counts a connection refused before it became a session
// (relay.Observer).
func (m *Metrics) Refused(why relay.Refusal) {
	if why < relay.NumRefusals {
		m.refusals[why].Inc()
	}
}

// Upstream records an attempt to reach a chain of next hops
// (relay.Observer).
func (m *Metrics) Upstream(chain string, ok bool) {
	if ok {
		m.upUp.WithLabelValues(chain).Set(1)
		return
	}
	m.upUp.WithLabelValues(chain).Set(0)
	m.upFailures.WithLabelValues(chain).Inc()
}

// Lookup observes a DNS lookup's time (relay.Observer).
func (m *Metrics) Lookup(d time.Duration) { m.dns.Observe(d.Seconds()) }

// Datagram counts a UDP datagram relayed (relay.Observer).
func (m *Metrics) Datagram(up bool) {
	if up {
		m.datagrams[0].Inc()
	} else {
		m.datagrams[1].Inc()
	}
}

// Dropped counts a UDP datagram dropped (relay.Observer).
func (m *Metrics) Dropped(why relay.DropReason) {
	if why < relay.NumDropReasons {
		m.dropped[why].Inc()
	}
}

var _ relay.Observer = (*Metrics)(nil)
