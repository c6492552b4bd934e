package broker

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

func TestMochiLogHandlerDropsRejectedPacketDumps(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(newMochiLogHandler(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))).With("component", "mqtt")
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

// mochi's warning for a packet that ended a connection loses the packet
// (its payload) and is logged once in a while, however many connections
// end that way.
func TestMochiLogHandlerThrottlesPacketErrors(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(newMochiLogHandler(slog.NewTextHandler(&buf, nil))).With("component", "mqtt")
	for i := range 3 {
		log.With("client", i).Warn("error processing packet", "error", "not authorized", "client", "c1", "pk", "secret payload")
	}
	out := buf.String()
	if strings.Contains(out, "secret payload") {
		t.Fatalf("the packet was logged:\n%s", out)
	}
	if n := strings.Count(out, "error processing packet"); n != 1 || !strings.Contains(out, "not authorized") {
		t.Fatalf("%d lines, want 1 naming the error:\n%s", n, out)
	}
}
