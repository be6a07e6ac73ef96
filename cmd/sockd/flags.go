package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/sockd-ng/sockd/grammar"
	"github.com/sockd-ng/sockd/relay"
)

// options are the command-line settings shared by serve, check and explain.
type options struct {
	config         string
	routes         string
	srelayConf     string
	interfaces     string
	upstreamPasswd string
	socksServer    string
	passwd         string
	auth           string
	listen         listFlag
	identLenient   bool
	identStrict    bool
	identTimeout   time.Duration
	identPort      uint
	nameserver     string
	invertedMasks  bool

	handshakeTimeout time.Duration
	connectTimeout   time.Duration
	bindTimeout      time.Duration
	udpTimeout       time.Duration
	idleTimeout      time.Duration
	grace            time.Duration
	maxSessions      int
	maxClient        int
	reloadSettle     time.Duration
	proxyFrom        string
	metricsListen    string
	commandTimeout   time.Duration
	maxCommands      int

	logLevel  string
	logFormat string
	ver       bool
}

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

// fileFlags registers the flags that name the files a configuration is
// made of, and what changes their meaning: every subcommand has them.
//
// Invoked as rsockd, the server reads /etc/socks.conf by default, as legacy
// rsockd did.
func (o *options) fileFlags(fs *flag.FlagSet, name string) {
	fs.StringVar(&o.config, "config", "/etc/sockd.conf", "access rules `file` (sockd.conf)")
	defRoutes := ""
	if name == "rsockd" {
		defRoutes = "/etc/socks.conf"
	}
	fs.StringVar(&o.routes, "routes", defRoutes, "routing `file` (socks.conf): route like rsockd")
	fs.StringVar(&o.srelayConf, "srelay-conf", "", "routing `file` in srelay.conf format, instead of -routes")
	fs.StringVar(&o.interfaces, "interfaces", "", "outbound interface `file` (sockd.route)")
	fs.StringVar(&o.upstreamPasswd, "upstream-passwd", "", "next-hop credentials `file` (srelay.passwd format: host[/port] user password)")
	fs.StringVar(&o.socksServer, "socks-server", os.Getenv("SOCKS_SERVER"), "default next hop of sockd lines without a server list (default $SOCKS_SERVER)")
	fs.StringVar(&o.passwd, "passwd", "", "SOCKS5 users, htpasswd `file` (bcrypt, as written by htpasswd -B)")
	fs.StringVar(&o.auth, "auth", "", "SOCKS5 methods offered, in preference order: `none,password` (default none; password when -passwd is given)")
	fs.BoolVar(&o.identLenient, "i", false, "identd mode lenient for rules without ?= (legacy)")
	fs.BoolVar(&o.identStrict, "I", false, "identd mode strict for rules without ?= (legacy)")
	fs.BoolVar(&o.invertedMasks, "inverted-masks", false, "read IPv4 masks the pre-4.x way (1-bits mean ignore)")
	fs.StringVar(&o.nameserver, "nameserver", os.Getenv("SOCKS_NS"), "DNS server `host[:port]` for every lookup instead of the system's (default $SOCKS_NS)")
}

