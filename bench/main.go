// Command bench measures sockd against its peers, glider, HAProxy and
// Dante (danted 1.4), and against no proxy at all, in one run, and prints
// the figures side by side as a markdown table with ratios (every path to
// direct, and sockd to each peer), followed by a second table for chains
// of sockd processes.
//
//	go run ./bench                 full run (about 6 1/2 to 8 1/2 minutes with glider)
//	go run ./bench -quick          smoke run (about 1 1/2 minutes with glider)
//	go run ./bench -out bench.json also write every figure (and ratio) as JSON
//	go run ./bench -glider PATH    also measure glider (PATH: its binary)
//	go run ./bench -haproxy ''     leave HAProxy out (default: haproxy on PATH)
//	go run ./bench -dante ''       leave Dante out
//	go run ./bench -chains=false   leave the chain paths out
//	go run ./bench -keep           keep the configs and server logs
//
// Run it from the module root, as root if Dante is measured (danted drops
// to user nobody). Without -sockd it builds ./cmd/sockd into a temp dir.
// Every sockd process runs with -log-level warn and -max-client-sessions
// 0: all the load comes from one address, 127.0.0.1, and the default cap
// per client (a tenth of what the fd limit allows, 996 under 20,000 fds)
// would stop the idle runs far short of 9,900 sessions.
// glider (github.com/nadoo/glider) is not built here: give -glider the
// path of a binary built from its repository (go build in a checkout);
// without it glider is left out and the report says so. HAProxy is
// measured when -haproxy (default "haproxy") is found on PATH; Dante when
// -dante (default /usr/sbin/danted) exists. A peer left out has no column
// in the main table.
//
// Up to seven paths are measured: direct (the load client straight to the
// backend over loopback), through sockd, through glider, through HAProxy,
// through Dante, and through two chains of sockd processes: "sockd 1
// hop", client → sockd A → sockd B → backend, and "sockd 2 hops", client →
// A → B → C → backend. In a chain every process has the same sockd.conf
// and flags; each but the last has -routes with a routing file
// (socks.conf) of one line, "sockd @=socks5://NEXT ALL 0.0.0.0", so that
// it sends every destination through the next; the last goes direct. (One process can also route
// through a whole chain, "sockd @=socks5://B>socks5://C ALL 0.0.0.0"; the
// harness measures separate processes, each routing to the next, as an
// operator deploys them.) The SOCKS5 client code is the same for every
// SOCKS server (sockd, glider, Dante): no authentication, IPv4 addresses,
// each step waiting for the reply before the next (no pipelining).
//
// glider runs as a SOCKS5 server, "glider -listen socks5://127.0.0.1:PORT
// -check disable", with no forwarder (it connects direct, and so checks
// no forwarder's health) and not verbose (no log line per connection);
// it serves SOCKS5 UDP on the same port. Two things set it apart: it
// sends the CONNECT success reply before it connects to the destination
// (so its handshake latency leaves out the outbound connect), and when the
// backend closes it does not pass the close on to the client but waits up
// to 5 s for the client's side to end (a read deadline in its relay). So
// in its connection-rate runs, and only there, the load client closes as
// soon as it has read the echo rather than waiting for the end of stream
// (3 below); its TIME_WAIT states then land on the client's ephemeral
// ports, which is why glider is measured last in each round, after Dante.
// glider has no BIND (it answers only CONNECT and UDP ASSOCIATE).
//
// HAProxy (Debian's haproxy, TCP mode) is the ceiling for any relay: no
// SOCKS at all. Since it forwards a frontend to one fixed backend address,
// it gets a frontend on a free loopback port for each backend service the
// TCP load uses (sink, echo-once, echo), and the load client connects to
// that frontend as if it were the backend, with no handshake: for HAProxy
// the "handshake" latency is the TCP connect to it, as for direct. Its
// config (written to the temp dir, run as "haproxy -f CONF -db", the
// foreground, never the system service): nbthread 2, maxconn 9950 (as
// high as the 20,000-fd limit allows with 16 splice pipes, maxpipes 16),
// splice both ways, no logging, no health checks, balance first, connect
// timeout 10 s and client and server timeouts of an hour, so that nothing
// is cut. It is measured on the TCP figures (1 to 5) and idle sessions
// (9), not on UDP and BIND, whose cells stay empty ("–").
//
// The backend listens on 127.0.0.5 for every path, because sockd sends a
// destination of exactly 127.0.0.1 direct whatever its routing file says
// (a legacy rule), which would skip the hops; the load client and the
// proxies listen and connect from 127.0.0.1. Both are the same loopback
// device, so this costs direct, sockd and the peers nothing. After each
// chain's single-stream run the harness checks that every process of the
// chain used CPU (at least a tenth of the front one's), and reports it
// as a problem otherwise.
//
// TCP CONNECT, on all seven paths (HAProxy: plain TCP through it):
//
//  1. Single-stream throughput: one TCP stream carries a fixed amount
//     (4 GiB; -quick 256 MiB) to a sink, 256 KiB reads and writes on both
//     ends, timed from the first byte written until the sink acknowledges
//     the last. The sink learns the length from an 8-byte header, so no
//     half-close has to cross the proxy.
//  2. Aggregate throughput of 8 such streams at once (512 MiB each).
//  3. Connections per second with 32 and with 256 concurrent clients for
//     5 s each: connect, SOCKS5 handshake (proxies), write 1 KiB, read
//     the 1 KiB echo, close. The echo server closes once it has echoed
//     1 KiB and the client reads that end of stream before it closes, so
//     the TIME_WAIT states land on listening ports, not on ephemeral ones:
//     at these rates those would run out (Dante binds its outbound socket
//     to a port before connecting, and then fails with "could not bind tcp
//     port 0") and slow connect(2) down in later runs. Through a chain the
//     close travels hop by hop, each process closing towards the one
//     before it first, so the TIME_WAITs land on listening ports there too.
//  4. Handshake latency p50/p99 from those runs: from the start of the TCP
//     connect until the SOCKS5 success reply is read (direct and HAProxy:
//     until the connect completes; glider replies before it connects).
//  5. Server CPU seconds per GiB relayed: utime+stime (+cutime+cstime,
//     which holds the CPU of reaped children) from /proc/<pid>/stat, summed
//     over the server's process tree (for a chain: over all its sockd
//     processes), across each throughput run. And server CPU ms per 1,000
//     sessions: the same CPU time across each connection-rate run (32 and
//     256 clients) divided by the sessions completed, × 1,000.
//
// UDP and BIND, on direct, sockd, glider (UDP only) and Dante (not on
// HAProxy, not on the chains):
//
//  6. UDP request-response: with 1 and with 16 associations at once for
//     1.5 s (-quick 0.5 s), each sends a 512-byte datagram to the
//     backend's UDP echo server and waits for the echo (at most 500 ms,
//     else it counts as lost) before sending the next: round trips per
//     second, and round-trip p50/p99. Through a proxy each association is
//     a SOCKS5 UDP ASSOCIATE naming no client address (0.0.0.0:0), its
//     control connection held open for the whole run, every datagram
//     sent to the reply's address with the RFC 1928 header naming the
//     echo server, and every echo must come back with that header. Direct:
//     the same client on a plain UDP socket, without headers.
//  7. UDP one way: one association (direct: one socket) sends 512-byte
//     datagrams as fast as it can for 1 s (-quick 0.5 s) to the backend's
//     UDP sink, which counts them per source; afterwards the client asks
//     the sink (through the association) how many arrived between its
//     first and last: datagrams per second delivered, sent, and the share
//     lost on the way (in the relay or a socket buffer).
//  8. BIND set-up: 8 clients make 3,000 set-ups in all (-quick 1,000),
//     within at most 3 s (-quick 1 s). Through a proxy: SOCKS5 BIND
//     naming 127.0.0.1 (and port 21) as the application server; the first
//     reply gives the listening address, the load client itself connects
//     there from 127.0.0.1, and the second reply, which must name that
//     connection's address, ends the set-up, timed from the start of the
//     control connection's TCP connect. Direct: listen on 127.0.0.1:0,
//     connect, accept. Then 1 KiB goes from the control side to the peer
//     and back (its round trip p50 is reported too), the peer closes
//     first and the control side waits for the end of stream. Set-ups per
//     second and set-up p50/p99. Each set-up leaves one TIME_WAIT on an
//     ephemeral port (the peer's), which is why the count is capped: ports
//     in TIME_WAIT cannot be bound by the proxies' BIND listeners.
//
// Dante's configuration admits CONNECT by the same rule as before UDP and
// BIND were measured; a second rule admits bind and udpassociate from
// loopback clients, a third bindreply and udpreply from loopback to
// loopback clients.
//
// Idle sessions, on direct, sockd, glider, HAProxy and Dante:
//
//  9. Server memory (PSS from /proc/<pid>/smaps_rollup) and open fds
//     (/proc/<pid>/fd), summed over the process tree, with no sessions
//     and with 1,000 and 9,900 idle sessions held open (sampled 2 s after
//     they are established; SOCKS5 CONNECT sessions to the echo server,
//     through HAProxy plain connections to its echo frontend), and the
//     cost per session: (value with N - value with 0) / N, and marginally
//     between the two counts, where fixed costs cancel out. A fresh backend and server are
//     started for this. Afterwards every session must still echo a byte,
//     then the backend closes first (TIME_WAIT again) and the client.
//
// For the direct path the "server" figures of 5 and 9 are the backend's
// (the sink, echo-once or echo server), as a reference for what the bare
// sockets cost; so is its CPU ms per 1,000 sessions (the echo-once
// server's).
//
// Measurements 1 to 8 are made in rounds (-rounds, default 3; -quick 1):
// each round runs all of them on every path in turn (direct, sockd,
// HAProxy, Dante, glider, the chains), all the servers staying up for the
// whole phase, so that other work on the machine disturbs the paths
// alike. The tables show the median of the rounds with
// the lowest and highest value; the latency figures are the medians of
// each round's p50 and p99.
//
// A full run first waits (up to 65 s) for TIME_WAIT sockets left by an
// earlier run to expire. The tables are followed by sockd's figures against
// the project's targets (<= 2 fds and <= 8 KiB per idle session, 9,900
// idle sessions under a 20,000-fd limit) and by every problem met: failed
// connections, lost or malformed datagrams, failed BIND set-ups, sessions
// a server could not hold, a chain process the traffic did not cross,
// anything a server wrote to stderr (sockd runs at -log-level warn;
// Dante's info lines are left out), a peer left out and why. These are
// reported, never asserted: this is no test. With -out, the JSON has the
// table's figures and, per row, the ratios of the medians ("sockd/direct",
// "glider/direct", "haproxy/direct", "dante/direct", "sockd/glider",
// "sockd/haproxy", "sockd/dante", and the chains' to direct and to sockd).
//
// Processes: the harness re-executes itself as "bench backend" (TCP sink
// and echo servers, UDP echo server and sink) and "bench client" (the
// load), each in its own process so that with 9,900 sessions the client's
// 9,900 sockets and the backend's 9,900 fit their own 20,000-fd limits;
// the proxy in between holds the other ~19,800. Everything listens and
// connects on loopback only (127.0.0.1, and the backend on 127.0.0.5),
// every load loop is bounded by a count or a duration, and every process
// the harness starts is put in its own process group, sent SIGTERM by its
// pid when done with, and whatever is left of that group after a few
// seconds (Dante's children) gets SIGKILL by the group's id.
package main

