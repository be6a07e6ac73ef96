package grammar

import (
	"bytes"
	"strings"
	"testing"
)

// FuzzParseSockd: no panic and no hang on any input; every error carries
// FILE:LINE:COL inside the file; a file that parses prints as text that
// parses to the same rules (the AST, positions aside).
func FuzzParseSockd(f *testing.F) {
	f.Add("permit *=/etc/sockd.staff 10.0.0.0 255.0.0.0 0.0.0.0 0.0.0.0 eq 80\n")    // user file, legacy masks
	f.Add("deny 10.0.0.0 255.0.0.0 eq telnet : logger %u@%a\n")                      // command
	f.Add("permit ?=I 10.0.0.0/8\npermit [fd00::/8] ALL 0.0.0.0 eq 8000-8100\n")     // extensions
	f.Add("#NO_IDENTD: mail root\n#BAD_ID: mail root\n  #NO_IDENTD: x\n")            // specials
	f.Add("PERMIT ?=i *=a,b .example.com 0.0.0.0 host 0.0.0.0 NEQ 25 :echo a#b\r\n") // case, names
	f.Add("permit 10.1 24\npermit *=a,,b ALL\n: cmd\npermit [::1 eq\n")              // errors
	f.Add("permit ALL 0.0.0.0 # comment: not a command\n")                           // comment first
	f.Add(strings.Repeat("x", 1100))                                                 // long line
	f.Fuzz(func(t *testing.T, src string) {
		file, err := ParseSockd("f.conf", strings.NewReader(src))
		if err != nil {
			errs := Errors(err)
			if len(errs) == 0 {
				t.Fatalf("error without positions: %v", err)
			}
			lines := strings.Count(src, "\n") + 1
			for _, e := range errs {
				if e.Pos.Filename != "f.conf" || e.Pos.Line < 1 || e.Pos.Line > lines || e.Pos.Column < 1 {
					t.Fatalf("bad position in %q", e)
				}
			}
			return
		}
		text := file.Format()
		again, err := ParseSockd("f.conf", bytes.NewReader(text))
		if err != nil {
			t.Fatalf("printed file does not parse: %v\n%s", err, text)
		}
		if len(again.Rules) != len(file.Rules) {
			t.Fatalf("%d rules, then %d", len(file.Rules), len(again.Rules))
		}
		for i, r := range file.Rules {
			if !sameRule(r, again.Rules[i]) {
				t.Fatalf("rule %d: %s\nprinted and parsed again: %s", i, r, again.Rules[i])
			}
		}
		if (file.NoIdentd == nil) != (again.NoIdentd == nil) || (file.BadID == nil) != (again.BadID == nil) {
			t.Fatalf("special lines differ")
		}
	})
}

// sameRule compares two rules, positions aside.
func sameRule(a, b *Rule) bool {
	if a.Action != b.Action || a.Ident != b.Ident || a.Command != b.Command || len(a.Users) != len(b.Users) {
		return false
	}
	for i := range a.Users {
		if a.Users[i].Name != b.Users[i].Name {
			return false
		}
	}
	if !sameHost(&a.Src, &b.Src) || (a.Dst == nil) != (b.Dst == nil) || a.Dst != nil && !sameHost(a.Dst, b.Dst) {
		return false
	}
	if (a.Port == nil) != (b.Port == nil) {
		return false
	}
	if a.Port != nil {
		p, q := *a.Port, *b.Port
		p.Pos, p.PortPos, q.Pos, q.PortPos = Pos{}, Pos{}, Pos{}, Pos{}
		return p == q
	}
	return true
}

func sameHost(a, b *Host) bool {
	return a.Kind == b.Kind && a.Addr == b.Addr && a.Mask == b.Mask && a.Name == b.Name
}

// FuzzParseSocks: as FuzzParseSockd, for socks.conf.
func FuzzParseSocks(f *testing.F) {
	f.Add("direct 10.0.0.0 255.0.0.0\nsockd @=gw1,10.0.0.11 0.0.0.0 0.0.0.0\n")                      // legacy
	f.Add("sockd@gw2,gw3 172.16.0.0 255.240.0.0 : logger %u\n")                                      // legacy spelling
	f.Add("sockd @=socks5://a:1080>http://b:3128,[2001:db8::1]:1080 .example.com 0.0.0.0 ge 1024\n") // chains
	f.Add("deny *=guest ALL 0.0.0.0 eq telnet\nnameserver 10.0.0.53\n")                              // other dialect
	f.Add("sockd @=,, ALL\ndirect @=x\nsockd @=ftp://h\n")                                           // errors
	f.Fuzz(func(t *testing.T, src string) {
		file, err := ParseSocks("s.conf", strings.NewReader(src))
		if err != nil {
			for _, e := range Errors(err) {
				if e.Pos.Filename != "s.conf" || e.Pos.Line < 1 || e.Pos.Column < 1 {
					t.Fatalf("bad position in %q", e)
				}
			}
			return
		}
		text := file.Format()
		again, err := ParseSocks("s.conf", bytes.NewReader(text))
		if err != nil {
			t.Fatalf("printed file does not parse: %v\n%s", err, text)
		}
		if got := string(again.Format()); got != string(text) {
			t.Fatalf("printed:\n%s\nprinted again:\n%s", text, got)
		}
	})
}

// FuzzParseSrelay and FuzzParseInterfaces: no panic, no hang, errors at
// positions inside the file.
func FuzzParseSrelay(f *testing.F) {
	f.Add("10.10.0.0/16 any 10.10.10.1\nDest any Socks-Island 1080 FireWall 8080/H ; c\n")
	f.Add("[::] 22 v6gw\n0.0.0.0 - gw\n* 512- x 1/S\n")
	f.Fuzz(func(t *testing.T, src string) {
		if _, err := ParseSrelay("r.conf", strings.NewReader(src)); err != nil {
			for _, e := range Errors(err) {
				if e.Pos.Line < 1 || e.Pos.Column < 1 {
					t.Fatalf("bad position in %q", e)
				}
			}
		}
	})
}

func FuzzParseInterfaces(f *testing.F) {
	f.Add("192.168.1.1 192.168.0.0 255.255.0.0\n[2001:db8::1] [2001:db8::/32]\n")
	f.Add("10.0.0.1 ALL 0.0.0.0 extra : cmd\n")
	f.Fuzz(func(t *testing.T, src string) {
		if _, err := ParseInterfaces("sockd.route", strings.NewReader(src)); err != nil {
			for _, e := range Errors(err) {
				if e.Pos.Line < 1 || e.Pos.Column < 1 {
					t.Fatalf("bad position in %q", e)
				}
			}
		}
	})
}
