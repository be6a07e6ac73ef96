package main

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A file beside the config that changes all the time does not hold back
// the notice of a change: notices come every maxDelay while the directory
// is busy, so one follows the change within a second.
func TestWatchBusyDirectory(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "sockd.conf")
	busy := filepath.Join(dir, "busy.log")
	os.WriteFile(conf, []byte("permit 127.0.0.0/8\n"), 0o644)
	w, err := newWatcher(slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer w.close()
	w.watch([]string{conf})
	go w.run()

	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // an event every 20ms, well inside the debounce
		defer close(done)
		f, err := os.Create(busy)
		if err != nil {
			t.Error(err)
			return
		}
		defer f.Close()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				f.WriteString("busy\n")
			}
		}
	}()
	defer func() { close(stop); <-done }()

	// Let the busy file's own notices come, and drain them.
	time.Sleep(time.Second)
	drain := time.After(600 * time.Millisecond)
	for draining := true; draining; {
		select {
		case <-w.changed:
		case <-drain:
			draining = false
		}
	}
	start := time.Now()
	os.WriteFile(conf, []byte("permit 127.0.0.1/32\n"), 0o644)
	select {
	case <-w.changed:
		if d := time.Since(start); d > time.Second {
			t.Errorf("notice %v after the change; want within a second", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no notice of the change while the directory stays busy")
	}
}
