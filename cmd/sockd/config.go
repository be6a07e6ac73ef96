package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
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
	// files are every file the load read (or tried to), in name order, for
	// watching; fp fingerprints exactly what it read (see fingerprint),
	// and sum, its first 12 hex digits, says which config is in force.
	files []string
	fp    [32]byte
	sum   string
	// empty and unterminated name the files read with no bytes, and with
	// bytes after their last newline: what a write in progress looks like.
	empty, unterminated []string
}

// load reads and compiles every configured file. Errors are a
// grammar.ErrorList (FILE:LINE:COL each) or a plain error for a file that
// cannot be read. The config it returns names the files read and their
// fingerprint even with an error, so that a reload can tell whether a
// broken file is still being written.
func load(o *options) (*config, error) {
	rd := &readSet{}
	c := &config{}
	err := c.load(o, rd)
	c.files, c.fp, c.empty, c.unterminated = rd.result()
	c.sum = hex.EncodeToString(c.fp[:])[:12]
	return c, err
}

func (c *config) load(o *options, rd *readSet) error {
	src, err := rd.read(o.config)
	if err != nil {
		return err
	}
	var errs grammar.ErrorList
	f, err := grammar.ParseSockd(o.config, bytes.NewReader(src))
	errs = append(errs, grammar.Errors(err)...)
	opt := policy.Options{
		FS:            readSetFS{rd},
		Ident:         o.identMode(),
		InvertedMasks: o.invertedMasks,
		DefaultServer: o.socksServer,
	}
	// Each routing file is read and parsed; errors of all files are
	// reported together.
	if o.routes != "" && o.srelayConf != "" {
		return fmt.Errorf("give -routes or -srelay-conf, not both")
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
		if rf.path == "" {
			continue
		}
		b, err := rd.read(rf.path)
		if err != nil {
			return err
		}
		errs = append(errs, grammar.Errors(rf.parse(rf.path, bytes.NewReader(b)))...)
	}
	if len(errs) == 0 {
		c.rules, err = policy.Compile(f, opt)
		if err != nil {
			if errs = grammar.Errors(err); len(errs) == 0 {
				return err
			}
		}
	}
	if o.passwd != "" {
		b, err := rd.read(o.passwd)
		if err != nil {
			return err
		}
		pw, perrs := parsePasswords(o.passwd, b)
		errs = append(errs, perrs...)
		c.passwords = pw
	}
	return errs.Err()
}

// readSet reads the files of one load and remembers what it read, so that
// the load can be fingerprinted exactly (the same fingerprint as
// fingerprint gives for the same contents on disk).
type readSet struct {
	files map[string]fileRead
}

type fileRead struct {
	b   []byte
	err error
}

func (rd *readSet) read(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if rd.files == nil {
		rd.files = map[string]fileRead{}
	}
	rd.files[path] = fileRead{b, err}
	return b, err
}

// result lists the files read, in name order, with their fingerprint, and
// those that were empty or unterminated.
func (rd *readSet) result() (files []string, fp [32]byte, empty, unterminated []string) {
	for f := range rd.files {
		files = append(files, f)
	}
	sort.Strings(files)
	h := sha256.New()
	for _, f := range files {
		r := rd.files[f]
		fileprint(h, f, r.b, r.err)
		switch {
		case r.err != nil:
		case len(r.b) == 0:
			empty = append(empty, f)
		case r.b[len(r.b)-1] != '\n':
			unterminated = append(unterminated, f)
		}
	}
	h.Sum(fp[:0])
	return files, fp, empty, unterminated
}

// fingerprint hashes the contents of files (in name order, as a load
// lists them), following symlinks; a file that cannot be read counts by
// its error.
func fingerprint(files []string) [32]byte {
	h := sha256.New()
	for _, f := range files {
		b, err := os.ReadFile(f)
		fileprint(h, f, b, err)
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return sum
}

func fileprint(h hash.Hash, name string, b []byte, err error) {
	h.Write([]byte(name + "\x00"))
	if err != nil {
		h.Write([]byte("\x01" + err.Error()))
	} else {
		h.Write(b)
	}
	h.Write([]byte{0})
}

// readSetFS is the fs.FS policy reads user files through (rooted at /):
// they count in the load's fingerprint.
type readSetFS struct{ rd *readSet }

func (r readSetFS) Open(name string) (fs.File, error) { return os.DirFS("/").Open(name) }

func (r readSetFS) ReadFile(name string) ([]byte, error) { return r.rd.read("/" + name) }

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

// dummyHash is made on first use: a bcrypt hash costs tens of
// milliseconds, which every run without -passwd (sockd check among them)
// would otherwise pay at start.
var dummyHash = sync.OnceValue(func() []byte {
	h, _ := bcrypt.GenerateFromPassword([]byte("sockd timing equaliser"), bcrypt.DefaultCost)
	return h
})

func (p *passwords) Match(user, password string) bool {
	if !p.f.Exists(user) {
		bcrypt.CompareHashAndPassword(dummyHash(), []byte(password))
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
