package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// settings are the sizes and durations of one run.
type settings struct {
	Quick        bool          `json:"quick"`
	Rounds       int           `json:"rounds"`
	SingleBytes  int64         `json:"single_stream_bytes"`
	MultiStreams int           `json:"multi_streams"`
	MultiBytes   int64         `json:"multi_stream_bytes_each"`
	BufSize      int           `json:"buffer_bytes"`
	StreamLimit  time.Duration `json:"stream_time_limit_ns"`
	ConnDuration time.Duration `json:"conn_duration_ns"`
	Clients      []int         `json:"conn_clients"`
	EchoSize     int           `json:"echo_bytes"`
	IdleCounts   []int         `json:"idle_counts"`
	IdleLimit    time.Duration `json:"idle_step_time_limit_ns"`
	Settle       time.Duration `json:"settle_ns"`
}

// streamRun is one throughput measurement with the server's CPU.
type streamRun struct {
	streamResult
	MiBps     float64 `json:"mib_per_second"`
	ServerCPU float64 `json:"server_cpu_seconds"`
	CPUPerGiB float64 `json:"server_cpu_seconds_per_gib"`
}

// idleSample is the server's cost with one number of idle sessions.
type idleSample struct {
	idleStep
	Server     usage   `json:"server"`
	BackendFDs int     `json:"backend_fds"`
	KiBPerSess float64 `json:"pss_kib_per_session"`
	FDsPerSess float64 `json:"fds_per_session"`
	// Marginal cost from the step before: fixed costs cancel out.
	MarginalKiB float64 `json:"marginal_pss_kib_per_session,omitempty"`
	MarginalFDs float64 `json:"marginal_fds_per_session,omitempty"`
}

// idleRun is the idle-session measurement of one path.
type idleRun struct {
	Base   usage        `json:"server_no_sessions"`
	Steps  []idleSample `json:"steps"`
	Verify verifyResult `json:"verify"`
	Error  string       `json:"error,omitempty"`
}

// loadRound is one round of the load measurements on one path.
type loadRound struct {
	Single streamRun    `json:"single_stream"`
	Multi  streamRun    `json:"multi_stream"`
	Conn   []connResult `json:"conn_rate"` // one per client count
}

// pathResult is everything measured on one path. For the direct path the
// "server" whose CPU, memory and fds are sampled is the backend itself.
type pathResult struct {
	Name     string      `json:"name"`
	Skipped  string      `json:"skipped,omitempty"`
	Rounds   []loadRound `json:"rounds"`
	Idle     idleRun     `json:"idle"`
	Problems []string    `json:"problems,omitempty"`
}

func (p *pathResult) problem(format string, a ...any) {
	msg := fmt.Sprintf(format, a...)
	p.Problems = append(p.Problems, msg)
	fmt.Fprintf(os.Stderr, "bench: %s: %s\n", p.Name, msg)
}

// runner runs the measurements of one invocation.
type runner struct {
	env   *env
	set   settings
	sockd string
	dante string
}

// startServer starts the proxy of path name, or returns nil for direct.
func (r *runner) startServer(name string) (*proxy, error) {
	switch name {
	case "sockd":
		return r.env.startSockd(r.sockd)
	case "dante":
		return r.env.startDante(r.dante)
	}
	return nil, nil
}

// load measures throughput and connection rate on every path against one
// backend, in rounds: each round runs every measurement on each path in
// turn, so that a disturbance from outside (other work on this machine)
// spreads over the paths rather than falling on one. All servers run for
// the whole phase; the ones not being measured sit idle.
func (r *runner) load(names []string, be *backend) []pathResult {
	res := make([]pathResult, len(names))
	servers := make([]*proxy, len(names))
	for i, name := range names {
		res[i].Name = name
		px, err := r.startServer(name)
		if err != nil {
			res[i].Skipped = err.Error()
			logf("%s: not measured: %v", name, err)
		}
		servers[i] = px
	}
	for round := 1; round <= r.set.Rounds; round++ {
		for i := range res {
			if res[i].Skipped == "" {
				res[i].Rounds = append(res[i].Rounds, r.loadRound(&res[i], servers[i], be, round))
			}
		}
	}
	for i, px := range servers {
		if px != nil {
			r.stopServer(&res[i], px, "load runs")
		}
	}
	return res
}

