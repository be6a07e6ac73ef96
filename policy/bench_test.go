package policy

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/sockd-ng/sockd/grammar"
)

// benchRules writes n sockd.conf rules of one kind where only the last
// matches benchQuery(kind): the worst case for a first-match scan.
//
//	addr: address rules (prefix and non-prefix masks, ports), all from the
//	      client's 10/8, differing by destination and port
//	name: destination names (suffix and exact), source names, mixed
//	user: *= lists, all from the client's 10/8
func benchRules(kind string, n int) string {
	var b strings.Builder
	for i := 0; i < n-1; i++ {
		hi, lo := i>>8&0xff, i&0xff
		switch kind + fmt.Sprint(i%4) {
		case "addr0":
			fmt.Fprintf(&b, "permit 10.0.0.0 255.0.0.0 172.%d.%d.0 255.255.255.0 eq %d\n", 16+hi%16, lo, 1000+i%1000)
		case "addr1":
			fmt.Fprintf(&b, "deny 10.%d.%d.0 255.255.255.0 ALL 0.0.0.0\n", hi%200, lo)
		case "addr2":
			fmt.Fprintf(&b, "permit 10.0.0.0 255.0.0.0 192.%d.0.%d 255.255.0.255 eq 443\n", hi, lo)
		case "addr3":
			fmt.Fprintf(&b, "permit 10.0.0.0/8 203.0.%d.%d 255.255.255.255 gt 1023\n", hi, lo)
		case "name0":
			fmt.Fprintf(&b, "permit ALL 0.0.0.0 .site%d.example 0.0.0.0 eq 443\n", i)
		case "name1":
			fmt.Fprintf(&b, "deny ALL 0.0.0.0 host%d.example.com 0.0.0.0\n", i)
		case "name2":
			fmt.Fprintf(&b, "permit .branch%d.example 0.0.0.0 ALL 0.0.0.0 eq 22\n", i)
		case "name3":
			fmt.Fprintf(&b, "permit 10.0.0.0 255.0.0.0 .dept%d.example.org 0.0.0.0\n", i)
		case "user0":
			fmt.Fprintf(&b, "permit *=u%d,v%d 10.0.0.0/8\n", i, i)
		case "user1":
			fmt.Fprintf(&b, "deny *=u%d 10.0.0.0/8 ALL 0.0.0.0 eq 25\n", i)
		case "user2":
			fmt.Fprintf(&b, "permit *=w%d,x%d,y%d 0.0.0.0 0.0.0.0 192.168.0.0 255.255.0.0\n", i, i, i)
		case "user3":
			fmt.Fprintf(&b, "permit *=z%d 10.0.0.0/8 ALL 0.0.0.0 neq 25\n", i)
		}
	}
	switch kind {
	case "addr":
		b.WriteString("permit 10.0.0.0 255.0.0.0 198.51.100.0 255.255.255.0 eq 80\n")
	case "name", "name-ptr":
		b.WriteString("permit .office.example 0.0.0.0 .target.example 0.0.0.0 eq 443\n")
	case "user":
		b.WriteString("permit *=alice,bob 10.0.0.0/8\n")
	}
	return b.String()
}

// benchQuery is the request only the last of benchRules(kind, n) matches.
// Its lookups are cheap fakes, as relay's memoised ones are after the
// first call.
func benchQuery(kind string) Query {
	q := Query{Command: Connect, Client: netip.MustParseAddr("10.200.1.1"),
		Dst: netip.MustParseAddr("198.51.100.7"), Port: 80}
	switch kind {
	case "name", "name-ptr":
		q.Port = 443
		q.ClientName = func(context.Context) string { return "ws1.office.example" }
		q.DstAddrName = func(context.Context, netip.Addr) string { return "www.target.example" }
		if kind == "name" {
			q.Dst, q.DstName = netip.Addr{}, "www.target.example"
		}
	case "user":
		q.User, q.Dst = "alice", netip.MustParseAddr("192.0.2.1")
	}
	return q
}

func benchRuleset(tb testing.TB, kind string, n int) *Ruleset {
	src := benchRules(strings.TrimSuffix(kind, "-ptr"), n)
	f, err := grammar.ParseSockd("bench.conf", strings.NewReader(src))
	if err != nil {
		tb.Fatal(err)
	}
	rs, err := Compile(f, Options{})
	if err != nil {
		tb.Fatal(err)
	}
	return rs
}

