package bridge

import (
	"io"
	"log/slog"
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