import (
	"debug/buildinfo"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "backend":
			os.Exit(backendMain(os.Args[2:]))
		case "client":
			os.Exit(clientMain(os.Args[2:]))
		}
	}
	os.Exit(benchMain(os.Args[1:]))
}

// options are the harness's flags.
type options struct {
	sockd   string
	dante   string
	glider  string
	haproxy string
	quick   bool
	out     string
	idle    string
	keep    bool
	chains  bool
	rounds  int
}

func parseOptions(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.StringVar(&o.sockd, "sockd", "", "sockd `binary` (empty: build ./cmd/sockd)")
	fs.StringVar(&o.dante, "dante", "/usr/sbin/danted", "danted `binary` (empty: leave Dante out)")
	fs.StringVar(&o.glider, "glider", "", "glider `binary`, measured as a SOCKS5 server (empty: leave glider out)")
	fs.StringVar(&o.haproxy, "haproxy", "haproxy", "haproxy `binary`, looked up on PATH, measured forwarding plain TCP (empty: leave HAProxy out)")
	fs.BoolVar(&o.quick, "quick", false, "smaller sizes and shorter runs, for a smoke test")
	fs.StringVar(&o.out, "out", "", "also write all figures as JSON to `file`")
	fs.IntVar(&o.rounds, "rounds", 0, "rounds of the throughput and connection runs; the table shows medians (default 3; -quick 1)")
	fs.StringVar(&o.idle, "idle", "", "idle session `counts`, comma-separated (default 1000,9900; -quick 100,1000)")
	fs.BoolVar(&o.keep, "keep", false, "keep the temp dir with the configs and the servers' logs")
	fs.BoolVar(&o.chains, "chains", true, "also measure the chain paths (sockd 1 hop and 2 hops)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return o, nil
}

// settingsFor returns the full or the quick sizes.
func settingsFor(o options) (settings, error) {
	s := settings{
		SingleBytes:  4 << 30,
		MultiStreams: 8,
		MultiBytes:   512 << 20,
		BufSize:      256 << 10,
		StreamLimit:  time.Minute,
		ConnDuration: 5 * time.Second,
		Clients:      []int{32, 256},
		EchoSize:     1024,
		Rounds:       3,
		IdleCounts:   []int{1000, 9900},
		IdleLimit:    90 * time.Second,
		Settle:       2 * time.Second,
		Chains:       true,
		UDPAssocs:    []int{1, 16},
		UDPDuration:  1500 * time.Millisecond,
		UDPBlast:     time.Second,
		UDPSize:      512,
		BindClients:  8,
		BindDuration: 3 * time.Second,
		BindMax:      3000,
	}
	if o.quick {
		s.Quick = true
		s.Rounds = 1
		s.SingleBytes = 256 << 20
		s.MultiBytes = 32 << 20
		s.ConnDuration = time.Second
		s.IdleCounts = []int{100, 1000}
		s.IdleLimit = 30 * time.Second
		s.Settle = time.Second
		s.UDPDuration = 500 * time.Millisecond
		s.UDPBlast = 500 * time.Millisecond
		s.BindDuration = time.Second
		s.BindMax = 1000
	}
	if o.rounds > 0 {
		s.Rounds = o.rounds
	}
	s.Chains = o.chains
	if o.idle != "" {
		counts, err := parseCounts(o.idle)
		if err != nil {
			return s, fmt.Errorf("-idle: %v", err)
		}
		s.IdleCounts = counts
	}
	return s, nil
}

// facts describes the machine and the software measured.
type facts struct {
	Command string  `json:"command"`
	NProc   int     `json:"nproc"`
	Kernel  string  `json:"kernel"`
	Go      string  `json:"go"`
	Sockd   string  `json:"sockd"`
	Glider  string  `json:"glider,omitempty"`
	HAProxy string  `json:"haproxy,omitempty"`
	Dante   string  `json:"dante,omitempty"`
	NoFile  uint64  `json:"rlimit_nofile"`
	LoadAvg string  `json:"loadavg_at_start"`
	Started string  `json:"started"`
	Seconds float64 `json:"seconds"`
}

func machineFacts(sockd, glider, haproxy, dante string) facts {
	f := facts{
		Command: "go run ./bench " + strings.Join(os.Args[1:], " "),
		NProc:   runtime.NumCPU(),
		Go:      runtime.Version(),
		Sockd:   firstLine(sockd, "version"),
		Started: time.Now().Format(time.RFC3339),
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		f.Kernel = strings.TrimSpace(string(b))
	}
	if glider != "" {
		f.Glider = gliderVersion(glider)
	}
	if haproxy != "" {
		f.HAProxy = firstLine(haproxy, "-v")
	}
	if dante != "" {
		f.Dante = firstLine(dante, "-v")
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		f.LoadAvg = strings.Join(strings.Fields(string(b))[:3], " ")
	}
	var rl syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl) == nil {
		f.NoFile = rl.Cur
	}
	return f
}

