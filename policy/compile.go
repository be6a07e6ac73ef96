// Package policy compiles the access rules of sockd.conf into an immutable
// Ruleset and decides requests against it (sockd.conf(5)).
//
// It does no network I/O: the identd answer, reverse names and the
// addresses of a destination name reach Decide as lazy funcs on Query, which
// relay builds and Decide calls only when a rule needs them. It reads user
// files, through an fs.FS, only while compiling.
package policy

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/sockd-ng/sockd/grammar"
)

// Options are the settings that change what a sockd.conf means.
type Options struct {
	// FS reads the user files that rules name. Their paths are absolute;
	// they are looked up with the leading '/' removed. Nil means the root
	// file system.
	FS fs.FS
	// Ident is the global ident mode (legacy -i, -I) for rules without ?=.
	Ident grammar.IdentMode
	// InvertedMasks reads IPv4 masks the pre-4.x way: 1-bits mean
	// "ignore".
	InvertedMasks bool
	// LookupPort finds a TCP service name; nil means net.LookupPort,
	// which reads /etc/services.
	LookupPort func(service string) (int, error)

	// Routes is the routing table (socks.conf or srelay.conf); nil means
	// every permitted request goes out directly.
	Routes *grammar.RouteFile
	// DefaultServer is the server list of sockd lines without one
	// (-socks-server, $SOCKS_SERVER), written as after @=: alternatives
	// separated by commas, tried in order.
	DefaultServer string
	// Credentials are the next hops' users and passwords
	// (-upstream-passwd).
	Credentials []grammar.Credential
	// Interfaces (sockd.route) chooses the local address of outgoing
	// connections and BIND listeners; nil leaves it to the system.
	Interfaces *grammar.InterfaceFile
}

// Compile turns a parsed sockd.conf, and the routing files in opt, into a
// Ruleset. It reads the user files the rules name, looks up service names,
// and checks the files as a whole.
// Every problem is reported in one grammar.ErrorList, each at its
// FILE:LINE:COL; any error means no Ruleset.
func Compile(f *grammar.File, opt Options) (*Ruleset, error) {
	if opt.FS == nil {
		opt.FS = os.DirFS("/")
	}
	if opt.LookupPort == nil {
		opt.LookupPort = func(s string) (int, error) { return net.LookupPort("tcp", s) }
	}
	c := compiler{opt: opt, userFiles: map[string][]string{}, services: map[string]int{}}
	rs := &Ruleset{Warnings: append(grammar.ErrorList(nil), f.Warnings...), rules: make([]rule, 0, len(f.Rules))}
	for _, gr := range f.Rules {
		rs.rules = append(rs.rules, c.rule(f.Filename, gr, &rs.Warnings))
	}
	if f.NoIdentd != nil {
		rs.noIdentd = &Hook{Source: posString(f.NoIdentd.Pos), Template: f.NoIdentd.Command}
	}
	if f.BadID != nil {
		rs.badID = &Hook{Source: posString(f.BadID.Pos), Template: f.BadID.Command}
	}
	if opt.Routes != nil {
		rs.routes = c.compileRoutes(opt.Routes, &rs.Warnings)
		rs.Warnings = append(rs.Warnings, opt.Routes.Warnings...)
	}
	if opt.Interfaces != nil {
		rs.interfaces = c.compileInterfaces(opt.Interfaces, &rs.Warnings)
	}
	if err := c.errs.Err(); err != nil {
		return nil, err
	}
	checkShadowed(rs)
	if len(rs.rules) >= indexMin {
		rs.idx = buildIndex(rs.rules)
	}
	rs.Warnings.Sort()
	for name := range c.userFiles {
		rs.files = append(rs.files, name)
	}
	sort.Strings(rs.files)
	return rs, nil
}

// posString gives FILE:LINE.
func posString(p grammar.Pos) string {
	return p.Filename + ":" + strconv.Itoa(p.Line)
}

type compiler struct {
	opt       Options
	errs      grammar.ErrorList
	userFiles map[string][]string // path -> ids, each file read once
	services  map[string]int      // service name -> port, -1 if unknown
}

