package main

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
)

// Targets the project reports sockd against.
const (
	targetFDsPerSession = 2
	targetKiBPerSession = 8
	targetSessions      = 9900
	fdLimit             = 20000
)

// cell is one figure: the median of the values measured (one per round
// for the load runs, a single one otherwise), with the lowest and the
// highest; n is 0 where nothing was measured.
type cell struct {
	v, lo, hi float64
	n         int
}

func newCell(vals []float64) cell {
	if len(vals) == 0 {
		return cell{}
	}
	s := slices.Clone(vals)
	slices.Sort(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return cell{v: m, lo: s[0], hi: s[len(s)-1], n: len(s)}
}

// nPaths is the number of paths a row has a cell for.
const nPaths = 7

// row is one metric across the paths: direct, sockd, its peers (glider,
// HAProxy, Dante), and the sockd chains. Rows with chain set are also in
// the table of the chains.
type row struct {
	metric string
	cells  [nPaths]cell
	format func(float64) string
	chain  bool
	// noRatio leaves the ratio columns empty: a ratio of two loss
	// percentages says nothing.
	noRatio bool
}

// pathNames are the paths in cell order.
var pathNames = [nPaths]string{pathDirect, pathSockd, pathGlider, pathHAProxy, pathDante, path1Hop, path2Hops}

// Cell indices.
const (
	colDirect = iota
	colSockd
	colGlider
	colHAProxy
	colDante
	col1Hop
	col2Hops
)

// peerCols are the other servers sockd is compared with, in the order of
// the table's columns.
var peerCols = []int{colGlider, colHAProxy, colDante}

// colTitles are the paths' names in the tables' headers.
var colTitles = [nPaths]string{"direct", "sockd", "glider", "HAProxy", "dante", "sockd 1 hop", "sockd 2 hops"}

// ratioPair is a ratio column: the figure of path num over that of den.
type ratioPair struct{ num, den int }

func (p ratioPair) title() string { return colTitles[p.num] + "/" + colTitles[p.den] }

// key names the ratio in the JSON report, by the paths' names.
func (p ratioPair) key() string { return pathNames[p.num] + "/" + pathNames[p.den] }

// mainRatios are the ratio columns of the main table for the paths
// shown: each path to direct, then sockd to each peer.
func mainRatios(shown []int) []ratioPair {
	var out []ratioPair
	for _, c := range shown {
		if c != colDirect {
			out = append(out, ratioPair{c, colDirect})
		}
	}
	for _, c := range shown {
		if slices.Contains(peerCols, c) {
			out = append(out, ratioPair{colSockd, c})
		}
	}
	return out
}

// allRatios are the ratios the JSON report gives: those of the main table
// with every path, and the chains' to sockd.
var allRatios = append(mainRatios([]int{colDirect, colSockd, colGlider, colHAProxy, colDante, col1Hop, col2Hops}),
	ratioPair{col1Hop, colSockd}, ratioPair{col2Hops, colSockd})

// byName returns the results of the paths in cell order.
func byName(paths []pathResult) [nPaths]*pathResult {
	var out [nPaths]*pathResult
	for i := range paths {
		for j, n := range pathNames {
			if paths[i].Name == n {
				out[j] = &paths[i]
			}
		}
	}
	return out
}

// metric builds a row from f, which returns the values a path measured.
func metric(name string, ps [nPaths]*pathResult, format func(float64) string, f func(*pathResult) []float64) row {
	r := row{metric: name, format: format}
	for i, p := range ps {
		if p != nil && p.Skipped == "" {
			r.cells[i] = newCell(f(p))
		}
	}
	return r
}

// perRound turns f, which reads one figure of a round and says whether
// that round measured it, into a metric function over all rounds.
func perRound(f func(loadRound) (float64, bool)) func(*pathResult) []float64 {
	return func(p *pathResult) []float64 {
		var out []float64
		for _, lr := range p.Rounds {
			if v, ok := f(lr); ok {
				out = append(out, v)
			}
		}
		return out
	}
}

func fmt0(v float64) string { return fmt.Sprintf("%.0f", v) }
func fmt1(v float64) string { return fmt.Sprintf("%.1f", v) }
func fmt2(v float64) string { return fmt.Sprintf("%.2f", v) }
func fmt3(v float64) string { return fmt.Sprintf("%.3f", v) }
func fmt4(v float64) string { return fmt.Sprintf("%.4f", v) }

// rows lists every metric of the table.
func rows(set settings, ps [nPaths]*pathResult) []row {
	out := throughputRows(set, ps)
	out = append(out, connRows(set, ps)...)
	for i := range out {
		out[i].chain = true
	}
	out = append(out, udpRows(set, ps)...)
	out = append(out, bindRows(set, ps)...)
	out = append(out, baseRows(ps)...)
	return append(out, idleRows(set, ps)...)
}

// streamOK says whether a throughput run delivered everything.
func streamOK(s streamRun) bool { return s.Error == "" && s.Bytes > 0 }

// throughputRows are the throughput and CPU-per-GiB rows.
func throughputRows(set settings, ps [nPaths]*pathResult) []row {
	n := set.MultiStreams
	return []row{
		metric("single-stream throughput, MiB/s", ps, fmt0, perRound(func(lr loadRound) (float64, bool) {
			return lr.Single.MiBps, streamOK(lr.Single)
		})),
		metric(fmt.Sprintf("%d-stream throughput (aggregate), MiB/s", n), ps, fmt0, perRound(func(lr loadRound) (float64, bool) {
			return lr.Multi.MiBps, streamOK(lr.Multi)
		})),
		metric("server CPU s per GiB, single stream ¹", ps, fmt3, perRound(func(lr loadRound) (float64, bool) {
			return lr.Single.CPUPerGiB, streamOK(lr.Single)
		})),
		metric(fmt.Sprintf("server CPU s per GiB, %d streams ¹", n), ps, fmt3, perRound(func(lr loadRound) (float64, bool) {
			return lr.Multi.CPUPerGiB, streamOK(lr.Multi)
		})),
	}
}

// connRows are the connection-rate and handshake-latency rows.
func connRows(set settings, ps [nPaths]*pathResult) []row {
	var out []row
	for i, n := range set.Clients {
		conn := func(f func(connRun) float64) func(*pathResult) []float64 {
			return perRound(func(lr loadRound) (float64, bool) {
				if i < len(lr.Conn) && lr.Conn[i].Conns > 0 {
					return f(lr.Conn[i]), true
				}
				return 0, false
			})
		}
		out = append(out,
			metric(fmt.Sprintf("conn/s, CONNECT + %d B echo, %d clients", set.EchoSize, n), ps, fmt0,
				conn(func(c connRun) float64 { return c.Rate })),
			metric(fmt.Sprintf("handshake p50 µs, %d clients", n), ps, fmt0,
				conn(func(c connRun) float64 { return c.P50us })),
			metric(fmt.Sprintf("handshake p99 µs, %d clients", n), ps, fmt0,
				conn(func(c connRun) float64 { return c.P99us })),
			metric(fmt.Sprintf("server CPU ms per 1,000 sessions, %d clients ¹", n), ps, fmt1,
				conn(func(c connRun) float64 { return c.CPUmsPerK })))
	}
	return out
}

// plural is "N association" or "N associations".
func plural(n int, word string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, word)
	}
	return fmt.Sprintf("%d %ss", n, word)
}

