package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/sockd-ng/sockd/policy"
	"github.com/sockd-ng/sockd/relay"
)

// explain says what the server would do with one request, resolving names
// as the server would. Its first output line is stable, for scripts:
//
//	permit FILE:LINE reply 90
//	deny FILE:LINE|default reply 91|92|93
//
// then one "address ADDR permit|deny FILE:LINE|default" line per resolved
// address of a destination name, the route, and one "run: COMMAND" line per
// command that would run (none is run). Exit status 0 permit, 1 deny, 2
// error.
func explain(name string, args []string, stdout, stderr io.Writer) int {
	var o options
	fs := flag.NewFlagSet("sockd explain", flag.ContinueOnError)
	o.fileFlags(fs, name)
	from := fs.String("from", "127.0.0.1", "client `address`")
	user := fs.String("user", "", "claimed user (SOCKS4 USERID), or with -socks5 the authenticated username")
	identMode := fs.String("ident", "agree", "identd answer: `agree`, down or says:NAME")
	command := fs.String("command", "connect", "`command`: connect, bind or udp")
	socks5 := fs.Bool("socks5", false, "a SOCKS5 client: authenticated as -user, or without -user not authenticated (the identd answer is then the user)")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: sockd explain [flags] DEST PORT")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args, stderr); err != nil {
		return 2
	}
	if fs.NArg() != 2 {
		fs.Usage()
		return 2
	}
	c, err := load(&o)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	res, err := resolver(o.nameserver)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	q, err := explainQuery(fs.Arg(0), fs.Arg(1), *from, *user, *command, *socks5)
	if err != nil {
		fmt.Fprintln(stderr, "sockd explain:", err)
		return 2
	}
	q.Ident, err = explainIdent(*identMode, *user)
	if err != nil {
		fmt.Fprintln(stderr, "sockd explain:", err)
		return 2
	}
	q.ClientName = func(ctx context.Context) string { return relay.LookupConfirmed(ctx, res, q.Client) }
	q.DstAddrName = func(ctx context.Context, a netip.Addr) string { return relay.LookupConfirmed(ctx, res, a) }
	q.Resolve = func(ctx context.Context, name string) ([]netip.Addr, error) { return relay.LookupAddrs(ctx, res, name) }

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d := c.rules.Decide(ctx, q)
	fmt.Fprintf(stdout, "%s %s reply %d\n", d.Action, ruleOrDefault(d.Rule), d.Reply)
	if q.DstName == "" && q.Command != policy.Bind && policy.Unspecified(q.Dst) {
		fmt.Fprintf(stdout, "# %s is an unspecified address: it reaches this host, so it is never a destination\n", q.Dst)
	}
	for _, v := range d.PerAddr {
		fmt.Fprintf(stdout, "address %s %s %s\n", v.Addr, v.Action, ruleOrDefault(v.Rule))
		if policy.Unspecified(v.Addr) {
			fmt.Fprintf(stdout, "# %s is an unspecified address: it reaches this host, so it is never a destination\n", v.Addr)
		}
	}
	if d.Resolved && d.ResolveErr != nil {
		fmt.Fprintf(stdout, "# %s does not resolve: %v\n", q.DstName, d.ResolveErr)
	}
	switch r := d.Route; {
	case d.Permitted() && r.Kind == policy.RouteDirect:
		fmt.Fprintln(stdout, "route direct")
		if r.Rule != "" {
			fmt.Fprintf(stdout, "# direct by %s\n", r.Rule)
		}
	case d.Permitted():
		fmt.Fprintf(stdout, "route %s %s\n", r, r.Rule)
	case r.Kind == policy.RouteDeny:
		fmt.Fprintf(stdout, "route deny %s\n", ruleOrDefault(r.Rule))
	}
	tok := policy.TokensFor(&q, &d)
	tok.PID = strconv.Itoa(os.Getpid())
	tok.Service = relay.ReadServices("/etc/services").Name(q.Port)
	for _, h := range d.Hooks[:d.NumHooks] {
		t := tok
		if policy.NeedsToken(h.Template, 'A') {
			if name := q.ClientName(ctx); name != "" {
				t.ClientName = name
			}
		}
		if policy.NeedsToken(h.Template, 'Z') && q.DstName == "" && q.Dst.IsValid() {
			if name := q.DstAddrName(ctx, q.Dst); name != "" {
				t.DstName = name
			}
		}
		if cmd, ok := policy.Expand(h.Template, &t); ok {
			fmt.Fprintf(stdout, "run: %s\n", cmd)
		}
	}
	if !d.Permitted() {
		return 1
	}
	return 0
}

func ruleOrDefault(rule string) string {
	if rule == "" {
		return "default"
	}
	return rule
}

// explainQuery builds the request explain judges.
func explainQuery(dest, port, from, user, command string, socks5 bool) (policy.Query, error) {
	q := policy.Query{User: user, Source: policy.UserClaimed}
	if socks5 {
		q.Source = policy.UserPassword
		if user == "" {
			q.Source = policy.UserNone
		}
	}
	var err error
	if q.Client, err = netip.ParseAddr(from); err != nil {
		return q, fmt.Errorf("-from %q is not an address", from)
	}
	q.Client = q.Client.Unmap()
	if a, err := netip.ParseAddr(strings.Trim(dest, "[]")); err == nil {
		q.Dst = a.Unmap()
	} else {
		q.DstName = dest
	}
	n, err := net.LookupPort("tcp", port)
	if err != nil {
		return q, fmt.Errorf("port %q is not a number or a tcp service name", port)
	}
	q.Port = uint16(n)
	switch command {
	case "connect":
		q.Command = policy.Connect
	case "bind":
		q.Command = policy.Bind
	case "udp":
		q.Command = policy.UDP
	default:
		return q, fmt.Errorf("-command %q: want connect, bind or udp", command)
	}
	return q, nil
}

// explainIdent stands in for the client's identd.
func explainIdent(mode, user string) (func(context.Context) policy.IdentResult, error) {
	var r policy.IdentResult
	switch {
	case mode == "agree":
		r.User = user
	case mode == "down":
		r.Down = true
	case strings.HasPrefix(mode, "says:"):
		r.User = strings.TrimPrefix(mode, "says:")
	default:
		return nil, fmt.Errorf("-ident %q: want agree, down or says:NAME", mode)
	}
	return func(context.Context) policy.IdentResult { return r }, nil
}
