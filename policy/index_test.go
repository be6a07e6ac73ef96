package policy

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/fstest"

	"github.com/sockd-ng/sockd/grammar"
)

// withIndex returns a copy of rs that decides through an index (on) or by
// trying every rule in turn (off), whatever Compile chose for its size.
func withIndex(rs *Ruleset, on bool) *Ruleset {
	c := *rs
	c.idx = nil
	if on {
		c.idx = buildIndex(c.rules)
	}
	return &c
}

// The pieces random rules are made of: addresses with prefix, non-prefix
// and zero masks, IPv6 and IPv4-mapped ones, names, user lists, ident
// modes and port tests, so that every dimension of the index and every
// way around it is exercised.
var (
	randHosts = []string{
		"ALL 0.0.0.0", "0.0.0.0 0.0.0.0", "10.0.0.0 255.0.0.0", "10.1.0.0/16", "10.1.2.0/24",
		"10.1.2.3/32", "10.0.2.0 255.0.255.0", "0.0.2.3 0.0.255.255", "192.0.2.0/24",
		"[::1]", "[fd00::/8]", "[::ffff:10.0.0.0/104]", "[2001:db8::/32]",
		".example.com 0.0.0.0", "www.example.com 0.0.0.0", ".a.example.com 0.0.0.0",
		"example.org 0.0.0.0", ".org 0.0.0.0", "k.example.com 0.0.0.0", "host.trusted.example 0.0.0.0",
	}
	randUsers  = []string{"", "", "*=alice ", "*=alice,bob ", "*=bob ", "*= ", "*=/staff ", "*=/empty ", "*=carol,/staff "}
	randFS     = fstest.MapFS{"staff": {Data: []byte("alice bob\n")}, "empty": {Data: []byte("# nobody\n")}}
	randIdent  = []string{"", "", "?=I ", "?=i ", "?=n "}
	randPorts  = []string{"", "", "", " eq 80", " eq 443", " neq 80", " lt 1024", " gt 1023", " eq 8000-8100", " lt 0", " eq 22"}
	randClient = []string{"10.1.2.3", "10.0.2.9", "10.2.2.2", "192.0.2.7", "::1", "fd00::5", "::ffff:10.1.2.3", "127.0.0.2"}
	randDst    = []string{"10.1.2.3", "192.0.2.7", "10.9.2.3", "2001:db8::1", "::1", "198.51.100.1"}
	randNames  = []string{"www.example.com", "WWW.Example.COM.", "x.a.example.com", "example.org", "b.example.org",
		"nowhere.invalid", "\u212a.example.com", "mixed.example", ""}
	randPTR = map[string]string{"10.1.2.3": "host.trusted.example", "192.0.2.7": "www.example.com",
		"::1": "k.example.com", "10.9.2.3": "b.example.org", "127.0.0.2": "x.a.example.com"}
	randDNS = map[string][]netip.Addr{
		"www.example.com": {netip.MustParseAddr("192.0.2.7")},
		"example.org":     {netip.MustParseAddr("10.9.2.3"), netip.MustParseAddr("0.0.0.1"), netip.MustParseAddr("10.1.2.3")},
		"mixed.example":   {netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("198.51.100.1")},
	}
)

func pick[T any](r *rand.Rand, s []T) T { return s[r.IntN(len(s))] }

