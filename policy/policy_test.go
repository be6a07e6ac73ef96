package policy

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/sockd-ng/sockd/grammar"
	"golang.org/x/tools/txtar"
)

// A decide archive holds:
//
//	-- sockd.conf --      the rules
//	-- options --         optional: "ident=I", "ident=i", "inverted-masks"
//	-- dns --             optional: "NAME ADDR..." and "ptr ADDR NAME" lines
//	-- /any/abs/path --   user files, by their absolute path
//	-- socks.conf --      optional routes (or srelay.conf), srelay.passwd
//	                      credentials, "default-server=HOP" in options
//	-- want.err --        the exact compile error, or
//	-- warnings --        the exact warnings (may be empty), and
//	-- queries --         "FIELDS => ACTION RULE REPLY [EXTRA...]" lines
//
// Query fields: from=IP user=NAME auth=claimed|password|none dst=IP
// name=NAME port=N cmd=connect|bind|udp ident=agree|down|says:NAME
// resolve=no any=yes (AnyDestination). Expected extras: addrs=A,B (permitted addresses),
// hooks=T1|T2 (hook templates), asked=true|false (identd was asked),
// user=NAME, route=KIND@RULE.
func TestDecide(t *testing.T) {
	paths, _ := filepath.Glob("testdata/decide/*.txtar")
	if len(paths) == 0 {
		t.Fatal("no testdata")
	}
	for _, path := range paths {
		t.Run(strings.TrimSuffix(filepath.Base(path), ".txtar"), func(t *testing.T) {
			ar, err := txtar.ParseFile(path)
			if err != nil {
				t.Fatal(err)
			}
			sections := map[string]string{}
			fsys := fstest.MapFS{}
			for _, f := range ar.Files {
				sections[f.Name] = string(f.Data)
				if strings.HasPrefix(f.Name, "/") {
					fsys[f.Name[1:]] = &fstest.MapFile{Data: f.Data}
				}
			}
			opt := Options{FS: fsys}
			if src, ok := sections["socks.conf"]; ok {
				if opt.Routes, err = grammar.ParseSocks("socks.conf", strings.NewReader(src)); err != nil {
					t.Fatal(err)
				}
			}
			if src, ok := sections["srelay.conf"]; ok {
				if opt.Routes, err = grammar.ParseSrelay("srelay.conf", strings.NewReader(src)); err != nil {
					t.Fatal(err)
				}
			}
			if src, ok := sections["srelay.passwd"]; ok {
				if opt.Credentials, err = grammar.ParseCredentials("srelay.passwd", strings.NewReader(src)); err != nil {
					t.Fatal(err)
				}
			}
			for _, o := range strings.Fields(sections["options"]) {
				if v, ok := strings.CutPrefix(o, "default-server="); ok {
					opt.DefaultServer = v
					continue
				}
				switch o {
				case "ident=I":
					opt.Ident = grammar.IdentStrict
				case "ident=i":
					opt.Ident = grammar.IdentLenient
				case "inverted-masks":
					opt.InvertedMasks = true
				default:
					t.Fatalf("unknown option %q", o)
				}
			}
			f, err := grammar.ParseSockd("sockd.conf", strings.NewReader(sections["sockd.conf"]))
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			rs, err := Compile(f, opt)
			if want, ok := sections["want.err"]; ok {
				if err == nil || err.Error()+"\n" != want {
					t.Fatalf("compile error:\ngot  %v\nwant %s", err, want)
				}
				return
			}
			if err != nil {
				t.Fatalf("compile: %v", err)
			}
			if want, ok := sections["warnings"]; ok {
				var got strings.Builder
				for _, w := range rs.Warnings {
					fmt.Fprintln(&got, w)
				}
				if got.String() != want {
					t.Errorf("warnings:\ngot:\n%s\nwant:\n%s", got.String(), want)
				}
			}
			dns := parseDNS(t, sections["dns"])
			// Every query is decided by trying each rule in turn and
			// through an index, whatever Compile chose for this size.
			for _, how := range []string{"scan", "index"} {
				rs := withIndex(rs, how == "index")
				n := 0
				for i, line := range strings.Split(sections["queries"], "\n") {
					line = strings.TrimSpace(line)
					if line == "" || line[0] == '#' {
						continue
					}
					n++
					fields, want, ok := strings.Cut(line, "=>")
					if !ok {
						t.Fatalf("queries line %d has no =>", i+1)
					}
					q := parseQuery(t, fields, dns)
					d := rs.Decide(context.Background(), q)
					if got := describeDecision(&d, strings.Fields(want)); got != strings.TrimSpace(want) {
						t.Errorf("%s: queries line %d: %s\n got: %s\nwant: %s", how, i+1, strings.TrimSpace(fields), got, strings.TrimSpace(want))
					}
				}
				if n == 0 {
					t.Fatal("no queries")
				}
			}
		})
	}
}

