// Package websocket owns Tributary's HTTP face: the operational routes
// (/healthz, /readyz, /metrics) today, and the JSON WebSocket produce and
// consume API on the same server.
package websocket

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Check is one readiness condition: it returns nil when satisfied.
type Check struct {
	Name string
	Fn   func() error
}

// Config configures the HTTP server.
type Config struct {
	Addr string
	// TLSAddr serves the same routes over HTTPS; TLSConfig is required
	// with it.
	TLSAddr   string
	TLSConfig func() *tls.Config
	// Auth, when enabled, guards the API, pprof and (if configured)
	// /metrics; /healthz and /readyz stay open.
	Auth *Authenticator
	// Timeouts of the HTTP server; zero takes the default in brackets:
	// ReadHeaderTimeout (10s), ReadTimeout (30s), WriteTimeout (60s),
	// IdleTimeout (120s). Upgraded WebSocket connections are exempt from
	// the read and write timeouts.
	ReadHeaderTimeout, ReadTimeout, WriteTimeout, IdleTimeout time.Duration
	Pprof                                                     bool // serve net/http/pprof under /debug/pprof/
	Gatherer                                                  prometheus.Gatherer
	// Registerer receives the server's own metrics; nil means none.
	Registerer prometheus.Registerer
	Ready      []Check
	// API, when set, serves the JSON WebSocket API on the same server.
	API *API
}

// Server is the HTTP server.
type Server struct {
	cfg   Config
	log   *slog.Logger
	srv   *http.Server
	ln    net.Listener
	tlsLn net.Listener
	// timeouts counts connections the server's timeouts cut off.
	timeouts *timeoutWatch
	wg       sync.WaitGroup
	once     sync.Once
}

// New builds the server; Start binds it.
func New(cfg Config, log *slog.Logger) *Server {
	s := &Server{cfg: cfg, log: log}
	mux := http.NewServeMux()
	guard := cfg.Auth.wrap
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", s.ready)
	if cfg.Pprof {
		mux.Handle("/debug/pprof/", guard(http.HandlerFunc(pprof.Index)))
		mux.Handle("/debug/pprof/cmdline", guard(http.HandlerFunc(pprof.Cmdline)))
		mux.Handle("/debug/pprof/profile", guard(http.HandlerFunc(pprof.Profile)))
		mux.Handle("/debug/pprof/symbol", guard(http.HandlerFunc(pprof.Symbol)))
		mux.Handle("/debug/pprof/trace", guard(http.HandlerFunc(pprof.Trace)))
	}
	if cfg.Gatherer != nil {
		var h http.Handler = promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{})
		if cfg.Auth != nil && cfg.Auth.cfg.Metrics {
			h = guard(h)
		}
		mux.Handle("GET /metrics", h)
	}
	if cfg.API != nil {
		cfg.API.routes(mux, guard)
	}
	orDefault := func(d, def time.Duration) time.Duration {
		if d == 0 {
			return def
		}
		return d
	}
	s.srv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: orDefault(cfg.ReadHeaderTimeout, 10*time.Second),
		ReadTimeout:       orDefault(cfg.ReadTimeout, 30*time.Second),
		WriteTimeout:      orDefault(cfg.WriteTimeout, 60*time.Second),
		IdleTimeout:       orDefault(cfg.IdleTimeout, 120*time.Second),
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	s.timeouts = newTimeoutWatch(cfg.Registerer)
	s.srv.ConnState = s.timeouts.connState
	return s
}

func (s *Server) ready(w http.ResponseWriter, r *http.Request) {
	problems := map[string]string{}
	for _, c := range s.cfg.Ready {
		if err := c.Fn(); err != nil {
			problems[c.Name] = err.Error()
		}
	}
	if len(problems) > 0 {
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "not ready", "problems": problems})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	if b, err := marshal(v); err == nil {
		_, _ = w.Write(append(b, '\n'))
	}
}

// Start binds the addresses and serves in the background.
func (s *Server) Start() error {
	if s.cfg.Addr != "" {
		ln, err := net.Listen("tcp", s.cfg.Addr)
		if err != nil {
			return fmt.Errorf("starting HTTP server on %s: %w", s.cfg.Addr, err)
		}
		s.ln = s.timeouts.listener(ln)
	}
	if s.cfg.TLSAddr != "" {
		if s.cfg.TLSConfig == nil {
			s.closeListeners()
			return fmt.Errorf("starting HTTPS server on %s: no TLS certificate configured", s.cfg.TLSAddr)
		}
		ln, err := net.Listen("tcp", s.cfg.TLSAddr)
		if err != nil {
			s.closeListeners()
			return fmt.Errorf("starting HTTPS server on %s: %w", s.cfg.TLSAddr, err)
		}
		tc := s.cfg.TLSConfig()
		// HTTP/1.1 only: WebSocket upgrades need it.
		tc.NextProtos = []string{"http/1.1"}
		s.tlsLn = tls.NewListener(s.timeouts.listener(ln), tc)
	}
	for _, ln := range []net.Listener{s.ln, s.tlsLn} {
		if ln == nil {
			continue
		}
		s.log.Info("HTTP server started", "addr", ln.Addr().String(), "tls", ln == s.tlsLn)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.log.Error("HTTP server stopped", "addr", ln.Addr().String(), "error", err)
			}
		}()
	}
	return nil
}

func (s *Server) closeListeners() {
	for _, ln := range []net.Listener{s.ln, s.tlsLn} {
		if ln != nil {
			ln.Close()
		}
	}
	s.ln, s.tlsLn = nil, nil
}

// Addr returns the bound plain HTTP address, or "".
func (s *Server) Addr() string {
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// TLSAddr returns the bound HTTPS address, or "".
func (s *Server) TLSAddr() string {
	if s.tlsLn == nil {
		return ""
	}
	return s.tlsLn.Addr().String()
}

// Close shuts the server down, waiting for requests under ctx. Idempotent.
func (s *Server) Close(ctx context.Context) error {
	var err error
	s.once.Do(func() {
		if s.ln == nil && s.tlsLn == nil {
			return
		}
		err = s.srv.Shutdown(ctx)
		// Shutdown does not track hijacked connections: close the sockets.
		if s.cfg.API != nil {
			s.cfg.API.Close(ctx)
		}
		s.wg.Wait()
	})
	return err
}
