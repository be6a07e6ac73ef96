package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"

	htpasswd "github.com/tg123/go-htpasswd"
	"golang.org/x/crypto/bcrypt"

	"github.com/sockd-ng/sockd/grammar"
	"github.com/sockd-ng/sockd/policy"
)

// config is everything the files on disk say, loaded and checked as a
// whole: it is swapped in on reload only when all of it is valid.
type config struct {
	rules     *policy.Ruleset
	passwords *passwords // nil without -passwd
	// files are every file in use, for watching; sum is a hash of their
	// contents, for "which config is in force".
	files []string
	sum   string
}

// load reads and compiles every configured file. Errors are a
// grammar.ErrorList (FILE:LINE:COL each) or a plain error for a file that
// cannot be read.
func load(o *options) (*config, error) {
	h := sha256.New()
	files := []string{o.config}
	src, err := os.ReadFile(o.config)
	if err != nil {
		return nil, err
	}
	h.Write(src)
	var errs grammar.ErrorList
	c := &config{}
	f, err := grammar.ParseSockd(o.config, bytes.NewReader(src))
	errs = append(errs, grammar.Errors(err)...)
	opt := policy.Options{
		FS:            hashingFS{fs: os.DirFS("/"), h: h},
		Ident:         o.identMode(),
		InvertedMasks: o.invertedMasks,
		DefaultServer: o.socksServer,
	}
	// Each routing file is read, hashed and parsed; errors of all files are
	// reported together.
	readParse := func(path string, parse func(string, *bytes.Reader) error) error {
		if path == "" {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		files = append(files, path)
		h.Write(b)
		errs = append(errs, grammar.Errors(parse(path, bytes.NewReader(b)))...)
		return nil
	}
	if o.routes != "" && o.srelayConf != "" {
		return nil, fmt.Errorf("give -routes or -srelay-conf, not both")
	}
	for _, rf := range []struct {
		path  string
		parse func(string, *bytes.Reader) error
	}{
		{o.routes, func(p string, r *bytes.Reader) (err error) { opt.Routes, err = grammar.ParseSocks(p, r); return }},
		{o.srelayConf, func(p string, r *bytes.Reader) (err error) { opt.Routes, err = grammar.ParseSrelay(p, r); return }},
		{o.interfaces, func(p string, r *bytes.Reader) (err error) {
			opt.Interfaces, err = grammar.ParseInterfaces(p, r)
			return
		}},
		{o.upstreamPasswd, func(p string, r *bytes.Reader) (err error) {
			opt.Credentials, err = grammar.ParseCredentials(p, r)
			return
		}},
	} {
		if err := readParse(rf.path, rf.parse); err != nil {
			return nil, err
		}
	}
	if len(errs) == 0 {
		c.rules, err = policy.Compile(f, opt)
		if err != nil {
			if errs = grammar.Errors(err); len(errs) == 0 {
				return nil, err
			}
		}
	}
	if c.rules != nil {
		files = append(files, c.rules.Files()...)
	}
	if o.passwd != "" {
		files = append(files, o.passwd)
		b, err := os.ReadFile(o.passwd)
		if err != nil {
			return nil, err
		}
		h.Write(b)
		pw, perrs := parsePasswords(o.passwd, b)
		errs = append(errs, perrs...)
		c.passwords = pw
	}
	if err := errs.Err(); err != nil {
		return nil, err
	}
	c.files = files
	c.sum = hex.EncodeToString(h.Sum(nil))[:12]
	return c, nil
}

// hashingFS is an fs.FS that adds what it reads to a hash, so that the
// user files count in the configuration's checksum.
type hashingFS struct {
	fs fs.FS
	h  interface{ Write([]byte) (int, error) }
}

func (h hashingFS) Open(name string) (fs.File, error) { return h.fs.Open(name) }

func (h hashingFS) ReadFile(name string) ([]byte, error) {
	b, err := fs.ReadFile(h.fs, name)
	if err == nil {
		h.h.Write([]byte(name))
		h.h.Write(b)
	}
	return b, err
}

// systems are the password hashes accepted: those htpasswd writes, except
// plain text and crypt(3) DES, which are refused as unsafe.
var systems = []htpasswd.PasswdParser{htpasswd.AcceptBcrypt, htpasswd.AcceptMd5, htpasswd.AcceptSha, htpasswd.AcceptSsha, htpasswd.AcceptCryptSha}

// parsePasswords checks every line of an htpasswd file, reporting bad ones
// at FILE:LINE:1, and loads it.
func parsePasswords(name string, b []byte) (*passwords, grammar.ErrorList) {
	var errs grammar.ErrorList
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		pos := grammar.Pos{Filename: name, Line: i + 1, Column: 1}
		user, hash, ok := strings.Cut(line, ":")
		if !ok || user == "" {
			errs.Add(pos, "expected user:hash")
			continue
		}
		accepted := false
		for _, p := range systems {
			m, err := p(hash)
			if err != nil {
				break
			}
			if m != nil {
				accepted = true
				break
			}
		}
		if !accepted {
			errs.Add(pos, "user %q: unsupported password hash (use htpasswd -B for bcrypt)", user)
		}
	}
	if len(errs) > 0 {
		return nil, errs
	}
	var comments bytes.Buffer
	for _, line := range strings.Split(string(b), "\n") {
		if t := strings.TrimSpace(line); t != "" && t[0] != '#' {
			comments.WriteString(t + "\n")
		}
	}
	f, err := htpasswd.NewFromReader(&comments, systems, nil)
	if err != nil {
		errs.Add(grammar.Pos{Filename: name}, "%v", err)
		return nil, errs
	}
	return &passwords{f: f}, nil
}

// passwords checks SOCKS5 usernames and passwords against an htpasswd
// file. An unknown user costs a bcrypt comparison too, so that timing does
// not tell which users exist.
type passwords struct {
	f *htpasswd.File
}

var dummyHash, _ = bcrypt.GenerateFromPassword([]byte("sockd timing equaliser"), bcrypt.DefaultCost)

func (p *passwords) Match(user, password string) bool {
	if !p.f.Exists(user) {
		bcrypt.CompareHashAndPassword(dummyHash, []byte(password))
		return false
	}
	return p.f.Match(user, password)
}

// livePasswords is the password file in force, swapped on reload.
type livePasswords struct{ p atomic.Pointer[passwords] }

func (l *livePasswords) Match(user, password string) bool {
	p := l.p.Load()
	return p != nil && p.Match(user, password)
}

// resolver is the DNS of the server: the system's, or with -nameserver
// (legacy SOCKS_NS) every query goes to that server.
func resolver(nameserver string) (*net.Resolver, error) {
	if nameserver == "" {
		return net.DefaultResolver, nil
	}
	addr := nameserver
	if _, _, err := net.SplitHostPort(nameserver); err != nil {
		addr = net.JoinHostPort(strings.Trim(nameserver, "[]"), "53")
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return nil, fmt.Errorf("-nameserver %q: %v", nameserver, err)
	}
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
	}, nil
}

// frozenWarnings name the frozen configurations (sockd.fc, socks.fc) a
// legacy server would have preferred to the text files, when they exist
// next to them.
func frozenWarnings(o *options) []string {
	var out []string
	for _, conf := range []string{o.config, o.routes} {
		if conf == "" {
			continue
		}
		fc := strings.TrimSuffix(conf, filepath.Ext(conf)) + ".fc"
		if _, err := os.Stat(fc); err == nil {
			out = append(out, fc)
		}
	}
	return out
}