type fakeDNS struct {
	fwd map[string][]netip.Addr
	ptr map[netip.Addr]string
}

func parseDNS(t *testing.T, s string) *fakeDNS {
	d := &fakeDNS{fwd: map[string][]netip.Addr{}, ptr: map[netip.Addr]string{}}
	for _, line := range strings.Split(s, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 0:
		case f[0] == "ptr" && len(f) == 3:
			d.ptr[netip.MustParseAddr(f[1])] = f[2]
		default:
			for _, a := range f[1:] {
				d.fwd[f[0]] = append(d.fwd[f[0]], netip.MustParseAddr(a))
			}
		}
	}
	return d
}

// confirmed is a forward-confirmed reverse lookup against the table.
func (d *fakeDNS) confirmed(a netip.Addr) string {
	name := d.ptr[a]
	for _, b := range d.fwd[name] {
		if b == a {
			return name
		}
	}
	return ""
}

func parseQuery(t *testing.T, s string, dns *fakeDNS) Query {
	q := Query{Command: Connect, Port: 80}
	identMode := "agree"
	resolve := true
	for _, kv := range strings.Fields(s) {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "from":
			q.Client = netip.MustParseAddr(v)
		case "user":
			q.User = v
		case "auth":
			q.Source = map[string]UserSource{"claimed": UserClaimed, "password": UserPassword, "none": UserNone}[v]
		case "dst":
			q.Dst = netip.MustParseAddr(v)
		case "name":
			q.DstName = v
		case "port":
			fmt.Sscan(v, &q.Port)
		case "cmd":
			q.Command = map[string]Command{"connect": Connect, "bind": Bind, "udp": UDP}[v]
		case "ident":
			identMode = v
		case "resolve":
			resolve = v != "no"
		case "any":
			q.AnyDestination = v == "yes"
		default:
			t.Fatalf("unknown query field %q", k)
		}
	}
	asked := 0
	q.Ident = func(context.Context) IdentResult {
		asked++
		if asked > 1 {
			t.Errorf("identd asked %d times", asked)
		}
		switch {
		case identMode == "down":
			return IdentResult{Down: true}
		case strings.HasPrefix(identMode, "says:"):
			return IdentResult{User: identMode[5:]}
		}
		return IdentResult{User: q.User}
	}
	q.ClientName = func(context.Context) string { return dns.confirmed(q.Client) }
	q.DstAddrName = func(_ context.Context, a netip.Addr) string { return dns.confirmed(a) }
	if resolve {
		q.Resolve = func(_ context.Context, name string) ([]netip.Addr, error) {
			if a, ok := dns.fwd[strings.TrimSuffix(strings.ToLower(name), ".")]; ok {
				return a, nil
			}
			return nil, errors.New("no such host")
		}
	}
	return q
}

func ruleOr(r string) string {
	if r == "" {
		return "default"
	}
	return r
}

