package main

import (
	"log/slog"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// watcher tells when files the configuration is made of may have changed.
// It watches their directories, and the directories their symlinks point
// into, so that editors' rename-saves, delete-and-recreate and symlink
// swaps (Kubernetes ConfigMaps) are all seen; the file itself is no good to
// watch, as its watch is lost at the first rename. Events are debounced:
// changed receives one value after a burst has been quiet for debounce, or
// maxDelay after its first event, so that a directory that is never quiet
// (a busy file beside the config) cannot hold a reload back. Whether
// anything really changed is decided by content, by the reload.
type watcher struct {
	log      *slog.Logger
	w        *fsnotify.Watcher
	dirs     map[string]bool
	changed  chan struct{}
	debounce time.Duration
	maxDelay time.Duration
}

func newWatcher(log *slog.Logger) (*watcher, error) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, err // EMFILE: fs.inotify.max_user_instances
	}
	return &watcher{log: log, w: w, dirs: map[string]bool{}, changed: make(chan struct{}, 1),
		debounce: 150 * time.Millisecond, maxDelay: 500 * time.Millisecond}, nil
}

// watch makes the watched directories those of files (called by the
// goroutine that reloads, after every load).
func (w *watcher) watch(files []string) {
	want := map[string]bool{}
	for _, f := range files {
		abs, err := filepath.Abs(f)
		if err != nil {
			continue
		}
		want[filepath.Dir(abs)] = true
		if real, err := filepath.EvalSymlinks(abs); err == nil {
			want[filepath.Dir(real)] = true
		}
	}
	for d := range w.dirs {
		if !want[d] {
			w.w.Remove(d)
			delete(w.dirs, d)
		}
	}
	for d := range want {
		if w.dirs[d] {
			continue
		}
		if err := w.w.Add(d); err != nil { // ENOSPC: max_user_watches
			w.log.Warn("cannot watch a config directory; changes there need SIGHUP", "dir", d, "err", err)
			continue
		}
		w.dirs[d] = true
	}
}

// run drains the watcher's channels (they are unbuffered: not draining
// them stalls it) and sends debounced notices on changed, until the
// watcher is closed.
func (w *watcher) run() {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var first time.Time // of the burst; zero when none is pending
	arm := func() {
		now := time.Now()
		if first.IsZero() {
			first = now
		}
		timer.Reset(min(w.debounce, first.Add(w.maxDelay).Sub(now)))
	}
	for {
		select {
		case ev, ok := <-w.w.Events:
			if !ok {
				return
			}
			if ev.Op == fsnotify.Chmod {
				continue
			}
			arm()
		case err, ok := <-w.w.Errors:
			if !ok {
				return
			}
			w.log.Warn("config watch", "err", err) // ErrEventOverflow: events were lost
			arm()
		case <-timer.C:
			first = time.Time{}
			select {
			case w.changed <- struct{}{}:
			default: // a notice is pending already
			}
		}
	}
}

func (w *watcher) close() { w.w.Close() }
