package main

import (
	"encoding/json"
	"net/url"
	"testing"
	"time"
)

// A client that commits each record as soon as it arrives, as the browser
// example in docs/websocket.md does, gets every commit acknowledged. The
// commit can reach the server before the writer that sent the record has
// noted it as sent; it must not then be refused as "no such record was
// sent on this socket" (40402). Many records make that window likely to
// be hit at least once.
func TestWebSocketCommitOnReceipt(t *testing.T) {
	d := startDaemon(t, wsConfig(t))
	topic := uniq("receipt")
	in := wsDial(t, d, "/socket/in", url.Values{"clientId": {uniq("p")}, "topic": {topic}})
	const n = 5000
	total := recordsIn(produceStrings(t, in, "r", n))
	out := wsDial(t, d, "/socket/out", url.Values{"clientId": {uniq("c")}, "topic": {topic}, "autoCommit": {"false"}, "commitAck": {"true"}})
	recs, acks, refused := 0, 0, 0
	var first string
	deadline := time.Now().Add(120 * time.Second)
	for recs < total || acks+refused < total {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d records, %d acknowledgements, %d errors", recs, total, acks, refused)
		}
		var r wsResult
		b := readFrame(t, out, 30*time.Second)
		if err := json.Unmarshal(b, &r); err != nil {
			t.Fatalf("frame %s: %v", b, err)
		}
		switch {
		case r.Committed != nil:
			acks++
		case r.Error != nil:
			refused++
			if first == "" {
				first = string(b)
			}
		default:
			recs++
			sendJSON(t, out, map[string]string{"wsProxyMessageId": r.WsProxyMessageID})
		}
	}
	if refused > 0 {
		t.Fatalf("%d of %d commits of records just received were refused; the first: %s", refused, total, first)
	}
}
