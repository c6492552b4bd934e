package bridge

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/tributary-io/tributary/internal/testutil"
)

// With Kafka unreachable, the readiness poll waits up to 3s in a metadata
// request. Close must not destroy the handle under it (a full test run
// crashed with SIGSEGV there once; this test did not reproduce that), and
// must not wait for the poll forever either: the poll holds the handles'
// read lock that Close takes for writing, so a poll that blocked on it
// would deadlock Close. Each round closes at a different point of the
// poll's wait.
func TestCloseDuringReadinessPoll(t *testing.T) {
	dead := testutil.FreeAddr(t) // nothing listens there
	for _, after := range []time.Duration{0, 300 * time.Millisecond} {
		p, err := NewProducer(ProducerConfig{
			Bootstrap:           dead,
			MaxMessageBytes:     1 << 20,
			InflightBudgetBytes: 1 << 20,
			AckLinger:           time.Millisecond,
		}, slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(after)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		start := time.Now()
		p.Close(ctx)
		cancel()
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("closing %v after the start took %v", after, d)
		}
	}
}
