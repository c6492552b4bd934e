package bridge

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A second embedded Kafka on a data dir in use is refused, naming the
// dir; once the first is closed the dir can be used again.
func TestEmbeddedDataDirIsExclusive(t *testing.T) {
	dir := t.TempDir()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	first, err := StartEmbedded(EmbeddedConfig{Addr: "127.0.0.1:0", DataDir: dir}, log)
	if err != nil {
		t.Fatal(err)
	}
	if second, err := StartEmbedded(EmbeddedConfig{Addr: "127.0.0.1:0", DataDir: dir}, log); err == nil {
		second.Close()
		first.Close()
		t.Fatal("a second embedded Kafka started on the same data dir")
	} else if !strings.Contains(err.Error(), "in use by another process") || !strings.Contains(err.Error(), dir) {
		t.Errorf("error %q does not say the dir is in use", err)
	}
	first.Close()
	again, err := StartEmbedded(EmbeddedConfig{Addr: "127.0.0.1:0", DataDir: dir}, log)
	if err != nil {
		t.Fatalf("after the first closed: %v", err)
	}
	again.Close()
}

// The embedded Kafka's data dir, created by it, is for its owner only:
// kfake writes its files 0644, so the dir's mode is what keeps other
// local users from reading the records.
func TestEmbeddedDataDirIsPrivate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	e, err := StartEmbedded(EmbeddedConfig{Addr: "127.0.0.1:0", DataDir: dir}, log)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	for _, p := range []string{filepath.Join(dir, "kafka"), filepath.Join(dir, "kafka.lock")} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if perm := fi.Mode().Perm(); perm&0o077 != 0 {
			t.Errorf("%s has mode %v: readable by others", p, perm)
		}
	}
}
