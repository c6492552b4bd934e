package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/tributary-io/tributary/auth"
	"github.com/tributary-io/tributary/bridge"
	"github.com/tributary-io/tributary/broker"
	"github.com/tributary-io/tributary/certs"
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
	tls       *certs.Store            // nil without a server certificate
	users     *auth.Live[auth.Users]  // nil without a users file
	tokens    *auth.Live[auth.Tokens] // nil without a tokens file
	throttle  *auth.Throttle
	// authReloads counts reloads of the users and tokens files by file
	// and result; nil without either file.
	authReloads *prometheus.CounterVec
	stopOnce    sync.Once
	stopping    atomic.Bool // shutdown has begun: /readyz sends traffic elsewhere

	bg sync.WaitGroup // background goroutines (certificate watcher, start-up topic creation)

	startupCancel context.CancelFunc // ends start-up topic creation
	unflushed     int                // records Kafka had not acknowledged when the producer closed
	bgCancel      context.CancelFunc
}

// start builds and starts every part. On error, whatever started is stopped.
func start(cfg config.Config, log *slog.Logger) (_ *daemon, err error) {
	d := &daemon{log: log, cfg: cfg, registry: prometheus.NewRegistry()}
	bgCtx, bgCancel := context.WithCancel(context.Background())
	d.bgCancel = bgCancel
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
	if err := d.startTLS(bgCtx); err != nil {
		return nil, err
	}
	if err := d.loadAuth(); err != nil {
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
	configured := mapper.StaticTopics()
	for _, u := range cfg.Upstreams {
		if u.KafkaTopic != "" {
			configured = append(configured, u.KafkaTopic)
		}
	}
	props := cfg.Kafka.ClientProperties()
	d.producer, err = bridge.NewProducer(bridge.ProducerConfig{
		Bootstrap:              bootstrap,
		Properties:             props,
		MaxMessageBytes:        cfg.Kafka.MaxMessageBytes,
		InflightBudgetBytes:    cfg.Kafka.InflightBudgetBytes,
		CreateTopics:           cfg.Kafka.CreateTopics,
		TopicPartitions:        cfg.Kafka.TopicPartitions,
		MaxTopics:              cfg.Kafka.MaxTopics,
		ConfiguredTopics:       configured,
		TopicReplicationFactor: cfg.Kafka.TopicReplicationFactor,
		AckLinger:              cfg.Kafka.AckLinger,
		PromptClients:          cfg.Kafka.PromptClients,
		PromptLinger:           cfg.Kafka.PromptLinger,
		Registerer:             d.registry,
	}, log.With("component", "kafka"))
	if err != nil {
		return nil, err
	}
	d.ensureStartupTopics(bgCtx, mapper.StaticTopics())

	if cfg.MQTT.Addr != "" || cfg.MQTT.WSAddr != "" || cfg.MQTT.TLSAddr != "" || cfg.MQTT.WSSAddr != "" {
		d.broker, err = broker.New(broker.Config{
			Addr:      cfg.MQTT.Addr,
			WSAddr:    cfg.MQTT.WSAddr,
			TLSAddr:   cfg.MQTT.TLSAddr,
			WSSAddr:   cfg.MQTT.WSSAddr,
			TLSConfig: d.tlsConfig(),
			Auth: broker.AuthConfig{
				Users:        d.users,
				Throttle:     d.throttle,
				CertUsername: d.certUsername(),
				CertOrigins:  cfg.WebSocket.AllowedOrigins,
			},
			Conns: broker.ConnLimits{
				MaxConns:       cfg.Limits.MaxConnections,
				MaxConnsPerIP:  cfg.Limits.MaxConnectionsPerIP,
				RatePerIP:      cfg.Limits.ConnectionRatePerIP,
				ConnectTimeout: 10 * time.Second,
			},
			Publish: broker.PublishLimits{
				MessagesPerSecond: cfg.Limits.PublishRate,
				BytesPerSecond:    cfg.Limits.PublishBytesRate,
			},
			MessageExpiryMax: cfg.MQTT.MessageExpiryMax,
			SessionExpiryMax: cfg.MQTT.SessionExpiryMax,
			MaxMessageBytes:  cfg.Kafka.MaxMessageBytes,
			Registerer:       d.registry,
		}, d.producer, mapper, log)
		if err != nil {
			return nil, err
		}
		if err := d.broker.Start(); err != nil {
			return nil, err
		}
	}

	if len(cfg.Upstreams) > 0 {
		d.upstreams = bridge.NewUpstreams(upstreamConfigs(cfg.Upstreams), d.producer, mapper, d.registry, log.With("component", "upstream"))
		d.upstreams.Start()
	}

	if cfg.HTTP.Addr != "" || cfg.HTTP.TLSAddr != "" {
		httpAuth := websocket.NewAuthenticator(websocket.AuthConfig{
			Users:    d.users,
			Tokens:   d.tokens,
			Metrics:  cfg.Auth.MetricsAuth,
			Throttle: d.throttle,
		}, d.registry, log.With("component", "http-auth"))
		if cfg.WebSocket.Enabled {
			d.wsAPI = websocket.NewAPI(websocket.APIConfig{
				AllowedOrigins: cfg.WebSocket.AllowedOrigins,
				MaxFrameBytes:  int64(cfg.WebSocket.MaxFrameBytes),
				PingInterval:   cfg.WebSocket.PingInterval,
				MaxInflight:    cfg.WebSocket.MaxInflight,
				ProduceRate:    float64(cfg.WebSocket.ProduceRate),
				SendQueue:      cfg.WebSocket.SendQueue,
				FlushTimeout:   cfg.Kafka.FlushTimeout,
				Consumer: bridge.ConsumerConfig{
					Bootstrap:      bootstrap,
					Properties:     props,
					SessionTimeout: cfg.WebSocket.SessionTimeout,
				},
				Registerer: d.registry,
				Auth:       httpAuth,
			}, d.producer, log.With("component", "websocket"))
		}
		d.http = websocket.New(websocket.Config{
			Addr:              cfg.HTTP.Addr,
			TLSAddr:           cfg.HTTP.TLSAddr,
			TLSConfig:         d.tlsConfig(),
			Auth:              httpAuth,
			ReadHeaderTimeout: cfg.HTTP.ReadHeaderTimeout,
			ReadTimeout:       cfg.HTTP.ReadTimeout,
			WriteTimeout:      cfg.HTTP.WriteTimeout,
			IdleTimeout:       cfg.HTTP.IdleTimeout,
			Pprof:             cfg.HTTP.Pprof,
			Gatherer:          d.registry,
			Registerer:        d.registry,
			API:               d.wsAPI,
			Ready: []websocket.Check{
				{Name: "shutdown", Fn: func() error {
					if d.stopping.Load() {
						return errors.New("shutting down")
					}
					return nil
				}},
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

// ensureStartupTopics creates the topics the rules name, in the
// background, so a missing permission or a bad cluster shows in the log
// at start-up. Failures are retried on first use. Start-up does not wait
// for it: with Kafka unreachable, /healthz and the listeners are up at
// once and /readyz says that Kafka is not reachable.
func (d *daemon) ensureStartupTopics(ctx context.Context, topics []string) {
	if len(topics) == 0 {
		return
	}
	// One deadline for all, so an unreachable Kafka is reported within
	// seconds, not after a timeout per topic. Shutdown cancels it.
	ctx, d.startupCancel = context.WithTimeout(ctx, 10*time.Second)
	for _, t := range topics {
		d.bg.Add(1)
		go func() {
			defer d.bg.Done()
			if err := d.producer.EnsureTopic(ctx, t); err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, bridge.ErrClosed) {
				d.log.Warn("Kafka topic not ready at start-up; will retry on first publish", "topic", t, "error", err)
			}
		}()
	}
}

// stop shuts down, once, in order: no new work, flush Kafka under the deadline
// (so acknowledgements still reach connected clients), close the rest.
func (d *daemon) stop() { d.stopOnce.Do(d.shutdown) }

func (d *daemon) shutdown() {
	d.stopping.Store(true)
	if d.startupCancel != nil {
		d.startupCancel() // lookups in progress must not hold up closing the producer
	}
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
	flushLeft := 0
	if d.producer != nil {
		flushLeft = d.producer.Flush(ctx)
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
		// A record Kafka confirms after the flush deadline may come after
		// the faces' last acknowledgement pass too, its client never
		// told: it counts as left by the flush, though Close no longer
		// sees it.
		d.unflushed = max(flushLeft, d.producer.Close(ctx))
		if d.unflushed > 0 {
			d.log.Error("shutdown flush deadline passed: Kafka had not acknowledged these records, and neither were their clients (QoS 0 ones are lost; the rest their publishers still hold)",
				"records", d.unflushed, "flush_timeout", d.cfg.Kafka.FlushTimeout)
		}
	}
	if d.embedded != nil {
		d.embedded.Close()
	}
	d.bgCancel()
	d.bg.Wait()
}

// startTLS loads the server certificate, if one is configured, watches
// its files and exports its state as metrics.
func (d *daemon) startTLS(ctx context.Context) error {
	t := d.cfg.TLS
	if !t.Enabled() {
		return nil
	}
	store, err := certs.New(certs.Config{
		CertFile:     t.CertFile,
		KeyFile:      t.KeyFile,
		ClientCAFile: t.ClientCAFile,
		ClientAuth:   t.ClientAuth,
	}, d.log.With("component", "tls"))
	if err != nil {
		return fmt.Errorf("loading the TLS certificate: %w", err)
	}
	d.tls = store
	d.registry.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: "tributary", Name: "tls_reloads_total",
			Help:        "Reloads of the TLS certificate files, by result (ok, failed).",
			ConstLabels: prometheus.Labels{"result": "ok"},
		}, func() float64 { ok, _ := store.Reloads(); return float64(ok) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: "tributary", Name: "tls_reloads_total",
			Help:        "Reloads of the TLS certificate files, by result (ok, failed).",
			ConstLabels: prometheus.Labels{"result": "failed"},
		}, func() float64 { _, failed := store.Reloads(); return float64(failed) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "tributary", Name: "tls_certificate_expiry_timestamp_seconds",
			Help: "When the server certificate in use expires (Unix time).",
		}, func() float64 { return float64(store.NotAfter().Unix()) }),
	)
	d.log.Info("TLS certificate loaded", "subject", store.Subject(), "not_after", store.NotAfter(), "client_auth", t.ClientAuth)
	if t.ReloadInterval > 0 {
		d.bg.Add(1)
		go func() {
			defer d.bg.Done()
			store.Watch(ctx, t.ReloadInterval)
		}()
	}
	return nil
}

// loadAuth reads the users and tokens files.
func (d *daemon) loadAuth() error {
	if f := d.cfg.Auth.UsersFile; f != "" {
		users, err := auth.LoadUsers(f)
		if err != nil {
			return fmt.Errorf("loading auth.users_file: %w", err)
		}
		d.users = auth.NewLive(users)
	}
	if f := d.cfg.Auth.TokensFile; f != "" {
		tokens, err := auth.LoadTokens(f)
		if err != nil {
			return fmt.Errorf("loading auth.tokens_file: %w", err)
		}
		d.tokens = auth.NewLive(tokens)
	}
	if d.users == nil && d.tokens == nil {
		return nil
	}
	d.throttle = auth.NewThrottle(auth.ThrottleConfig{})
	d.authReloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "tributary", Name: "auth_reloads_total",
		Help: "Reloads (SIGHUP) of the users and tokens files, by file (users, tokens) and result (ok, failed).",
	}, []string{"file", "result"})
	d.registry.MustRegister(d.authReloads)
	for file, on := range map[string]bool{"users": d.users != nil, "tokens": d.tokens != nil} {
		if on {
			d.authReloads.WithLabelValues(file, "ok")
			d.authReloads.WithLabelValues(file, "failed")
		}
	}
	return nil
}

