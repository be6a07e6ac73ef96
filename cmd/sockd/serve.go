package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"

	"github.com/sockd-ng/sockd/ident"
	"github.com/sockd-ng/sockd/policy"
	"github.com/sockd-ng/sockd/relay"
)

// daemon is a running server: the configuration in force and what swaps it.
type daemon struct {
	o         options
	log       *slog.Logger
	rules     policy.Live
	passwords livePasswords
	srv       *relay.Server

	mu  sync.Mutex // serialises reloads
	cur *config
}

func serve(name string, args []string, stdout, stderr io.Writer) int {
	var o options
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	o.fileFlags(fs, name)
	o.serveFlags(fs)
	if err := parseFlags(fs, args, stderr); err != nil {
		return 2
	}
	if o.ver {
		fmt.Fprintln(stdout, versionString())
		return 0
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "%s: unexpected argument %q (subcommands: check, explain, version)\n", name, fs.Arg(0))
		return 2
	}
	log, err := newLogger(stderr, o.logLevel, o.logFormat)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	d := &daemon{o: o, log: log}
	if err := d.start(); err != nil {
		for _, line := range strings.Split(err.Error(), "\n") {
			log.Error("cannot start", "err", line)
		}
		return 1
	}
	return d.run()
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("-log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("-log-format %q: want text or json", format)
}

// start loads the configuration and builds the server.
func (d *daemon) start() error {
	c, err := load(&d.o)
	if err != nil {
		return err
	}
	auth, err := d.o.authMethods()
	if err != nil {
		return err
	}
	res, err := resolver(d.o.nameserver)
	if err != nil {
		return err
	}
	d.install(c)
	for _, fc := range frozenWarnings(&d.o) {
		d.log.Warn("a frozen config exists; a legacy server would have read it instead of the text file; sockd never does", "frozen", fc)
	}
	ic := &ident.Client{Port: uint16(d.o.identPort), Timeout: d.o.identTimeout, MaxConcurrent: 256}
	d.srv = &relay.Server{
		Decider:  &d.rules,
		Logger:   d.log,
		Resolver: res,
		Ident: func(ctx context.Context, local, remote netip.AddrPort) (string, error) {
			r, err := ic.Lookup(ctx, local, remote)
			return r.User, err
		},
		Auth:             auth,
		Passwords:        &d.passwords,
		Hooks:            &relay.Hooks{Logger: d.log, Timeout: d.o.commandTimeout, Max: d.o.maxCommands},
		HandshakeTimeout: d.o.handshakeTimeout,
		ConnectTimeout:   d.o.connectTimeout,
		IdleTimeout:      d.o.idleTimeout,
		MaxSessions:      d.o.maxSessions,
	}
	return nil
}

// install puts c in force.
func (d *daemon) install(c *config) {
	for _, w := range c.rules.Warnings {
		d.log.Warn("config warning", "warning", w.Error())
	}
	d.rules.Store(c.rules)
	if c.passwords != nil {
		d.passwords.p.Store(c.passwords)
	}
	d.cur = c
}

// reload loads every file again and swaps the result in only if all of it
// is valid; otherwise the old configuration stays and every error is
// logged. Sessions in flight keep the rules that admitted them.
func (d *daemon) reload(why string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	c, err := load(&d.o)
	if err != nil {
		for _, line := range strings.Split(err.Error(), "\n") {
			d.log.Error("config reload rejected; keeping the rules in force", "why", why, "err", line, "sha256", d.cur.sum)
		}
		return
	}
	if c.sum == d.cur.sum {
		return
	}
	d.install(c)
	d.log.Info("config reloaded", "why", why, "file", d.o.config, "rules", c.rules.Len(), "sha256", c.sum)
}

// run listens, serves and handles signals until SIGTERM or SIGINT.
func (d *daemon) run() int {
	addrs, err := d.o.listenAddrs()
	if err != nil {
		d.log.Error("cannot start", "err", err)
		return 2
	}
	var lns []net.Listener
	for _, a := range addrs {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			d.log.Error("cannot listen", "addr", a, "err", err)
			for _, l := range lns {
				l.Close()
			}
			return 1
		}
		lns = append(lns, ln)
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)

	errc := make(chan error, len(lns))
	for _, ln := range lns {
		d.log.Info("listening", "addr", ln.Addr().String(), "config", d.o.config, "rules", d.cur.rules.Len(), "sha256", d.cur.sum, "version", versionString())
		go func() { errc <- d.srv.Serve(ln) }()
	}
	for {
		select {
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				d.reload("SIGHUP")
				continue
			}
			d.log.Info("stopping", "signal", sig.String(), "sessions", d.srv.Sessions(), "grace", d.o.grace)
			ctx, cancel := context.WithTimeout(context.Background(), d.o.grace)
			err := d.srv.Shutdown(ctx)
			cancel()
			if err != nil {
				d.log.Warn("grace period over; sessions closed", "err", err)
			}
			return 0
		case err := <-errc:
			d.log.Error("listener died", "err", err)
			ctx, cancel := context.WithTimeout(context.Background(), d.o.grace)
			d.srv.Shutdown(ctx)
			cancel()
			return 1
		}
	}
}
