package broker

import (
	"sync"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	connections    *prometheus.GaugeVec
	received       *prometheus.CounterVec
	receivedBytes  *prometheus.CounterVec
	unmatched      prometheus.Counter
	dropped        *prometheus.CounterVec
	rejected       *prometheus.CounterVec
	forgedHeaders  prometheus.Counter
	failed         *prometheus.CounterVec
	duplicates     prometheus.Counter
	resumesRefused prometheus.Counter
	ackLatency     prometheus.Histogram
	listeners      sync.Map // listener id -> *listenerMetrics
}

// listenerMetrics caches one listener's counters: looking labelled
// children up on every publish costs a hash each time.
type listenerMetrics struct {
	received [4]prometheus.Counter // by QoS; index 3 catches a malformed QoS
	bytes    prometheus.Counter
}

func (m *metrics) listener(id string) *listenerMetrics {
	if v, ok := m.listeners.Load(id); ok {
		return v.(*listenerMetrics)
	}
	lm := &listenerMetrics{bytes: m.receivedBytes.WithLabelValues(id)}
	for q, label := range []string{"0", "1", "2", "invalid"} {
		lm.received[q] = m.received.WithLabelValues(id, label)
	}
	v, _ := m.listeners.LoadOrStore(id, lm)
	return v.(*listenerMetrics)
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		connections: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "tributary", Subsystem: "mqtt", Name: "connections",
			Help: "Open MQTT connections, by listener.",
		}, []string{"listener"}),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "tributary", Subsystem: "mqtt", Name: "messages_received_total",
			Help: "MQTT PUBLISH packets received from clients, by listener and QoS.",
		}, []string{"listener", "qos"}),
		receivedBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "tributary", Subsystem: "mqtt", Name: "received_bytes_total",
			Help: "Payload bytes of MQTT PUBLISH packets received, by listener.",
		}, []string{"listener"}),
		unmatched: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "tributary", Subsystem: "mapping", Name: "unmatched_total",
			Help: "Publishes no mapping rule matched, delivered to local subscribers only.",
		}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "tributary", Subsystem: "mqtt", Name: "dropped_total",
			Help: "Publishes not sent to Kafka, by reason (mapping_drop, budget_exhausted for QoS 0, ...).",
		}, []string{"reason"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "tributary", Subsystem: "mqtt", Name: "rejected_total",
			Help: "Publishes refused with a reason code or a closed connection, by reason.",
		}, []string{"reason"}),
		forgedHeaders: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "tributary", Subsystem: "mqtt", Name: "reserved_user_properties_total",
			Help: "MQTT 5 user properties not copied to Kafka because they carry the name of a header Tributary sets (mqtt.topic, mqtt.client_id, ...).",
		}),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "tributary", Subsystem: "mqtt", Name: "kafka_failures_total",
			Help: "QoS 1 and 2 publishes that Kafka did not take, by reason; none of them was acknowledged as a success.",
		}, []string{"reason"}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "tributary", Subsystem: "mqtt", Name: "duplicates_ignored_total",
			Help: "Resent publishes whose packet id was still awaiting Kafka, not produced again.",
		}),
		resumesRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "tributary", Subsystem: "mqtt", Name: "session_resumes_refused_total",
			Help: "CONNECTs resuming a session refused (MQTT 5: server busy; MQTT 3: server unavailable) because QoS 2 publishes of its previous connection were still awaiting Kafka.",
		}),
		ackLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "tributary", Subsystem: "mqtt", Name: "publish_ack_latency_seconds",
			Help:    "Time from receiving a QoS 1 or 2 publish to acknowledging it after Kafka confirmed it.",
			Buckets: []float64{.001, .002, .005, .01, .02, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
	}
	reg.MustRegister(m.connections, m.received, m.receivedBytes, m.unmatched, m.dropped, m.rejected, m.forgedHeaders, m.failed, m.duplicates, m.resumesRefused, m.ackLatency)
	return m
}

// registerStateMetrics exports what the broker holds in memory for
// clients: retained messages, and the sessions of disconnected clients
// kept for their return (see mqtt.message_expiry_max and
// mqtt.session_expiry_max).
func registerStateMetrics(reg prometheus.Registerer, server *mqtt.Server) {
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "tributary", Subsystem: "mqtt", Name: "retained_messages",
			Help: "Retained messages the broker holds, including the 20 it publishes itself under $SYS/broker/.",
		}, func() float64 { return float64(server.Topics.Retained.Len()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "tributary", Subsystem: "mqtt", Name: "disconnected_sessions",
			Help: "Sessions of disconnected MQTT clients the broker keeps for their return.",
		}, func() float64 {
			// Clients holds every session, connected or not. For a
			// moment as a client connects or leaves the two counts
			// disagree by one, hence the floor.
			return float64(max(0, int64(server.Clients.Len())-atomic.LoadInt64(&server.Info.ClientsConnected)))
		}),
	)
}
