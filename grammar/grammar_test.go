package grammar

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/tools/txtar"
)

var update = flag.Bool("update", false, "rewrite golden files")

// dumpSockd prints f as a stable text for golden files: every rule with its
// position, the special lines and the warnings.
func dumpSockd(f *File) string {
	var b strings.Builder
	for _, r := range f.Rules {
		fmt.Fprintf(&b, "%d:%d %s\n", r.Pos.Line, r.Pos.Column, r)
		if r.Src.Kind != HostAddr || r.Dst != nil && r.Dst.Kind != HostAddr {
			fmt.Fprintf(&b, "\tsrc kind %d", r.Src.Kind)
			if r.Dst != nil {
				fmt.Fprintf(&b, " dst kind %d", r.Dst.Kind)
			}
			b.WriteByte('\n')
		}
		for _, u := range r.Users {
			fmt.Fprintf(&b, "\tuser %q at %d:%d file=%v\n", u.Name, u.Pos.Line, u.Pos.Column, u.IsFile())
		}
		if r.Port != nil {
			fmt.Fprintf(&b, "\tport %s %d-%d %q at %d:%d\n", r.Port.Op, r.Port.Lo, r.Port.Hi, r.Port.Service, r.Port.PortPos.Line, r.Port.PortPos.Column)
		}
		if r.Command != "" {
			fmt.Fprintf(&b, "\tcommand %q at %d:%d\n", r.Command, r.CommandPos.Line, r.CommandPos.Column)
		}
	}
	if f.NoIdentd != nil {
		fmt.Fprintf(&b, "NO_IDENTD %d %q\n", f.NoIdentd.Pos.Line, f.NoIdentd.Command)
	}
	if f.BadID != nil {
		fmt.Fprintf(&b, "BAD_ID %d %q\n", f.BadID.Pos.Line, f.BadID.Command)
	}
	for _, w := range f.Warnings {
		fmt.Fprintf(&b, "warning: %s\n", w)
	}
	return b.String()
}

// runGolden runs every txtar archive in dir. Each holds the input file named
// input and either "want" (the dump of a successful parse) or "want.err"
// (the exact error text). -update rewrites whichever applies.
func runGolden(t *testing.T, dir, input string, parse func(name string, src []byte) (string, error)) {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(dir, "*.txtar"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no golden files in %s: %v", dir, err)
	}
	for _, path := range paths {
		t.Run(strings.TrimSuffix(filepath.Base(path), ".txtar"), func(t *testing.T) {
			ar, err := txtar.ParseFile(path)
			if err != nil {
				t.Fatal(err)
			}
			var src []byte
			found := false
			for _, f := range ar.Files {
				if f.Name == input {
					src, found = f.Data, true
				}
			}
			if !found {
				t.Fatalf("%s has no %q section", path, input)
			}
			got, err := parse(input, src)
			key := "want"
			if err != nil {
				got, key = err.Error()+"\n", "want.err"
			}
			if *update {
				var files []txtar.File
				for _, f := range ar.Files {
					if f.Name != "want" && f.Name != "want.err" {
						files = append(files, f)
					}
				}
				ar.Files = append(files, txtar.File{Name: key, Data: []byte(got)})
				if err := os.WriteFile(path, txtar.Format(ar), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			for _, f := range ar.Files {
				if f.Name == "want" || f.Name == "want.err" {
					if f.Name != key {
						t.Fatalf("got %s:\n%s\nbut the archive has %s:\n%s", key, got, f.Name, f.Data)
					}
					if string(f.Data) != got {
						t.Errorf("%s mismatch\ngot:\n%s\nwant:\n%s", key, got, f.Data)
					}
					return
				}
			}
			t.Fatalf("%s has no want or want.err section; got %s:\n%s", path, key, got)
		})
	}
}

func TestSockdGolden(t *testing.T) {
	runGolden(t, "testdata/sockd", "sockd.conf", func(name string, src []byte) (string, error) {
		f, err := ParseSockd(name, bytes.NewReader(src))
		if err != nil {
			return "", err
		}
		return dumpSockd(f), nil
	})
}

// The grammar as participle sees it is kept in a golden file, so that a
// change to it shows up in review.
func TestSockdEBNF(t *testing.T) {
	checkGoldenFile(t, "testdata/sockd.ebnf", SockdEBNF()+"\n")
}

func checkGoldenFile(t *testing.T, path, got string) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(want) != got {
		t.Errorf("%s mismatch\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}

// CRLF files, tabs, VT and FF as blanks, and a missing final newline.
func TestSockdWhitespace(t *testing.T) {
	src := "permit\t10.0.0.0\v255.0.0.0\f0.0.0.0 0.0.0.0 eq 80 : echo hi\r\n" +
		"deny ALL 0.0.0.0\r\n" +
		"permit 127.0.0.1 255.255.255.255"
	f, err := ParseSockd("ws.conf", strings.NewReader(src))
	if err != nil {
		t.Fatal(err)
	}
	want := "permit 10.0.0.0 255.0.0.0 0.0.0.0 0.0.0.0 eq 80 : echo hi\n" +
		"deny ALL 0.0.0.0\n" +
		"permit 127.0.0.1 255.255.255.255\n"
	if got := string(f.Format()); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	if f.Rules[2].Pos.Line != 3 {
		t.Errorf("third rule on line %d, want 3", f.Rules[2].Pos.Line)
	}
}

func TestSockdLongLine(t *testing.T) {
	ok := "permit ALL 0.0.0.0 : " + strings.Repeat("x", MaxLine-len("permit ALL 0.0.0.0 : "))
	long := ok + "y"
	src := "deny ALL 0.0.0.0\n" + ok + "\n" + long + "\r\n"
	_, err := ParseSockd("long.conf", strings.NewReader(src))
	want := "long.conf:3:1023: line is 1023 bytes long, the limit is 1022"
	if err == nil || err.Error() != want {
		t.Fatalf("got %v, want %s", err, want)
	}
}

// Every error of a file is reported, sorted, and the file is refused.
func TestSockdAllErrors(t *testing.T) {
	src := "permit 10.0.0.0 255.0.0.0 eq telnett\n" +
		"allow ALL 0.0.0.0\n" +
		"permit 10.1 255.255.0.0\n"
	f, err := ParseSockd("/etc/sockd.conf", strings.NewReader(src))
	if f != nil {
		t.Errorf("got a File despite errors")
	}
	errs := Errors(err)
	if len(errs) != 2 {
		t.Fatalf("got %d errors, want 2 (service names are checked by the policy):\n%v", len(errs), err)
	}
	if errs[0].Pos.Line != 2 || errs[1].Pos.Line != 3 {
		t.Errorf("errors not sorted or misplaced:\n%v", err)
	}
}
