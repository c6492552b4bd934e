package bridge

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"syscall"

	"github.com/twmb/franz-go/pkg/kfake"
)

// EmbeddedConfig configures the embedded evaluation Kafka.
type EmbeddedConfig struct {
	Addr    string // listen address, e.g. 127.0.0.1:9092
	DataDir string // records and topics persist under DataDir/kafka
}

// Embedded is an in-process Kafka-compatible broker (franz-go's kfake) for
// evaluation and tests: one command runs the whole product, and any Kafka
// client can read what arrived.
type Embedded struct {
	c    *kfake.Cluster
	addr string
	lock *os.File // held while it runs: see lockDir
}

// StartEmbedded starts the embedded Kafka.
func StartEmbedded(cfg EmbeddedConfig, log *slog.Logger) (*Embedded, error) {
	dir := filepath.Join(cfg.DataDir, "kafka")
	// The records are the devices' data: other local users get no access
	// to a dir created here (one that exists keeps its mode).
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating embedded Kafka data dir: %w", err)
	}
	lock, err := lockDir(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("starting embedded Kafka on %s: %w", cfg.Addr, err)
	}
	used := false
	c, err := kfake.NewCluster(
		kfake.NumBrokers(1),
		kfake.DataDir(dir),
		kfake.ListenFn(func(network, address string) (net.Listener, error) {
			if used {
				return nil, fmt.Errorf("embedded Kafka has one listener")
			}
			used = true
			return ln, nil
		}),
		kfake.WithLogger(kfakeLogger{log}),
	)
	if err != nil {
		ln.Close()
		lock.Close()
		return nil, fmt.Errorf("starting embedded Kafka in %s: %w", dir, err)
	}
	return &Embedded{c: c, addr: ln.Addr().String(), lock: lock}, nil
}

// lockDir takes an exclusive lock on the data dir for the life of the
// process (or until the returned file is closed), through a file next to
// kfake's own directory, which kfake reads whole. Two embedded Kafkas on
// one data dir, each on its own address, would both write the same
// partitions' logs: records of both at the same offsets, acknowledged and
// then lost.
func lockDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, "kafka.lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("locking the embedded Kafka data dir: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("the embedded Kafka data dir %s is in use by another process (%s is locked): give each Tributary its own --data-dir", dir, path)
		}
		return nil, fmt.Errorf("locking the embedded Kafka data dir %s: %w", dir, err)
	}
	return f, nil
}

// Addr is the bootstrap address of the embedded Kafka.
func (e *Embedded) Addr() string { return e.addr }

// Close stops it, writing its state to the data dir, and releases the dir.
func (e *Embedded) Close() {
	e.c.Close()
	e.lock.Close()
}

type kfakeLogger struct{ log *slog.Logger }

func (l kfakeLogger) Logf(level kfake.LogLevel, msg string, args ...any) {
	if level > kfake.LogLevelWarn {
		return
	}
	text := fmt.Sprintf(msg, args...)
	if level == kfake.LogLevelError {
		l.log.Error(text, "component", "embedded-kafka")
		return
	}
	l.log.Warn(text, "component", "embedded-kafka")
}