func (c *compiler) rule(filename string, gr *grammar.Rule, warns *grammar.ErrorList) rule {
	r := rule{src: gr, pos: posString(gr.Pos), deny: gr.Action == grammar.Deny, ident: gr.Ident}
	if r.ident == grammar.IdentUnset {
		r.ident = c.opt.Ident
	}
	r.from = c.host(gr.Src, warns)
	if gr.Dst != nil {
		r.to, r.hasTo = c.host(*gr.Dst, warns), true
	}
	if gr.Port != nil {
		r.port = c.port(gr.Port)
	}
	r.users = c.users(gr.Users)
	r.userDesc = c.userDesc(gr.Users)
	if gr.Command != "" {
		r.hook = &Hook{Source: r.pos, Template: gr.Command}
	}
	return r
}

// port compiles a port test, looking up a service name.
func (c *compiler) port(p *grammar.PortTest) portMatch {
	lo, hi := p.Lo, p.Hi
	if p.Service != "" {
		n, ok := c.services[p.Service]
		if !ok {
			// Once per name: with cgo, each lookup is a getaddrinfo call.
			var err error
			if n, err = c.opt.LookupPort(p.Service); err != nil || n < 0 || n > 65535 {
				n = -1
			}
			c.services[p.Service] = n
		}
		if n < 0 {
			c.errs.Add(p.PortPos, "port %q is not a number or a tcp service name (see /etc/services)", p.Service)
		}
		lo, hi = uint16(n), uint16(n)
	}
	return compilePort(p, lo, hi)
}

// users compiles a *= list, reading the user files it names; nil means
// any user.
func (c *compiler) users(list []grammar.User) map[string]struct{} {
	if len(list) == 0 {
		return nil
	}
	set := map[string]struct{}{}
	for _, u := range list {
		if !u.IsFile() {
			set[u.Name] = struct{}{}
			continue
		}
		ids, err := c.userFile(u.Name)
		if err != nil {
			c.errs.Add(u.Pos, "user file %s: %v", u.Name, err)
			continue
		}
		for _, id := range ids {
			set[id] = struct{}{}
		}
	}
	return set
}

// userDesc describes a *= list for printing: ids, and files with their
// number of users.
func (c *compiler) userDesc(list []grammar.User) string {
	var desc []string
	for _, u := range list {
		if ids, ok := c.userFiles[u.Name]; ok && u.IsFile() {
			desc = append(desc, fmt.Sprintf("%s(%d users)", u.Name, len(ids)))
		} else {
			desc = append(desc, u.Name)
		}
	}
	return strings.Join(desc, ",")
}

func (c *compiler) host(h grammar.Host, warns *grammar.ErrorList) hostMatch {
	if h.Kind == grammar.HostAddr && h.Addr.Is4() && !c.opt.InvertedMasks && looksInverted(h.Mask) {
		warns.Add(h.Pos, "mask %s looks inverted (its 1-bits are at the low end); it is read as written, so the rule compares only those bits — run with -inverted-masks if this file uses the pre-4.x convention", h.Mask)
	}
	return compileHost(h, c.opt.InvertedMasks)
}

// looksInverted reports whether an IPv4 mask has its 1-bits at the low end
// only, as pre-4.x masks did (0.0.255.255).
func looksInverted(mask netip.Addr) bool {
	b := mask.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	return v != 0 && v != ^uint32(0) && v&(v+1) == 0
}

// userFile reads a file of user ids: ids separated by blanks, tabs or
// commas, several per line, '#' to the end of a line a comment.
func (c *compiler) userFile(path string) ([]string, error) {
	if ids, ok := c.userFiles[path]; ok {
		return ids, nil
	}
	b, err := fs.ReadFile(c.opt.FS, strings.TrimPrefix(path, "/"))
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, err
	}
	var ids []string
	for _, line := range strings.Split(string(b), "\n") {
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		ids = append(ids, strings.FieldsFunc(line, func(r rune) bool {
			return r == ',' || r == ' ' || r == '\t' || r == '\r' || r == '\v' || r == '\f'
		})...)
	}
	c.userFiles[path] = ids
	return ids, nil
}