// reloadAuth re-reads the users and tokens files, each if configured. A
// file that fails to load keeps the old one in force and is logged with
// the problem. When either changed, the MQTT clients and WebSocket API
// sockets whose login or topics the new files no longer allow are
// disconnected; everything decided from now on uses the new files.
func (d *daemon) reloadAuth() {
	oldUsers, usersSwapped, tokensSwapped := d.users.Load(), false, false
	if f := d.cfg.Auth.UsersFile; f != "" {
		if users, err := auth.LoadUsers(f); err != nil {
			d.authReloads.WithLabelValues("users", "failed").Inc()
			d.log.Error("reloading auth.users_file failed; the users loaded before stay in force", "file", f, "error", err)
		} else {
			oldUsers, usersSwapped = d.users.Swap(users), true
			d.authReloads.WithLabelValues("users", "ok").Inc()
			d.log.Info("users file reloaded", "file", f, "users", users.Len())
		}
	}
	if f := d.cfg.Auth.TokensFile; f != "" {
		if tokens, err := auth.LoadTokens(f); err != nil {
			d.authReloads.WithLabelValues("tokens", "failed").Inc()
			d.log.Error("reloading auth.tokens_file failed; the tokens loaded before stay in force", "file", f, "error", err)
		} else {
			d.tokens.Swap(tokens)
			tokensSwapped = true
			d.authReloads.WithLabelValues("tokens", "ok").Inc()
			d.log.Info("tokens file reloaded", "file", f, "tokens", tokens.Len())
		}
	}
	if usersSwapped && d.broker != nil {
		if n := d.broker.Revoke(oldUsers); n > 0 {
			d.log.Info("disconnected the MQTT clients whose login the reloaded users file no longer allows", "clients", n)
		}
	}
	if (usersSwapped || tokensSwapped) && d.wsAPI != nil {
		if n := d.wsAPI.Revoke(); n > 0 {
			d.log.Info("closed the WebSocket API sockets the reloaded files no longer allow", "sockets", n)
		}
	}
}

