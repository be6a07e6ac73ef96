// Command bench measures sockd against Dante (danted 1.4) and against no
// proxy at all, in one run, and prints the figures side by side as a
// markdown table with ratios.
//
//	go run ./bench                 full run (about 4 minutes)
//	go run ./bench -quick          smoke run (under a minute)
//	go run ./bench -out bench.json also write every figure as JSON
//	go run ./bench -dante ''       leave Dante out
//	go run ./bench -keep           keep the configs and server logs
//
// Run it from the module root, as root if Dante is measured (danted drops
// to user nobody). Without -sockd it builds ./cmd/sockd into a temp dir.
//
// Three paths are measured the same way: direct (the load client straight
// to the backend over loopback TCP), through sockd, and through Dante.
// The SOCKS5 client code is the same for both proxies: no authentication,
// CONNECT to an IPv4 address, each step waiting for the reply before the
// next (no pipelining).
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
//     port 0") and slow connect(2) down in later runs.
//  4. Handshake latency p50/p99 from those runs: from the start of the TCP
//     connect until the SOCKS5 success reply is read (direct: until the
//     connect completes).
//  5. Server CPU seconds per GiB relayed: utime+stime (+cutime+cstime,
//     which holds the CPU of reaped children) from /proc/<pid>/stat, summed
//     over the server's process tree, across each throughput run.
//  6. Server memory (PSS from /proc/<pid>/smaps_rollup) and open fds
//     (/proc/<pid>/fd), summed over the process tree, with no sessions
//     and with 1,000 and 9,900 idle SOCKS5 sessions held open (sampled 2 s
//     after they are established), and the cost per session:
//     (value with N - value with 0) / N, and marginally between the two
//     counts, where fixed costs cancel out. A fresh backend and server are
//     started for this. Afterwards every session must still echo a byte,
//     then the backend closes first (TIME_WAIT again) and the client.
//
// For the direct path the "server" figures of 5 and 6 are the backend's
// (the sink or echo server), as a reference for what the bare sockets cost.
//
// Measurements 1 to 5 are made in rounds (-rounds, default 3; -quick 1):
// each round runs all of them on direct, sockd and Dante in turn, all
// three servers staying up for the whole phase, so that other work on the
// machine disturbs the paths alike. The table shows the median of the
// rounds with the lowest and highest value; the latency figures are the
// medians of each round's p50 and p99.
//
// A full run first waits (up to 65 s) for TIME_WAIT sockets left by an
// earlier run to expire. The table is followed by sockd's figures against
// the project's targets (<= 2 fds and <= 8 KiB per idle session, 9,900
// idle sessions under a 20,000-fd limit) and by every problem met: failed
// connections, sessions a server could not hold, anything a server wrote
// to stderr (sockd runs at -log-level warn; Dante's info lines are left
// out). These are reported, never asserted: this is no test.
//
// Processes: the harness re-executes itself as "bench backend" (sink and
// echo servers) and "bench client" (the load), each in its own process so
// that with 9,900 sessions the client's 9,900 sockets and the backend's
// 9,900 fit their own 20,000-fd limits; the proxy in between holds the
// other ~19,800. Everything listens and connects on 127.0.0.1 only, every
// load loop is bounded by a count or a duration, and every process the
// harness starts is put in its own process group, sent SIGTERM by its pid
// when done with, and whatever is left of that group after a few seconds
// (Dante's children) gets SIGKILL by the group's id.
package main

import (
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
	sockd  string
	dante  string
	quick  bool
	out    string
	idle   string
	keep   bool
	rounds int
}

func parseOptions(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.StringVar(&o.sockd, "sockd", "", "sockd `binary` (empty: build ./cmd/sockd)")
	fs.StringVar(&o.dante, "dante", "/usr/sbin/danted", "danted `binary` (empty: leave Dante out)")
	fs.BoolVar(&o.quick, "quick", false, "smaller sizes and shorter runs, for a smoke test")
	fs.StringVar(&o.out, "out", "", "also write all figures as JSON to `file`")
	fs.IntVar(&o.rounds, "rounds", 0, "rounds of the throughput and connection runs; the table shows medians (default 3; -quick 1)")
	fs.StringVar(&o.idle, "idle", "", "idle session `counts`, comma-separated (default 1000,9900; -quick 100,1000)")
	fs.BoolVar(&o.keep, "keep", false, "keep the temp dir with the configs and the servers' logs")
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
	}
	if o.rounds > 0 {
		s.Rounds = o.rounds
	}
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
	Dante   string  `json:"dante,omitempty"`
	NoFile  uint64  `json:"rlimit_nofile"`
	LoadAvg string  `json:"loadavg_at_start"`
	Started string  `json:"started"`
	Seconds float64 `json:"seconds"`
}

func machineFacts(sockd, dante string) facts {
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
	r := &runner{env: e, set: set, sockd: o.sockd, dante: o.dante}
	if err := r.prepare(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	rep := report{Facts: machineFacts(r.sockd, r.dante), Settings: set}
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
			r.dante = ""
		}
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
	names := []string{"direct", "sockd"}
	if r.dante != "" {
		names = append(names, "dante")
	}
	be, err := r.env.startBackend(r.set.BufSize, r.set.EchoSize)
	if err != nil {
		return nil, fmt.Errorf("backend: %v", err)
	}
	out := r.load(names, be)
	be.stop()
	for i := range out {
		if out[i].Skipped == "" {
			r.idle(&out[i])
		}
	}
	if r.dante == "" {
		out = append(out, pathResult{Name: "dante", Skipped: "left out (-dante '')"})
	}
	return out, nil
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
