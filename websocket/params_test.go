package websocket

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// refusal opens path?q on a, which must refuse it, and returns the
// message of its 40000 error frame, having checked that the close frame
// (1008) gives the same reason.
func refusal(t *testing.T, a *API, path string, q url.Values) string {
	t.Helper()
	mux := http.NewServeMux()
	a.routes(mux, func(h http.Handler) http.Handler { return h })
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+path+"?"+q.Encode(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, b, err := ws.ReadMessage()
	if err != nil {
		t.Fatalf("no error frame: %v", err)
	}
	var f struct {
		Error errorBody `json:"error"`
	}
	if err := json.Unmarshal(b, &f); err != nil || f.Error.Code != CodeBadRequest {
		t.Fatalf("frame %s, want error %d", b, CodeBadRequest)
	}
	_, _, err = ws.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.ClosePolicyViolation || !strings.HasPrefix(f.Error.Message, ce.Text) {
		t.Fatalf("after the error frame: %v, want close 1008 with the same reason", err)
	}
	return f.Error.Message
}

// A parameter of kafka-websocket-proxy's wire format that Tributary does
// not apply is refused, naming it, in any value that is not the one
// meaning "off": the client would otherwise get something other than what
// it asked for without knowing.
func TestUnsupportedParameterValuesRefused(t *testing.T) {
	a := NewAPI(APIConfig{}, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	for _, tc := range []struct {
		path, name, value string
		want              []string
	}{
		{"/socket/in", "transactional", "true", []string{"transactional", "not supported"}},
		{"/socket/in", "transactional", "yes", []string{"transactional", `"yes"`, "true or false"}},
		{"/socket/in", "transactional", "on", []string{"transactional", `"on"`}},
		{"/socket/in", "socketPayload", "avro", []string{"socketPayload", "only json"}},
		{"/socket/out", "socketPayload", "avro", []string{"socketPayload", "only json"}},
		{"/socket/out", "isolationLevel", "snapshot", []string{"isolationLevel", `"snapshot"`}},
	} {
		t.Run(tc.path+" "+tc.name+"="+tc.value, func(t *testing.T) {
			q := url.Values{"clientId": {"c"}, "topic": {"t"}, tc.name: {tc.value}}
			msg := refusal(t, a, tc.path, q)
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Fatalf("error %q does not name %s", msg, w)
				}
			}
		})
	}
}

// A clientId or groupId that Kafka or librdkafka would not take as it is
// (not UTF-8, or a control character: librdkafka reads ids as C strings,
// which end at a NUL, so "a\x00b" would join group "a") is refused,
// naming the parameter, instead of joining a group other than the one
// asked for.
func TestUnusableIDsRefused(t *testing.T) {
	a := NewAPI(APIConfig{}, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	for _, tc := range []struct {
		path, name, value string
		want              []string
	}{
		{"/socket/out", "groupId", "a\x00b", []string{"groupId", `"a\x00b"`, "U+0000"}},
		{"/socket/out", "groupId", "g\xff", []string{"groupId", "UTF-8"}},
		{"/socket/out", "groupId", "g\n", []string{"groupId", "U+000A"}},
		{"/socket/out", "groupId", strings.Repeat("g", 40000), []string{"groupId", "40000 bytes"}},
		{"/socket/out", "clientId", "c\xff", []string{"clientId", "UTF-8"}},
		{"/socket/out", "clientId", "c\x01", []string{"clientId", "U+0001"}},
		{"/socket/in", "clientId", "c\x00", []string{"clientId", "U+0000"}},
		{"/socket/in", "clientId", "\xc0\xaf", []string{"clientId", "UTF-8"}},
	} {
		t.Run(tc.path+" "+tc.name+"="+quote(tc.value), func(t *testing.T) {
			q := url.Values{"clientId": {"c"}, "topic": {"t"}, tc.name: {tc.value}}
			msg := refusal(t, a, tc.path, q)
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Fatalf("error %q does not name %s", msg, w)
				}
			}
		})
	}
}
