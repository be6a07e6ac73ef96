package metrics

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sockd-ng/sockd/policy"
	"github.com/sockd-ng/sockd/relay"
)

type fakeServer struct{ sessions, up, down int }

func (f *fakeServer) Sessions() int           { return f.sessions }
func (f *fakeServer) Bytes() (uint64, uint64) { return uint64(f.up), uint64(f.down) }

// What relay reports comes out in the exposition, under the names and
// labels sockd(8) documents, and the exposition passes promlint.
func TestMetrics(t *testing.T) {
	src := &fakeServer{sessions: 3, up: 100, down: 2000}
	m := New(src, "v1.2.3")
	m.Loaded([]string{"sockd.conf:1", "sockd.conf:2", "socks.conf:1"}, time.Unix(1700000000, 0))
	m.Reloaded(true)
	for range 2 {
		m.SessionEnded(&relay.Record{Proto: "socks5", Cmd: policy.Connect, Action: "permit", Rule: "sockd.conf:1",
			Handshake: time.Millisecond, Connect: 2 * time.Millisecond, Ident: "alice", IdentTime: time.Millisecond})
	}
	m.SessionEnded(&relay.Record{Proto: "socks4", Cmd: policy.Connect, Action: "deny", Refusal: relay.RefusedNoRule})
	m.SessionEnded(&relay.Record{Proto: "socks5", Cmd: policy.Connect, Action: "deny", Rule: "sockd.conf:9", Refusal: relay.RefusedRule}) // an older config's rule
	m.SessionEnded(&relay.Record{Err: errors.New("handshake: EOF")})
	m.Refused(relay.RefusedClientCap)
	m.Upstream("socks5://gw:1080", false)
	m.Upstream("socks5://gw:1080", false)
	m.Upstream("socks5://gw2:1080", true)
	m.Lookup(3 * time.Millisecond)
	m.Datagram(true)
	m.Datagram(false)
	m.Datagram(false)
	m.Dropped(relay.DropUnspecified)
	m.Reloaded(false)

	for _, tc := range []struct {
		got  float64
		want float64
		what string
	}{
		{testutil.ToFloat64(m.sessions.WithLabelValues("socks5", "connect", "permit")), 2, "permitted SOCKS5 connects"},
		{testutil.ToFloat64(m.sessions.WithLabelValues("socks4", "connect", "deny")), 1, "denied SOCKS4 connects"},
		{testutil.ToFloat64(m.sessions.WithLabelValues("none", "none", "none")), 1, "empty connections"},
		{testutil.ToFloat64(m.ruleVec.WithLabelValues("sockd.conf:1")), 2, "matches of line 1"},
		{testutil.ToFloat64(m.ruleVec.WithLabelValues("default")), 1, "default denials"},
		{testutil.ToFloat64(m.refusals[relay.RefusedClientCap]), 1, "client cap refusals"},
		{testutil.ToFloat64(m.refusals[relay.RefusedNoRule]), 1, "no rule refusals"},
		{testutil.ToFloat64(m.upUp.WithLabelValues("socks5://gw:1080")), 0, "gw up"},
		{testutil.ToFloat64(m.upFailures.WithLabelValues("socks5://gw:1080")), 2, "gw failures"},
		{testutil.ToFloat64(m.upUp.WithLabelValues("socks5://gw2:1080")), 1, "gw2 up"},
		{testutil.ToFloat64(m.datagrams[1]), 2, "datagrams down"},
		{testutil.ToFloat64(m.dropped[relay.DropUnspecified]), 1, "dropped unspecified"},
		{testutil.ToFloat64(m.reloads.WithLabelValues("success")), 1, "reloads applied"},
		{testutil.ToFloat64(m.reloads.WithLabelValues("failure")), 1, "reloads rejected"},
		{testutil.ToFloat64(m.lastOK), 0, "last reload successful"},
		{testutil.ToFloat64(m.lastOKTime), 1700000000, "last success time"},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: %v, want %v", tc.what, tc.got, tc.want)
		}
	}
	// A rule of another configuration is not invented.
	if n := testutil.CollectAndCount(m.ruleVec); n != 4 {
		t.Errorf("%d rule series, want the 3 rules and default", n)
	}
	// Reloading resets the rule series to the new rules.
	m.Loaded([]string{"sockd.conf:1"}, time.Now())
	if n := testutil.CollectAndCount(m.ruleVec); n != 2 {
		t.Errorf("%d rule series after a reload, want 2", n)
	}

	problems, err := testutil.GatherAndLint(m.reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}

	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	body := get(t, srv.URL+"/metrics", 200)
	for _, want := range []string{
		`sockd_sessions_active 3`,
		`sockd_bytes_total{direction="up"} 100`,
		`sockd_bytes_total{direction="down"} 2000`,
		`sockd_build_info{version="v1.2.3"} 1`,
		`sockd_handshake_duration_seconds_count 4`,
		`sockd_connect_duration_seconds_count 2`,
		`sockd_dns_duration_seconds_count 1`,
		`sockd_ident_duration_seconds_count 2`,
		`go_goroutines `,
		`process_open_fds `,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	get(t, srv.URL+"/healthz", 503) // not yet listening
	m.SetServing(true)
	get(t, srv.URL+"/healthz", 200)
	m.SetServing(false)
	get(t, srv.URL+"/healthz", 503)
}

func get(t *testing.T, url string, code int) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != code {
		t.Fatalf("GET %s: %d, want %d\n%s", url, resp.StatusCode, code, b)
	}
	return string(b)
}

// What counting costs a session, beside a server without an Observer
// (relay calls nothing then).
func BenchmarkSessionEnded(b *testing.B) {
	m := New(&fakeServer{}, "bench")
	m.Loaded([]string{"sockd.conf:1", "sockd.conf:2"}, time.Now())
	r := &relay.Record{Proto: "socks5", Cmd: policy.Connect, Action: "permit", Rule: "sockd.conf:2",
		Handshake: time.Millisecond, Connect: time.Millisecond}
	b.ReportAllocs()
	for b.Loop() {
		m.SessionEnded(r)
	}
}