// udpRows are the UDP request-response and one-way rows.
func udpRows(set settings, ps [nPaths]*pathResult) []row {
	var out []row
	for i, n := range set.UDPAssocs {
		udp := func(f func(udpResult) float64) func(*pathResult) []float64 {
			return perRound(func(lr loadRound) (float64, bool) {
				if i < len(lr.UDP) && lr.UDP[i].RoundTrips > 0 {
					return f(lr.UDP[i]), true
				}
				return 0, false
			})
		}
		assocs := plural(n, "association")
		out = append(out,
			metric(fmt.Sprintf("UDP round trips/s, %d B, %s ²", set.UDPSize, assocs), ps, fmt0,
				udp(func(u udpResult) float64 { return u.Rate })),
			metric(fmt.Sprintf("UDP round trip p50 µs, %s ²", assocs), ps, fmt0,
				udp(func(u udpResult) float64 { return u.P50us })),
			metric(fmt.Sprintf("UDP round trip p99 µs, %s ²", assocs), ps, fmt0,
				udp(func(u udpResult) float64 { return u.P99us })))
	}
	if set.UDPBlast > 0 {
		blast := func(f func(*udpBlastResult) float64) func(*pathResult) []float64 {
			return perRound(func(lr loadRound) (float64, bool) {
				if b := lr.Blast; b != nil && b.Error == "" && b.Delivered > 0 {
					return f(b), true
				}
				return 0, false
			})
		}
		lost := metric("UDP one way, % lost ³", ps, fmt1,
			blast(func(b *udpBlastResult) float64 { return b.LossPct }))
		lost.noRatio = true
		out = append(out,
			metric(fmt.Sprintf("UDP one way, datagrams/s delivered, %d B ³", set.UDPSize), ps, fmt0,
				blast(func(b *udpBlastResult) float64 { return b.Rate })),
			metric("UDP one way, datagrams/s sent ³", ps, fmt0,
				blast(func(b *udpBlastResult) float64 { return float64(b.Sent) / b.SendSeconds })),
			lost)
	}
	return out
}

