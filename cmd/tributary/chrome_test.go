package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// A headless Chromium (Debian's chromium, installed by
// scripts/install-deps.sh) driven over the DevTools protocol, for the tests
// that need what a real browser does: the Origin header it sends, the
// subprotocols it insists on, and JavaScript clients as users run them.
// The protocol is JSON over a WebSocket; the gorilla client is the one the
// daemon serves with.

type chrome struct {
	conn *websocket.Conn
	wmu  sync.Mutex // one writer at a time on conn

	mu      sync.Mutex
	nextID  int64
	replies map[int64]chan cdpMessage
	console []string // console output, the browser's own messages and uncaught exceptions, for failures
	readErr error
	done    chan struct{} // closed when the read loop ends
}

type cdpMessage struct {
	ID        int64           `json:"id,omitempty"`
	SessionID string          `json:"sessionId,omitempty"`
	Method    string          `json:"method,omitempty"`
	Params    json.RawMessage `json:"params,omitempty"`
	Result    json.RawMessage `json:"result,omitempty"`
	Error     *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"error,omitempty"`
}

// startChrome starts a headless Chromium with an empty profile and the
// extra command-line switches, and connects to its DevTools endpoint. It
// is stopped when the test ends.
func startChrome(t *testing.T, extra ...string) *chrome {
	t.Helper()
	bin := needTool(t, "chromium")
	profile := t.TempDir()
	// As root Chromium needs --no-sandbox; the background-networking flags
	// keep it from calling out to Google's services, which this machine's
	// network refuses; --disable-dev-shm-usage keeps a container's small
	// /dev/shm from crashing its renderers.
	cmd := exec.Command(bin, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-dev-shm-usage",
		"--no-first-run", "--no-default-browser-check", "--disable-background-networking",
		"--disable-component-update", "--disable-sync", "--disable-extensions",
		"--user-data-dir="+profile, "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0")
	cmd.Args = append(append(cmd.Args, extra...), "about:blank")
	stderr := &logTail{max: 40}
	cmd.Stdout, cmd.Stderr = stderr, stderr
	// Its own process group, so that the renderer and helper processes
	// go with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", bin, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	stop := func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	}

	// Chromium writes the port it bound, and the browser endpoint's path,
	// to DevToolsActivePort in the profile.
	var endpoint string
	deadline := time.Now().Add(30 * time.Second)
	for endpoint == "" {
		b, err := os.ReadFile(filepath.Join(profile, "DevToolsActivePort"))
		if lines := strings.Split(strings.TrimSpace(string(b)), "\n"); err == nil && len(lines) == 2 {
			endpoint = "ws://127.0.0.1:" + lines[0] + lines[1]
			break
		}
		select {
		case <-exited:
			stop() // its helper processes too
			t.Fatalf("chromium exited before its DevTools endpoint was up; its output:\n%s", stderr)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			stop()
			t.Fatalf("chromium's DevTools endpoint was not up after 30s; its output:\n%s", stderr)
		}
	}
	conn, _, err := (&websocket.Dialer{HandshakeTimeout: 10 * time.Second}).Dial(endpoint, nil)
	if err != nil {
		stop()
		t.Fatalf("connecting to chromium's DevTools at %s: %v", endpoint, err)
	}
	// DevTools messages carry whole pages' results; the default read limit
	// (none) is kept.
	c := &chrome{conn: conn, replies: map[int64]chan cdpMessage{}, done: make(chan struct{})}
	go c.readLoop()
	t.Cleanup(func() {
		if t.Failed() {
			c.mu.Lock()
			t.Logf("the browser's console:\n%s", strings.Join(c.console, "\n"))
			c.mu.Unlock()
			t.Logf("chromium's output:\n%s", stderr)
		}
		conn.Close()
		<-c.done
		stop()
	})
	return c
}

func (c *chrome) readLoop() {
	defer close(c.done)
	for {
		var m cdpMessage
		if err := c.conn.ReadJSON(&m); err != nil {
			c.mu.Lock()
			c.readErr = err
			for id, ch := range c.replies {
				close(ch)
				delete(c.replies, id)
			}
			c.mu.Unlock()
			return
		}
		c.mu.Lock()
		switch {
		case m.ID != 0:
			if ch, ok := c.replies[m.ID]; ok {
				ch <- m
				delete(c.replies, m.ID)
			}
		case m.Method == "Runtime.consoleAPICalled":
			var p struct {
				Type string `json:"type"`
				Args []struct {
					Value       any    `json:"value"`
					Description string `json:"description"`
				} `json:"args"`
			}
			_ = json.Unmarshal(m.Params, &p)
			parts := []string{p.Type + ":"}
			for _, a := range p.Args {
				if a.Value != nil {
					parts = append(parts, fmt.Sprint(a.Value))
				} else {
					parts = append(parts, a.Description)
				}
			}
			c.console = append(c.console, strings.Join(parts, " "))
		case m.Method == "Log.entryAdded": // the browser's own messages, a failed WebSocket handshake's among them
			var p struct {
				Entry struct {
					Level, Text, URL string
				} `json:"entry"`
			}
			_ = json.Unmarshal(m.Params, &p)
			c.console = append(c.console, p.Entry.Level+": "+p.Entry.Text+" "+p.Entry.URL)
		case m.Method == "Runtime.exceptionThrown":
			c.console = append(c.console, "uncaught: "+string(m.Params))
		}
		c.mu.Unlock()
	}
}

// call sends one DevTools command, to the browser (session "") or to a
// page's session, and waits for its result.
func (c *chrome) call(session, method string, params any) (json.RawMessage, error) {
	raw, err := json.Marshal(params)
	if err != nil {
		return nil, err
	}
	ch := make(chan cdpMessage, 1)
	c.mu.Lock()
	if c.readErr != nil {
		c.mu.Unlock()
		return nil, fmt.Errorf("%s: the DevTools connection is gone: %w", method, c.readErr)
	}
	c.nextID++
	id := c.nextID
	c.replies[id] = ch
	c.mu.Unlock()
	c.wmu.Lock()
	err = c.conn.WriteJSON(cdpMessage{ID: id, SessionID: session, Method: method, Params: raw})
	c.wmu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", method, err)
	}
	select {
	case m, ok := <-ch:
		if !ok {
			return nil, fmt.Errorf("%s: the DevTools connection closed", method)
		}
		if m.Error != nil {
			return nil, fmt.Errorf("%s: %s (%d)", method, m.Error.Message, m.Error.Code)
		}
		return m.Result, nil
	case <-time.After(60 * time.Second):
		return nil, fmt.Errorf("%s: no answer from chromium in 60s", method)
	}
}

// tab is one page in the browser.
type tab struct {
	c       *chrome
	session string
}

// open loads url in a new tab and returns once it has loaded.
func (c *chrome) open(t *testing.T, url string) *tab {
	t.Helper()
	res, err := c.call("", "Target.createTarget", map[string]any{"url": "about:blank"})
	if err != nil {
		t.Fatal(err)
	}
	var target struct {
		TargetID string `json:"targetId"`
	}
	_ = json.Unmarshal(res, &target)
	res, err = c.call("", "Target.attachToTarget", map[string]any{"targetId": target.TargetID, "flatten": true})
	if err != nil {
		t.Fatal(err)
	}
	var att struct {
		SessionID string `json:"sessionId"`
	}
	_ = json.Unmarshal(res, &att)
	p := &tab{c: c, session: att.SessionID}
	for _, m := range []string{"Runtime.enable", "Log.enable"} {
		if _, err := c.call(p.session, m, struct{}{}); err != nil {
			t.Fatal(err)
		}
	}
	res, err = c.call(p.session, "Page.navigate", map[string]any{"url": url})
	if err != nil {
		t.Fatal(err)
	}
	var nav struct {
		ErrorText string `json:"errorText"`
	}
	_ = json.Unmarshal(res, &nav)
	if nav.ErrorText != "" {
		t.Fatalf("loading %s in chromium: %s", url, nav.ErrorText)
	}
	// Loaded once the document at url is complete (until the navigation
	// commits, the document is still about:blank).
	deadline := time.Now().Add(30 * time.Second)
	for {
		var state string
		if err := p.eval(`location.href + " " + document.readyState`, &state); err != nil {
			t.Fatalf("loading %s in chromium: %v", url, err)
		}
		if state == url+" complete" {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("loading %s in chromium: after 30s the tab is at %q", url, state)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// eval runs expr in the page, waits for the promise it returns (if any),
// and decodes its value, which must survive JSON, into out.
func (p *tab) eval(expr string, out any) error {
	res, err := p.c.call(p.session, "Runtime.evaluate", map[string]any{
		"expression": expr, "awaitPromise": true, "returnByValue": true,
	})
	if err != nil {
		return err
	}
	var r struct {
		Result struct {
			Value json.RawMessage `json:"value"`
		} `json:"result"`
		ExceptionDetails *struct {
			Text      string `json:"text"`
			Exception struct {
				Description string `json:"description"`
				Value       any    `json:"value"`
			} `json:"exception"`
		} `json:"exceptionDetails"`
	}
	if err := json.Unmarshal(res, &r); err != nil {
		return err
	}
	if e := r.ExceptionDetails; e != nil {
		what := e.Exception.Description
		if what == "" {
			what = fmt.Sprint(e.Exception.Value)
		}
		return fmt.Errorf("%s: %s", e.Text, what)
	}
	if out == nil {
		return nil
	}
	if len(r.Result.Value) == 0 {
		return errors.New("the expression returned undefined")
	}
	return json.Unmarshal(r.Result.Value, out)
}

// pages serves files to the browser from an origin of its own
// (http://127.0.0.1:<port>), a different origin from the daemon's.
type pages struct {
	URL   string // the origin, without a trailing slash
	mu    sync.Mutex
	files map[string]string
}

func newPages(t *testing.T) *pages {
	t.Helper()
	p := &pages{files: map[string]string{}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		body, ok := p.files[r.URL.Path]
		p.mu.Unlock()
		if r.URL.Path == "/favicon.ico" && !ok {
			w.WriteHeader(http.StatusNoContent) // asked for by every page; not an error worth logging
			return
		}
		if !ok {
			http.NotFound(w, r)
			return
		}
		ctype := "text/html; charset=utf-8"
		if strings.HasSuffix(r.URL.Path, ".js") {
			ctype = "text/javascript; charset=utf-8"
		}
		w.Header().Set("Content-Type", ctype)
		_, _ = w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	p.URL = srv.URL
	return p
}

// put serves body at path.
func (p *pages) put(path, body string) {
	p.mu.Lock()
	p.files[path] = body
	p.mu.Unlock()
}

// docsBlock returns the one fenced block of the given language under the
// heading in a file of docs/, so that a test runs what the docs show.
func docsBlock(t *testing.T, file, heading, lang string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "docs", file))
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := bytes.Cut(b, []byte("\n"+heading+"\n"))
	if !ok {
		t.Fatalf("docs/%s has no heading %q", file, heading)
	}
	if i := bytes.Index(section, []byte("\n## ")); i >= 0 {
		section = section[:i]
	}
	_, block, ok := bytes.Cut(section, []byte("```"+lang+"\n"))
	if !ok {
		t.Fatalf("docs/%s has no ```%s block under %q", file, lang, heading)
	}
	block, _, ok = bytes.Cut(block, []byte("\n```"))
	if !ok {
		t.Fatalf("docs/%s: the ```%s block under %q does not end", file, lang, heading)
	}
	return string(block)
}

// replaceN replaces old, which must occur exactly n times in s.
func replaceN(t *testing.T, s, old, new string, n int) string {
	t.Helper()
	if got := strings.Count(s, old); got != n {
		t.Fatalf("%q occurs %d times, want %d, in:\n%s", old, got, n, s)
	}
	return strings.ReplaceAll(s, old, new)
}
