package grammar

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/alecthomas/participle/v2/lexer"
	"golang.org/x/tools/txtar"
)

// fastLines are lines for the fast path: plain rules it must take, and
// near misses that it must either parse as participle does or leave to it.
var fastLines = []string{
	"permit 10.0.0.0 255.0.0.0",
	"  deny\t10.0.0.0 255.0.0.0 eq telnet : logger -t sockd %u@%a  \r",
	"PERMIT ?=i *=a,b .example.com 0.0.0.0 host 0.0.0.0 NEQ 25 :echo a#b",
	"permit ?=I 10.0.0.0/8",
	"permit ?= *= 10.0.0.0/8",
	"permit [fd00::/8] ALL 0.0.0.0 eq 8000-8100",
	"permit [::1] [2001:db8::/32]#comment",
	"permit ALL 0.0.0.0 # comment: not a command",
	"permit ALL 0.0.0.0 : ",
	"permit ALL 0.0.0.0 :",
	"permit ALL 0.0.0.0 : café",
	"permit ALL 0.0.0.0 # café",
	"permit 10.0.0.0/8/9 ALL/ 0.0.0.0 eq 1",
	"permit /x 0.0.0.0",
	"permit a/b c[::1] eq 80",
	"permit 10.0.0.0 eq 80",
	"permit eq 80",
	"permit 10.0.0.0 255.0.0.0 eq",
	"permit 10.0.0.0 255.0.0.0 eq 80 extra",
	"permit 10.0.0.0 255.0.0.0 Eq eq",
	"permit 10.0.0.0 255.0.0.0 le 10 : x",
	"permit *=a ?=I 10.0.0.0/8",
	"permit *=/etc/staff,bob ALL 0.0.0.0",
	"permit *=a:b ALL 0.0.0.0",
	"permit ?=x#y ALL 0.0.0.0",
	"permit [::1 eq 80",
	"permit [" + strings.Repeat("1", 64) + "] eq 80",
	"permit [" + strings.Repeat("1", 65) + "] eq 80",
	"permit ]",
	"permit @=gw ALL 0.0.0.0",
	"permit ALL 0.0.0.0 ALL",
	"permit ALL 0.0.0.0 ALL ge",
	"permit ALL 0.0.0.0 ALL GE 1",
	"permit 10.1 24",
	"permit *=a,,b ALL",
	"#NO_IDENTD: mail root",
	": cmd",
	"?=I permit",
	"10.0.0.0 255.0.0.0",
	"permit\u00a0ALL 0.0.0.0",
	"permit ALL 0.0.0.0 \xff",
	"permit ALL 0.0.0.0 : \xff",
	"permit ALL\v0.0.0.0\f",
	"perm*it a?b c*d",
}

// checkFast parses line with the fast path and with participle, and fails
// when the fast path takes a line and makes something else of it. It
// reports whether the fast path took the line.
func checkFast(t *testing.T, line string, num, offset int) bool {
	t.Helper()
	pl := physLine{text: line, num: num, offset: offset}
	var buf []lexer.Token
	fast, ok := fastSockdLine("f.conf", pl, &buf)
	if !ok {
		return false
	}
	slow, err := parseLine(sockdParser, sockdLexer, "f.conf", pl)
	if err != nil {
		t.Fatalf("fast path took %q, which participle rejects: %v", line, err)
	}
	if !reflect.DeepEqual(fast, slow) {
		t.Fatalf("line %q:\nfast path: %s\nparticiple: %s", line, dumpLine(fast), dumpLine(slow))
	}
	return true
}

// dumpLine prints a parsed line for a failure message.
func dumpLine(l *sockdLine) string {
	if l.Rule == nil {
		return fmt.Sprintf("%+v", *l)
	}
	r := l.Rule
	out := fmt.Sprintf("%s %q", r.Pos, r.Action)
	for _, x := range []any{r.Ident, r.Users, r.Src, r.Dst, r.Port, r.Cmd} {
		if v := reflect.ValueOf(x); v.IsNil() {
			out += "\n\tnil"
		} else {
			out += fmt.Sprintf("\n\t%+v", v.Elem().Interface())
		}
	}
	for _, x := range r.Extra {
		out += fmt.Sprintf("\n\textra %+v", *x)
	}
	return out
}

// The fast path makes of every line it takes what participle makes of it:
// the lines above, every line of the golden files and of the shipped
// sample, and a large generated file, whose rule lines it must all take.
func TestSockdFastPath(t *testing.T) {
	for i, line := range fastLines {
		checkFast(t, line, i+1, 100*i)
	}
	paths, _ := filepath.Glob("testdata/*/*.txtar")
	for _, path := range paths {
		ar, err := txtar.ParseFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range ar.Files {
			for i, line := range strings.Split(string(f.Data), "\n") {
				checkFast(t, line, i+1, 0)
			}
		}
	}
	sample, err := os.ReadFile("../etc/sockd.conf")
	if err != nil {
		t.Fatal(err)
	}
	for i, line := range strings.Split(string(sample), "\n") {
		checkFast(t, line, i+1, 0)
	}
	for i, line := range strings.Split(benchFile(2000), "\n") {
		if !checkFast(t, line, i+1, 0) && (strings.HasPrefix(line, "permit") || strings.HasPrefix(line, "deny")) {
			t.Errorf("fast path declines %q", line)
		}
	}
}

// FuzzSockdFastPath: on any line, the fast path either declines it or
// makes of it what participle makes.
func FuzzSockdFastPath(f *testing.F) {
	for _, line := range fastLines {
		f.Add(line)
	}
	f.Fuzz(func(t *testing.T, line string) {
		line, _, _ = strings.Cut(line, "\n")
		if len(line) > MaxLine || blank(line) {
			return
		}
		checkFast(t, line, 3, 17)
	})
}
