package relay

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sockd-ng/sockd/policy"
)

// Hooks runs the shell commands of matched rules, #NO_IDENTD: and #BAD_ID:
// (sockd.conf(5), Shell commands): as /bin/sh -c CMD, stdin from /dev/null,
// output into the log (truncated), asynchronously, each within Timeout, at
// most Max at once; commands over the cap are skipped with a log line.
// Nothing a command does can stall or end a session. Safe for concurrent
// use; set the fields before first use.
type Hooks struct {
	Logger  *slog.Logger
	Timeout time.Duration // per command; 0 means 30s
	Max     int           // commands at once; 0 means 8
	// Env is the commands' whole environment; nil means
	// PATH=/usr/sbin:/usr/bin:/sbin:/bin. It is never inherited, so that
	// NOTIFY_SOCKET and the like do not leak to children.
	Env []string

	once     sync.Once
	sem      chan struct{}
	wg       sync.WaitGroup
	services Services
}

const hookOutputMax = 1024

func (h *Hooks) init() {
	h.once.Do(func() {
		n := h.Max
		if n <= 0 {
			n = 8
		}
		h.sem = make(chan struct{}, n)
		h.services = ReadServices("/etc/services")
	})
}

// Wait waits for the commands started so far (for tests and shutdown).
func (h *Hooks) Wait() { h.wg.Wait() }

// run starts the hooks of d for the session c, in order, in one goroutine.
func (h *Hooks) run(c *conn, q *policy.Query, d *policy.Decision) {
	h.init()
	hooks := d.Hooks
	n := d.NumHooks
	tok := c.tokens(q, d)
	s := c.s
	clientName := ""
	if c.clientDone {
		clientName = c.clientName
	}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		for _, hk := range hooks[:n] {
			t := tok
			ctx, cancel := context.WithTimeout(context.Background(), h.timeout())
			if policy.NeedsToken(hk.Template, 'A') {
				if clientName == "" {
					clientName = LookupConfirmed(ctx, s.resolver(), c.rec.Client.Addr())
				}
				if clientName != "" {
					t.ClientName = clientName
				}
			}
			if policy.NeedsToken(hk.Template, 'Z') && c.rec.Dst.Name == "" && c.rec.Dst.IP.IsValid() {
				if name := LookupConfirmed(ctx, s.resolver(), c.rec.Dst.IP); name != "" {
					t.DstName = name
				}
			}
			h.exec(ctx, hk, &t)
			cancel()
		}
	}()
}

func (h *Hooks) timeout() time.Duration {
	if h.Timeout > 0 {
		return h.Timeout
	}
	return 30 * time.Second
}

func (h *Hooks) logger() *slog.Logger {
	if h.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return h.Logger
}

// exec runs one expanded command and logs its outcome and output.
func (h *Hooks) exec(ctx context.Context, hk *policy.Hook, t *policy.Tokens) {
	cmdline, ok := policy.Expand(hk.Template, t)
	if !ok {
		h.logger().Warn("command not run: its expansion has no letter or digit", "rule", hk.Source)
		return
	}
	select {
	case h.sem <- struct{}{}:
		defer func() { <-h.sem }()
	default:
		h.logger().Warn("command skipped: too many running", "rule", hk.Source, "command", cmdline, "max", cap(h.sem))
		return
	}
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", cmdline)
	cmd.Env = h.Env
	if cmd.Env == nil {
		cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	}
	var out limitedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// Its own process group, so that the time limit ends the children too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	start := time.Now()
	err := cmd.Run()
	attrs := []any{"rule", hk.Source, "command", cmdline, "dur", time.Since(start).Round(time.Millisecond)}
	if out.Len() > 0 {
		attrs = append(attrs, "output", out.String())
	}
	if err != nil {
		h.logger().Warn("command failed", append(attrs, "err", err)...)
		return
	}
	h.logger().Info("command", attrs...)
}

// limitedBuffer keeps the first hookOutputMax bytes written to it.
type limitedBuffer struct {
	mu        sync.Mutex
	b         bytes.Buffer
	truncated bool
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if room := hookOutputMax - l.b.Len(); room < len(p) {
		l.b.Write(p[:max(room, 0)])
		l.truncated = true
	} else {
		l.b.Write(p)
	}
	return len(p), nil
}

func (l *limitedBuffer) Len() int { l.mu.Lock(); defer l.mu.Unlock(); return l.b.Len() }

func (l *limitedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := strings.TrimRight(l.b.String(), "\n")
	if l.truncated {
		s += " [truncated]"
	}
	return s
}

// tokens gathers the % values of the session (sockd.conf(5), Shell
// commands); %A and %Z lookups are left to the hook goroutine.
func (c *conn) tokens(q *policy.Query, d *policy.Decision) policy.Tokens {
	t := policy.TokensFor(q, d)
	t.PID = strconv.Itoa(os.Getpid())
	t.Service = c.s.Hooks.services.Name(q.Port)
	if c.identDone && !c.identRes.Down {
		t.IdentUser = c.identRes.User
	}
	return t
}
