// Package broker owns Tributary's embedded MQTT broker (mochi-mqtt): its
// TCP and WebSocket listeners, its hooks, and the ingest path that turns
// publishes into Kafka records and acknowledges QoS 1 and 2 publishes only
// after Kafka has them, in the order they arrived.
package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tributary-io/tributary/bridge"
	"github.com/tributary-io/tributary/mapping"
)

// Producer is what the broker needs from the Kafka core.
type Producer interface {
	Produce(ctx context.Context, rec *bridge.Record, h bridge.DeliveryHandler) error
	TryProduce(ctx context.Context, rec *bridge.Record, h bridge.DeliveryHandler) error
}

var _ Producer = (*bridge.Producer)(nil)

// Config configures the broker.
type Config struct {
	// Addr is the MQTT over TCP listen address; empty disables it.
	Addr string
	// WSAddr is the MQTT over WebSocket listen address; empty disables it.
	WSAddr string
	// MaxMessageBytes is the Kafka record limit; MQTT packets are allowed a
	// little more so that an oversized payload gets a reason code rather
	// than a dropped connection where the protocol allows it.
	MaxMessageBytes int
	// Registerer receives the broker's metrics; nil means none.
	Registerer prometheus.Registerer
}

// Broker is the embedded MQTT broker wired to the Kafka producer.
type Broker struct {
	cfg      Config
	log      *slog.Logger
	server   *mqtt.Server
	ingest   *ingest
	addrs    map[string]string
	lns      []net.Listener
	ctx      context.Context
	cancel   context.CancelFunc
	serving  atomic.Bool
	closeOne sync.Once
}

// packetHeadroom is what an MQTT PUBLISH may carry beyond the Kafka record
// limit (topic, properties) before the broker refuses it at the packet level.
const packetHeadroom = 64 << 10

// New builds the broker; Start binds and serves its listeners.
func New(cfg Config, producer Producer, mapper *mapping.Mapper, log *slog.Logger) (*Broker, error) {
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = uint32(cfg.MaxMessageBytes + packetHeadroom)
	server := mqtt.New(&mqtt.Options{
		Capabilities: caps,
		Logger:       log.With("component", "mqtt"),
	})
	ctx, cancel := context.WithCancel(context.Background())
	reg := cfg.Registerer
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	b := &Broker{cfg: cfg, log: log, server: server, addrs: map[string]string{}, ctx: ctx, cancel: cancel}
	b.ingest = newIngest(ctx, server, producer, mapper, log, newMetrics(reg))
	if err := server.AddHook(new(auth.AllowHook), nil); err != nil {
		cancel()
		return nil, fmt.Errorf("adding auth hook: %w", err)
	}
	if err := server.AddHook(b.ingest, nil); err != nil {
		cancel()
		return nil, fmt.Errorf("adding ingest hook: %w", err)
	}
	return b, nil
}

// Start binds the configured listeners and starts serving. A bind failure
// closes whatever was bound and is returned.
func (b *Broker) Start() error {
	type spec struct{ id, addr string }
	for _, s := range []spec{{"mqtt-tcp", b.cfg.Addr}, {"mqtt-ws", b.cfg.WSAddr}} {
		if s.addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", s.addr)
		if err != nil {
			for _, l := range b.lns {
				l.Close()
			}
			return fmt.Errorf("starting MQTT listener %s on %s: %w", s.id, s.addr, err)
		}
		b.lns = append(b.lns, ln)
		b.addrs[s.id] = ln.Addr().String()
		var l listeners.Listener
		if s.id == "mqtt-ws" {
			l = newWSListener(s.id, ln, int64(b.cfg.MaxMessageBytes+packetHeadroom))
		} else {
			l = listeners.NewNet(s.id, ln)
		}
		if err := b.server.AddListener(l); err != nil {
			return fmt.Errorf("adding MQTT listener %s: %w", s.id, err)
		}
		b.log.Info("MQTT listener started", "listener", s.id, "addr", ln.Addr().String())
	}
	if err := b.server.Serve(); err != nil {
		return fmt.Errorf("starting MQTT server: %w", err)
	}
	b.serving.Store(true)
	return nil
}

// Addr returns the bound address of a listener ("mqtt-tcp" or "mqtt-ws"),
// or "" when it is disabled.
func (b *Broker) Addr(id string) string { return b.addrs[id] }

// Serving reports whether the listeners are up.
func (b *Broker) Serving() bool { return b.serving.Load() }

// Drain stops taking new QoS 1 and 2 publishes into Kafka: from now on they
// are left unacknowledged, so their clients keep and resend them. Records
// already in flight still get their acknowledgements when Kafka confirms.
func (b *Broker) Drain() { b.ingest.draining.Store(true) }

// Close stops the listeners and disconnects every client. Call Drain and
// flush the producer first so in-flight acknowledgements reach clients.
// It is idempotent.
func (b *Broker) Close() error {
	var err error
	b.closeOne.Do(func() {
		b.serving.Store(false)
		b.ingest.draining.Store(true)
		b.cancel()
		b.disconnectAll(5 * time.Second)
		err = b.server.Close()
		b.ingest.wait()
	})
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// disconnectAll stops accepting connections and disconnects every client,
// waiting up to timeout for their goroutines to end. mochi's own Close
// lists each listener's clients while holding its client-list read lock
// and takes that lock again inside (Clients.GetByListener calls Len); a
// client being added or removed in between makes that deadlock, and at
// shutdown the first listener's clients remove themselves while the next
// listener's are listed. With every client gone first, Close is safe.
func (b *Broker) disconnectAll(timeout time.Duration) {
	for _, ln := range b.lns {
		_ = ln.Close()
	}
	done := make(chan struct{})
	go func() {
		b.server.Listeners.ClientsWg.Wait()
		close(done)
	}()
	deadline := time.After(timeout)
	for {
		for _, cl := range b.server.Clients.GetAll() {
			if !cl.Net.Inline && !cl.Closed() {
				b.ingest.disconnect(cl, packets.ErrServerShuttingDown)
			}
		}
		select {
		case <-done:
			return
		case <-deadline:
			b.log.Warn("MQTT clients still connected after the shutdown timeout", "timeout", timeout)
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}
