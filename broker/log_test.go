package broker

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

func TestMochiLogHandlerDropsRejectedPacketDumps(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(mochiLogHandler{slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})}).With("component", "mqtt")
	log.Debug("publish packet rejected", "packet", "secret payload")
	log.Debug("client disconnected", "client", "c1")
	log.Warn("publish packet rejected", "note", "only the debug line is noise")
	out := buf.String()
	if strings.Contains(out, "secret payload") {
		t.Fatalf("the rejected-packet dump was logged:\n%s", out)
	}
	if !strings.Contains(out, "client disconnected") || !strings.Contains(out, "only the debug line is noise") {
		t.Fatalf("other lines were dropped:\n%s", out)
	}
}
