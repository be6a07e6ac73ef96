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

// row is one metric across direct, sockd and Dante.
type row struct {
	metric string
	cells  [3]cell
	format func(float64) string
}

var pathNames = [3]string{"direct", "sockd", "dante"}

// byName returns the results of the three paths in table order.
func byName(paths []pathResult) [3]*pathResult {
	var out [3]*pathResult
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
func metric(name string, ps [3]*pathResult, format func(float64) string, f func(*pathResult) []float64) row {
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
func rows(set settings, ps [3]*pathResult) []row {
	out := throughputRows(set, ps)
	out = append(out, connRows(set, ps)...)
	out = append(out, baseRows(ps)...)
	return append(out, idleRows(set, ps)...)
}

// streamOK says whether a throughput run delivered everything.
func streamOK(s streamRun) bool { return s.Error == "" && s.Bytes > 0 }

// throughputRows are the throughput and CPU-per-GiB rows.
func throughputRows(set settings, ps [3]*pathResult) []row {
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
func connRows(set settings, ps [3]*pathResult) []row {
	var out []row
	for i, n := range set.Clients {
		conn := func(f func(connResult) float64) func(*pathResult) []float64 {
			return perRound(func(lr loadRound) (float64, bool) {
				if i < len(lr.Conn) && lr.Conn[i].Conns > 0 {
					return f(lr.Conn[i]), true
				}
				return 0, false
			})
		}
		out = append(out,
			metric(fmt.Sprintf("conn/s, CONNECT + %d B echo, %d clients", set.EchoSize, n), ps, fmt0,
				conn(func(c connResult) float64 { return c.Rate })),
			metric(fmt.Sprintf("handshake p50 µs, %d clients", n), ps, fmt0,
				conn(func(c connResult) float64 { return c.P50us })),
			metric(fmt.Sprintf("handshake p99 µs, %d clients", n), ps, fmt0,
				conn(func(c connResult) float64 { return c.P99us })))
	}
	return out
}

// baseRows are the server's memory and fds with no sessions.
func baseRows(ps [3]*pathResult) []row {
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
func idleRows(set settings, ps [3]*pathResult) []row {
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

// ratio formats a/b, or "–" where either is missing.
func ratio(a, b cell) string {
	if a.n == 0 || b.n == 0 || b.v == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f", a.v/b.v)
}

// tableRow is a row of the table in the JSON report.
type tableRow struct {
	Metric string                `json:"metric"`
	Paths  map[string]tableValue `json:"paths"`
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
	if f.Dante != "" {
		fmt.Fprintf(w, "- dante: %s\n", f.Dante)
	}
	fmt.Fprintf(w, "- started %s, took %.0f s\n\n", f.Started, f.Seconds)

	ps := byName(rep.Paths)
	fmt.Fprintln(w, "| metric | direct | sockd | dante | sockd/direct | dante/direct | sockd/dante |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|")
	for _, r := range rep.rows {
		c := r.cells
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s |\n", r.metric, r.text(c[0]), r.text(c[1]), r.text(c[2]),
			ratio(c[1], c[0]), ratio(c[2], c[0]), ratio(c[1], c[2]))
	}
	fmt.Fprintln(w)
	if n := rep.Settings.Rounds; n > 1 {
		fmt.Fprintf(w, "Throughput, CPU and connection figures are medians of %d interleaved rounds, (lowest–highest) after them; ratios are of medians.\n", n)
	}
	fmt.Fprintln(w, "¹ For direct, the \"server\" is the backend (sink or echo server): the cost of the bare sockets, as a reference.")
	fmt.Fprintln(w, "Per-session figures are (value with N sessions − value with 0) / N, N being the sessions actually held; marginal ones compare the two counts.")
	printTargets(w, ps[1])
	printProblems(w, rep.Paths)
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
