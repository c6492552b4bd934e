package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/tributary-io/tributary/bridge"
	"github.com/tributary-io/tributary/broker"
	"github.com/tributary-io/tributary/config"
	"github.com/tributary-io/tributary/websocket"
)

// daemon is the running product: embedded Kafka (optional), producer,
// MQTT broker and HTTP server, wired together.
type daemon struct {
	log       *slog.Logger
	cfg       config.Config
	embedded  *bridge.Embedded
	producer  *bridge.Producer
	broker    *broker.Broker
	upstreams *bridge.Upstreams
	http      *websocket.Server
	wsAPI     *websocket.API
	registry  *prometheus.Registry
	stopOnce  sync.Once
}

// start builds and starts every part. On error, whatever started is stopped.
func start(cfg config.Config, log *slog.Logger) (_ *daemon, err error) {
	d := &daemon{log: log, cfg: cfg, registry: prometheus.NewRegistry()}
	defer func() {
		if err != nil {
			d.stop()
		}
	}()
	d.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mapper, err := cfg.Mapper()
	if err != nil {
		return nil, err
	}

	bootstrap := cfg.Kafka.Bootstrap
	if cfg.Kafka.Embedded() {
		d.embedded, err = bridge.StartEmbedded(bridge.EmbeddedConfig{Addr: cfg.Kafka.EmbeddedAddr, DataDir: cfg.DataDir}, log)
		if err != nil {
			return nil, err
		}
		bootstrap = d.embedded.Addr()
		log.Warn("no kafka.bootstrap set: started the embedded Kafka, which is for evaluation only; set --kafka-bootstrap (or TRIBUTARY_KAFKA_BOOTSTRAP) to use a real cluster",
			"addr", bootstrap, "data_dir", cfg.DataDir)
	}
	d.producer, err = bridge.NewProducer(bridge.ProducerConfig{
		Bootstrap:              bootstrap,
		Properties:             cfg.Kafka.Properties,
		MaxMessageBytes:        cfg.Kafka.MaxMessageBytes,
		InflightBudgetBytes:    cfg.Kafka.InflightBudgetBytes,
		CreateTopics:           cfg.Kafka.CreateTopics,
		TopicPartitions:        cfg.Kafka.TopicPartitions,
		TopicReplicationFactor: cfg.Kafka.TopicReplicationFactor,
		AckLinger:              cfg.Kafka.AckLinger,
		Registerer:             d.registry,
	}, log.With("component", "kafka"))
	if err != nil {
		return nil, err
	}
	// Create the topics the rules name up front, so a missing permission
	// or a bad cluster shows at start-up; failures here are retried on
	// first use, so Kafka being down does not stop the bridge starting.
	// All at once, under one deadline, so that an unreachable Kafka delays
	// start-up by seconds, not by a timeout per topic.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	var wg sync.WaitGroup
	for _, t := range mapper.StaticTopics() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := d.producer.EnsureTopic(ctx, t); err != nil {
				log.Warn("Kafka topic not ready at start-up; will retry on first publish", "topic", t, "error", err)
			}
		}()
	}
	wg.Wait()
	cancel()

	if cfg.MQTT.Addr != "" || cfg.MQTT.WSAddr != "" {
		d.broker, err = broker.New(broker.Config{
			Addr:            cfg.MQTT.Addr,
			WSAddr:          cfg.MQTT.WSAddr,
			MaxMessageBytes: cfg.Kafka.MaxMessageBytes,
			Registerer:      d.registry,
		}, d.producer, mapper, log)
		if err != nil {
			return nil, err
		}
		if err := d.broker.Start(); err != nil {
			return nil, err
		}
	}

	if len(cfg.Upstreams) > 0 {
		ucfgs, err := upstreamConfigs(cfg.Upstreams)
		if err != nil {
			return nil, err
		}
		d.upstreams = bridge.NewUpstreams(ucfgs, d.producer, mapper, d.registry, log.With("component", "upstream"))
		d.upstreams.Start()
	}

	if cfg.HTTP.Addr != "" {
		if cfg.WebSocket.Enabled {
			d.wsAPI = websocket.NewAPI(websocket.APIConfig{
				AllowedOrigins: cfg.WebSocket.AllowedOrigins,
				MaxFrameBytes:  int64(cfg.WebSocket.MaxFrameBytes),
				PingInterval:   cfg.WebSocket.PingInterval,
				MaxInflight:    cfg.WebSocket.MaxInflight,
				ProduceRate:    float64(cfg.WebSocket.ProduceRate),
				SendQueue:      cfg.WebSocket.SendQueue,
				Consumer: bridge.ConsumerConfig{
					Bootstrap:      bootstrap,
					Properties:     cfg.Kafka.Properties,
					SessionTimeout: cfg.WebSocket.SessionTimeout,
				},
				Registerer: d.registry,
			}, d.producer, log.With("component", "websocket"))
		}
		d.http = websocket.New(websocket.Config{
			Addr:     cfg.HTTP.Addr,
			Pprof:    cfg.HTTP.Pprof,
			Gatherer: d.registry,
			API:      d.wsAPI,
			Ready: []websocket.Check{
				{Name: "kafka", Fn: func() error {
					if !d.producer.Ready() {
						return errors.New("Kafka is not reachable")
					}
					return nil
				}},
				{Name: "mqtt", Fn: func() error {
					if d.broker != nil && !d.broker.Serving() {
						return errors.New("MQTT listeners are not serving")
					}
					return nil
				}},
				{Name: "upstreams", Fn: func() error {
					if d.upstreams == nil {
						return nil
					}
					return d.upstreams.Check()
				}},
			},
		}, log)
		if err := d.http.Start(); err != nil {
			return nil, err
		}
	}
	return d, nil
}