// gliderVersion is the version line of glider's usage text ("glider
// 0.17.0, https://..."), which has no version flag, with the Go release
// and the commit (when its build recorded them) of the binary.
func gliderVersion(bin string) string {
	out, _ := exec.Command(bin, "-h").CombinedOutput()
	v := "glider"
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "glider ") {
			v, _, _ = strings.Cut(strings.TrimSpace(l), " (")
			break
		}
	}
	if bi, err := buildinfo.ReadFile(bin); err == nil {
		v += ", built with " + bi.GoVersion
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				v += ", commit " + s.Value
			}
		}
	}
	return v
}

// firstLine runs bin with args and returns the first line it prints.
func firstLine(bin string, args ...string) string {
	out, _ := exec.Command(bin, args...).CombinedOutput()
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return line
}

// report is the whole outcome, as written by -out.
type report struct {
	Facts    facts        `json:"facts"`
	Settings settings     `json:"settings"`
	Table    []tableRow   `json:"table"`
	Paths    []pathResult `json:"paths"`
	rows     []row
}

func benchMain(args []string) int {
	o, err := parseOptions(args)
	if err != nil {
		return 2
	}
	set, err := settingsFor(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 2
	}
	e, err := newEnv()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	e.keep = o.keep
	defer e.cleanup()
	stopOnSignal(e)

	start := time.Now()
	r := &runner{env: e, set: set, sockd: o.sockd, dante: o.dante, glider: o.glider, haproxy: o.haproxy}
	if err := r.prepare(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	rep := report{Facts: machineFacts(r.sockd, r.glider, r.haproxy, r.dante), Settings: set}
	rep.Paths, err = r.all()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	if e.stopping() {
		return 1 // interrupted
	}
	rep.Facts.Seconds = time.Since(start).Seconds()
	rep.rows = rows(set, byName(rep.Paths))
	rep.Table = tableJSON(rep.rows)
	printReport(os.Stdout, rep)
	if o.out != "" {
		if err := writeJSON(o.out, rep); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
	}
	return 0
}

// prepare builds sockd if needed and checks both servers can be run.
func (r *runner) prepare() error {
	if r.sockd == "" {
		logf("building ./cmd/sockd")
		bin, err := r.env.buildSockd()
		if err != nil {
			return err
		}
		r.sockd = bin
	}
	if err := r.env.checkSockdConfig(r.sockd); err != nil {
		return err
	}
	if r.dante != "" {
		if _, err := os.Stat(r.dante); err != nil {
			fmt.Fprintf(os.Stderr, "bench: Dante left out: %v\n", err)
			r.leaveOut(pathDante, err.Error())
			r.dante = ""
		}
	}
	if r.glider != "" {
		if _, err := os.Stat(r.glider); err != nil {
			fmt.Fprintf(os.Stderr, "bench: glider left out: %v\n", err)
			r.leaveOut(pathGlider, err.Error())
			r.glider = ""
		}
	}
	if r.haproxy != "" {
		bin, err := exec.LookPath(r.haproxy)
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench: HAProxy left out: %v\n", err)
			r.leaveOut(pathHAProxy, err.Error())
		}
		r.haproxy = bin
	}
	return nil
}