func randRules(r *rand.Rand, n int) string {
	var b strings.Builder
	for range n {
		b.WriteString(pick(r, []string{"permit ", "deny "}))
		b.WriteString(pick(r, randIdent))
		b.WriteString(pick(r, randUsers))
		b.WriteString(pick(r, randHosts))
		if r.IntN(3) > 0 {
			b.WriteString(" " + pick(r, randHosts))
		}
		b.WriteString(pick(r, randPorts))
		if r.IntN(8) == 0 {
			b.WriteString(" : echo %u")
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// randQuery makes a random request whose lookups append what they were
// asked to *trace.
func randQuery(r *rand.Rand, trace *[]string) Query {
	q := Query{
		Command: pick(r, []Command{Connect, Connect, Bind}),
		Client:  netip.MustParseAddr(pick(r, randClient)),
		User:    pick(r, []string{"", "alice", "bob", "carol"}),
		Source:  pick(r, []UserSource{UserClaimed, UserPassword, UserNone}),
		Port:    pick(r, []uint16{22, 80, 443, 1023, 5000, 8050}),
	}
	if r.IntN(2) == 0 {
		q.Dst = netip.MustParseAddr(pick(r, randDst))
	} else {
		q.DstName = pick(r, randNames)
	}
	q.AnyDestination = r.IntN(10) == 0
	ident := pick(r, []IdentResult{{User: "alice"}, {User: "bob"}, {Down: true}})
	if r.IntN(4) > 0 {
		q.Ident = func(context.Context) IdentResult {
			*trace = append(*trace, "ident")
			return ident
		}
	}
	if r.IntN(4) > 0 {
		q.ClientName = func(context.Context) string {
			*trace = append(*trace, "client")
			return randPTR[q.Client.String()]
		}
	}
	if r.IntN(4) > 0 {
		q.DstAddrName = func(_ context.Context, a netip.Addr) string {
			*trace = append(*trace, "dst "+a.String())
			return randPTR[a.String()]
		}
	}
	if r.IntN(2) == 0 {
		q.Resolve = func(_ context.Context, name string) ([]netip.Addr, error) {
			*trace = append(*trace, "resolve "+name)
			if a, ok := randDNS[strings.TrimSuffix(strings.ToLower(name), ".")]; ok {
				return a, nil
			}
			return nil, errors.New("no such host")
		}
	}
	return q
}

// Deciding through the index gives the same decision as trying every rule
// in turn, and asks the same lookups in the same order, for random rules
// and requests.
func TestIndexSameAsScan(t *testing.T) {
	seed := rand.Uint64()
	r := rand.New(rand.NewPCG(seed, 13))
	ctx := context.Background()
	files, queries := 500, 200
	if testing.Short() {
		files = 50
	}
	for f := range files {
		src := randRules(r, 1+r.IntN(pick(r, []int{8, 24, 80})))
		gf, err := grammar.ParseSockd("r.conf", strings.NewReader(src))
		if err != nil {
			t.Fatalf("seed %d: %v\n%s", seed, err, src)
		}
		opt := Options{FS: randFS, Ident: pick(r, []grammar.IdentMode{grammar.IdentUnset, grammar.IdentLenient, grammar.IdentStrict})}
		rs, err := Compile(gf, opt)
		if err != nil {
			t.Fatalf("seed %d: %v\n%s", seed, err, src)
		}
		scan, idx := withIndex(rs, false), withIndex(rs, true)
		for range queries {
			var traceScan, traceIdx []string
			// The same random query twice, each with its own trace.
			qs := r.Uint64()
			q1 := randQuery(rand.New(rand.NewPCG(qs, 1)), &traceScan)
			q2 := randQuery(rand.New(rand.NewPCG(qs, 1)), &traceIdx)
			d1, d2 := scan.Decide(ctx, q1), idx.Decide(ctx, q2)
			if !reflect.DeepEqual(d1, d2) || !slices.Equal(traceScan, traceIdx) {
				t.Fatalf("seed %d file %d: %+v\nrules:\n%s\nscan:  %+v %q\nindex: %+v %q",
					seed, f, q1, src, d1, traceScan, d2, traceIdx)
			}
		}
	}
}

// A request whose lists do not fit the merge goes on by trying every rule
// in turn, from where the index left off: from the start, or once a name
// becomes known.
func TestIndexOverflow(t *testing.T) {
	labels := make([]string, maxCursors+8)
	n := len(labels)
	for i := range labels {
		labels[i] = string("0123456789abcdefghijklmnopqrstuvwxyz"[i%36])
	}
	deep, tail := strings.Join(labels, "."), strings.Join(labels[len(labels)-2:], ".")
	var b strings.Builder
	// Line 1 asks for a reverse name; lines 2 to n+1 are suffix rules for
	// every label of deep, none for port 80; line n+2 matches.
	fmt.Fprintf(&b, "deny ALL 0.0.0.0 x.%s 0.0.0.0\n", deep)
	for i := range labels {
		fmt.Fprintf(&b, "deny ALL 0.0.0.0 .%s 0.0.0.0 eq 22\n", strings.Join(labels[i:], "."))
	}
	fmt.Fprintf(&b, "permit ALL 0.0.0.0 .%s 0.0.0.0 eq 80\n", tail)
	// The same for source names, lines n+3 to 2n+4.
	b.WriteString("deny other.client 0.0.0.0 ALL 0.0.0.0\n")
	for i := range labels {
		fmt.Fprintf(&b, "deny .%s 0.0.0.0 ALL 0.0.0.0 eq 22\n", strings.Join(labels[i:], "."))
	}
	fmt.Fprintf(&b, "permit .%s 0.0.0.0 ALL 0.0.0.0 eq 23\n", tail)
	f, err := grammar.ParseSockd("o.conf", strings.NewReader(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	rs, err := Compile(f, Options{})
	if err != nil {
		t.Fatal(err)
	}
	client, dst := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("192.0.2.1")
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		q    Query
		want string
	}{
		{"by name, first line", Query{Command: Connect, Client: client, DstName: "x." + deep, Port: 80}, "o.conf:1"},
		{"by name", Query{Command: Connect, Client: client, DstName: "y." + deep, Port: 80}, fmt.Sprintf("o.conf:%d", n+2)},
		{"by reverse name", Query{Command: Connect, Client: client, Dst: dst, Port: 80,
			DstAddrName: func(context.Context, netip.Addr) string { return "y." + deep }}, fmt.Sprintf("o.conf:%d", n+2)},
		{"by reverse name, next line", Query{Command: Connect, Client: client, Dst: dst, Port: 22,
			DstAddrName: func(context.Context, netip.Addr) string { return "y." + deep }}, "o.conf:2"},
		{"client name", Query{Command: Connect, Client: client, Dst: dst, Port: 23,
			ClientName: func(context.Context) string { return "x." + deep }}, fmt.Sprintf("o.conf:%d", 2*n+4)},
		{"client name, next line", Query{Command: Connect, Client: client, Dst: dst, Port: 22,
			ClientName: func(context.Context) string { return "x." + deep }}, fmt.Sprintf("o.conf:%d", n+4)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, on := range []bool{false, true} {
				d := withIndex(rs, on).Decide(ctx, tc.q)
				if d.Rule != tc.want {
					t.Errorf("index %v: decided by %s, want %s", on, d.Rule, tc.want)
				}
			}
		})
	}
}

// Decide through the index allocates nothing either.
func TestDecideIndexedAllocs(t *testing.T) {
	ctx := context.Background()
	for _, kind := range []string{"addr", "name", "name-ptr", "user"} {
		rs := benchRuleset(t, kind, 1000)
		if rs.idx == nil {
			t.Fatal("no index for 1000 rules")
		}
		q := benchQuery(kind)
		if allocs := testing.AllocsPerRun(100, func() { rs.Decide(ctx, q) }); allocs != 0 {
			t.Errorf("%s: Decide allocates %.1f times per call", kind, allocs)
		}
	}
}

// An indexed Ruleset is only read by Decide: decisions may run at once
// (go test -race).
func TestDecideIndexedConcurrent(t *testing.T) {
	rs := benchRuleset(t, "name-ptr", 200)
	q := benchQuery("name-ptr")
	want := "bench.conf:200"
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 200 {
				if d := rs.Decide(context.Background(), q); d.Rule != want {
					t.Errorf("decided by %s, want %s", d.Rule, want)
					return
				}
			}
		})
	}
	wg.Wait()
}