// describeDecision prints d in the form of the expectations, with the
// extras that the expectation asks about.
func describeDecision(d *Decision, want []string) string {
	rule := d.Rule
	if rule == "" {
		rule = "default"
	}
	out := fmt.Sprintf("%s %s %d", d.Action, rule, d.Reply)
	for _, w := range want[min(3, len(want)):] {
		k, _, _ := strings.Cut(w, "=")
		switch k {
		case "addrs":
			var s []string
			for _, a := range d.Addrs {
				s = append(s, a.String())
			}
			out += " addrs=" + strings.Join(s, ",")
		case "hooks":
			var s []string
			for _, h := range d.Hooks[:d.NumHooks] {
				s = append(s, strings.ReplaceAll(h.Template, " ", "_"))
			}
			out += " hooks=" + strings.Join(s, "|")
		case "asked":
			out += fmt.Sprintf(" asked=%v", d.IdentAsked)
		case "user":
			out += " user=" + d.User
		case "route":
			out += " route=" + strings.ReplaceAll(d.Route.String(), " ", "_") + "@" + ruleOr(d.Route.Rule)
		default:
			out += " " + w + "?"
		}
	}
	return out
}

// Decide on a numeric request allocates nothing: it runs for every
// connection.
func TestDecideAllocs(t *testing.T) {
	src := "deny 10.0.0.0 255.0.0.0 eq telnet\n" +
		"permit *=alice,bob 10.0.0.0/8 192.168.0.0 255.255.0.0 eq 80\n" +
		"permit ?=i 127.0.0.0/8 [::1] neq 25\n" +
		"permit 127.0.0.0/8\n"
	f, err := grammar.ParseSockd("a.conf", strings.NewReader(src))
	if err != nil {
		t.Fatal(err)
	}
	rs, err := Compile(f, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ident := func(context.Context) IdentResult { return IdentResult{User: "alice"} }
	q := Query{Command: Connect, Client: netip.MustParseAddr("127.0.0.1"), User: "alice",
		Dst: netip.MustParseAddr("192.168.1.1"), Port: 80, Ident: ident}
	ctx := context.Background()
	var d Decision
	allocs := testing.AllocsPerRun(1000, func() { d = rs.Decide(ctx, q) })
	if allocs != 0 {
		t.Errorf("Decide allocates %.1f times per call", allocs)
	}
	if d.Rule != "a.conf:4" || !d.Permitted() {
		t.Errorf("got %+v", d)
	}
}

func TestExpand(t *testing.T) {
	tok := &Tokens{
		ClientName: "host.example.com", ClientAddr: "10.0.0.1", Command: "connect", PID: "42",
		Service: "http", Port: "80", IdentUser: "unknown", User: "-rf; rm *`x`$(y)\\",
		DstName: "www.example.com", DstAddr: "192.0.2.1",
	}
	for _, tc := range []struct {
		name, tmpl, want string
		ok               bool
	}{
		{"all tokens", "%A %a %c %p %S %s %U %Z %z", "host.example.com 10.0.0.1 connect 42 http 80 unknown www.example.com 192.0.2.1", true},
		{"hostile user", "finger %u@%a", "finger _rf__rm___x___y__@10.0.0.1", true},
		{"percent", "100%% %u%", "100% _rf__rm___x___y__", true},
		{"unknown token", "x%qy", "xy", true},
		{"template untouched", "echo '$HOME' | mail -s \"%c\" root", "echo '$HOME' | mail -s \"connect\" root", true},
		{"nothing left", "%q %% ", " % ", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := Expand(tc.tmpl, tok)
			if got != tc.want || ok != tc.ok {
				t.Errorf("Expand(%q) = %q, %v; want %q, %v", tc.tmpl, got, ok, tc.want, tc.ok)
			}
		})
	}
}

func TestNeedsToken(t *testing.T) {
	for _, tc := range []struct {
		tmpl string
		x    byte
		want bool
	}{
		{"finger @%A", 'A', true},
		{"echo %%A", 'A', false},
		{"echo %%%A", 'A', true},
		{"echo %a", 'A', false},
	} {
		if got := NeedsToken(tc.tmpl, tc.x); got != tc.want {
			t.Errorf("NeedsToken(%q, %c) = %v", tc.tmpl, tc.x, got)
		}
	}
}