// stop shuts down, once, in order: no new work, flush Kafka under the deadline
// (so acknowledgements still reach connected clients), close the rest.
func (d *daemon) stop() { d.stopOnce.Do(d.shutdown) }

func (d *daemon) shutdown() {
	ctx, cancel := context.WithTimeout(context.Background(), d.cfg.Kafka.FlushTimeout)
	defer cancel()
	if d.broker != nil {
		d.broker.Drain()
	}
	// Upstreams stop producing before the flush and acknowledge to their
	// remote brokers after it, so every PUBACK they send is for a record
	// Kafka has; what is left unacknowledged the remote brokers redeliver.
	if d.upstreams != nil {
		d.upstreams.Drain()
	}
	// WebSocket produce sockets stop reading; their results still go out
	// as the flush completes them, and consume sockets commit and leave.
	if d.wsAPI != nil {
		d.wsAPI.Drain()
	}
	if d.producer != nil {
		if left := d.producer.Flush(ctx); left > 0 {
			d.log.Error("shutdown flush deadline passed; those records' clients were not acknowledged", "records", left)
		}
	}
	if d.upstreams != nil {
		d.upstreams.Close()
	}
	if d.broker != nil {
		if err := d.broker.Close(); err != nil {
			d.log.Warn("closing MQTT broker", "error", err)
		}
	}
	if d.http != nil {
		hctx, hcancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = d.http.Close(hctx)
		hcancel()
	}
	if d.producer != nil {
		d.producer.Close(ctx)
	}
	if d.embedded != nil {
		d.embedded.Close()
	}
}

// run starts the daemon and serves until ctx ends.
func run(ctx context.Context, cfg config.Config, log *slog.Logger) error {
	d, err := start(cfg, log)
	if err != nil {
		return fmt.Errorf("starting: %w", err)
	}
	log.Info("tributary running", "version", version)
	<-ctx.Done()
	log.Info("shutting down")
	d.stop()
	log.Info("stopped")
	return nil
}