// bindRows are the BIND set-up rows.
func bindRows(set settings, ps [nPaths]*pathResult) []row {
	bind := func(f func(*bindResult) float64) func(*pathResult) []float64 {
		return perRound(func(lr loadRound) (float64, bool) {
			if b := lr.Bind; b != nil && b.Setups > 0 {
				return f(b), true
			}
			return 0, false
		})
	}
	n := set.BindClients
	return []row{
		metric(fmt.Sprintf("BIND set-ups/s, %d clients ⁴", n), ps, fmt0,
			bind(func(b *bindResult) float64 { return b.Rate })),
		metric(fmt.Sprintf("BIND set-up p50 µs, %d clients ⁴", n), ps, fmt0,
			bind(func(b *bindResult) float64 { return b.P50us })),
		metric(fmt.Sprintf("BIND set-up p99 µs, %d clients ⁴", n), ps, fmt0,
			bind(func(b *bindResult) float64 { return b.P99us })),
		metric(fmt.Sprintf("BIND session %d B round trip p50 µs ⁴", set.EchoSize), ps, fmt0,
			bind(func(b *bindResult) float64 { return b.RTTP50us })),
	}
}

// baseRows are the server's memory and fds with no sessions.
func baseRows(ps [nPaths]*pathResult) []row {
	base := func(f func(usage) float64) func(*pathResult) []float64 {
		return func(p *pathResult) []float64 {
			if p.Idle.Base.Procs == 0 {
				return nil
			}
			return []float64{f(p.Idle.Base)}
		}
	}
	return []row{
		metric("server PSS MiB, 0 sessions ¹", ps, fmt1, base(func(u usage) float64 { return float64(u.PSSKiB) / 1024 })),
		metric("server fds, 0 sessions ¹", ps, fmt0, base(func(u usage) float64 { return float64(u.FDs) })),
	}
}

// idleRows are the rows of each idle step.
func idleRows(set settings, ps [nPaths]*pathResult) []row {
	var out []row
	counts := set.IdleCounts
	for i, n := range counts {
		field := func(f func(idleSample) float64) func(*pathResult) []float64 {
			return func(p *pathResult) []float64 {
				if i < len(p.Idle.Steps) && p.Idle.Steps[i].Server.Procs > 0 {
					return []float64{f(p.Idle.Steps[i])}
				}
				return nil
			}
		}
		out = append(out,
			metric(fmt.Sprintf("idle sessions held (of %d)", n), ps, fmt0, field(func(s idleSample) float64 { return float64(s.Open) })),
			metric(fmt.Sprintf("server PSS MiB, %d idle ¹", n), ps, fmt1, field(func(s idleSample) float64 { return float64(s.Server.PSSKiB) / 1024 })),
			metric(fmt.Sprintf("server fds, %d idle ¹", n), ps, fmt0, field(func(s idleSample) float64 { return float64(s.Server.FDs) })),
			metric(fmt.Sprintf("server processes, %d idle ¹", n), ps, fmt0, field(func(s idleSample) float64 { return float64(s.Server.Procs) })),
			metric(fmt.Sprintf("PSS KiB per idle session, %d ¹", n), ps, fmt2, field(func(s idleSample) float64 { return s.KiBPerSess })),
			metric(fmt.Sprintf("fds per idle session, %d ¹", n), ps, fmt4, field(func(s idleSample) float64 { return s.FDsPerSess })))
		if i > 0 {
			step := fmt.Sprintf("marginal %d→%d", counts[i-1], n)
			out = append(out,
				metric("PSS KiB per idle session, "+step+" ¹", ps, fmt2, field(func(s idleSample) float64 { return s.MarginalKiB })),
				metric("fds per idle session, "+step+" ¹", ps, fmt4, field(func(s idleSample) float64 { return s.MarginalFDs })))
		}
	}
	return out
}