// The printed ruleset is what "sockd check" shows.
func TestRulesetString(t *testing.T) {
	src := "permit ?=I *=alice,/etc/staff 10.0.0.0/8 ALL 0.0.0.0 eq telnet : echo %u\n" +
		"deny ALL 0.0.0.0 neq 80-90\n#BAD_ID: mail root\n"
	f, err := grammar.ParseSockd("s.conf", strings.NewReader(src))
	if err != nil {
		t.Fatal(err)
	}
	fsys := fstest.MapFS{"etc/staff": {Data: []byte("bob carol # staff\ndave,erin\n")}}
	rs, err := Compile(f, Options{FS: fsys, Ident: grammar.IdentLenient})
	if err != nil {
		t.Fatal(err)
	}
	want := "s.conf:1: permit ?=I *=alice,/etc/staff(4 users) 10.0.0.0 255.0.0.0 ALL 0.0.0.0 eq telnet (23) : echo %u\n" +
		"s.conf:2: deny ?=i ALL 0.0.0.0 neq 80-90\n" +
		"s.conf:3: #BAD_ID: mail root\n"
	if got := rs.String(); got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
	if fs := rs.Files(); len(fs) != 1 || fs[0] != "/etc/staff" {
		t.Errorf("Files() = %v", fs)
	}
}

// Routes and interfaces print for "sockd check", credentials attach to
// their hops but never print, and sockd.route chooses source addresses.
func TestRoutesCompiled(t *testing.T) {
	f, err := grammar.ParseSockd("sockd.conf", strings.NewReader("permit ALL 0.0.0.0\n"))
	if err != nil {
		t.Fatal(err)
	}
	routes, err := grammar.ParseSocks("socks.conf", strings.NewReader(
		"sockd @=gw1,socks5://gw2>http://gw3:3128 .example.com 0.0.0.0 : echo x\ndirect *=alice 10.0.0.0/8 eq 80\nsockd ALL 0.0.0.0\n"))
	if err != nil {
		t.Fatal(err)
	}
	creds, _ := grammar.ParseCredentials("srelay.passwd", strings.NewReader("gw2 bob s3cret\ngw3/3128 carol pw2\n"))
	ifaces, err := grammar.ParseInterfaces("sockd.route", strings.NewReader("192.0.2.1 10.0.0.0/8\n[2001:db8::1] [2001:db8::/32]\n"))
	if err != nil {
		t.Fatal(err)
	}
	rs, err := Compile(f, Options{Routes: routes, Credentials: creds, Interfaces: ifaces, DefaultServer: "def.example:1081",
		LookupPort: func(string) (int, error) { return 1080, nil }})
	if err != nil {
		t.Fatal(err)
	}
	want := "sockd.conf:1: permit ALL 0.0.0.0\n" +
		"socks.conf:1: sockd @=gw1:1080,socks5://bob@gw2:1080>http://carol@gw3:3128 .example.com 0.0.0.0 : echo x\n" +
		"socks.conf:2: direct *=alice 10.0.0.0 255.0.0.0 eq 80\n" +
		"socks.conf:3: sockd @=def.example:1081 ALL 0.0.0.0\n" +
		"sockd.route:1: 10.0.0.0 255.0.0.0 from 192.0.2.1\n" +
		"sockd.route:2: [2001:db8::/32] from 2001:db8::1\n"
	if got := rs.String(); got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
	d := rs.Decide(context.Background(), Query{Command: Connect, Client: netip.MustParseAddr("10.0.0.1"), DstName: "www.example.com", Port: 443})
	hops := d.Route.Chains[1]
	if hops[0].User != "bob" || hops[0].Password != "s3cret" || hops[1].User != "carol" || hops[1].Password != "pw2" {
		t.Errorf("credentials: %+v", hops)
	}
	if s := d.Route.String(); strings.Contains(s, "s3cret") || strings.Contains(s, "bob") {
		t.Errorf("route string shows credentials: %s", s)
	}
	for _, tc := range []struct {
		dst, src string
		ok       bool
	}{{"10.1.2.3", "192.0.2.1", true}, {"2001:db8::7", "2001:db8::1", true}, {"8.8.8.8", "invalid IP", false}} {
		src, _, ok := d.Interfaces.Source(netip.MustParseAddr(tc.dst))
		if src.String() != tc.src || ok != tc.ok {
			t.Errorf("Source(%s) = %s, %v", tc.dst, src, ok)
		}
	}
}
