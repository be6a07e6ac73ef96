package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// clockTicks is USER_HZ, the unit of the times in /proc/<pid>/stat. It is
// 100 on every Linux architecture Go supports.
const clockTicks = 100

// usage is what a set of processes costs at one instant, summed over them.
type usage struct {
	Procs  int     `json:"procs"`
	CPU    float64 `json:"cpu_seconds"` // utime+stime+cutime+cstime
	PSSKiB int64   `json:"pss_kib"`
	FDs    int     `json:"fds"`
}

// procStat is the part of /proc/<pid>/stat the harness reads.
type procStat struct {
	ppid  int
	pgrp  int
	ticks int64 // utime+stime+cutime+cstime
}

// readStat parses /proc/<pid>/stat. The command name may hold spaces and
// parentheses, so the fields are counted from the last ')'.
func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: no ')'", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state): ppid is field 4, pgrp 5, utime..cstime 14..17.
	if len(f) < 15 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	var st procStat
	if st.ppid, err = strconv.Atoi(f[1]); err != nil {
		return procStat{}, err
	}
	if st.pgrp, err = strconv.Atoi(f[2]); err != nil {
		return procStat{}, err
	}
	for _, s := range f[11:15] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return procStat{}, err
		}
		st.ticks += n
	}
	return st, nil
}

// tree returns root and all its live descendants, found by walking /proc.
// Dante forks negotiate, request and io children; sockd is one process.
func tree(root int) []int {
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := readStat(pid); err == nil {
			children[st.ppid] = append(children[st.ppid], pid)
		}
	}
	out := []int{root}
	for i := 0; i < len(out); i++ {
		out = append(out, children[out[i]]...)
	}
	return out
}

// groupMembers counts the live processes in process group pgid.
func groupMembers(pgid int) int {
	n := 0
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := readStat(pid); err == nil && st.pgrp == pgid {
			n++
		}
	}
	return n
}

// sample sums CPU time, PSS and open fds over root and its descendants.
// Processes that vanish while being read are skipped. The CPU of reaped
// children is in their parent's cutime/cstime, so the sum does not drop
// when Dante retires a child.
func sample(root int) usage {
	var u usage
	for _, pid := range tree(root) {
		st, err := readStat(pid)
		if err != nil {
			continue
		}
		u.Procs++
		u.CPU += float64(st.ticks) / clockTicks
		u.PSSKiB += pss(pid)
		u.FDs += countFDs(pid)
	}
	return u
}

// pss reads the Pss line of /proc/<pid>/smaps_rollup, in KiB.
func pss(pid int) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "Pss:") {
			continue
		}
		f := strings.Fields(line)
		if len(f) >= 2 {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n
		}
	}
	return 0
}

// countFDs counts the entries of /proc/<pid>/fd.
func countFDs(pid int) int {
	d, err := os.Open(filepath.Join("/proc", strconv.Itoa(pid), "fd"))
	if err != nil {
		return 0
	}
	defer d.Close()
	n := 0
	for {
		names, err := d.Readdirnames(4096)
		n += len(names)
		if err != nil || len(names) == 0 {
			return n
		}
	}
}

// timeWait returns the number of TCP sockets in TIME_WAIT, system-wide,
// from /proc/net/sockstat ("TCP: inuse 2 orphan 0 tw 30260 ...").
func timeWait() int {
	b, err := os.ReadFile("/proc/net/sockstat")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "TCP:" {
			continue
		}
		for i := 1; i+1 < len(f); i += 2 {
			if f[i] == "tw" {
				n, _ := strconv.Atoi(f[i+1])
				return n
			}
		}
	}
	return 0
}