// serveFlags registers the flags of the server itself.
func (o *options) serveFlags(fs *flag.FlagSet) {
	fs.Var(&o.listen, "listen", "listen `address`: host, host:port, :port or [v6]:port; repeatable (default :1080)")
	fs.DurationVar(&o.identTimeout, "ident-timeout", 15*time.Second, "identd query time limit")
	fs.UintVar(&o.identPort, "ident-port", 113, "identd `port` to query on clients")
	fs.DurationVar(&o.handshakeTimeout, "handshake-timeout", 30*time.Second, "time a client has to finish its request")
	fs.DurationVar(&o.connectTimeout, "connect-timeout", 2*time.Minute, "outbound connect time limit")
	fs.DurationVar(&o.bindTimeout, "bind-timeout", 2*time.Minute, "time a BIND waits for its inbound connection")
	fs.DurationVar(&o.idleTimeout, "idle-timeout", 0, "end sessions idle this long (0: never)")
	fs.DurationVar(&o.udpTimeout, "udp-timeout", 0, "end UDP associations idle this long (default -idle-timeout, else 5m)")
	fs.DurationVar(&o.grace, "grace", 30*time.Second, "on SIGTERM, time sessions get to finish")
	fs.IntVar(&o.maxSessions, "max-sessions", 0, "cap on concurrent sessions (0: none)")
	fs.IntVar(&o.maxClient, "max-client-sessions", -1, "cap on the sessions of one client address (0: none; default a tenth of -max-sessions, or of the sessions the open-file limit allows, at least 8)")
	fs.StringVar(&o.proxyFrom, "proxy-protocol-from", "", "load balancers, `CIDR[,CIDR...]`, whose connections start with a PROXY protocol header (v1 or v2) naming the client")
	fs.StringVar(&o.metricsListen, "metrics-listen", "", "serve Prometheus metrics at /metrics and a health check at /healthz on this `address` (e.g. 127.0.0.1:9180)")
	fs.DurationVar(&o.reloadSettle, "reload-settle", 1500*time.Millisecond, "a changed file is applied once its content has not changed for this long")
	fs.DurationVar(&o.commandTimeout, "command-timeout", 30*time.Second, "time limit of a rule's shell command")
	fs.IntVar(&o.maxCommands, "max-commands", 8, "shell commands running at once; more are skipped")
	fs.StringVar(&o.logLevel, "log-level", "info", "`level`: debug, info, warn or error")
	fs.StringVar(&o.logFormat, "log-format", "text", "log `format`: text or json")
	fs.BoolVar(&o.ver, "ver", false, "print the version and exit (legacy)")
}

// maxClientSessions is -max-client-sessions, or its default: a tenth of
// the session pool — -max-sessions, else what the open-file limit allows
// at two descriptors a session (pool(), with a few kept for the server's
// own files) — and at least 8.
func (o *options) maxClientSessions() int {
	if o.maxClient >= 0 {
		return o.maxClient
	}
	pool := o.maxSessions
	if pool <= 0 {
		var rl syscall.Rlimit
		if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Cur > 1<<30 {
			return 0 // no limit known, or none worth the name
		}
		pool = (int(rl.Cur) - 64) / 2
	}
	return max(pool/10, 8)
}

// identMode is the global ident mode from -i and -I.
func (o *options) identMode() grammar.IdentMode {
	switch {
	case o.identStrict:
		return grammar.IdentStrict
	case o.identLenient:
		return grammar.IdentLenient
	}
	return grammar.IdentOff
}

// authMethods parses -auth.
func (o *options) authMethods() ([]relay.AuthMethod, error) {
	spec := o.auth
	if spec == "" {
		spec = "none"
		if o.passwd != "" {
			spec = "password"
		}
	}
	var out []relay.AuthMethod
	for _, m := range strings.Split(spec, ",") {
		switch strings.TrimSpace(m) {
		case "none":
			out = append(out, relay.AuthNone)
		case "password":
			if o.passwd == "" {
				return nil, errors.New("-auth password needs -passwd")
			}
			out = append(out, relay.AuthPassword)
		default:
			return nil, fmt.Errorf("-auth: unknown method %q (want none or password)", m)
		}
	}
	return out, nil
}

// listenAddrs turns -listen values (srelay -i forms) into host:port.
func (o *options) listenAddrs() ([]string, error) {
	if len(o.listen) == 0 {
		return []string{":1080"}, nil
	}
	var out []string
	for _, l := range o.listen {
		a, err := listenAddr(l)
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, nil
}

func listenAddr(s string) (string, error) {
	if host, port, err := net.SplitHostPort(s); err == nil {
		if port == "" {
			port = "1080"
		}
		return net.JoinHostPort(host, port), nil
	}
	host := strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
	if host == "" || strings.ContainsAny(host, "[]") {
		return "", fmt.Errorf("-listen %q: want host, host:port, :port or [v6]:port", s)
	}
	return net.JoinHostPort(host, "1080"), nil
}

// parseFlags parses args with fs, printing errors and usage to stderr.
func parseFlags(fs *flag.FlagSet, args []string, stderr io.Writer) error {
	fs.SetOutput(stderr)
	return fs.Parse(args)
}
