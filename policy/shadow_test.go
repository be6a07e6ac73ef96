package policy

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/sockd-ng/sockd/grammar"
)

// The shadowed-rule check finds, for every rule, the first earlier rule
// that covers it, as comparing it with every earlier rule does.
func TestShadowSameAsQuadratic(t *testing.T) {
	seed := rand.Uint64()
	r := rand.New(rand.NewPCG(seed, 14))
	for range 500 {
		src := randRules(r, 1+r.IntN(pick(r, []int{8, 40, 120})))
		f, err := grammar.ParseSockd("r.conf", strings.NewReader(src))
		if err != nil {
			t.Fatalf("seed %d: %v\n%s", seed, err, src)
		}
		rs, err := Compile(f, Options{FS: randFS})
		if err != nil {
			t.Fatalf("seed %d: %v\n%s", seed, err, src)
		}
		var got []string
		for _, w := range rs.Warnings {
			if strings.Contains(w.Error(), "never matches") {
				got = append(got, w.Error())
			}
		}
		if want := shadowedQuadratic(rs); !slices.Equal(got, want) {
			t.Fatalf("seed %d:\n%s\ngot:\n%s\nwant:\n%s", seed, src, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	}
}

// shadowedQuadratic is the shadowed-rule check as it was: every rule
// compared with every earlier one.
func shadowedQuadratic(rs *Ruleset) []string {
	var out grammar.ErrorList
	for j := range rs.rules {
		b := &rs.rules[j]
		for i := 0; i < j; i++ {
			a := &rs.rules[i]
			if a.covers(b) {
				what := "shadowed by"
				if a.src.String() == b.src.String() {
					what = "duplicate of"
				}
				out.Add(b.src.Pos, "rule never matches: %s line %d", what, a.src.Pos.Line)
				break
			}
		}
	}
	var s []string
	for _, e := range out {
		s = append(s, e.Error())
	}
	return s
}

// A file that the shadowed-rule check cannot narrow (thousands of rules
// told apart only by port ranges) stops the check with a warning instead
// of comparing every pair.
func TestShadowBudget(t *testing.T) {
	var b strings.Builder
	for i := range 4000 {
		fmt.Fprintf(&b, "permit ALL 0.0.0.0 gt %d\n", 60000-i)
	}
	f, err := grammar.ParseSockd("b.conf", strings.NewReader(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	rs, err := Compile(f, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rs.Warnings) != 1 || !strings.Contains(rs.Warnings[0].Error(), "not checked for being shadowed") {
		t.Errorf("warnings: %v", rs.Warnings)
	}
}
