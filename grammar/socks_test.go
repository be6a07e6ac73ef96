package grammar

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
)

func dumpRoutes(f *RouteFile) string {
	var b strings.Builder
	for _, rt := range f.Routes {
		fmt.Fprintf(&b, "%d:%d %s\n", rt.Pos.Line, rt.Pos.Column, rt)
		for _, c := range rt.Servers {
			fmt.Fprintf(&b, "\talternative at %d:%d:", c.Pos.Line, c.Pos.Column)
			for _, h := range c.Hops {
				fmt.Fprintf(&b, " %s(proto=%q host=%q port=%d col=%d)", h, h.Proto, h.Host, h.Port, h.Pos.Column)
			}
			b.WriteByte('\n')
		}
		if rt.Dst.FamilyOnly {
			fmt.Fprintf(&b, "\tdst matches its family only\n")
		}
		if rt.Port != nil {
			fmt.Fprintf(&b, "\tport %s %d-%d %q\n", rt.Port.Op, rt.Port.Lo, rt.Port.Hi, rt.Port.Service)
		}
	}
	if f.DefaultDirect {
		b.WriteString("default direct\n")
	}
	for _, w := range f.Warnings {
		fmt.Fprintf(&b, "warning: %s\n", w)
	}
	return b.String()
}

func TestSocksGolden(t *testing.T) {
	runGolden(t, "testdata/socks", "socks.conf", func(name string, src []byte) (string, error) {
		f, err := ParseSocks(name, bytes.NewReader(src))
		if err != nil {
			return "", err
		}
		return dumpRoutes(f), nil
	})
}

func TestSocksEBNF(t *testing.T) {
	checkGoldenFile(t, "testdata/socks.ebnf", SocksEBNF()+"\n")
}

func TestSrelayGolden(t *testing.T) {
	runGolden(t, "testdata/srelay", "srelay.conf", func(name string, src []byte) (string, error) {
		f, err := ParseSrelay(name, bytes.NewReader(src))
		if err != nil {
			return "", err
		}
		return dumpRoutes(f), nil
	})
}

func TestInterfacesGolden(t *testing.T) {
	runGolden(t, "testdata/route", "sockd.route", func(name string, src []byte) (string, error) {
		f, err := ParseInterfaces(name, bytes.NewReader(src))
		if err != nil {
			return "", err
		}
		var b strings.Builder
		for _, l := range f.Lines {
			fmt.Fprintf(&b, "%d:%d %s via %s\n", l.Pos.Line, l.Pos.Column, l.Dst, l.Addr)
		}
		return b.String(), nil
	})
}

func TestCredentials(t *testing.T) {
	src := "# next-hop credentials\n10.0.0.1 alice s3cret\n[2001:db8::1]/1080 bob pass with blanks\ngw.example/8080\tcarol\tp#w\n"
	got, err := ParseCredentials("srelay.passwd", strings.NewReader(src))
	if err != nil {
		t.Fatal(err)
	}
	want := []Credential{
		{Host: "10.0.0.1", User: "alice", Password: "s3cret"},
		{Host: "2001:db8::1", Port: 1080, User: "bob", Password: "pass with blanks"},
		{Host: "gw.example", Port: 8080, User: "carol", Password: "p#w"},
	}
	if len(got) != len(want) {
		t.Fatalf("got %+v", got)
	}
	for i := range want {
		got[i].Pos = Pos{}
		if got[i] != want[i] {
			t.Errorf("line %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
	_, err = ParseCredentials("srelay.passwd", strings.NewReader("gw alice\ngw/99999 a b\n"))
	want2 := "srelay.passwd:1:1: expected host[/port] user password\nsrelay.passwd:2:4: port \"99999\" is not a number from 1 to 65535"
	if err == nil || err.Error() != want2 {
		t.Errorf("got %v\nwant %s", err, want2)
	}
}
