package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"log/syslog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	sd "github.com/coreos/go-systemd/v22/daemon"

	"github.com/sockd-ng/sockd/ident"
	"github.com/sockd-ng/sockd/policy"
	"github.com/sockd-ng/sockd/relay"
)

// daemon is a running server: the configuration in force and what swaps it.
// Reloads, watchdog pings and status updates all happen in the goroutine
// that runs run, one at a time.
type daemon struct {
	o         options
	log       *slog.Logger
	notify    notifier
	rules     policy.Live
	passwords livePasswords
	srv       *relay.Server
	watch     *watcher

	cur        *config  // in force
	curFP      [32]byte // fingerprint of cur's files, when loaded
	rejected   string   // the errors that kept cur, "" when none
	reloadedAt time.Time
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
	in, err := inheritedSockets()
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	logw := stderr
	if in != nil && in.conn != nil && sameFile(os.Stdin, os.Stderr) {
		// inetd: standard error is the client's connection. Log to
		// syslog, as legacy sockd did, and never into the session.
		if w, err := syslog.New(syslog.LOG_DAEMON|syslog.LOG_INFO, "sockd"); err == nil {
			logw = w
		} else {
			logw = io.Discard
		}
	}
	log, err := newLogger(logw, o.logLevel, o.logFormat)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	d := &daemon{o: o, log: log, notify: notifier{log}}
	if err := d.start(); err != nil {
		for _, line := range strings.Split(err.Error(), "\n") {
			log.Error("cannot start", "err", line)
		}
		return 1
	}
	if in != nil && in.conn != nil {
		// One session, then exit: inetd "nowait", or systemd Accept=yes.
		d.srv.ServeConn(in.conn)
		d.srv.Hooks.Wait()
		return 0
	}
	var lns []net.Listener
	if in != nil {
		lns = in.listeners
	}
	return d.run(lns)
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
		BindTimeout:      d.o.bindTimeout,
		UDPTimeout:       d.o.udpTimeout,
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
	d.passwords.p.Store(c.passwords)
	d.cur, d.curFP, d.rejected, d.reloadedAt = c, fingerprint(c.files), "", time.Now()
	if d.watch != nil {
		d.watch.watch(c.files)
	}
}

// reload loads every file again and swaps the result in only if all of it
// is valid; otherwise the rules in force stay and every error is logged.
// Sessions in flight keep the rules that admitted them. A reload caused by
// a file event first compares the contents of the files in use, so that
// events for other files in the same directories cost nothing.
func (d *daemon) reload(why string, force bool) {
	if !force && d.rejected == "" && fingerprint(d.cur.files) == d.curFP {
		return
	}
	d.notify.send(sd.SdNotifyReloading, strings.TrimSuffix(sd.SdNotifyMonotonicUsec(), "\n"), "STATUS=reloading ("+why+")")
	defer func() { d.notify.send(sd.SdNotifyReady, d.status()) }()
	c, err := load(&d.o)
	if err != nil {
		if msg := err.Error(); msg != d.rejected || force {
			for _, line := range strings.Split(msg, "\n") {
				d.log.Error("config reload rejected; keeping the rules in force", "why", why, "err", line, "sha256", d.cur.sum)
			}
			d.rejected = msg
		}
		return
	}
	if c.sum == d.cur.sum {
		d.rejected = ""
		d.curFP = fingerprint(c.files)
		return
	}
	d.install(c)
	d.log.Info("config reloaded", "why", why, "file", d.o.config, "rules", c.rules.Len(), "sha256", c.sum)
}

// status is the STATUS= line for systemctl status: live sessions and the
// configuration in force, or the error that kept it.
func (d *daemon) status() string {
	s := fmt.Sprintf("STATUS=%d sessions; rules sha256 %s from %s, loaded %s", d.srv.Sessions(), d.cur.sum, d.o.config, d.reloadedAt.Format(time.TimeOnly))
	if d.rejected != "" {
		first, _, _ := strings.Cut(d.rejected, "\n")
		s += "; last reload rejected: " + first
	}
	return s
}

