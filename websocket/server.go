// Package websocket owns Tributary's HTTP face: the operational routes
// (/healthz, /readyz, /metrics) today, and the JSON WebSocket produce and
// consume API on the same server.
package websocket

import (
	"context"
	"encoding/json"
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
	Addr     string
	Pprof    bool // serve net/http/pprof under /debug/pprof/
	Gatherer prometheus.Gatherer
	Ready    []Check
	// API, when set, serves the JSON WebSocket API on the same server.
	API *API
}

// Server is the HTTP server.
type Server struct {
	cfg  Config
	log  *slog.Logger
	srv  *http.Server
	ln   net.Listener
	done chan struct{}
	once sync.Once
}

// New builds the server; Start binds it.
func New(cfg Config, log *slog.Logger) *Server {
	s := &Server{cfg: cfg, log: log, done: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", s.ready)
	if cfg.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	if cfg.Gatherer != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{}))
	}
	if cfg.API != nil {
		cfg.API.routes(mux)
	}
	s.srv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
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
	_ = json.NewEncoder(w).Encode(v)
}

// Start binds the address and serves in the background.
func (s *Server) Start() error {
	ln, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("starting HTTP server on %s: %w", s.cfg.Addr, err)
	}
	s.ln = ln
	s.log.Info("HTTP server started", "addr", ln.Addr().String())
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("HTTP server stopped", "error", err)
		}
	}()
	return nil
}

// Addr returns the bound address.
func (s *Server) Addr() string {
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// Close shuts the server down, waiting for requests under ctx. Idempotent.
func (s *Server) Close(ctx context.Context) error {
	var err error
	s.once.Do(func() {
		if s.ln == nil {
			return
		}
		err = s.srv.Shutdown(ctx)
		// Shutdown does not track hijacked connections: close the sockets.
		if s.cfg.API != nil {
			s.cfg.API.Close(ctx)
		}
		<-s.done
	})
	return err
}