// loadRound runs one round of the load measurements on one path; px is
// nil for direct.
func (r *runner) loadRound(res *pathResult, px *proxy, be *backend, round int) loadRound {
	measured, proxyAddr := be.child, ""
	if px != nil {
		measured, proxyAddr = px.child, px.addr
	}
	var lr loadRound
	logf("round %d/%d, %s: single stream, %s", round, r.set.Rounds, res.Name, sizeStr(r.set.SingleBytes))
	lr.Single = r.stream(res, measured, proxyAddr, be.sink, 1, r.set.SingleBytes)
	logf("round %d/%d, %s: %d streams, %s each", round, r.set.Rounds, res.Name, r.set.MultiStreams, sizeStr(r.set.MultiBytes))
	lr.Multi = r.stream(res, measured, proxyAddr, be.sink, r.set.MultiStreams, r.set.MultiBytes)
	for _, n := range r.set.Clients {
		logf("round %d/%d, %s: connections, %d clients, %v", round, r.set.Rounds, res.Name, n, r.set.ConnDuration)
		lr.Conn = append(lr.Conn, r.connRate(res, proxyAddr, be.once, n))
	}
	return lr
}

// stopServer stops px and reports whether it had died during the phase,
// and anything it wrote to stderr (sockd runs at -log-level warn).
func (r *runner) stopServer(res *pathResult, px *proxy, phase string) {
	if px.exited() {
		res.problem("server exited during the %s: %s", phase, px.exitDetail())
		return
	}
	n, tail := px.logLines(3)
	px.stop()
	if n > 0 {
		res.problem("server wrote %d lines to stderr during the %s; last: %s", n, phase, tail)
	}
}

// stream runs one throughput measurement and the server's CPU across it.
func (r *runner) stream(res *pathResult, measured *child, proxyAddr, sink string, streams int, each int64) streamRun {
	before := sample(measured.pid())
	var sr streamResult
	err := r.client(&sr, r.set.StreamLimit+30*time.Second, "stream",
		"-target", sink, "-proxy", proxyAddr, "-streams", strconv.Itoa(streams),
		"-bytes", strconv.FormatInt(each, 10), "-buf", strconv.Itoa(r.set.BufSize),
		"-timeout", r.set.StreamLimit.String())
	after := sample(measured.pid())
	run := streamRun{streamResult: sr}
	if err != nil {
		res.problem("%d-stream run: %v", streams, err)
		return run
	}
	if sr.Error != "" {
		res.problem("%d-stream run: %s", streams, sr.Error)
	}
	if sr.Seconds > 0 {
		run.MiBps = float64(sr.Bytes) / (1 << 20) / sr.Seconds
	}
	run.ServerCPU = after.CPU - before.CPU
	if sr.Bytes > 0 {
		run.CPUPerGiB = run.ServerCPU / (float64(sr.Bytes) / (1 << 30))
	}
	return run
}

// connRate runs the connection-rate client with n concurrent clients.
func (r *runner) connRate(res *pathResult, proxyAddr, once string, n int) connResult {
	var cr connResult
	err := r.client(&cr, r.set.ConnDuration+opTimeout+30*time.Second, "connrate",
		"-target", once, "-proxy", proxyAddr, "-clients", strconv.Itoa(n),
		"-duration", r.set.ConnDuration.String(), "-size", strconv.Itoa(r.set.EchoSize))
	if err != nil {
		res.problem("connections with %d clients: %v", n, err)
		return connResult{Clients: n}
	}
	if cr.Errors > 0 {
		res.problem("connections with %d clients: %d failed, first: %s", n, cr.Errors, cr.FirstError)
	}
	return cr
}

// client runs one "bench client" measurement and decodes its one line of
// JSON into v.
func (r *runner) client(v any, limit time.Duration, mode string, args ...string) error {
	c, err := r.env.start("client-"+mode, true, append([]string{r.env.self, "client", mode}, args...)...)
	if err != nil {
		return err
	}
	defer c.stop()
	line, err := c.next(limit)
	if err != nil {
		return err
	}
	return json.Unmarshal([]byte(line), v)
}