// text formats a cell: the median, and the range where rounds differ.
func (r row) text(c cell) string {
	switch {
	case c.n == 0:
		return "–"
	case c.n == 1 || c.lo == c.hi:
		return r.format(c.v)
	}
	return fmt.Sprintf("%s (%s–%s)", r.format(c.v), r.format(c.lo), r.format(c.hi))
}

// ratio formats a/b of two cells of r, or "–" where either is missing.
func (r row) ratio(a, b cell) string {
	v, ok := r.ratioValue(a, b)
	if !ok {
		return "–"
	}
	return fmt.Sprintf("%.2f", v)
}

// ratioValue is a/b of the medians of two cells of r, if both exist.
func (r row) ratioValue(a, b cell) (float64, bool) {
	if r.noRatio || a.n == 0 || b.n == 0 || b.v == 0 {
		return 0, false
	}
	return a.v / b.v, true
}

// tableRow is a row of the table in the JSON report. Ratios are of the
// medians, keyed "sockd/direct", "sockd/haproxy" and so on (see allRatios).
type tableRow struct {
	Metric string                `json:"metric"`
	Paths  map[string]tableValue `json:"paths"`
	Ratios map[string]float64    `json:"ratios,omitempty"`
}

type tableValue struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
	N      int     `json:"n"`
}

// tableJSON is the table as written by -out.
func tableJSON(rs []row) []tableRow {
	var out []tableRow
	for _, r := range rs {
		tr := tableRow{Metric: r.metric, Paths: map[string]tableValue{}}
		for i, c := range r.cells {
			if c.n > 0 {
				tr.Paths[pathNames[i]] = tableValue{c.v, c.lo, c.hi, c.n}
			}
		}
		for _, p := range allRatios {
			if v, ok := r.ratioValue(r.cells[p.num], r.cells[p.den]); ok {
				if tr.Ratios == nil {
					tr.Ratios = map[string]float64{}
				}
				tr.Ratios[p.key()] = math.Round(v*1000) / 1000
			}
		}
		out = append(out, tr)
	}
	return out
}

