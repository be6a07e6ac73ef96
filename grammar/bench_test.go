package grammar

import (
	"fmt"
	"strings"
	"testing"
)

// benchFile is a sockd.conf of n lines in the style of a large site: a
// mix of address, name and user rules, comments, a few blank lines and
// some shadowed rules.
// policy's benchmarks use the same file.
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

// BenchmarkParseSockd parses a 10,000-line sockd.conf.
func BenchmarkParseSockd(b *testing.B) {
	src := benchFile(10000)
	b.SetBytes(int64(len(src)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseSockd("bench.conf", strings.NewReader(src)); err != nil {
			b.Fatal(err)
		}
	}
}