// all measures every path: first throughput and connection rate against a
// shared backend, in interleaved rounds, then idle sessions, each path
// with fresh processes.
func (r *runner) all() ([]pathResult, error) {
	if !r.set.Quick {
		waitTimeWait()
	}
	// glider goes after Dante: its connection-rate runs leave TIME_WAIT
	// states on the client's ephemeral ports (see clientClosesFirst),
	// which Dante, binding its outbound sockets to port 0, would have to
	// avoid.
	names := []string{pathDirect, pathSockd}
	if r.haproxy != "" {
		names = append(names, pathHAProxy)
	}
	if r.dante != "" {
		names = append(names, pathDante)
	}
	if r.glider != "" {
		names = append(names, pathGlider)
	}
	if r.set.Chains {
		names = append(names, path1Hop, path2Hops)
	}
	be, err := r.env.startBackend(r.set.BufSize, r.set.EchoSize)
	if err != nil {
		return nil, fmt.Errorf("backend: %v", err)
	}
	out := r.load(names, be)
	be.stop()
	for i := range out {
		if out[i].Skipped == "" && chainLength(out[i].Name) == 0 {
			r.idle(&out[i])
		}
	}
	if r.glider == "" {
		out = append(out, pathResult{Name: pathGlider, Skipped: r.leftOutBecause(pathGlider, "no -glider binary given")})
	}
	if r.haproxy == "" {
		out = append(out, pathResult{Name: pathHAProxy, Skipped: r.leftOutBecause(pathHAProxy, "-haproxy ''")})
	}
	if r.dante == "" {
		out = append(out, pathResult{Name: pathDante, Skipped: r.leftOutBecause(pathDante, "-dante ''")})
	}
	if !r.set.Chains {
		for _, n := range []string{path1Hop, path2Hops} {
			out = append(out, pathResult{Name: n, Skipped: "left out (-chains=false)"})
		}
	}
	return out, nil
}

// leaveOut records why path name is left out, for the report.
func (r *runner) leaveOut(name, why string) {
	if r.leftOut == nil {
		r.leftOut = map[string]string{}
	}
	r.leftOut[name] = why
}

// leftOutBecause is the Skipped text of a path left out: the reason
// recorded by leaveOut, else flag (the option that left it out).
func (r *runner) leftOutBecause(name, flag string) string {
	if why, ok := r.leftOut[name]; ok {
		return "left out: " + why
	}
	return "left out (" + flag + ")"
}

// waitTimeWait lets TIME_WAIT sockets left by an earlier run expire (at
// most about a minute) before measuring: tens of thousands of them slow
// connect(2) down and take ephemeral ports from the proxies.
func waitTimeWait() {
	const quiet = 2000
	if n := timeWait(); n > quiet {
		logf("%d sockets in TIME_WAIT; waiting up to 65 s for them to expire", n)
	}
	for end := time.Now().Add(65 * time.Second); timeWait() > quiet && time.Now().Before(end); {
		time.Sleep(time.Second)
	}
}

// stopOnSignal stops every started process if the harness is interrupted.
func stopOnSignal(e *env) {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "bench: %v: stopping\n", s)
		e.cleanup()
		os.Exit(1)
	}()
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}