func printReport(w io.Writer, rep report) {
	f := rep.Facts
	fmt.Fprintf(w, "\n## sockd benchmark\n\n")
	fmt.Fprintf(w, "- command: `%s`\n", f.Command)
	fmt.Fprintf(w, "- machine: nproc %d, kernel %s, %s, RLIMIT_NOFILE %d, load average at start %s\n", f.NProc, f.Kernel, f.Go, f.NoFile, f.LoadAvg)
	fmt.Fprintf(w, "- sockd: %s\n", f.Sockd)
	ps := byName(rep.Paths)
	for _, p := range []struct {
		col  int
		name string
	}{{colGlider, f.Glider}, {colHAProxy, f.HAProxy}, {colDante, f.Dante}} {
		switch {
		case ps[p.col] != nil && ps[p.col].Skipped != "":
			fmt.Fprintf(w, "- %s: not measured, %s\n", pathNames[p.col], ps[p.col].Skipped)
		case p.name != "":
			fmt.Fprintf(w, "- %s: %s\n", pathNames[p.col], p.name)
		}
	}
	fmt.Fprintf(w, "- started %s, took %.0f s\n\n", f.Started, f.Seconds)

	set := rep.Settings
	printMain(w, rep.rows, ps)
	fmt.Fprintln(w)
	if n := set.Rounds; n > 1 {
		fmt.Fprintf(w, "Throughput, CPU, connection, UDP and BIND figures are medians of %d interleaved rounds, (lowest–highest) after them; ratios are of medians.\n", n)
	}
	fmt.Fprintf(w, "The backend listens on %s (see the chains below); the load client and the proxies are on 127.0.0.1.\n", backendHost)
	fmt.Fprintln(w, "¹ For direct, the \"server\" is the backend (sink, echo-once or echo server): the cost of the bare sockets, as a reference.")
	fmt.Fprintln(w, "Per-session figures are (value with N sessions − value with 0) / N, N being the sessions actually held; marginal ones compare the two counts.")
	fmt.Fprintf(w, "² SOCKS5 UDP ASSOCIATE, one per association (its control connection held open), each datagram with the RFC 1928 header; one datagram in flight per association, for %v. Direct: the same client on a plain UDP socket to the echo server.\n", set.UDPDuration)
	if set.UDPBlast > 0 {
		fmt.Fprintf(w, "³ One association (direct: one socket) sending as fast as it can for %v; delivered is what the UDP sink counted, over its first to last datagram; lost is what the relay or a socket buffer dropped on the way.\n", set.UDPBlast)
	}
	fmt.Fprintf(w, "⁴ SOCKS5 BIND naming 127.0.0.1: from the control connection's connect until the second reply is read, the load client connecting to the bound address as the application server; then %d B there and back; %d set-ups with %d clients, or %v, whichever ends first. Direct: listen on 127.0.0.1:0, connect, accept.\n",
		set.EchoSize, set.BindMax, set.BindClients, set.BindDuration)
	fmt.Fprintln(w, "Server CPU ms per 1,000 sessions: the server's CPU time (utime+stime, over its process tree) across a connection-rate run, divided by the sessions completed, × 1,000.")
	if p := ps[colHAProxy]; p != nil && p.Skipped == "" {
		fmt.Fprintln(w, "HAProxy: TCP mode, a frontend port per backend service (sink, echo-once, echo), each forwarding to its service: the load client connects to the frontend as if to the backend, with no SOCKS at all, so HAProxy is a ceiling for any relay. Its \"handshake\" is the TCP connect to HAProxy alone (it connects to the backend afterwards), like direct's. No UDP or BIND.")
	}
	if p := ps[colGlider]; p != nil && p.Skipped == "" {
		fmt.Fprintln(w, "glider: SOCKS5 server, no forwarder (it connects direct). It sends the CONNECT success reply before it connects to the destination, so its handshake latency leaves out the outbound connect that sockd's and Dante's include. It does not pass the backend's close on to the client (it waits up to 5 s for the client's side to end), so in its connection-rate runs the client closes as soon as it has the echo rather than waiting for the end of stream. No BIND (it answers only CONNECT and UDP ASSOCIATE).")
	}
	printChains(w, rep)
	printTargets(w, ps[colSockd])
	printProblems(w, rep.Paths)
}

// printMain prints the main table: direct, sockd and the peers that were
// measured, each to direct, then sockd to each peer.
func printMain(w io.Writer, rs []row, ps [nPaths]*pathResult) {
	shown := []int{colDirect, colSockd}
	for _, c := range peerCols {
		if ps[c] != nil && ps[c].Skipped == "" {
			shown = append(shown, c)
		}
	}
	ratios := mainRatios(shown)
	var head, rule strings.Builder
	head.WriteString("| metric |")
	rule.WriteString("|---|")
	for _, c := range shown {
		fmt.Fprintf(&head, " %s |", colTitles[c])
		rule.WriteString("---:|")
	}
	for _, p := range ratios {
		fmt.Fprintf(&head, " %s |", p.title())
		rule.WriteString("---:|")
	}
	fmt.Fprintln(w, head.String())
	fmt.Fprintln(w, rule.String())
	for _, r := range rs {
		var b strings.Builder
		fmt.Fprintf(&b, "| %s |", r.metric)
		for _, c := range shown {
			fmt.Fprintf(&b, " %s |", r.text(r.cells[c]))
		}
		for _, p := range ratios {
			fmt.Fprintf(&b, " %s |", r.ratio(r.cells[p.num], r.cells[p.den]))
		}
		fmt.Fprintln(w, b.String())
	}
}