// BenchmarkDecide decides a request that only the last rule matches.
func BenchmarkDecide(b *testing.B) { benchDecide(b, func(rs *Ruleset) *Ruleset { return rs }) }

// BenchmarkDecideScan does the same by trying every rule in turn, as
// Decide did before it had an index, for comparison within one run.
func BenchmarkDecideScan(b *testing.B) {
	benchDecide(b, func(rs *Ruleset) *Ruleset { return withIndex(rs, false) })
}

func benchDecide(b *testing.B, how func(*Ruleset) *Ruleset) {
	for _, kind := range []string{"addr", "name", "name-ptr", "user"} {
		for _, n := range []int{10, 1000, 10000} {
			b.Run(fmt.Sprintf("%s/%d", kind, n), func(b *testing.B) {
				rs := how(benchRuleset(b, kind, n))
				q := benchQuery(kind)
				ctx := context.Background()
				want := fmt.Sprintf("bench.conf:%d", n)
				if d := rs.Decide(ctx, q); d.Rule != want || !d.Permitted() {
					b.Fatalf("decided %s %s, want permit %s", d.Action, d.Rule, want)
				}
				b.ReportAllocs()
				for b.Loop() {
					rs.Decide(ctx, q)
				}
			})
		}
	}
}

// benchFile is a sockd.conf of n lines in the style of a large site: a
// mix of address, name and user rules, comments, a few blank lines and
// some shadowed rules.
func benchFile(n int) string {
	var b strings.Builder
	b.WriteString("# generated\n#NO_IDENTD: logger -t sockd no identd on %A\n")
	for i := 2; i < n; i++ {
		hi, lo := i>>8&0xff, i&0xff
		switch i % 10 {
		case 0:
			fmt.Fprintf(&b, "# block %d\n", i)
		case 1:
			fmt.Fprintf(&b, "permit 10.%d.%d.0 255.255.255.0 172.16.%d.0 255.255.255.0 eq %d\n", hi, lo, lo, 1000+i%1000)
		case 2:
			fmt.Fprintf(&b, "deny 10.%d.%d.0 255.255.255.0 ALL 0.0.0.0 eq telnet : logger -t sockd telnet %%u@%%a\n", hi, lo)
		case 3:
			fmt.Fprintf(&b, "permit *=u%d,v%d 10.%d.%d.0/24 192.168.%d.0 255.255.0.255 neq 25\n", i, i, hi, lo, lo)
		case 4:
			fmt.Fprintf(&b, "permit ALL 0.0.0.0 .site%d.example 0.0.0.0 eq 443\n", i)
		case 5:
			fmt.Fprintf(&b, "deny ?=n ALL 0.0.0.0 host%d.example.com 0.0.0.0\n", i)
		case 6:
			fmt.Fprintf(&b, "permit ?=i .branch%d.example 0.0.0.0 ALL 0.0.0.0 eq 22\n", i)
		case 7:
			fmt.Fprintf(&b, "permit [fd00:%x::/32] [2001:db8:%x::/48] eq 8000-8100\n", i, i)
		case 8:
			fmt.Fprintf(&b, "permit 10.%d.%d.%d/32 203.0.113.0/24 gt 1023\n", hi, lo, i%251)
		case 9:
			// Now and then a rule that an earlier one shadows: the
			// duplicate of the case 1 line above, or a part of it.
			j := i - 8
			switch i % 100 {
			case 49:
				fmt.Fprintf(&b, "permit 10.%d.%d.128 255.255.255.128 172.16.%d.0 255.255.255.0 eq %d\n", j>>8&0xff, j&0xff, j&0xff, 1000+j%1000)
			case 99:
				fmt.Fprintf(&b, "permit 10.%d.%d.0 255.255.255.0 172.16.%d.0 255.255.255.0 eq %d\n", j>>8&0xff, j&0xff, j&0xff, 1000+j%1000)
			default:
				b.WriteString("\n")
			}
		}
	}
	return b.String()
}

// BenchmarkCompile compiles a parsed 10,000-line sockd.conf.
func BenchmarkCompile(b *testing.B) {
	f, err := grammar.ParseSockd("bench.conf", strings.NewReader(benchFile(10000)))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Compile(f, Options{}); err != nil {
			b.Fatal(err)
		}
	}
}