// idle measures the cost of idle sessions on one path, with a fresh
// backend and a fresh server so that earlier load leaves nothing behind.
func (r *runner) idle(res *pathResult) {
	be, err := r.env.startBackend(r.set.BufSize, r.set.EchoSize)
	if err != nil {
		res.Idle.Error = err.Error()
		res.problem("idle: backend: %v", err)
		return
	}
	defer be.stop()
	px, err := r.startServer(res.Name)
	if err != nil {
		res.Idle.Error = err.Error()
		res.problem("idle: %v", err)
		return
	}
	measured, proxyAddr := be.child, ""
	if px != nil {
		defer r.stopServer(res, px, "idle run")
		measured, proxyAddr = px.child, px.addr
	}
	time.Sleep(r.set.Settle)
	res.Idle.Base = sample(measured.pid())
	if err := r.idleSteps(res, measured, be, proxyAddr); err != nil {
		res.Idle.Error = err.Error()
		res.problem("idle: %v", err)
	}
}

// idleSteps drives the idle client through its counts, sampling the
// server after each step has settled.
func (r *runner) idleSteps(res *pathResult, measured *child, be *backend, proxyAddr string) error {
	counts := make([]string, len(r.set.IdleCounts))
	for i, n := range r.set.IdleCounts {
		counts[i] = strconv.Itoa(n)
	}
	c, err := r.env.start("client-idle", true, r.env.self, "client", "idle",
		"-target", be.echo, "-proxy", proxyAddr, "-counts", strings.Join(counts, ","),
		"-timeout", r.set.IdleLimit.String())
	if err != nil {
		return err
	}
	defer c.stop()
	for _, n := range r.set.IdleCounts {
		logf("%s: idle sessions up to %d", res.Name, n)
		line, err := c.next(r.set.IdleLimit + 30*time.Second)
		if err != nil {
			return err
		}
		var s idleSample
		if err := json.Unmarshal([]byte(line), &s.idleStep); err != nil {
			return err
		}
		if s.Open < n {
			res.problem("idle: held %d of %d sessions (%d failed attempts), first error: %s",
				s.Open, n, s.Errors, s.FirstError)
		}
		time.Sleep(r.set.Settle)
		s.Server = sample(measured.pid())
		s.BackendFDs = countFDs(be.pid())
		perSession(&s, res.Idle.Base, res.Idle.Steps)
		res.Idle.Steps = append(res.Idle.Steps, s)
		if _, err := c.stdin.Write([]byte("\n")); err != nil {
			return err
		}
	}
	line, err := c.next(2*time.Minute + opTimeout)
	if err != nil {
		return err
	}
	if err := json.Unmarshal([]byte(line), &res.Idle.Verify); err != nil {
		return err
	}
	if v := res.Idle.Verify; v.Errors > 0 {
		res.problem("idle: %d sessions did not echo after the measurement, first: %s", v.Errors, v.FirstError)
	}
	// The backend closes first, so that the TIME_WAIT states land on
	// listening ports (see serveOnce); then the client lets go.
	be.stop()
	time.Sleep(time.Second)
	return nil
}

// perSession fills in the cost per session of s: against no sessions,
// and against the step before.
func perSession(s *idleSample, base usage, before []idleSample) {
	if s.Open > 0 {
		s.KiBPerSess = float64(s.Server.PSSKiB-base.PSSKiB) / float64(s.Open)
		s.FDsPerSess = float64(s.Server.FDs-base.FDs) / float64(s.Open)
	}
	if len(before) == 0 {
		return
	}
	prev := before[len(before)-1]
	if n := s.Open - prev.Open; n > 0 {
		s.MarginalKiB = float64(s.Server.PSSKiB-prev.Server.PSSKiB) / float64(n)
		s.MarginalFDs = float64(s.Server.FDs-prev.Server.FDs) / float64(n)
	}
}

// logf prints a timestamped progress line on stderr.
func logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, a...)...)
}

// sizeStr formats a byte count in MiB or GiB.
func sizeStr(n int64) string {
	if n >= 1<<30 && n%(1<<30) == 0 {
		return fmt.Sprintf("%d GiB", n>>30)
	}
	return fmt.Sprintf("%d MiB", n>>20)
}
