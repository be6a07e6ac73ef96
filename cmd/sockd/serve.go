package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"log/syslog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	sd "github.com/coreos/go-systemd/v22/daemon"
	proxyproto "github.com/pires/go-proxyproto"

	"github.com/sockd-ng/sockd/ident"
	"github.com/sockd-ng/sockd/metrics"
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
	metrics   *metrics.Metrics          // with -metrics-listen
	proxy     proxyproto.ConnPolicyFunc // with -proxy-protocol-from
	metricsLn net.Listener              // inherited from systemd, named "metrics"

	cur        *config     // in force
	seen       *config     // the files as the last look found them: in force, rejected or settling
	settling   time.Time   // since when seen's files have held what they hold, while they settle
	settleWhy  string      // what started the settling
	settle     *time.Timer // fires when seen has had time to settle
	rejected   string      // the errors that kept cur, "" when none
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
	if in != nil {
		d.metricsLn = in.metrics
	}
	if err := d.start(); err != nil {
		for _, line := range strings.Split(err.Error(), "\n") {
			log.Error("cannot start", "err", line)
		}
		return 1
	}
	if in != nil && in.conn != nil {
		// One session, then exit: inetd "nowait", or systemd Accept=yes.
		if d.proxy != nil {
			in.conn = proxyConn(in.conn, d.proxy, d.o.handshakeTimeout)
		}
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
	if d.proxy, err = d.o.proxyPolicy(); err != nil {
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
		Auth:              auth,
		Passwords:         &d.passwords,
		Hooks:             &relay.Hooks{Logger: d.log, Timeout: d.o.commandTimeout, Max: d.o.maxCommands},
		HandshakeTimeout:  d.o.handshakeTimeout,
		ConnectTimeout:    d.o.connectTimeout,
		BindTimeout:       d.o.bindTimeout,
		UDPTimeout:        d.o.udpTimeout,
		IdleTimeout:       d.o.idleTimeout,
		MaxSessions:       d.o.maxSessions,
		MaxClientSessions: d.o.maxClientSessions(),
	}
	if d.o.metricsListen != "" || d.metricsLn != nil {
		d.metrics = metrics.New(d.srv, versionString())
		d.metrics.Loaded(c.rules.RuleNames(), d.reloadedAt)
		d.srv.Observer = d.metrics
	}
	return nil
}

// install puts c in force.
func (d *daemon) install(c *config) {
	for _, w := range c.rules.Warnings {
		d.log.Warn("config warning", "warning", w.Error())
	}
	if slices.Contains(c.empty, d.o.config) {
		d.log.Warn("the config file is empty: every request is refused", "file", d.o.config)
	}
	d.rules.Store(c.rules)
	d.passwords.p.Store(c.passwords)
	d.cur, d.seen, d.rejected, d.reloadedAt = c, c, "", time.Now()
	if d.watch != nil {
		d.watch.watch(c.files)
	}
}