// certUsername returns how MQTT clients' certificates name them, or nil
// when client certificates are not verified.
func (d *daemon) certUsername() func(*mqtt.Client) (string, bool) {
	if d.tls == nil || d.cfg.TLS.ClientCAFile == "" {
		return nil
	}
	from := d.cfg.TLS.ClientCertUsername
	if from == "" {
		from = certs.UsernameFromCN
	}
	return broker.ClientCertUsername(from)
}

// tlsConfig returns what the listeners call for their TLS configuration,
// or nil without a certificate.
func (d *daemon) tlsConfig() func() *tls.Config {
	if d.tls == nil {
		return nil
	}
	return d.tls.TLSConfig
}

// reload re-reads what can change without a restart (SIGHUP): the TLS
// certificate files, the users file and the tokens file. A broken file
// keeps the old contents in force and is logged.
func (d *daemon) reload() {
	d.log.Info("reloading on SIGHUP")
	if d.tls != nil {
		_ = d.tls.Reload() // logs its own failure
	}
	d.reloadAuth()
}

// run starts the daemon and serves until ctx ends.
func run(ctx context.Context, cfg config.Config, log *slog.Logger) error {
	// Taken before start-up, which may wait seconds for Kafka: SIGHUP's
	// default action would end the process; one received meanwhile
	// reloads once it is running.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	d, err := start(cfg, log)
	if err != nil {
		return fmt.Errorf("starting: %w", err)
	}
	log.Info("tributary running", "version", versionString(), "librdkafka", bridge.LibrdkafkaVersion())
	for ctx.Err() == nil {
		select {
		case <-hup:
			d.reload()
		case <-ctx.Done():
		case <-d.producer.Fatal():
			// Every record would now fail: stop, so that a supervisor
			// starts the process again with a new producer. What was
			// not acknowledged, the publishers still hold.
			log.Error("shutting down: the Kafka producer failed for good and nothing more can be produced; start Tributary again", "error", d.producer.FatalErr())
			d.stop()
			return fmt.Errorf("Kafka producer: %w", d.producer.FatalErr())
		}
	}
	log.Info("shutting down; a second SIGINT or SIGTERM ends the process at once", "flush_timeout", cfg.Kafka.FlushTimeout)
	d.stop()
	if d.unflushed > 0 {
		return fmt.Errorf("shut down with %d records Kafka had not acknowledged by the flush deadline (kafka.flush_timeout %v)", d.unflushed, cfg.Kafka.FlushTimeout)
	}
	log.Info("stopped")
	return nil
}