// printChains prints the throughput and connection rows of the chain
// paths beside direct and plain sockd.
func printChains(w io.Writer, rep report) {
	ps := byName(rep.Paths)
	if (ps[col1Hop] == nil || ps[col1Hop].Skipped != "") && (ps[col2Hops] == nil || ps[col2Hops].Skipped != "") {
		return
	}
	fmt.Fprintf(w, "\n### Chains of sockd processes\n\n")
	fmt.Fprintln(w, "| metric | direct | sockd | sockd 1 hop | sockd 2 hops | 1 hop/direct | 2 hops/direct | 1 hop/sockd | 2 hops/sockd |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, r := range rep.rows {
		if !r.chain {
			continue
		}
		c := r.cells
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", r.metric,
			r.text(c[colDirect]), r.text(c[colSockd]), r.text(c[col1Hop]), r.text(c[col2Hops]),
			r.ratio(c[col1Hop], c[colDirect]), r.ratio(c[col2Hops], c[colDirect]),
			r.ratio(c[col1Hop], c[colSockd]), r.ratio(c[col2Hops], c[colSockd]))
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "sockd 1 hop: client → sockd A → sockd B → backend, A routing every destination through B (-routes, one line \"sockd @=socks5://B ALL 0.0.0.0\"); sockd 2 hops: client → A → B → C → backend, B routing through C likewise. Separate processes, the same sockd.conf and flags (-log-level warn -max-client-sessions 0); the last one goes direct.")
	fmt.Fprintf(w, "Server CPU of a chain is the sum over all its sockd processes. Measured in the same rounds as the table above, against the same backend on %s (sockd never routes a destination of exactly 127.0.0.1 through a hop).\n", backendHost)
}

// printTargets compares sockd's idle figures with the project's targets.
// Memory is judged on the marginal cost between the last two counts where
// there are two, since fixed costs are not per session; fds on the cost
// against no sessions, rounded to two decimals, since a few fds (pipes
// kept in a pool, say) come and go with the load and not per session:
// the line shows how many.
func printTargets(w io.Writer, p *pathResult) {
	if p == nil || len(p.Idle.Steps) == 0 {
		return
	}
	steps := p.Idle.Steps
	s := steps[len(steps)-1]
	extra := s.Server.FDs - p.Idle.Base.FDs - targetFDsPerSession*s.Open
	fds := math.Round(s.FDsPerSess*100) / 100
	kib, kibText := s.KiBPerSess, fmt.Sprintf("%.2f KiB against 0 sessions", s.KiBPerSess)
	if len(steps) > 1 && s.MarginalKiB != 0 {
		kib = s.MarginalKiB
		kibText += fmt.Sprintf(", %.2f KiB marginal %d→%d", kib, steps[len(steps)-2].Open, s.Open)
	}
	fmt.Fprintf(w, "\n### sockd against its targets (%d idle sessions)\n\n", s.Target)
	fmt.Fprintf(w, "- fds per idle session: %.4f (%d sessions × %d %+d) (target <= %d): %s\n",
		s.FDsPerSess, s.Open, targetFDsPerSession, extra, targetFDsPerSession, verdict(fds <= targetFDsPerSession))
	fmt.Fprintf(w, "- PSS per idle session: %s (target <= %d KiB): %s\n", kibText, targetKiBPerSession, verdict(kib <= targetKiBPerSession))
	if s.Target < targetSessions {
		fmt.Fprintf(w, "- %d idle sessions held under a %d-fd limit: not tried (this run stops at %d)\n",
			targetSessions, fdLimit, s.Target)
		return
	}
	held := s.Open >= targetSessions && p.Idle.Verify.Verified >= targetSessions && s.Server.FDs < fdLimit
	fmt.Fprintf(w, "- %d idle sessions held under a %d-fd limit: held %d, %d echoed afterwards, server fds %d: %s\n",
		targetSessions, fdLimit, s.Open, p.Idle.Verify.Verified, s.Server.FDs, verdict(held))
}

func verdict(ok bool) string {
	if ok {
		return "meets"
	}
	return "MISSES"
}

// printProblems lists everything that went wrong, path by path.
func printProblems(w io.Writer, paths []pathResult) {
	var b strings.Builder
	for _, p := range paths {
		if p.Skipped != "" {
			fmt.Fprintf(&b, "- %s: not measured: %s\n", p.Name, p.Skipped)
		}
		for _, m := range p.Problems {
			fmt.Fprintf(&b, "- %s: %s\n", p.Name, m)
		}
	}
	if b.Len() == 0 {
		return
	}
	fmt.Fprintf(w, "\n### Problems\n\n%s", b.String())
}