// reload is the one path a change of configuration takes: look, settle,
// read, parse, compile, swap. It loads every file again and swaps the
// result in only if all of it is valid; otherwise the rules in force stay
// and every error is logged. Sessions in flight keep the rules that
// admitted them.
//
// A reload from a file event or the poll (now false) applies files only
// once they have settled: their content unchanged for -reload-settle, so
// that a writer that pauses mid-file (an editor, a config-management tool,
// a network file system) is never caught halfway. SIGHUP (now) applies
// at once, unless a file ends without a newline: a write in progress,
// which settles first. No trigger ever applies a file that became empty,
// which is what a truncate before a write looks like. A look first
// compares the contents of the files last seen, so that events for other
// files in the same directories cost nothing.
func (d *daemon) reload(why string, now bool) {
	if !now && d.settling.IsZero() && fingerprint(d.seen.files) == d.seen.fp {
		return
	}
	// RELOADING=1 ... READY=1 around an attempt to apply, and around
	// every SIGHUP: systemd waits for the answer to one.
	reloading := false
	notify := func() {
		if !reloading {
			reloading = true
			d.notify.send(sd.SdNotifyReloading, strings.TrimSuffix(sd.SdNotifyMonotonicUsec(), "\n"), "STATUS=reloading ("+why+")")
		}
	}
	defer func() {
		if reloading {
			d.notify.send(sd.SdNotifyReady, d.status())
		}
	}()
	if now {
		notify()
	}
	c, err := load(&d.o)
	changed := c.fp != d.seen.fp
	d.seen = c
	if c.fp == d.cur.fp {
		d.settling, d.rejected = time.Time{}, "" // what is in force, again or still
		return
	}
	if !now && !changed && d.settling.IsZero() {
		return // judged already
	}
	if !now || len(c.unterminated) > 0 {
		if changed || d.settling.IsZero() {
			d.settling, d.settleWhy = time.Now(), why
			d.log.Debug("config changed; applying it once it has settled", "why", why, "settle", d.o.reloadSettle, "unterminated", c.unterminated)
		}
		if wait := time.Until(d.settling.Add(d.o.reloadSettle)); wait > 0 {
			d.settle.Reset(wait)
			return
		}
	}
	d.settling = time.Time{}
	notify()
	if err == nil {
		err = d.newlyEmpty(c)
	}
	if err != nil {
		if d.metrics != nil {
			d.metrics.Reloaded(false)
		}
		if msg := err.Error(); msg != d.rejected || now {
			for _, line := range strings.Split(msg, "\n") {
				d.log.Error("config reload rejected; keeping the rules in force", "why", why, "err", line, "sha256", d.cur.sum)
			}
			d.rejected = msg
		}
		return
	}
	d.install(c)
	if d.metrics != nil {
		d.metrics.Loaded(c.rules.RuleNames(), d.reloadedAt)
		d.metrics.Reloaded(true)
	}
	d.log.Info("config reloaded", "why", why, "file", d.o.config, "rules", c.rules.Len(), "sha256", c.sum)
}

// newlyEmpty refuses a load in which a file is empty that was not empty
// (or not in use) in the config in force: a truncate before a write.
func (d *daemon) newlyEmpty(c *config) error {
	var errs []string
	for _, f := range c.empty {
		if slices.Contains(d.cur.empty, f) {
			continue
		}
		how := "write a comment line into it"
		if f == d.o.config {
			how = `write "deny ALL 0.0.0.0"`
		}
		errs = append(errs, fmt.Sprintf("%s: the file is empty, which is what a write in progress looks like, so it is not applied; to empty it on purpose, %s", f, how))
	}
	if errs == nil {
		return nil
	}
	return errors.New(strings.Join(errs, "\n"))
}

// setServing tells the health check whether new clients are taken.
func (d *daemon) setServing(ok bool) {
	if d.metrics != nil {
		d.metrics.SetServing(ok)
	}
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
	if d.proxy != nil {
		for i, ln := range lns {
			lns[i] = proxyListener(ln, d.proxy, d.o.handshakeTimeout)
		}
	}
	if d.metrics != nil {
		mln := d.metricsLn
		if mln == nil {
			var err error
			if mln, err = net.Listen("tcp", d.o.metricsListen); err != nil {
				d.log.Error("cannot listen", "addr", d.o.metricsListen, "err", err)
				for _, l := range lns {
					l.Close()
				}
				return 1
			}
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go serveMetrics(ctx, mln, d.metrics, d.log)
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
	d.settle = time.NewTimer(time.Hour)
	d.settle.Stop()
	defer d.settle.Stop()
	poll := time.NewTicker(30 * time.Second) // NFS, lost events, a deleted directory
	defer poll.Stop()
	statusTick := time.NewTicker(10 * time.Second)
	defer statusTick.Stop()
	trimTick := time.NewTicker(trimEvery)
	defer trimTick.Stop()
	trims := trimmer{accepted: d.srv.Accepted, sessions: d.srv.Sessions}
	var watchdogC <-chan time.Time
	if iv, err := sd.SdWatchdogEnabled(false); err == nil && iv > 0 {
		t := time.NewTicker(iv / 2)
		defer t.Stop()
		watchdogC = t.C
	}

	errc := make(chan error, len(lns))
	var wg sync.WaitGroup
	for _, ln := range lns {
		d.log.Info("listening", "addr", ln.Addr().String(), "config", d.o.config, "rules", d.cur.rules.Len(), "sha256", d.cur.sum, "max_client_sessions", d.srv.MaxClientSessions, "version", versionString())
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- d.srv.Serve(ln)
		}()
	}
	d.notify.send(sd.SdNotifyReady, d.status())
	d.setServing(true)
	stop := func(why string) {
		d.setServing(false) // a balancer sends no new clients while sessions finish
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
		case <-d.settle.C:
			d.reload(d.settleWhy, false)
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
