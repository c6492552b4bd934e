package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Smoke tests with a third-party client: wscat (npm), pinned in
// e2e/package-lock.json and installed by scripts/install-deps.sh.

// needWscat returns the project's wscat; like needTool, it fails the test
// when it is missing.
func needWscat(t *testing.T) string {
	t.Helper()
	needTool(t, "node")
	p, err := filepath.Abs(filepath.Join("..", "..", "e2e", "node_modules", ".bin", "wscat"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("wscat not found at %s: run scripts/install-deps.sh (make deps), which installs it with npm ci in e2e/", p)
	}
	out, err := exec.Command(p, "--version").CombinedOutput()
	if err != nil {
		t.Fatalf("%s --version: %v: %s", p, err, out)
	}
	t.Logf("wscat %s", bytes.TrimSpace(out))
	return p
}

// wscat starts wscat with args. Its standard input is a pipe the caller
// writes frames to, one per line; wscat ends when it is closed (or, with
// -x and -w, when the wait is over). What it prints, one received frame
// per line when standard output is not a terminal, comes on the returned
// channel, which is closed when wscat exits.
func wscat(t *testing.T, bin string, args ...string) (stdin io.WriteCloser, lines <-chan string, wait func() error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	cmd := exec.CommandContext(ctx, bin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting wscat: %v", err)
	}
	ch := make(chan string, 100)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(ch)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			// Interactive wscat writes its readline prompt, "> ", to
			// standard output too, before the frame it prints next.
			if l := strings.TrimLeft(sc.Text(), "> "); l != "" {
				ch <- l
			}
		}
	}()
	var werr error
	waited := false
	wait = func() error {
		if !waited {
			waited = true
			<-done // stdout is read to its end before Wait closes it
			werr = cmd.Wait()
			if werr != nil {
				werr = fmt.Errorf("wscat %s: %w; stderr: %s", strings.Join(args, " "), werr, stderr.String())
			}
		}
		return werr
	}
	t.Cleanup(func() {
		in.Close()
		cancel()
		_ = wait()
	})
	return in, ch, wait
}

// wscat -x sends a record to /socket/in and prints the result frame; the
// record is in Kafka where the result says.
func TestWscatProduce(t *testing.T) {
	bin := needWscat(t)
	d := startDaemon(t, wsConfig(t))
	topic := uniq("wscat")
	q := url.Values{"clientId": {uniq("wscat")}, "topic": {topic}, "keyType": {"string"}, "valType": {"string"}}
	// Create the topic first, so that wscat's fixed wait is not spent on it.
	produceStrings(t, wsDial(t, d, "/socket/in", url.Values{"clientId": {uniq("warm")}, "topic": {topic}}), "warm", 1)

	u := "ws://" + d.httpAddr() + "/socket/in?" + q.Encode()
	start := time.Now()
	_, lines, wait := wscat(t, bin, "-c", u,
		"-x", `{"key":{"value":"wk"},"value":{"value":"from wscat"},"headers":[{"key":"via","value":"wscat"}],"messageId":"wscat-1"}`,
		"-x", `{not json`,
		"-x", `{"value":{"value":"after the error"},"messageId":"wscat-2"}`,
		"-w", "5")
	var out []string
	for l := range lines {
		out = append(out, l)
	}
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	t.Logf("wscat ran %s and printed:\n%s", time.Since(start).Round(time.Millisecond), strings.Join(out, "\n"))

	results := map[string]wsResult{}
	var errs []wsResult
	for _, l := range out {
		var r wsResult
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("wscat printed %q, not a frame: %v", l, err)
		}
		if r.Error != nil {
			errs = append(errs, r)
			continue
		}
		results[string(r.MessageID)] = r
	}
	for _, id := range []string{`"wscat-1"`, `"wscat-2"`} {
		r, ok := results[id]
		if !ok || r.Offset == nil || r.Topic != topic || r.Timestamp == 0 {
			t.Fatalf("no result frame with messageId %s and an offset in wscat's output", id)
		}
	}
	if len(errs) != 1 || errs[0].Error.Code != 42205 || string(errs[0].MessageID) != "null" {
		t.Fatalf("want one error frame 42205 for the malformed frame, got %+v", errs)
	}

	want := results[`"wscat-1"`]
	recs := kafkaRecords(t, d.bootstrap, topic, 3, 30*time.Second)
	for _, r := range recs {
		if string(r.Value) != "from wscat" {
			continue
		}
		if v, _ := header(r, "via"); string(r.Key) != "wk" || v != "wscat" || r.Partition != want.Partition || r.Offset != *want.Offset {
			t.Fatalf("Kafka has key %q header via=%q at %d/%d; the result said %d/%d", r.Key, v, r.Partition, r.Offset, want.Partition, *want.Offset)
		}
		return
	}
	t.Fatalf("the record wscat sent is not in Kafka (%d records read)", len(recs))
}

// wscat on /socket/out prints the records and commits by sending their
// wsProxyMessageIds; a later member of the group starts after them.
func TestWscatConsume(t *testing.T) {
	bin := needWscat(t)
	d := startDaemon(t, wsConfig(t))
	topic, group := uniq("wscat"), uniq("g")
	in := wsDial(t, d, "/socket/in", url.Values{"clientId": {uniq("p")}, "topic": {topic}})
	produced := produceStrings(t, in, "w", 3)

	q := url.Values{"clientId": {uniq("wscat")}, "groupId": {group}, "topic": {topic}, "autoCommit": {"false"}, "commitAck": {"true"}}
	stdin, lines, wait := wscat(t, bin, "-c", "ws://"+d.httpAddr()+"/socket/out?"+q.Encode())
	next := func(what string) []byte {
		t.Helper()
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("wscat exited while waiting for %s: %v", what, wait())
			}
			return []byte(l)
		case <-time.After(30 * time.Second):
			t.Fatalf("wscat printed no %s in 30s", what)
		}
		return nil
	}
	var recs []wsRecord
	for len(recs) < len(produced) {
		b := next("record")
		var r wsRecord
		if err := json.Unmarshal(b, &r); err != nil || r.ID == "" {
			t.Fatalf("wscat printed %s, want a record", b)
		}
		p, ok := produced["w-"+strings.TrimPrefix(r.str(), "w-value-")]
		if r.Topic != topic || !ok || p.partition != r.Partition || p.offset != r.Offset {
			t.Fatalf("record %s does not match what was produced", b)
		}
		recs = append(recs, r)
	}
	for _, r := range recs {
		if _, err := fmt.Fprintf(stdin, "{\"wsProxyMessageId\":%q}\n", r.ID); err != nil {
			t.Fatalf("writing to wscat: %v", err)
		}
	}
	for range recs {
		b := next("commit acknowledgement")
		var r wsResult
		if err := json.Unmarshal(b, &r); err != nil || r.Committed == nil || r.Committed.Topic != topic {
			t.Fatalf("wscat printed %s, want a commit acknowledgement", b)
		}
	}
	stdin.Close()
	if err := wait(); err != nil {
		t.Fatal(err)
	}

	// A new member of the group gets only what came after the commits.
	produceStrings(t, in, "later", 1)
	out := wsDial(t, d, "/socket/out", url.Values{"clientId": {uniq("c")}, "groupId": {group}, "topic": {topic}})
	if r := readRecords(t, out, 1, 60*time.Second)[0]; r.str() != "later-value-0" {
		t.Fatalf("after wscat's commits the group resumed at %q", r.str())
	}
	expectQuiet(t, out, time.Second)
}
