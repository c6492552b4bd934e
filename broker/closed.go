package broker

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/gorilla/websocket"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tributary-io/tributary/bridge"
)

// closeReasons counts and logs the connections the broker ended because
// of what the client sent (malformed packets, protocol violations,
// oversized packets, a CONNECT that never came), so that every rejection
// has a metric and a log line. It sees the error each connection ended
// with, before or after CONNECT.
type closeReasons struct {
	log    *slog.Logger
	closed *prometheus.CounterVec
	logs   map[string]*bridge.Throttle // by reason; fixed at construction
}

func newCloseReasons(reg prometheus.Registerer, log *slog.Logger) *closeReasons {
	c := &closeReasons{
		log: log,
		closed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "tributary", Subsystem: "mqtt", Name: "connections_rejected_total",
			Help: "MQTT connections closed because of what the client sent, by listener and reason (malformed, protocol_violation, packet_too_large, text_frame, timeout).",
		}, []string{"listener", "reason"}),
		logs: map[string]*bridge.Throttle{},
	}
	for _, r := range closeReasonNames {
		c.logs[r] = &bridge.Throttle{Interval: time.Second}
	}
	if reg != nil {
		reg.MustRegister(c.closed)
	}
	return c
}

// closeReasonNames are the reasons closeReason gives.
var closeReasonNames = []string{"malformed", "protocol_violation", "packet_too_large", "text_frame", "timeout"}

// reason names why a connection ended, or "" when that was no fault of
// the client's (it left, the server is stopping, a login was refused:
// the auth hook counts those).
func closeReason(err error) string {
	var code packets.Code
	switch {
	case err == nil, errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed), errors.Is(err, io.ErrUnexpectedEOF):
		return ""
	case errors.Is(err, errTextFrame):
		return "text_frame"
	case errors.Is(err, packets.ErrPacketTooLarge), errors.Is(err, websocket.ErrReadLimit):
		return "packet_too_large"
	case errors.As(err, &code):
		switch code.Code {
		case packets.ErrMalformedPacket.Code:
			return "malformed"
		case packets.ErrProtocolViolation.Code:
			return "protocol_violation"
		}
		return ""
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	return ""
}

func (c *closeReasons) record(listener, remote string, err error) {
	reason := closeReason(err)
	if reason == "" {
		return
	}
	c.closed.WithLabelValues(listener, reason).Inc()
	if ok, suppressed := c.logs[reason].Allow(time.Now()); ok {
		c.log.Info("MQTT connection closed: bad input from the client", "listener", listener, "remote", remote, "reason", reason, "error", err, "suppressed", suppressed)
	}
}

// recordingListener passes each connection's final error to closeReasons
// instead of to mochi's listener, which would log it without a message.
// Each connection reaches mochi through a guardConn.
type recordingListener struct {
	listeners.Listener
	reasons   *closeReasons
	maxPacket int // mochi's maximum packet size
}

func (l recordingListener) Serve(establish listeners.EstablishFn) {
	l.Listener.Serve(func(id string, c net.Conn) error {
		remote := c.RemoteAddr().String()
		l.reasons.record(id, remote, establish(id, newGuardConn(c, l.maxPacket)))
		return nil
	})
}
