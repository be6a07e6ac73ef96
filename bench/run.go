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
	Chains       bool          `json:"chains"` // the sockd 1 hop and 2 hops paths
	UDPAssocs    []int         `json:"udp_associations"`
	UDPDuration  time.Duration `json:"udp_duration_ns"`
	UDPBlast     time.Duration `json:"udp_one_way_duration_ns"`
	UDPSize      int           `json:"udp_payload_bytes"`
	BindClients  int           `json:"bind_clients"`
	BindDuration time.Duration `json:"bind_time_limit_ns"`
	BindMax      int           `json:"bind_setups"`
}

// connRun is one connection-rate measurement with the server's CPU.
type connRun struct {
	connResult
	ServerCPU float64 `json:"server_cpu_seconds"`
	// CPUmsPerK is ServerCPU in ms per 1,000 sessions completed.
	CPUmsPerK float64 `json:"server_cpu_ms_per_1000_sessions"`
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

// loadRound is one round of the load measurements on one path. The chain
// paths and HAProxy have no UDP and BIND figures, glider no BIND ones.
type loadRound struct {
	Single streamRun       `json:"single_stream"`
	Multi  streamRun       `json:"multi_stream"`
	Conn   []connRun       `json:"conn_rate"`     // one per client count
	UDP    []udpResult     `json:"udp,omitempty"` // one per association count
	Blast  *udpBlastResult `json:"udp_one_way,omitempty"`
	Bind   *bindResult     `json:"bind,omitempty"`
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
	env     *env
	set     settings
	sockd   string
	dante   string
	glider  string
	haproxy string
	leftOut map[string]string // path name → why it is not measured
}

// Path names. The chain paths are sockd processes routing to each other:
// the load client talks to the first, the last connects to the backend.
const (
	pathDirect  = "direct"
	pathSockd   = "sockd"
	pathGlider  = "glider"
	pathHAProxy = "haproxy" // plain TCP forwarding, no SOCKS
	pathDante   = "dante"
	path1Hop    = "sockd-1hop"  // client → sockd A → sockd B → backend
	path2Hops   = "sockd-2hops" // client → A → B → C → backend
)

// hasUDP says whether path name is measured on UDP: not the chains, not
// HAProxy (TCP only here).
func hasUDP(name string) bool {
	return chainLength(name) == 0 && name != pathHAProxy
}

// hasBind says whether path name is measured on BIND: as UDP, and not
// glider, which answers no SOCKS5 command but CONNECT and UDP ASSOCIATE.
func hasBind(name string) bool {
	return hasUDP(name) && name != pathGlider
}

// chainLength is the number of sockd processes of a chain path, 0 for the
// others.
func chainLength(name string) int {
	switch name {
	case path1Hop:
		return 2
	case path2Hops:
		return 3
	}
	return 0
}

// startServer starts the proxy of path name, or returns nil for direct.
// HAProxy gets a frontend for each TCP service of be that the load uses.
func (r *runner) startServer(name string, be *backend) (*proxy, error) {
	switch name {
	case pathSockd:
		return r.env.startSockd(r.sockd)
	case pathGlider:
		return r.env.startGlider(r.glider)
	case pathHAProxy:
		return r.env.startHAProxy(r.haproxy, map[string]string{
			"sink": be.sink, "echo": be.echo, "once": be.once})
	case pathDante:
		return r.env.startDante(r.dante)
	}
	return nil, nil
}

// pathServer is what the load of one path goes through: nothing
// (direct), one proxy, or the sockd processes of a chain, front first.
type pathServer struct {
	addr  string            // SOCKS server the load client talks to; "" for direct and HAProxy
	fwd   map[string]string // HAProxy: backend address → its frontend
	procs []*proxy
}

// route returns the SOCKS server ("" for none) and the address the load
// client connects to for backend service target: through HAProxy, its
// frontend for target, with no SOCKS; otherwise target itself, through
// the SOCKS server if there is one.
func (ps *pathServer) route(target string) (proxyAddr, dst string) {
	if ps.fwd != nil {
		return "", ps.fwd[target]
	}
	return ps.addr, target
}

// serverPath wraps a single proxy (or none, for direct) as a pathServer.
func serverPath(px *proxy) *pathServer {
	if px == nil {
		return &pathServer{}
	}
	return &pathServer{addr: px.addr, fwd: px.fwd, procs: []*proxy{px}}
}

// startPath starts the servers of path name.
func (r *runner) startPath(name string, be *backend) (*pathServer, error) {
	if n := chainLength(name); n > 0 {
		procs, err := r.env.startChain(r.sockd, name, n)
		if err != nil {
			return nil, err
		}
		return &pathServer{addr: procs[0].addr, procs: procs}, nil
	}
	px, err := r.startServer(name, be)
	if err != nil {
		return &pathServer{}, err
	}
	return serverPath(px), nil
}

// pids are the processes whose CPU is the path's server CPU: the proxies
// (a chain's all together), or for direct the backend.
func (ps *pathServer) pids(be *backend) []int {
	if len(ps.procs) == 0 {
		return []int{be.pid()}
	}
	var out []int
	for _, px := range ps.procs {
		out = append(out, px.pid())
	}
	return out
}

// sampleAll sums sample over several process trees.
func sampleAll(pids []int) usage {
	var u usage
	for _, pid := range pids {
		s := sample(pid)
		u.Procs += s.Procs
		u.CPU += s.CPU
		u.PSSKiB += s.PSSKiB
		u.FDs += s.FDs
	}
	return u
}

// load measures throughput, connection rate, UDP and BIND (the latter two
// not on the chains) on every path against one backend, in rounds: each
// round runs every measurement on each path in turn, so that a
// disturbance from outside (other work on this machine) spreads over the
// paths rather than falling on one. All servers run for the whole phase;
// the ones not being measured sit idle.
func (r *runner) load(names []string, be *backend) []pathResult {
	res := make([]pathResult, len(names))
	servers := make([]*pathServer, len(names))
	for i, name := range names {
		res[i].Name = name
		ps, err := r.startPath(name, be)
		if err != nil {
			res[i].Skipped = err.Error()
			logf("%s: not measured: %v", name, err)
			ps = &pathServer{}
		}
		servers[i] = ps
	}
	for round := 1; round <= r.set.Rounds; round++ {
		for i := range res {
			if res[i].Skipped == "" {
				res[i].Rounds = append(res[i].Rounds, r.loadRound(&res[i], servers[i], be, round))
			}
		}
	}
	for i, ps := range servers {
		for _, px := range ps.procs {
			r.stopServer(&res[i], px, "load runs")
		}
	}
	return res
}

// loadRound runs one round of the load measurements on one path.
func (r *runner) loadRound(res *pathResult, ps *pathServer, be *backend, round int) loadRound {
	measured, proxyAddr := ps.pids(be), ps.addr
	var lr loadRound
	logf("round %d/%d, %s: single stream, %s", round, r.set.Rounds, res.Name, sizeStr(r.set.SingleBytes))
	before := perProcessCPU(ps.procs)
	viaProxy, sink := ps.route(be.sink)
	lr.Single = r.stream(res, measured, viaProxy, sink, 1, r.set.SingleBytes)
	if len(ps.procs) > 1 && streamOK(lr.Single) {
		checkChainUsed(res, ps.procs, before)
	}
	logf("round %d/%d, %s: %d streams, %s each", round, r.set.Rounds, res.Name, r.set.MultiStreams, sizeStr(r.set.MultiBytes))
	lr.Multi = r.stream(res, measured, viaProxy, sink, r.set.MultiStreams, r.set.MultiBytes)
	viaProxy, once := ps.route(be.once)
	for _, n := range r.set.Clients {
		logf("round %d/%d, %s: connections, %d clients, %v", round, r.set.Rounds, res.Name, n, r.set.ConnDuration)
		lr.Conn = append(lr.Conn, r.connRate(res, measured, viaProxy, once, n))
	}
	if !hasUDP(res.Name) {
		return lr
	}
	for _, n := range r.set.UDPAssocs {
		logf("round %d/%d, %s: UDP round trips, %d association(s), %v", round, r.set.Rounds, res.Name, n, r.set.UDPDuration)
		lr.UDP = append(lr.UDP, r.udp(res, proxyAddr, be.udpEcho, n))
	}
	if r.set.UDPBlast > 0 {
		logf("round %d/%d, %s: UDP one way, %v", round, r.set.Rounds, res.Name, r.set.UDPBlast)
		lr.Blast = r.udpBlast(res, proxyAddr, be.udpSink)
	}
	if !hasBind(res.Name) {
		return lr
	}
	logf("round %d/%d, %s: BIND, %d clients, %d set-ups", round, r.set.Rounds, res.Name, r.set.BindClients, r.set.BindMax)
	lr.Bind = r.bind(res, proxyAddr)
	return lr
}

// perProcessCPU samples the CPU seconds of each process.
func perProcessCPU(procs []*proxy) []float64 {
	out := make([]float64, len(procs))
	for i, px := range procs {
		out[i] = sample(px.pid()).CPU
	}
	return out
}

// checkChainUsed reports a process of a chain that used no CPU, or less
// than a tenth of what the front one used, while a stream went through
// the chain: the stream cannot have crossed it (a route not taken, say).
func checkChainUsed(res *pathResult, procs []*proxy, before []float64) {
	after := perProcessCPU(procs)
	front := after[0] - before[0]
	for i, px := range procs {
		if d := after[i] - before[i]; d <= 0 || d < front/10 {
			res.problem("%s used %.2f s of CPU during a single-stream run (%s %.2f s): the stream did not cross it",
				px.name, d, procs[0].name, front)
		}
	}
}

// stopServer stops px and reports whether it had died during the phase,
// and anything it wrote to stderr (sockd runs at -log-level warn).
func (r *runner) stopServer(res *pathResult, px *proxy, phase string) {
	who := "server"
	if px.name != res.Name {
		who = "server " + px.name // one of a chain
	}
	if px.exited() {
		res.problem("%s exited during the %s: %s", who, phase, px.exitDetail())
		return
	}
	n, tail := px.logLines(3)
	px.stop()
	if n > 0 {
		res.problem("%s wrote %d lines to stderr during the %s; last: %s", who, n, phase, tail)
	}
}

// stream runs one throughput measurement and the server's CPU across it.
func (r *runner) stream(res *pathResult, measured []int, proxyAddr, sink string, streams int, each int64) streamRun {
	before := sampleAll(measured)
	var sr streamResult
	err := r.client(&sr, r.set.StreamLimit+30*time.Second, "stream",
		"-target", sink, "-proxy", proxyAddr, "-streams", strconv.Itoa(streams),
		"-bytes", strconv.FormatInt(each, 10), "-buf", strconv.Itoa(r.set.BufSize),
		"-timeout", r.set.StreamLimit.String())
	after := sampleAll(measured)
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

// connRate runs the connection-rate client with n concurrent clients,
// and the server's CPU across it. Through glider the client closes first
// (see clientClosesFirst).
func (r *runner) connRate(res *pathResult, measured []int, proxyAddr, once string, n int) connRun {
	args := []string{"-target", once, "-proxy", proxyAddr, "-clients", strconv.Itoa(n),
		"-duration", r.set.ConnDuration.String(), "-size", strconv.Itoa(r.set.EchoSize)}
	if clientClosesFirst(res.Name) {
		args = append(args, "-closefirst")
	}
	before := sampleAll(measured)
	var cr connResult
	err := r.client(&cr, r.set.ConnDuration+opTimeout+30*time.Second, "connrate", args...)
	after := sampleAll(measured)
	if err != nil {
		res.problem("connections with %d clients: %v", n, err)
		return connRun{connResult: connResult{Clients: n}}
	}
	if cr.Errors > 0 {
		res.problem("connections with %d clients: %d failed, first: %s", n, cr.Errors, cr.FirstError)
	}
	run := connRun{connResult: cr, ServerCPU: after.CPU - before.CPU}
	if cr.Conns > 0 {
		run.CPUmsPerK = run.ServerCPU * 1000 / float64(cr.Conns) * 1000
	}
	return run
}

// clientClosesFirst says whether the connection-rate client closes as soon
// as it has read the echo on path name, rather than waiting for the end of
// stream. Only through glider: when the backend closes, glider does not
// pass the close on (no shutdown, no close) but waits for the other
// direction to end, for up to 5 s (a read deadline in its relay), so that
// a client waiting for the end of stream would measure that wait.
func clientClosesFirst(name string) bool { return name == pathGlider }

// udp runs the UDP request-response client with n associations.
func (r *runner) udp(res *pathResult, proxyAddr, echo string, n int) udpResult {
	var ur udpResult
	err := r.client(&ur, r.set.UDPDuration+opTimeout+30*time.Second, "udp",
		"-target", echo, "-proxy", proxyAddr, "-assocs", strconv.Itoa(n),
		"-duration", r.set.UDPDuration.String(), "-size", strconv.Itoa(r.set.UDPSize))
	if err != nil {
		res.problem("UDP with %d associations: %v", n, err)
		return udpResult{Assocs: n}
	}
	if ur.Errors > 0 || ur.Lost > 0 {
		res.problem("UDP with %d associations: %d errors, %d datagrams lost (no echo within %v), first error: %s",
			n, ur.Errors, ur.Lost, udpWait, ur.FirstError)
	}
	return ur
}

// udpBlast runs the one-way UDP client against the UDP sink.
func (r *runner) udpBlast(res *pathResult, proxyAddr, sink string) *udpBlastResult {
	var br udpBlastResult
	err := r.client(&br, r.set.UDPBlast+opTimeout+30*time.Second, "udpblast",
		"-target", sink, "-proxy", proxyAddr,
		"-duration", r.set.UDPBlast.String(), "-size", strconv.Itoa(r.set.UDPSize))
	if err != nil {
		res.problem("UDP one way: %v", err)
		return &udpBlastResult{Error: err.Error()}
	}
	if br.Error != "" {
		res.problem("UDP one way: %s", br.Error)
	}
	return &br
}

// bind runs the BIND client.
func (r *runner) bind(res *pathResult, proxyAddr string) *bindResult {
	var br bindResult
	err := r.client(&br, r.set.BindDuration+opTimeout+30*time.Second, "bind",
		"-proxy", proxyAddr, "-clients", strconv.Itoa(r.set.BindClients),
		"-duration", r.set.BindDuration.String(), "-max", strconv.Itoa(r.set.BindMax),
		"-size", strconv.Itoa(r.set.EchoSize))
	if err != nil {
		res.problem("BIND: %v", err)
		return &bindResult{Clients: r.set.BindClients}
	}
	if br.Errors > 0 {
		res.problem("BIND: %d of %d set-ups failed, first: %s", br.Errors, br.Errors+br.Setups, br.FirstError)
	}
	return &br
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
	px, err := r.startServer(res.Name, be)
	if err != nil {
		res.Idle.Error = err.Error()
		res.problem("idle: %v", err)
		return
	}
	measured := be.child
	if px != nil {
		defer r.stopServer(res, px, "idle run")
		measured = px.child
	}
	proxyAddr, echo := serverPath(px).route(be.echo)
	time.Sleep(r.set.Settle)
	res.Idle.Base = sample(measured.pid())
	if err := r.idleSteps(res, measured, be, proxyAddr, echo); err != nil {
		res.Idle.Error = err.Error()
		res.problem("idle: %v", err)
	}
}

// idleSteps drives the idle client through its counts, sampling the
// server after each step has settled.
func (r *runner) idleSteps(res *pathResult, measured *child, be *backend, proxyAddr, echo string) error {
	counts := make([]string, len(r.set.IdleCounts))
	for i, n := range r.set.IdleCounts {
		counts[i] = strconv.Itoa(n)
	}
	c, err := r.env.start("client-idle", true, r.env.self, "client", "idle",
		"-target", echo, "-proxy", proxyAddr, "-counts", strings.Join(counts, ","),
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