// run listens (or serves the listeners inherited from systemd or inetd),
// reloads on SIGHUP and on file changes, pings the watchdog and updates
// the status, until SIGTERM or SIGINT.
func (d *daemon) run(lns []net.Listener) int {
	if len(lns) == 0 {
		addrs, err := d.o.listenAddrs()
		if err != nil {
			d.log.Error("cannot start", "err", err)
			return 2
		}
		for _, a := range addrs {
			ln, err := relay.ListenConfig().Listen(context.Background(), "tcp", a)
			if err != nil {
				d.log.Error("cannot listen", "addr", a, "err", err)
				for _, l := range lns {
					l.Close()
				}
				return 1
			}
			lns = append(lns, ln)
		}
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)

	var changed <-chan struct{}
	if w, err := newWatcher(d.log); err != nil {
		d.log.Warn("cannot watch config files; reload with SIGHUP", "err", err)
	} else {
		d.watch = w
		w.watch(d.cur.files)
		go w.run()
		defer w.close()
		changed = w.changed
	}
	poll := time.NewTicker(30 * time.Second) // NFS, lost events, a deleted directory
	defer poll.Stop()
	statusTick := time.NewTicker(10 * time.Second)
	defer statusTick.Stop()
	trimTick := time.NewTicker(trimEvery)
	defer trimTick.Stop()
	trims := trimmer{accepted: d.srv.Accepted}
	var watchdogC <-chan time.Time
	if iv, err := sd.SdWatchdogEnabled(false); err == nil && iv > 0 {
		t := time.NewTicker(iv / 2)
		defer t.Stop()
		watchdogC = t.C
	}

	errc := make(chan error, len(lns))
	var wg sync.WaitGroup
	for _, ln := range lns {
		d.log.Info("listening", "addr", ln.Addr().String(), "config", d.o.config, "rules", d.cur.rules.Len(), "sha256", d.cur.sum, "version", versionString())
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- d.srv.Serve(ln)
		}()
	}
	d.notify.send(sd.SdNotifyReady, d.status())
	stop := func(why string) {
		d.log.Info("stopping", "why", why, "sessions", d.srv.Sessions(), "grace", d.o.grace)
		d.notify.send(sd.SdNotifyStopping, "STATUS=stopping: draining sessions")
		ctx, cancel := context.WithTimeout(context.Background(), d.o.grace)
		defer cancel()
		if err := d.srv.Shutdown(ctx); err != nil {
			d.log.Warn("grace period over; sessions closed", "err", err)
		}
		wg.Wait()
		// Rules' commands get what is left of the grace period too: a
		// stop never outlasts it (nor the unit's TimeoutStopSec).
		hooks := make(chan struct{})
		go func() { d.srv.Hooks.Wait(); close(hooks) }()
		select {
		case <-hooks:
		case <-ctx.Done():
			d.log.Warn("grace period over; shell commands still running are left to the service manager")
		}
	}
	for {
		select {
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				d.reload("SIGHUP", true)
				continue
			}
			stop(sig.String())
			return 0
		case <-changed:
			d.reload("file changed", false)
		case <-poll.C:
			d.reload("poll", false)
		case <-statusTick.C:
			d.notify.send(d.status())
		case <-trimTick.C:
			if trims.due() {
				before, after := trim(d.srv)
				d.log.Debug("memory returned after a burst", "sessions", d.srv.Sessions(),
					"mapped_kib_before", before>>10, "mapped_kib_after", after>>10)
			}
		case <-watchdogC:
			// From this loop, so that a wedged loop stops the pings.
			d.notify.send(sd.SdNotifyWatchdog)
		case err := <-errc:
			d.log.Error("listener died", "err", err)
			stop("listener died")
			return 1
		}
	}
}
