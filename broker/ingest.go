package broker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tributary-io/tributary/bridge"
	"github.com/tributary-io/tributary/mapping"
)

// ingest is the mochi hook that turns publishes into Kafka records.
//
// QoS 0 publishes are produced best effort and left to mochi to forward.
// QoS 1 and 2 publishes are taken over: the hook produces them, returns a
// packet on which mochi does nothing (see taken), so it neither
// acknowledges nor forwards them, and queues them per connection in
// arrival order. When Kafka's delivery
// reports come back, the connection's ack writer sends PUBACK or PUBREC for
// the finished head of the queue, in order, then forwards each message to
// local subscribers (and retains it) through an inline client. A whole
// in-flight window is therefore in the producer at once, while every
// acknowledgement still means "Kafka has it". The plain case, PUBACKs of
// QoS 1 publishes Kafka took that go to no local subscriber, over TCP,
// is written by the producer's delivery-report goroutine itself at the end
// of each burst of reports, when the socket takes them without waiting
// (see session.ackInline).
type ingest struct {
	mqtt.HookBase
	ctx      context.Context
	server   *mqtt.Server
	producer Producer
	mapper   *mapping.Mapper
	log      *slog.Logger
	m        *metrics
	// forwarders are inline clients through which acknowledged publishes
	// reach local subscribers. A forward takes one and gives it the
	// publisher's client id, which mochi stamps on the packet as its
	// origin: a subscriber with No Local then does not get its own
	// publishes back.
	forwarders sync.Pool
	// maxPending is how many QoS 1 and 2 publishes of one connection may
	// await their acknowledgement: the receive maximum the broker
	// advertises to MQTT 5 clients.
	maxPending int
	draining   atomic.Bool
	// produceCtx ends at Drain: a publish still waiting to get into the
	// producer then (for budget, or for a topic lookup Kafka does not
	// answer) gives up and stays unacknowledged, so the client resends it,
	// rather than holding its connection's read loop through shutdown.
	produceCtx    context.Context
	stopProducing context.CancelFunc
	sessions      sync.Map // *mqtt.Client -> *session
	resumeLog     bridge.LogEvery
	refuseLog     bridge.LogEvery // failure's refusals, which a client can cause per publish
	forgedLog     bridge.LogEvery // user properties named like Tributary's headers
	// takeoverWait bounds how long a CONNECT resuming a session waits for
	// the QoS 2 publishes of the session's previous connection to reach
	// Kafka (see settlePrevious).
	takeoverWait time.Duration
	writers      sync.WaitGroup
	dropLog      bridge.LogEvery

	// orders keep each connection's records in Kafka in the order they
	// came, across the producer's lanes (see bridge.Order); each is made
	// and produced with on its client's read goroutine.
	orders sync.Map // *mqtt.Client -> *bridge.Order
	// live holds the connections from their session's start to the end
	// of their OnDisconnect (see handOver), each with whether it had a
	// will without delay then: mochi changes a client's will on its own
	// goroutine, so other goroutines read this instead. A will cleared
	// by DISCONNECT since costs a takeover a wait for an OnDisconnect
	// about to run.
	live sync.Map // *mqtt.Client -> bool
	// attaching holds, by client id, the connection mochi is attaching:
	// from OnSessionEstablish, before it lists it, to
	// OnSessionEstablished. One whose CONNACK could not be written stays
	// (see dropLeftover) until the next connection with its id replaces
	// it, here as in mochi's list.
	attaching sync.Map // client id -> *mqtt.Client
	// leftOrders holds, by client id, the Order of a connection that ended
	// with records still awaiting Kafka, until the client's next
	// connection continues it (see order) or, at a prune, none await.
	leftOrders sync.Map     // client id -> *bridge.Order
	leftMu     sync.Mutex   // one prune at a time
	leftAdds   atomic.Int64 // entries stored since the last prune
	leftNext   atomic.Int64 // prune once leftAdds passes it

	publishLimits PublishLimits
	limiters      sync.Map // *mqtt.Client -> *publishLimiter; used on the client's read goroutine only
	limited       *publishLimitMetrics
	limitLog      bridge.LogEvery

	// canPublish applies the ACLs to a client publish, counting and
	// logging a refusal (authHook.takePublishChecks); nil allows every
	// publish.
	canPublish func(cl *mqtt.Client, topic string) bool
	// willAllowed reports whether the users file in force still lets a
	// client's login publish its delayed will (authHook.willAllowed); nil
	// without a users file.
	willAllowed func(cl *mqtt.Client, topic string) bool

	// ready gathers the sessions whose queue heads finished in the
	// current burst of delivery reports, acknowledged at its end
	// (ackReady) rather than each waking its ack writer.
	readyMu    sync.Mutex
	ready      []*session
	readySpare []*session
	listed     atomic.Int64 // len(ready), read without readyMu
	// carried counts the times ackInline left acknowledgements to a
	// writer, and split those when part of a packet had been written
	// (for tests).
	carried, split atomic.Int64
	// cutInlineWrites, when positive, is the most ackInline writes at
	// once, so that tests can cut a write inside a packet.
	cutInlineWrites int

	// subscribed is set at the first SUBSCRIBE of any client, and stays
	// set. Until then no publish can have a local subscriber, so the
	// ingest skips mochi's lookup of subscribers (QoS 0) and keeping
	// a copy of each publish to forward (QoS 1 and 2). mochi's own count
	// of subscriptions (Info.Subscriptions) cannot be trusted for this:
	// one subscription can lower it more than once (its index folds the
	// case of "$share" where a client's session does not, and removals
	// racing each other each count), so it can reach zero while
	// subscriptions remain.
	subscribed atomic.Bool
}

func newIngest(ctx context.Context, server *mqtt.Server, producer Producer, mapper *mapping.Mapper, log *slog.Logger, m *metrics) *ingest {
	h := &ingest{
		ctx:          ctx,
		server:       server,
		producer:     producer,
		mapper:       mapper,
		log:          log,
		m:            m,
		maxPending:   int(server.Options.Capabilities.ReceiveMaximum),
		dropLog:      bridge.LogEvery{Interval: 10 * time.Second},
		limitLog:     bridge.LogEvery{Interval: 10 * time.Second},
		takeoverWait: 10 * time.Second,
		resumeLog:    bridge.LogEvery{Interval: 10 * time.Second},
		refuseLog:    bridge.LogEvery{Interval: 10 * time.Second},
		forgedLog:    bridge.LogEvery{Interval: 10 * time.Second},
	}
	h.produceCtx, h.stopProducing = context.WithCancel(ctx)
	if h.maxPending == 0 { // no receive maximum advertised: the packet id space bounds it
		h.maxPending = 65535
	}
	h.forwarders.New = func() any { return server.NewClient(nil, "local", "", true) }
	producer.AfterDeliveries(h.ackReady)
	return h
}

func (h *ingest) ID() string { return "tributary-ingest" }

// Provides is asked for every hook call of every packet, so it is a
// switch rather than a search of a list.
func (h *ingest) Provides(b byte) bool {
	switch b {
	case mqtt.OnConnect, mqtt.OnPacketRead, mqtt.OnPublish, mqtt.OnSessionEstablish, mqtt.OnSessionEstablished, mqtt.OnDisconnect,
		mqtt.OnPacketEncode, mqtt.OnSubscribe, mqtt.OnUnsubscribe, mqtt.OnClientExpired, mqtt.OnWillSent:
		return true
	}
	return false
}

// OnWillSent produces the will mochi has just sent to local subscribers
// (the connection ended without DISCONNECT), mapped as a publish to its
// topic would be, so that Kafka's consumers learn that a device went away
// as its subscribers do. Nobody waits for its acknowledgement, so it is
// best effort, as a QoS 0 publish: a will the producer cannot take is
// counted as dropped and logged. mochi calls this only for a client it
// still lists, so a delayed will (MQTT 5) whose session has ended by the
// time it is due reaches local subscribers alone.
//
// A will sent as the connection ends keeps the connection's order: it
// reaches Kafka after the records of the connection's last publishes,
// even those still awaiting Kafka in another lane. A device that
// publishes "online" at QoS 1 to the topic its will says "offline" on
// therefore never leaves "online" as the last word in Kafka. mochi sends
// such a will on the connection's own goroutine, the one that produced
// with the order, before OnDisconnect forgets it. A delayed will is sent
// later, from mochi's loop, and keeps no order.
//
// A delayed will is checked again against the users file in force: a
// reload may have removed its user or taken away its right to the topic
// while it waited, after the checks at login and at the reload, which
// only see wills still held by connections. mochi has by then sent it
// to local subscribers (each delivery checked against the subscriber's
// ACLs), but it is not produced.
func (h *ingest) OnWillSent(cl *mqtt.Client, pk packets.Packet) {
	if cl.Net.Inline || bridgeStateTopic(cl.ID, pk.TopicName) {
		return // an MQTT bridge's state is never produced (see bridgeState)
	}
	delayed := pk.Connect.WillProperties.WillDelayInterval > 0
	if delayed && h.willAllowed != nil && !h.willAllowed(cl, pk.TopicName) {
		h.m.dropped.WithLabelValues("will_not_authorized").Inc()
		h.log.Info("delayed will not produced: the users file in force no longer allows its login to publish it",
			"client", cl.ID, "username", string(cl.Properties.Username), "topic", pk.TopicName)
		return
	}
	received := time.Now()
	res, err := h.mapper.Map("", pk.TopicName)
	switch {
	case err != nil:
		h.m.dropped.WithLabelValues("mapping_error").Inc()
		h.log.Warn("will not produced: mapping failed", "client", cl.ID, "topic", pk.TopicName, "error", err)
		return
	case res.Action == mapping.ActionNone:
		h.m.unmatched.Inc()
		return
	case res.Action == mapping.ActionDrop:
		h.m.dropped.WithLabelValues("mapping_drop").Inc()
		return
	case res.Action == mapping.ActionReject:
		h.m.dropped.WithLabelValues("unmatched_will").Inc() // a will cannot be refused
		return
	}
	rec, forged := buildRecord(cl, &pk, &res, received)
	defer releaseRecord(rec)
	if !delayed {
		rec.Order = h.order(cl)
	}
	h.m.forgedHeaders.Add(float64(forged))
	if err := h.produceBestEffort(cl, pk.TopicName, "will not produced", rec); err != nil {
		h.drop(cl, pk.TopicName, "will not produced", err)
	}
}

// produceBestEffort hands rec (a QoS 0 publish, a will) to the producer
// without waiting for room, unless the broker is draining for shutdown:
// the flush waits until the producer is empty, which a steady stream of
// such records would put off to the flush timeout. A record the producer
// does not take is dropped (see drop), except one too large, which is
// returned for the caller to answer.
func (h *ingest) produceBestEffort(cl *mqtt.Client, topic, what string, rec *bridge.Record) error {
	if h.draining.Load() {
		h.m.dropped.WithLabelValues("shutting_down").Inc()
		if h.dropLog.Allow() {
			h.log.Warn(what+" at shutdown (counted in tributary_mqtt_dropped_total{reason=\"shutting_down\"}; logged at most every 10s)", "client", cl.ID, "topic", topic)
		}
		return nil
	}
	err := h.producer.TryProduce(h.produceCtx, rec, nil)
	if err == nil || errors.Is(err, bridge.ErrRecordTooLarge) {
		return err
	}
	h.drop(cl, topic, what, err)
	return nil
}

// drop counts a record the producer did not take, and logs it as what,
// at most every 10s.
func (h *ingest) drop(cl *mqtt.Client, topic, what string, err error) {
	h.m.dropped.WithLabelValues(dropReason(err)).Inc()
	if h.dropLog.Allow() {
		h.log.Warn(what+" (logged at most every 10s)", "client", cl.ID, "topic", topic, "error", err)
	}
}

// OnClientExpired drops an expired session's subscriptions and what it
// had in flight. mochi deletes the client but leaves its subscriptions in
// the topic index, where they would hold memory for good, and a client
// later connecting with the same id, told it has no session, would get
// messages for filters it never subscribed to.
func (h *ingest) OnClientExpired(cl *mqtt.Client) {
	h.attaching.CompareAndDelete(cl.ID, cl)
	h.server.UnsubscribeClient(cl)
	cl.ClearInflights()
}

// noSubscription is a topic filter no subscription can have: MQTT strings
// may not hold U+0000, and mochi refuses one that does.
const noSubscription = "\x00"

// OnUnsubscribe answers an UNSUBSCRIBE of a filter the client does not
// hold as MQTT asks. mochi removes any filter its index holds, whether or
// not for this client, and lowers its count of subscriptions
// (Info.Subscriptions, reported in $SYS): a client unsubscribing from a
// filter another client holds lowered it, and told an MQTT 5 client it
// had unsubscribed. A filter the client does not hold is replaced by
// noSubscription, which the index never holds: mochi answers it with "no
// subscription existed" (0x11) for MQTT 5, and counts nothing. (The
// ingest does not rely on that count: see subscribed.)
func (h *ingest) OnUnsubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	for i := range pk.Filters {
		if _, ok := cl.State.Subscriptions.Get(pk.Filters[i].Filter); !ok {
			pk.Filters[i].Filter = noSubscription
		}
	}
	return pk
}

// OnSubscribe gives an MQTT bridge's subscriptions No Local and Retain As
// Published (see mqttbridge.go): what it publishes is not sent back to it,
// and what it is sent keeps the retain flag it was published with.
//
// It also marks that local subscribers may now exist (subscribed).
func (h *ingest) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if !h.subscribed.Load() {
		h.subscribed.Store(true)
	}
	if !isMQTTBridge(cl.Net.Conn) {
		return pk
	}
	for i := range pk.Filters {
		f := &pk.Filters[i]
		if !mqtt.IsSharedFilter(f.Filter) { // No Local on a shared subscription is a protocol error
			f.NoLocal = true
		}
		// mochi honours Retain As Published for MQTT 5 clients only, and
		// keeps the flag for any client on a subscription marked as
		// forwarding retained messages.
		f.RetainAsPublished = true
		f.FwdRetainedFlag = true
	}
	return pk
}

// OnPacketRead refuses a publish to a reserved topic ($SYS/..., or $share
// and $share/<group> with no topic after them) as any publish the bridge
// will not take (refuse): mochi drops one before any OnPublish hook sees
// it and acknowledges nothing, so a QoS 1 or 2 client would keep it in
// flight, and send it again on every reconnect, without learning why. A
// publish mochi itself refuses as malformed (wildcards, no packet id) is
// left to it. It also holds a DISCONNECT's session expiry to the bound.
func (h *ingest) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type == packets.Disconnect {
		// An MQTT 5 client may set its session's expiry again as it
		// leaves; mochi takes that value as it comes, past the bound its
		// CONNACK gave (mqtt.session_expiry_max).
		if bound := h.server.Options.Capabilities.MaximumSessionExpiryInterval; pk.Properties.SessionExpiryIntervalFlag && pk.Properties.SessionExpiryInterval > bound {
			pk.Properties.SessionExpiryInterval = bound
		}
		return pk, nil
	}
	if pk.FixedHeader.Type != packets.Publish || cl.Net.Inline || mqtt.IsValidFilter(pk.TopicName, true) ||
		pk.PublishValidate(h.server.Options.Capabilities.TopicAliasMaximum) != packets.CodeSuccess {
		return pk, nil
	}
	if isBridgeState(cl.ID, pk.TopicName, pk.Payload) {
		h.bridgeState(cl, pk)
		return pk, nil // mochi then drops it, as any $SYS publish
	}
	h.m.rejected.WithLabelValues("reserved_topic").Inc()
	if h.refuseLog.Allow() {
		h.log.Warn("publish refused: reserved topic (logged at most every 10s)", "client", cl.ID, "topic", pk.TopicName, "qos", pk.FixedHeader.Qos, "remote", cl.Net.Remote)
	}
	// mochi then drops the packet itself; the answer is queued or written.
	_, _ = h.refuse(cl, pk, packets.Code{Code: packets.ErrTopicNameInvalid.Code,
		Reason: "topic " + pk.TopicName + " is reserved: $SYS topics, and $share without a topic after its group, are not for publishing"})
	return pk, nil
}

// bridgeState takes an MQTT bridge's connection-state publish (see
// mqttbridge.go): acknowledged in its turn and passed to local subscribers
// (and retained) through the forwarding client, which mochi lets publish
// to $SYS; never produced to Kafka.
func (h *ingest) bridgeState(cl *mqtt.Client, pk packets.Packet) {
	h.log.Debug("MQTT bridge connection state: kept for local subscribers, not produced to Kafka", "client", cl.ID, "topic", pk.TopicName, "payload", string(pk.Payload))
	if pk.FixedHeader.Qos == 0 {
		fwd := h.forwarder(cl)
		h.forward(fwd, pk)
		h.forwarders.Put(fwd)
		return
	}
	if h.draining.Load() {
		return // unanswered: the client resends it to whoever serves it next
	}
	if s, ok := h.enqueue(cl, &pk, &pending{received: time.Now(), done: true}, true); ok {
		s.wake()
	}
}

// OnPacketEncode answers a resent QoS 2 PUBLISH as the first one was
// answered. mochi answers a resend whose PUBREC is in the inflight store
// with PUBREC 0x91 (packet identifier in use), which an MQTT 5 client
// takes as the failure of a publish Kafka has; the stored PUBREC's
// success goes instead. (mochi does this for every client; the
// acknowledgements Tributary writes itself do not pass through here.)
func (h *ingest) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type != packets.Pubrec || pk.ReasonCode != packets.ErrPacketIdentifierInUse.Code {
		return pk
	}
	if pubrecStored(cl, pk.PacketID) {
		pk.ReasonCode = packets.CodeSuccess.Code
		pk.Properties.ReasonString = ""
	}
	return pk
}

// pubrecStored reports whether cl's inflight store holds a successful
// PUBREC for id: Kafka has the QoS 2 publish with that id, and the client
// has yet to release it.
func pubrecStored(cl *mqtt.Client, id uint16) bool {
	stored, ok := cl.State.Inflight.Get(id)
	return ok && stored.FixedHeader.Type == packets.Pubrec && stored.ReasonCode == packets.CodeSuccess.Code
}

// OnConnect refuses a bad will topic (checkWill), waits for an open
// connection it takes over to end when that one's records must stay
// ahead of its own (handOver) and, for a CONNECT that resumes a session,
// settles the previous connection's QoS 2 publishes first
// (settlePrevious). A returned error ends the connection.
func (h *ingest) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	if h.draining.Load() {
		// Shutting down: a new client would only be cut off again, its
		// QoS 1 and 2 publishes unacknowledged. CONNACK has no "shutting
		// down" code; server unavailable (MQTT 3 return code 3) says
		// to come back later, elsewhere.
		return h.refuseConnect(cl, packets.ErrServerUnavailable)
	}
	if err := h.checkWill(cl, pk); err != nil {
		return err
	}
	if isMQTTBridge(cl.Net.Conn) {
		h.log.Info("MQTT bridge connecting (its CONNECT has the bridge bit): what it publishes will not be sent back to it", "client", cl.ID, "remote", cl.Net.Remote)
	}
	if prev, ok := h.server.Clients.Get(cl.ID); ok && prev != cl && h.hasOrderToKeep(prev) {
		h.handOver(cl, prev)
		if h.ctx.Err() != nil {
			return h.refuseConnect(cl, packets.ErrServerUnavailable)
		}
	}
	return h.settlePrevious(cl, pk)
}

// refuseConnect answers cl's CONNECT with code and returns code, which
// ends the connection.
func (h *ingest) refuseConnect(cl *mqtt.Client, code packets.Code) error {
	if err := h.server.SendConnack(cl, code, false, nil); err != nil {
		h.log.Debug("writing a refusing CONNACK", "client", cl.ID, "error", err)
	}
	return code
}

// hasOrderToKeep reports whether prev, a connection a CONNECT is about to
// take over, is open and has produced records or will produce its will
// as it ends: records the new connection's must not overtake.
func (h *ingest) hasOrderToKeep(prev *mqtt.Client) bool {
	will, open := h.live.Load(prev)
	if !open {
		return false
	}
	if _, ok := h.orders.Load(prev); ok {
		return true
	}
	return will.(bool)
}

// handoverWait bounds how long a CONNECT that takes over a connection
// which has produced records waits for that connection to end (see
// handOver).
const handoverWait = time.Second

// handOver ends prev, the connection of cl's client id that cl is about
// to take over, and waits until prev's OnDisconnect has run, which leaves
// its Order for cl (see orderEnded). Until then prev may still produce:
// its will, which mochi sends as it ends, or a QoS 0 publish; cl's
// records must land after those. If prev has not ended within
// handoverWait (its goroutine held by a topic check while Kafka is slow,
// say), its Order is left for cl now, and what prev produces later is not
// ordered before cl's records.
//
// A session that ends with prev's connection is then waited for until
// mochi has let it go: mochi forgets it by client id unless it was taken
// over, and prev ended before this takeover, so otherwise it could
// forget cl instead.
func (h *ingest) handOver(cl, prev *mqtt.Client) {
	if !prev.Closed() {
		h.endPrevious(prev)
	} else {
		h.ended(prev)
	}
	deadline := time.NewTimer(handoverWait)
	defer deadline.Stop()
	ended := func() bool { _, open := h.live.Load(prev); return !open }
	if !h.pollUntil(ended, time.Millisecond, deadline.C) {
		if h.ctx.Err() == nil {
			h.log.Debug("taking a session over before its previous connection ended", "client", cl.ID, "waited", handoverWait)
			if v, ok := h.orders.Load(prev); ok {
				h.leaveOrder(cl.ID, v.(*bridge.Order))
			}
		}
		return
	}
	p := prev.Properties
	if p.ProtocolVersion == 5 && p.Props.SessionExpiryInterval == 0 || p.ProtocolVersion < 5 && p.Clean {
		h.awaitGone(prev, deadline.C)
	}
}

// checkWill refuses a will topic that is not a topic a client may publish
// to (wildcards, $SYS, empty): mochi stores and sends the will without
// checking it, so a will on "a/#" would be retained under that name and
// sent to subscribers, which must not get wildcards in a topic name. The
// refusal is counted as a protocol violation; MQTT 5 clients are told
// why first.
func (h *ingest) checkWill(cl *mqtt.Client, pk packets.Packet) error {
	if !pk.Connect.WillFlag {
		return nil
	}
	topic := pk.Connect.WillTopic
	if topic != "" && mqtt.IsValidFilter(topic, true) || isBridgeState(cl.ID, topic, pk.Connect.WillPayload) {
		return nil
	}
	reason := fmt.Sprintf("will topic %q is not a topic name a client may publish to", topic)
	if cl.Properties.ProtocolVersion == 5 {
		ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}, ReasonCode: packets.ErrTopicNameInvalid.Code}
		ack.Properties.ReasonString = reason
		if err := cl.WritePacket(ack); err != nil {
			h.log.Debug("writing a refusing CONNACK", "client", cl.ID, "error", err)
		}
	}
	// MQTT 3.1.1 has no return code for it: a malformed CONNECT closes
	// the connection without a CONNACK [MQTT-3.1.4-1].
	return packets.Code{Code: packets.ErrProtocolViolation.Code, Reason: reason}
}

// settlePrevious makes a session's QoS 2 state whole before a new
// connection resumes it. mochi hands the resumed session a copy of the
// previous connection's inflight store, where the ack writer keeps a
// PUBREC for each QoS 2 publish Kafka has confirmed; that PUBREC is what
// answers the client's resend without producing it again. A publish that
// was still awaiting Kafka at that moment would have none, and its resend
// would be produced twice. So the previous connection is closed first (as
// the takeover would close it a moment later; from then on its session
// queues nothing more, see session.add), and then its queued QoS 2
// publishes are waited for, up to takeoverWait. If Kafka has not answered
// them by then, the CONNECT is refused as server unavailable (MQTT 5:
// server busy) and the client connects again later, its session intact.
//
// An MQTT 5 session without expiry ends with its connection (MQTT 5
// §3.1.2.11.2): closed early, it is waited for until mochi has let it go,
// so that the new connection starts afresh rather than racing mochi's
// clean-up of the old one.
//
// It runs after the auth hook's OnConnect, which is added first: mochi
// stops at the first OnConnect that fails, so a login the auth hook
// refuses never closes the session owner's connection.
func (h *ingest) settlePrevious(cl *mqtt.Client, pk packets.Packet) error {
	if pk.Connect.Clean {
		return nil
	}
	prev, ok := h.server.Clients.Get(cl.ID)
	if !ok || prev == cl || prev.Properties.ProtocolVersion < 5 && prev.Properties.Clean {
		return nil // mochi starts a new session (inheritClientSession)
	}
	if !prev.Closed() {
		h.endPrevious(prev)
	}
	start := time.Now()
	deadline := time.NewTimer(h.takeoverWait)
	defer deadline.Stop()
	what := "its QoS 2 publishes are still awaiting Kafka"
	settled := true
	if v, ok := h.sessions.Load(prev); ok {
		settled = v.(*session).awaitQoS2(h.ctx, deadline.C)
		if settled {
			h.log.Debug("resuming a session after its QoS 2 publishes reached Kafka", "client", cl.ID, "waited", time.Since(start))
		}
	}
	if settled && prev.Properties.ProtocolVersion == 5 && prev.Properties.Props.SessionExpiryInterval == 0 {
		what = "its previous connection has not ended"
		settled = h.awaitGone(prev, deadline.C)
	}
	if settled {
		return nil
	}
	code := packets.ErrServerBusy
	if cl.Properties.ProtocolVersion < 5 {
		code = packets.ErrServerUnavailable // MQTT 3 has return code 3 for it
	}
	if h.ctx.Err() != nil {
		// Shutting down: server unavailable, since CONNACK has no
		// shutting-down code (0x8B is for DISCONNECT only).
		code = packets.ErrServerUnavailable
	} else {
		h.m.resumesRefused.Inc()
		if h.resumeLog.Allow() {
			h.log.Warn("refusing a CONNECT that resumes a session: "+what+"; the client may connect again later (logged at most every 10s)",
				"client", cl.ID, "remote", cl.Net.Remote, "waited", time.Since(start))
		}
	}
	return h.refuseConnect(cl, code)
}

// endPrevious closes a connection whose session a new one takes over, as
// mochi's takeover does: an MQTT 5 client gets DISCONNECT 0x8E first. A
// client that does not read its socket holds that write (and mochi's
// read loop resets socket deadlines), so after a second the connection
// is closed regardless, which ends the write.
func (h *ingest) endPrevious(prev *mqtt.Client) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.disconnect(prev, packets.ErrSessionTakenOver)
	}()
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		prev.Stop(packets.ErrSessionTakenOver)
	}
}

// awaitGone waits until mochi no longer lists prev under its client id.
// It returns false when timeout fires or the broker closes first.
func (h *ingest) awaitGone(prev *mqtt.Client, timeout <-chan time.Time) bool {
	return h.pollUntil(func() bool {
		cur, ok := h.server.Clients.Get(prev.ID)
		return !ok || cur != prev || h.dropLeftover(prev)
	}, 5*time.Millisecond, timeout)
}

// leftoverAfter is how long, in whole seconds of mochi's stop time (so
// one to two seconds), a closed connection mochi never finished attaching
// stays listed before dropLeftover takes it for one mochi left behind.
const leftoverAfter = 2

// dropLeftover takes prev, a closed connection whose session ends with
// it, out of mochi's client list when mochi left it there, and reports
// whether it did. mochi lists a connection before writing its CONNACK;
// when that write (or the resend of the session's messages) fails it
// closes the connection without OnSessionEstablished or OnDisconnect,
// and never unlists it, so every CONNECT resuming that client id would
// wait for it in vain. A connection still attaching (h.attaching) that
// was closed seconds ago is such a leftover: once closed, its writes fail
// at once. One that was established is never taken: mochi unlists it
// itself, after OnDisconnect. What mochi would have done at its
// disconnect is done here.
func (h *ingest) dropLeftover(prev *mqtt.Client) bool {
	stopped := prev.StopTime()
	if !prev.Closed() || stopped == 0 || time.Now().Unix()-stopped < leftoverAfter {
		return false
	}
	if !h.attaching.CompareAndDelete(prev.ID, prev) {
		return false
	}
	prev.ClearInflights()
	h.server.UnsubscribeClient(prev)
	// A clean-start CONNECT with the same id, which waits for nothing,
	// could list itself between these two calls and be unlisted; mochi
	// offers no delete of one given client.
	if cur, ok := h.server.Clients.Get(prev.ID); ok && cur == prev {
		h.server.Clients.Delete(prev.ID)
	}
	h.log.Info("dropped a session left behind by a connection whose CONNACK could not be written", "client", prev.ID, "remote", prev.Net.Remote)
	return true
}

// pollUntil checks done every interval until it holds, and reports
// whether it did: false when timeout fires or the broker closes first.
func (h *ingest) pollUntil(done func() bool, every time.Duration, timeout <-chan time.Time) bool {
	poll := time.NewTicker(every)
	defer poll.Stop()
	for !done() {
		select {
		case <-poll.C:
		case <-timeout:
			return false
		case <-h.ctx.Done():
			return false
		}
	}
	return true
}

func (h *ingest) OnSessionEstablish(cl *mqtt.Client, _ packets.Packet) {
	h.attaching.Store(cl.ID, cl)
}

func (h *ingest) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	h.attaching.CompareAndDelete(cl.ID, cl)
	w := &cl.Properties.Will
	h.live.Store(cl, atomic.LoadUint32(&w.Flag) != 0 && w.WillDelayInterval == 0)
	h.m.connections.WithLabelValues(cl.Net.Listener).Inc()
}

func (h *ingest) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	h.m.connections.WithLabelValues(cl.Net.Listener).Dec()
	h.limiters.Delete(cl)
	if v, ok := h.orders.LoadAndDelete(cl); ok {
		h.orderEnded(cl, v.(*bridge.Order))
	}
	if v, ok := h.sessions.Load(cl); ok {
		v.(*session).disconnect()
	}
	h.live.Delete(cl) // last: a takeover waiting for it (handOver) finds the Order left
}

// wait blocks until every ack writer has ended.
func (h *ingest) wait() { h.writers.Wait() }

func (h *ingest) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil // our own forwarding of an acknowledged publish
	}
	received := time.Now()
	qos := pk.FixedHeader.Qos
	if pk.Properties.TopicAlias > 0 && pk.TopicName != "" {
		// mochi stored the topic for the alias as it came, pointing into
		// the packet's buffer: that would keep the whole packet, payload
		// and all, alive for as long as the connection. Store a copy.
		cl.State.TopicAliases.Inbound.Set(pk.Properties.TopicAlias, strings.Clone(pk.TopicName))
	}
	if pk.TopicName == "" {
		// An MQTT 5 alias the client never set resolves to no topic.
		h.m.rejected.WithLabelValues("no_topic").Inc()
		h.log.Info("disconnecting client: publish without a topic (unknown topic alias)", "client", cl.ID, "remote", cl.Net.Remote)
		h.disconnect(cl, packets.ErrProtocolViolationNoTopic)
		return pk, packets.ErrRejectPacket
	}
	if h.canPublish != nil && !h.canPublish(cl, pk.TopicName) {
		// Refused here, in arrival order, rather than by mochi, which
		// would answer at once, ahead of the acknowledgements of earlier
		// publishes still awaiting Kafka.
		return h.refuse(cl, pk, packets.Code{Code: packets.ErrNotAuthorized.Code, Reason: "not authorized to publish to " + pk.TopicName})
	}
	lm := h.m.listener(cl.Net.Listener)
	lm.received[qos&3].Inc()
	lm.bytes.Add(float64(len(pk.Payload)))
	if h.publishLimits != (PublishLimits{}) && !h.withinRate(cl, &pk, received) {
		return pk, packets.ErrRejectPacket
	}

	res, err := h.mapper.Map("", pk.TopicName)
	if err != nil {
		h.m.rejected.WithLabelValues("mapping_error").Inc()
		h.log.Warn("publish refused: mapping failed", "client", cl.ID, "topic", pk.TopicName, "error", err)
		return h.refuse(cl, pk, packets.Code{Code: packets.ErrTopicNameInvalid.Code, Reason: err.Error()})
	}
	switch res.Action {
	case mapping.ActionNone:
		h.m.unmatched.Inc()
		return h.passOn(cl, pk, received)
	case mapping.ActionDrop:
		h.m.dropped.WithLabelValues("mapping_drop").Inc()
		return h.passOn(cl, pk, received)
	case mapping.ActionReject:
		h.m.rejected.WithLabelValues("unmatched").Inc()
		h.log.Debug("publish refused: no mapping rule matches", "client", cl.ID, "topic", pk.TopicName)
		return h.refuse(cl, pk, packets.Code{Code: packets.ErrTopicNameInvalid.Code, Reason: "no mapping rule matches topic " + pk.TopicName})
	}

	rec, forged := buildRecord(cl, &pk, &res, received)
	if forged > 0 {
		h.m.forgedHeaders.Add(float64(forged))
		if h.forgedLog.Allow() {
			h.log.Warn("MQTT 5 user properties named like a header Tributary sets were not copied to Kafka (logged at most every 10s)", "client", cl.ID, "topic", pk.TopicName)
		}
	}
	rec.Order = h.order(cl)
	// The producer copies the record during the call, so it is reused.
	defer releaseRecord(rec)
	if qos == 0 {
		if err := h.produceBestEffort(cl, pk.TopicName, "QoS 0 publishes dropped", rec); err != nil {
			return h.tooLarge(cl, pk, err)
		}
		if !pk.FixedHeader.Retain && !h.subscribed.Load() {
			pk.Ignore = true // nobody to forward it to: skip mochi's subscriber lookup
		}
		return pk, nil
	}

	if h.draining.Load() {
		// Shutting down: leave it unacknowledged; the client keeps it.
		return pk, packets.ErrRejectPacket
	}
	e := &pending{kafkaTopic: res.Topic, received: received, viaKafka: true}
	if _, ok := h.enqueue(cl, &pk, e, true); !ok {
		return pk, packets.ErrRejectPacket
	}
	if err := h.producer.Produce(e.s.ctx, rec, e); err != nil {
		if errors.Is(err, context.Canceled) && h.produceCtx.Err() == nil {
			err = errConnectionEnded
		}
		if errors.Is(err, bridge.ErrRecordTooLarge) {
			// Logged here, where the MQTT topic is known; the ack
			// writer answers it in its turn.
			h.log.Warn("publish refused: record larger than kafka.max_message_bytes", "client", cl.ID, "topic", pk.TopicName, "bytes", len(pk.Payload), "error", err)
		}
		// Not a delivery report: no burst end follows to acknowledge it.
		if e.finish(err) {
			e.s.wake()
		}
	}
	return taken(pk), nil
}

// order returns cl's bridge.Order. A new one continues the Order of the
// client's previous connection if that ended with records still awaiting
// Kafka, so that the client's records keep their order across a
// reconnect: otherwise the first acknowledged record of the new
// connection could take the prompt lane and reach Kafka before the old
// connection's records lingering in another lane.
func (h *ingest) order(cl *mqtt.Client) *bridge.Order {
	v, ok := h.orders.Load(cl)
	if !ok {
		o := new(bridge.Order)
		if v, ok = h.orders.LoadOrStore(cl, o); !ok {
			// Stored first, then looked up: orderEnded stores, then
			// looks for this Order, so one of the two finds the other.
			if prev, found := h.leftOrders.LoadAndDelete(cl.ID); found {
				o.Follow(prev.(*bridge.Order))
			}
		}
	}
	return v.(*bridge.Order)
}

// orderEnded keeps the Order of cl, which has ended, for the client's
// next connection while its records (or those of the connections it
// continued) may await Kafka. A connection that took cl's session over
// may have produced already: its Order continues cl's at once.
//
// An Order already left for the client id stays: a later connection left
// it when taking over one that continues cl's (see handOver).
func (h *ingest) orderEnded(cl *mqtt.Client, o *bridge.Order) {
	if !o.Awaiting() {
		return
	}
	if v, loaded := h.leftOrders.LoadOrStore(cl.ID, o); loaded {
		if v != o {
			return
		}
	} else {
		h.countLeft()
	}
	if cur, ok := h.server.Clients.Get(cl.ID); ok && cur != cl {
		if v, ok := h.orders.Load(cur); ok {
			v.(*bridge.Order).Follow(o)
			h.leftOrders.CompareAndDelete(cl.ID, o)
		}
	}
}

// leaveOrder leaves o for the next connection of client id to continue
// (see order). Entries of clients that do not come back, or whose
// connection was refused, are dropped once nothing of theirs awaits
// Kafka: at a prune, each time as many entries have been left as the
// last prune kept (and 64), so the work stays proportional to the
// entries left.
func (h *ingest) leaveOrder(id string, o *bridge.Order) {
	h.leftOrders.Store(id, o)
	h.countLeft()
}

// countLeft counts an entry left in leftOrders and prunes them when due
// (see leaveOrder).
func (h *ingest) countLeft() {
	if h.leftAdds.Add(1) > h.leftNext.Load() && h.leftMu.TryLock() {
		defer h.leftMu.Unlock()
		left := int64(0)
		h.leftOrders.Range(func(id, v any) bool {
			if v.(*bridge.Order).Awaiting() {
				left++
			} else {
				h.leftOrders.CompareAndDelete(id, v)
			}
			return true
		})
		h.leftAdds.Store(0)
		h.leftNext.Store(left + 64)
	}
}

// passOn returns a publish that produces no record to mochi, which
// acknowledges and forwards it at once. Once the connection has QoS 1 or
// 2 publishes taken over (its session exists), the acknowledgement of a
// QoS 1 or 2 publish is queued behind theirs instead, so that PUBACKs
// still leave in arrival order; the ack writer then forwards it too.
func (h *ingest) passOn(cl *mqtt.Client, pk packets.Packet, received time.Time) (packets.Packet, error) {
	if pk.FixedHeader.Qos == 0 {
		return pk, nil
	}
	if _, ok := h.sessions.Load(cl); !ok {
		return pk, nil
	}
	if h.draining.Load() {
		return pk, packets.ErrRejectPacket
	}
	s, ok := h.enqueue(cl, &pk, &pending{received: received, done: true}, true)
	if !ok {
		return pk, packets.ErrRejectPacket
	}
	s.wake()
	return taken(pk), nil
}

// enqueue adds a QoS 1 or 2 publish to its connection's queue, forwarded
// to local subscribers once acknowledged if forward is set. It returns
// false for a publish that must be left unacknowledged: a resend of a
// packet id still queued, which must not be produced twice; or one over
// the connection's limit from an MQTT 5 client, which breaks the receive
// maximum the broker advertised and is disconnected with 0x93. An MQTT 3
// client has no such limit to break, so its read goroutine, which this
// runs on, waits until the queue has room: the client is read more slowly,
// and a client that stops reading its acknowledgements cannot grow the
// queue without bound. A wait that Drain ends leaves its publish
// unacknowledged.
func (h *ingest) enqueue(cl *mqtt.Client, pk *packets.Packet, e *pending, forward bool) (*session, bool) {
	s := h.session(cl)
	for {
		switch s.add(pk, e, forward, h.maxPending) {
		case added:
			return s, true
		case duplicate:
			h.m.duplicates.Inc()
			return s, false
		case closed:
			return s, false
		}
		if cl.Properties.ProtocolVersion == 5 {
			h.m.rejected.WithLabelValues("receive_maximum").Inc()
			h.log.Info("disconnecting client: more QoS 1 and 2 publishes unacknowledged than the receive maximum", "client", cl.ID, "remote", cl.Net.Remote, "receive_maximum", h.maxPending)
			h.disconnect(cl, packets.ErrReceiveMaximum)
			return s, false
		}
		// Until Drain at most: a publish taken once Drain has begun
		// would reach Kafka after the flush, unacknowledged.
		if !s.waitRoom(h.produceCtx) {
			return s, false
		}
	}
}

// taken is what OnPublish returns for a QoS 1 or 2 publish that the hook
// has taken over: a copy with QoS 0, no retain flag and Ignore set, on
// which mochi does nothing: no acknowledgement (QoS 0), no retained
// message, no forwarding (Ignore). The session's ack writer does all
// three once Kafka has the record. Returning packets.ErrRejectPacket
// would have the same effect, but mochi logs every rejected publish at
// debug level with the packet boxed into an interface: a copy of several
// hundred bytes on the heap per publish, whether or not debug logging is
// on, which was the largest allocation of the QoS 1 path.
func taken(pk packets.Packet) packets.Packet {
	pk.FixedHeader.Qos = 0
	pk.FixedHeader.Retain = false
	pk.Ignore = true
	return pk
}

// withinRate applies the client's publish rate limit. An MQTT 5 client
// over it is disconnected with reason code 0x96 (message rate too high:
// MQTT 5 has that code for DISCONNECT only, not for PUBACK), its publish
// unacknowledged, so a QoS 1 or 2 publish is sent again after it
// reconnects; withinRate then returns false. An MQTT 3 client has no such
// code, so its publish is taken and its read goroutine, which this runs
// on, waits until the client is back within its rate: it is read more
// slowly.
func (h *ingest) withinRate(cl *mqtt.Client, pk *packets.Packet, now time.Time) bool {
	v, ok := h.limiters.Load(cl)
	if !ok {
		v, _ = h.limiters.LoadOrStore(cl, newPublishLimiter(h.publishLimits))
	}
	lim := v.(*publishLimiter)
	if cl.Properties.ProtocolVersion == 5 {
		if lim.allow(now, len(pk.Payload)) {
			return true
		}
		h.limited.listener(cl.Net.Listener).Inc()
		if h.limitLog.Allow() {
			h.log.Warn("disconnecting MQTT 5 client over its publish rate limit with 0x96 (logged at most every 10s)", "client", cl.ID, "remote", cl.Net.Remote)
		}
		h.disconnect(cl, packets.ErrMessageRateTooHigh)
		return false
	}
	d := lim.delay(now, len(pk.Payload))
	if d <= 0 {
		return true
	}
	h.limited.listener(cl.Net.Listener).Inc()
	if h.limitLog.Allow() {
		h.log.Warn("client over its publish rate limit: reading it more slowly (logged at most every 10s)", "client", cl.ID, "remote", cl.Net.Remote, "wait", d)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	poll := time.NewTicker(100 * time.Millisecond)
	defer poll.Stop()
wait:
	for {
		select {
		case <-t.C:
			break wait
		case <-h.ctx.Done():
			break wait
		case <-poll.C:
			if cl.Closed() {
				break wait
			}
		}
	}
	// A QoS 1 or 2 publish of a connection closed meanwhile (taken over,
	// say) is left unacknowledged: the client sends it again.
	return pk.FixedHeader.Qos == 0 || !cl.Closed()
}

// refuse answers a publish the bridge will not take: MQTT 5 clients get a
// negative PUBACK/PUBREC with the reason; MQTT 3 has no negative ack, so a
// QoS 1 or 2 publish closes the connection rather than falsely succeed.
// QoS 0 publishes are dropped (counted by the caller).
func (h *ingest) refuse(cl *mqtt.Client, pk packets.Packet, code packets.Code) (packets.Packet, error) {
	if pk.FixedHeader.Qos == 0 {
		return pk, packets.ErrRejectPacket
	}
	if cl.Properties.ProtocolVersion == 5 {
		if h.draining.Load() {
			return pk, packets.ErrRejectPacket // unanswered: the client resends it to whoever serves it next
		}
		if _, ok := h.sessions.Load(cl); ok {
			// Behind the acknowledgements still awaiting Kafka, in order.
			e := &pending{done: true, refused: true, refusal: code}
			if s, ok := h.enqueue(cl, &pk, e, false); ok {
				s.wake()
			}
			return pk, packets.ErrRejectPacket
		}
		_ = cl.WritePacket(ack(pk.PacketID, pk.FixedHeader.Qos, code))
		return pk, packets.ErrRejectPacket
	}
	h.closeInTurn(cl, code)
	return pk, packets.ErrRejectPacket
}

// closeInTurn disconnects cl for code once the acknowledgements of its
// publishes still awaiting Kafka are written, in their turn: for a refused
// QoS 1 or 2 publish of an MQTT 3 client, which has no negative
// acknowledgement, and for an oversized QoS 0 publish of any client.
// Closed at once, the connection would lose those acknowledgements, and
// the client would send their publishes again, into Kafka twice. What the
// client publishes meanwhile at QoS 1 or 2 is left unacknowledged and not
// produced: it sends it again after it reconnects.
func (h *ingest) closeInTurn(cl *mqtt.Client, code packets.Code) {
	if v, ok := h.sessions.Load(cl); ok {
		if s := v.(*session); s.closeAfterQueued(code) {
			s.wake()
			return
		}
	}
	h.disconnect(cl, code)
}

// disconnect closes a client's connection for code: MQTT 5 clients get a
// DISCONNECT with the reason; MQTT 3 has no server DISCONNECT, so the
// connection is just closed.
func (h *ingest) disconnect(cl *mqtt.Client, code packets.Code) {
	h.ended(cl)
	// Again once closed: a session the read loop started meanwhile takes
	// nothing more after that.
	defer h.ended(cl)
	if cl.Properties.ProtocolVersion == 5 {
		_ = h.server.DisconnectClient(cl, code)
		return
	}
	cl.Stop(code)
}

func (h *ingest) tooLarge(cl *mqtt.Client, pk packets.Packet, err error) (packets.Packet, error) {
	h.m.rejected.WithLabelValues("too_large").Inc()
	h.log.Warn("publish refused: record larger than kafka.max_message_bytes", "client", cl.ID, "topic", pk.TopicName, "bytes", len(pk.Payload), "error", err)
	if pk.FixedHeader.Qos == 0 {
		h.closeInTurn(cl, packets.ErrPacketTooLarge)
		return pk, packets.ErrRejectPacket
	}
	return h.refuse(cl, pk, packets.ErrPacketTooLarge)
}

func dropReason(err error) string {
	switch {
	case errors.Is(err, bridge.ErrRecordTooLarge):
		return "too_large"
	case errors.Is(err, bridge.ErrBudgetExhausted):
		return "budget_exhausted"
	case errors.Is(err, bridge.ErrUnknownTopic):
		return "unknown_topic"
	case errors.Is(err, bridge.ErrTooManyTopics):
		return "too_many_topics"
	case errors.Is(err, bridge.ErrClosed), errors.Is(err, context.Canceled):
		return "shutting_down"
	}
	return "kafka_error"
}

func buildRecord(cl *mqtt.Client, pk *packets.Packet, res *mapping.Result, at time.Time) (rec *bridge.Record, forged int) {
	n := 4 + len(pk.Properties.User) + len(res.Headers)
	if pk.Properties.ContentType != "" {
		n++
	}
	rec = records.Get().(*bridge.Record)
	hs := rec.Headers[:0]
	if cap(hs) < n {
		hs = make([]bridge.Header, 0, n)
	}
	hs = bridge.AppendMQTTHeaders(hs, pk.TopicName, pk.FixedHeader.Qos, pk.FixedHeader.Retain, cl.ID)
	if pk.Properties.ContentType != "" {
		hs = append(hs, bridge.Header{Key: "mqtt.content_type", Value: bridge.View(pk.Properties.ContentType)})
	}
	for _, u := range pk.Properties.User {
		if bridge.ReservedHeader(u.Key) {
			forged++
			continue
		}
		hs = append(hs, bridge.Header{Key: u.Key, Value: bridge.View(u.Val)})
	}
	for _, x := range res.Headers {
		hs = append(hs, bridge.Header{Key: x.Key, Value: bridge.View(x.Value)})
	}
	*rec = bridge.Record{Topic: res.Topic, Key: res.Key, Value: pk.Payload, Headers: hs, Timestamp: at}
	return rec, forged
}

var records = sync.Pool{New: func() any { return new(bridge.Record) }}

// releaseRecord returns a record to the pool once the producer has copied it.
func releaseRecord(r *bridge.Record) {
	clear(r.Headers)
	*r = bridge.Record{Headers: r.Headers[:0]}
	records.Put(r)
}

// ack builds a PUBACK (QoS 1) or PUBREC (QoS 2) for packet id.
func ack(id uint16, qos byte, code packets.Code) packets.Packet {
	typ := packets.Puback
	if qos == 2 {
		typ = packets.Pubrec
	}
	out := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: typ},
		PacketID:    id,
		ReasonCode:  code.Code,
		Created:     time.Now().Unix(),
	}
	if code.Code >= packets.ErrUnspecifiedError.Code {
		out.Properties.ReasonString = code.Reason
	}
	return out
}

func (h *ingest) session(cl *mqtt.Client) *session {
	if v, ok := h.sessions.Load(cl); ok {
		return v.(*session)
	}
	s := &session{h: h, cl: cl, ids: map[uint16]*pending{}, notify: make(chan struct{}, 1), room: make(chan struct{}, 1)}
	s.raw = rawTCP(cl.Net.Conn)
	s.ctx, s.cancel = context.WithCancel(h.produceCtx)
	if v, loaded := h.sessions.LoadOrStore(cl, s); loaded {
		s.cancel()
		return v.(*session)
	}
	h.writers.Add(1)
	go s.run()
	return s
}

// session is one connection's queue of QoS 1 and 2 publishes awaiting
// Kafka, in arrival order, and the goroutine that acknowledges them.
type session struct {
	h     *ingest
	cl    *mqtt.Client
	mu    sync.Mutex
	queue []*pending
	ids   map[uint16]*pending
	gone  bool // the connection ended
	// closing is set once the queue ends with an entry that closes the
	// connection (closeAfterQueued): nothing more joins it.
	closing bool
	notify  chan struct{}
	room    chan struct{} // signalled when the writer takes entries off a full queue
	// ctx is the connection's publishes' wait in the producer (for budget,
	// queue space or a topic check): it ends when Tributary closes the
	// connection (ended), with the ack writer, and at Drain. The read loop
	// waits there, so mochi's own end of the connection comes too late.
	ctx    context.Context
	cancel context.CancelFunc
	// writeDeadline is the write deadline the ack writer last set (see
	// completeAll); only the ack writer uses it.
	writeDeadline time.Time
	// ending is set by ingest.ended: Tributary is closing the connection.
	ending atomic.Bool

	// wmu is held by whoever takes finished entries off the queue and
	// writes their acknowledgements, the ack writer or ackInline, from
	// the taking to the end of the writing, so that acknowledgements
	// leave in the order their entries were queued.
	wmu sync.Mutex
	// carry is what ackInline took and could not write without waiting;
	// the ack writer writes it before anything else. Under wmu.
	carry []byte
	// carryLocked is set with carry when ackInline wrote part of a
	// packet: it then keeps the client's lock, which the ack writer
	// releases once it has written carry, so that nothing mochi writes
	// (a PINGRESP, a PUBLISH to a subscriber) lands inside the packet.
	// Under wmu.
	carryLocked bool
	// stopped is set under mu by the ack writer's last pass: from then
	// on nobody would write a carry, so ackInline takes nothing.
	stopped bool
	// inlineBuf is ackInline's encoding buffer. Under wmu.
	inlineBuf []byte
	// raw is the connection's socket when it is plain TCP, which
	// ackInline can write to without blocking; nil otherwise.
	raw syscall.RawConn
	// listed is set while the session waits in ingest.ready.
	listed atomic.Bool
}

// ended ends the producer waits of cl's publishes, now that Tributary
// closes its connection: the client sends them again on its next one, so
// producing them later would only add duplicates, and a waiting read loop
// would keep the client and its packet, and hold up a resuming session.
func (h *ingest) ended(cl *mqtt.Client) {
	if v, ok := h.sessions.Load(cl); ok {
		s := v.(*session)
		s.ending.Store(true)
		s.cancel()
	}
}

// pending keeps what acknowledging and forwarding need, not the whole
// packet: a packets.Packet is several hundred bytes, and this is per record.
// Nothing in it points into the packet's buffer except fwd, which is set
// only when the publish is forwarded: the queue is bounded in entries, and
// a view of the topic would keep each whole packet, payload and all, in
// memory until its acknowledgement is written.
type pending struct {
	s          *session
	id         uint16
	qos        byte
	kafkaTopic string          // for logging a failure; empty for a publish that produces no record
	fwd        *packets.Packet // set when the publish must reach local subscribers or be retained
	received   time.Time
	viaKafka   bool // produced: its acknowledgement waits for Kafka's
	refused    bool // answered with refusal, a negative acknowledgement (MQTT 5)
	refusal    packets.Code
	closes     bool // no publish: the connection is closed for refusal in this entry's turn
	done       bool
	err        error
}

type addResult int

const (
	added addResult = iota
	duplicate
	full
	closed
)

// add queues e for pk, unless pk resends a packet id still queued, which
// must not be produced twice, or the queue already holds limit entries.
func (s *session) add(pk *packets.Packet, e *pending, forward bool, limit int) addResult {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cl.Closed() || s.closing {
		// Its acknowledgement could not be written: the client sends it
		// again, on a new connection. Checked under s.mu, so that once a
		// takeover has closed the connection and looked at the queue
		// (settlePrevious), nothing more joins it.
		return closed
	}
	if _, ok := s.ids[pk.PacketID]; ok {
		return duplicate
	}
	if pk.FixedHeader.Qos == 2 && pubrecStored(s.cl, pk.PacketID) {
		// A resend that passed mochi's look at the inflight store before
		// the writer stored the first copy's PUBREC there (under s.mu)
		// and took the id out of s.ids: Kafka has the first copy, whose
		// PUBREC the writer sends.
		return duplicate
	}
	if len(s.queue) >= limit {
		return full
	}
	e.s, e.id, e.qos = s, pk.PacketID, pk.FixedHeader.Qos
	// Subscribers are looked at now: one that subscribes while this
	// publish awaits Kafka may not get it, as with any publish racing a
	// SUBSCRIBE.
	if forward && (pk.FixedHeader.Retain || s.h.subscribed.Load()) {
		fwd := *pk
		e.fwd = &fwd
	}
	s.queue = append(s.queue, e)
	s.ids[pk.PacketID] = e
	return added
}

// closeAfterQueued queues the closing of the connection for code behind
// the entries queued so far, and has add refuse every later one. It
// returns false when the connection is closed already.
func (s *session) closeAfterQueued(code packets.Code) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cl.Closed() {
		return false
	}
	if !s.closing {
		s.closing = true
		s.queue = append(s.queue, &pending{s: s, done: true, closes: true, refusal: code})
	}
	return true
}

// waitRoom waits until the writer has taken entries off the queue. It
// returns false when ctx ends or the connection has ended.
func (s *session) waitRoom(ctx context.Context) bool {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-s.room:
			// Both may be ready (room made after ctx ended): ctx wins.
			return ctx.Err() == nil
		case <-ctx.Done():
			return false
		case <-t.C:
			if s.cl.Closed() {
				return false
			}
		}
	}
}

// holdsQoS2 reports whether a QoS 2 publish is queued, its PUBREC not
// yet in the client's inflight store.
func (s *session) holdsQoS2() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.queue {
		if e.qos == 2 {
			return true
		}
	}
	return false
}

// awaitQoS2 waits until no QoS 2 publish is queued. It returns false when
// timeout fires or the broker closes first.
func (s *session) awaitQoS2(ctx context.Context, timeout <-chan time.Time) bool {
	poll := time.NewTicker(5 * time.Millisecond)
	defer poll.Stop()
	for s.holdsQoS2() {
		select {
		case <-poll.C:
		case <-timeout:
			return !s.holdsQoS2()
		case <-ctx.Done():
			return false
		}
	}
	return true
}

func (s *session) wake() {
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// Delivered records Kafka's answer. When the head of the queue is ready,
// the session is acknowledged at the end of the burst of reports (see
// ackReady). It runs on the producer's event goroutine.
func (e *pending) Delivered(d bridge.Delivery) {
	if e.finish(d.Err) {
		e.s.h.list(e.s)
	}
}

// finish records the outcome of e and reports whether the head of the
// queue is ready.
func (e *pending) finish(err error) bool {
	s := e.s
	s.mu.Lock()
	defer s.mu.Unlock()
	e.done, e.err = true, err
	return s.queue[0].done
}

// list adds s to the sessions acknowledged at the end of the current
// burst of delivery reports, once.
func (h *ingest) list(s *session) {
	if !s.listed.CompareAndSwap(false, true) {
		return
	}
	h.readyMu.Lock()
	h.ready = append(h.ready, s)
	h.listed.Store(int64(len(h.ready)))
	h.readyMu.Unlock()
}

// ackReady runs on a producer lane's event goroutine at the end of each
// burst of delivery reports: each session listed during the burst is
// acknowledged there and then (ackInline), or its ack writer is woken to
// do it. Writing a burst's PUBACKs from the goroutine that handled its
// reports saves a wake-up of a writer goroutine per connection and burst,
// which, with many connections each keeping a few publishes in flight,
// was a large part of what a QoS 1 publish costs over a QoS 0 one
// (docs/performance.md, session 24).
func (h *ingest) ackReady() {
	if h.listed.Load() == 0 {
		// Nothing listed, as after a burst of QoS 0 reports. A session
		// listed by this goroutine was counted before this load; one
		// listed by another lane's goroutine is acknowledged at the end
		// of that goroutine's burst.
		return
	}
	h.readyMu.Lock()
	list := h.ready
	h.ready, h.readySpare = h.readySpare, nil
	h.listed.Store(0)
	h.readyMu.Unlock()
	for _, s := range list {
		// Cleared first: a report arriving from here on lists the
		// session again, and what ackInline takes includes it or it is
		// left for the next burst.
		s.listed.Store(false)
		if !s.ackInline() {
			s.wake()
		}
	}
	clear(list)
	h.readyMu.Lock()
	if h.readySpare == nil {
		h.readySpare = list[:0]
	}
	h.readyMu.Unlock()
}

// ackInline acknowledges the finished head of s's queue on the calling
// goroutine, when every entry in it is a plain success (see plainAck) and
// nothing else is writing to the connection. The acknowledgements are
// written without waiting: what the socket does not take at once (its
// send buffer full, the client not reading) is left to the ack writer, to
// be written first. It returns false, having taken nothing, when the ack
// writer must do it all.
//
// That the write cannot wait rests on every other write to the
// connection holding the client's lock, as mochi's (Client.WritePacket)
// and the ack writer's do: with the lock taken here, nobody holds the
// socket's own write lock, which the raw write would otherwise wait for.
func (s *session) ackInline() bool {
	if s.raw == nil || !s.wmu.TryLock() {
		return false
	}
	defer s.wmu.Unlock()
	cl := s.cl
	if s.carry != nil || !cl.TryLock() {
		return false // the writer is writing, or mochi is
	}
	unlock := true
	defer func() {
		if unlock {
			cl.Unlock()
		}
	}()
	s.mu.Lock()
	if s.stopped || s.gone || s.closing || cl.Closed() || s.ctx.Err() != nil {
		s.mu.Unlock()
		return false
	}
	i := 0
	for i < len(s.queue) && s.queue[i].done {
		if !s.queue[i].plainAck() {
			s.mu.Unlock()
			return false
		}
		i++
	}
	if i == 0 {
		s.mu.Unlock()
		return true // taken by the writer meanwhile
	}
	now := time.Now()
	b := s.inlineBuf[:0]
	for _, e := range s.queue[:i] {
		delete(s.ids, e.id)
		b = s.h.appendSuccess(b, e, now)
	}
	clear(s.queue[:i])
	s.queue = s.queue[i:]
	s.mu.Unlock()
	s.signalRoom()
	w := b
	if c := s.h.cutInlineWrites; c > 0 && len(w) > c {
		w = w[:c]
	}
	n := 0
	err := s.raw.Write(func(fd uintptr) bool {
		n, _ = syscall.Write(int(fd), w)
		return true // one attempt: never wait for the socket here
	})
	if err != nil || n < 0 {
		n = 0
	}
	s.inlineBuf = b
	if n < len(b) {
		// Whatever went wrong (a full send buffer, a deadline, an error
		// the writer's own write will meet and close the connection
		// for), the writer writes the rest, in order, before anything
		// it takes itself. If part of a packet went out, the client's
		// lock goes to the writer with it.
		s.carry = append([]byte(nil), b[n:]...)
		s.carryLocked = n > 0
		unlock = !s.carryLocked
		s.h.carried.Add(1)
		if s.carryLocked {
			s.h.split.Add(1)
		}
		s.wake()
	}
	return true
}

// signalRoom tells a read loop waiting for room in the queue (waitRoom)
// that entries were taken off it.
func (s *session) signalRoom() {
	select {
	case s.room <- struct{}{}:
	default:
	}
}

// appendSuccess appends the acknowledgement of e, a publish that
// succeeded, to b (PUBACK, or PUBREC for QoS 2; no reason code, for MQTT 5
// either: 4 bytes) and observes its latency if it went through Kafka.
func (h *ingest) appendSuccess(b []byte, e *pending, now time.Time) []byte {
	if e.viaKafka {
		h.m.ackLatency.Observe(now.Sub(e.received).Seconds())
	}
	typ := byte(packets.Puback << 4)
	if e.qos == 2 {
		typ = packets.Pubrec << 4
	}
	return append(b, typ, 2, byte(e.id>>8), byte(e.id))
}

// plainAck reports whether e is acknowledged with a bare PUBACK and
// nothing else: a QoS 1 publish Kafka took (or one that produced no
// record), forwarded to no local subscriber.
func (e *pending) plainAck() bool {
	return e.qos == 1 && e.err == nil && !e.refused && !e.closes && e.fwd == nil
}

// rawTCP returns c's socket when c is a TCP connection under nothing but
// Tributary's own pass-through wrappers, whose writes go straight to it;
// nil for TLS, WebSocket and anything else.
func rawTCP(c net.Conn) syscall.RawConn {
	for {
		switch w := c.(type) {
		case *gatedConn:
			c = w.Conn
		case *guardConn:
			c = w.Conn
		case *bridgeBitConn:
			c = w.Conn
		case *net.TCPConn:
			rc, err := w.SyscallConn()
			if err != nil {
				return nil
			}
			return rc
		default:
			return nil
		}
	}
}

func (s *session) disconnect() {
	s.mu.Lock()
	s.gone = true
	s.mu.Unlock()
	s.wake()
}

// run writes acknowledgements in arrival order as Kafka confirms records,
// and ends once the connection is gone and nothing is pending, or the
// broker closes (after one last pass: the producer was flushed by then, so
// whatever Kafka confirmed is still acknowledged).
func (s *session) run() {
	defer s.h.writers.Done()
	defer s.cancel()
	var ready []*pending
	var acks []byte
	for {
		closing := false
		select {
		case <-s.notify:
		case <-s.h.ctx.Done():
			closing = true
		}
		s.wmu.Lock()
		carry, carryLocked := s.carry, s.carryLocked
		s.carry, s.carryLocked = nil, false
		if carryLocked {
			// ackInline wrote part of a packet and left the client's
			// lock held for the rest.
			var err error
			if !s.cl.Closed() {
				err = s.write(carry)
			}
			s.cl.Unlock()
			s.h.writeFailed(s, err)
			carry = nil
		}
		s.mu.Lock()
		i := 0
		for i < len(s.queue) && s.queue[i].done {
			e := s.queue[i]
			if e.qos == 2 && e.err == nil && !e.refused {
				// mochi completes the QoS 2 flow (PUBREL → PUBCOMP) from
				// its inflight store, and answers a resent PUBLISH from
				// it without passing it to OnPublish. Stored before the
				// id leaves s.ids, so a resend is never produced twice.
				if s.cl.State.Inflight.Set(ack(e.id, e.qos, packets.CodeSuccess)) {
					atomic.AddInt64(&s.h.server.Info.Inflight, 1)
				}
			}
			delete(s.ids, e.id)
			i++
		}
		ready = append(ready[:0], s.queue[:i]...)
		clear(s.queue[:i])
		s.queue = s.queue[i:]
		finished := closing || (s.gone && len(s.queue) == 0)
		if finished {
			s.h.sessions.Delete(s.cl)
			s.stopped = true
		}
		s.mu.Unlock()
		if i > 0 {
			s.signalRoom()
		}
		acks = append(acks[:0], carry...)
		s.h.completeAll(s, ready, &acks)
		s.wmu.Unlock()
		if finished {
			return
		}
	}
}

// ackWriteTimeout is how long a write of acknowledgements may take: the
// one and a half keepalive intervals mochi gives a connection's reads and
// writes; 0 (no deadline, as mochi sets none) for a client with keepalive
// off.
func ackWriteTimeout(cl *mqtt.Client) time.Duration {
	k := time.Duration(cl.State.Keepalive) * time.Second
	return k + k/2
}

// endingWriteTimeout is the deadline Tributary gives a write to a
// connection it is closing (a takeover, a revoked login, shutdown): a
// client that does not read its socket would hold the write, and the
// client's lock, indefinitely.
const endingWriteTimeout = time.Second

// completeAll acknowledges publishes that Kafka has answered, in order.
// Acknowledgements are encoded into one buffer and written at once, which
// matters because a write per acknowledgement was the largest cost of the
// QoS 1 path; negative ones (MQTT 5) go into the same buffer, so that
// nothing overtakes them. A failure an MQTT 3 client cannot be told about
// closes the connection after the acknowledgements before it are written.
//
// buf holds, on entry, bytes to be written before the acknowledgements of
// ready (see session.carry).
func (h *ingest) completeAll(s *session, ready []*pending, buf *[]byte) {
	cl := s.cl
	b := *buf
	flush := func() {
		if len(b) == 0 {
			return
		}
		if !cl.Closed() {
			cl.Lock()
			err := s.write(b)
			cl.Unlock()
			h.writeFailed(s, err)
		}
		b = b[:0]
	}
	for _, e := range ready {
		switch {
		case e.closes:
			flush()
			if !cl.Closed() {
				h.disconnect(cl, e.refusal)
			}
		case e.refused:
			b = appendAck(b, cl, e.id, e.qos, e.refusal)
		case errors.Is(e.err, errConnectionEnded):
			// Neither acknowledged nor refused: the connection is being
			// closed by whoever ended it, and the client resends.
		case e.err != nil:
			if code, ok := h.failure(cl, e); ok {
				b = appendAck(b, cl, e.id, e.qos, code)
				continue
			}
			flush()
			h.closeFor(cl, e)
		default:
			b = h.appendSuccess(b, e, time.Now())
		}
	}
	flush()
	*buf = b
	// Forward to local subscribers (and retain) after acknowledging, as
	// mochi does.
	var fwd *mqtt.Client
	for _, e := range ready {
		if e.err != nil || e.refused || e.fwd == nil {
			continue
		}
		if fwd == nil {
			fwd = h.forwarder(cl)
		}
		h.forward(fwd, *e.fwd)
	}
	if fwd != nil {
		h.forwarders.Put(fwd)
	}
}

// write writes b to the connection, whose client lock the caller holds;
// only the ack writer calls it.
func (s *session) write(b []byte) error {
	cl := s.cl
	// mochi sets the write deadline with the read deadline, before each
	// read; while the read loop waits in OnPublish (Kafka slow, the budget
	// used up) nothing moves it, and the acknowledgements Kafka's recovery
	// brings would fail on a deadline long past. So writes get mochi's
	// time from now, the deadline moved only once half of it has passed:
	// moving it costs more than a write of a few acknowledgements.
	if now, d := time.Now(), ackWriteTimeout(cl); d > 0 && now.Add(d/2).After(s.writeDeadline) {
		s.writeDeadline = now.Add(d)
		if s.ending.Load() {
			// Being closed (ended, then a short deadline to end a
			// blocked write): keep a short one. Not at Drain, which
			// ends s.ctx too: the flush's acknowledgements may come
			// seconds apart, while the client, waiting for them, sends
			// nothing that would move the deadline.
			s.writeDeadline = now.Add(endingWriteTimeout)
		}
		_ = cl.Net.Conn.SetWriteDeadline(s.writeDeadline)
	}
	_, err := cl.Net.Conn.Write(b)
	return err
}

// writeFailed closes s's connection after a failed write of
// acknowledgements: part of a packet may have been written, so nothing
// more can follow it.
func (h *ingest) writeFailed(s *session, err error) {
	if err == nil {
		return
	}
	h.log.Debug("writing acknowledgements; closing the connection", "client", s.cl.ID, "error", err)
	h.ended(s.cl)
	s.cl.Stop(err)
}

// forwarder returns a forwarding client publishing as cl; it goes back to
// h.forwarders after use.
func (h *ingest) forwarder(cl *mqtt.Client) *mqtt.Client {
	fwd := h.forwarders.Get().(*mqtt.Client)
	fwd.ID = cl.ID
	return fwd
}

// forward passes pk to local subscribers, and retains it if it says so,
// through fwd.
func (h *ingest) forward(fwd *mqtt.Client, pk packets.Packet) {
	if err := h.server.InjectPacket(fwd, pk); err != nil {
		h.log.Warn("forwarding to local subscribers", "topic", pk.TopicName, "error", err)
	}
}

// appendAck appends the encoding of a PUBACK (QoS 1) or PUBREC (QoS 2)
// for packet id with code, as mochi would write it to cl. A reason string
// that would make the packet larger than the client accepts is left out.
func appendAck(b []byte, cl *mqtt.Client, id uint16, qos byte, code packets.Code) []byte {
	pk := ack(id, qos, code)
	pk.ProtocolVersion = cl.Properties.ProtocolVersion
	pk.Mods.MaxSize = cl.Properties.Props.MaximumPacketSize
	if cl.Properties.Props.RequestProblemInfoFlag && cl.Properties.Props.RequestProblemInfo == 0 {
		pk.Mods.DisallowProblemInfo = true
	}
	var out bytes.Buffer
	encode := pk.PubackEncode
	if qos == 2 {
		encode = pk.PubrecEncode
	}
	if err := encode(&out); err != nil || (pk.Mods.MaxSize > 0 && uint32(out.Len()) > pk.Mods.MaxSize) {
		out.Reset()
		pk.Properties.ReasonString = ""
		_ = encode(&out)
	}
	return append(b, out.Bytes()...)
}

// failure counts and logs a publish that Kafka did not take, and returns
// the negative acknowledgement that tells an MQTT 5 client so, for an
// error that resending cannot fix. ok is false when the client must
// instead be disconnected: MQTT 3 has no negative acknowledgement, and a
// transient failure must not be reported as final.
func (h *ingest) failure(cl *mqtt.Client, e *pending) (code packets.Code, ok bool) {
	switch {
	case errors.Is(e.err, bridge.ErrRecordTooLarge):
		h.m.rejected.WithLabelValues("too_large").Inc()
	default:
		h.m.failed.WithLabelValues(failReason(e.err)).Inc()
	}
	if !bridge.Permanent(e.err) || cl.Properties.ProtocolVersion != 5 {
		return code, false
	}
	code = packets.Code{Code: packets.ErrUnspecifiedError.Code, Reason: e.err.Error()}
	if errors.Is(e.err, bridge.ErrRecordTooLarge) {
		code.Code = packets.ErrPacketTooLarge.Code
	} else if errors.Is(e.err, bridge.ErrUnknownTopic) {
		code.Code = packets.ErrTopicNameInvalid.Code
	} else if errors.Is(e.err, bridge.ErrTooManyTopics) {
		code.Code = packets.ErrQuotaExceeded.Code
	}
	// A record too large for kafka.max_message_bytes was logged by
	// OnPublish; one Kafka refused for its own limit was not.
	if (!errors.Is(e.err, bridge.ErrRecordTooLarge) || bridge.RefusedAsTooLarge(e.err)) && h.refuseLog.Allow() {
		h.log.Warn("publish refused: the record cannot be produced (logged at most every 10s)", "client", cl.ID, "kafka_topic", e.kafkaTopic, "error", e.err)
	}
	return code, true
}

// errConnectionEnded is the error of a publish whose wait in the producer
// ended with its connection (see ingest.ended): not produced, not
// acknowledged, not counted as a failure.
var errConnectionEnded = errors.New("the connection ended while the record waited for the producer")

// closeFor closes the connection of a client whose publish Kafka did not
// take and that cannot be told so: it resends the publish.
func (h *ingest) closeFor(cl *mqtt.Client, e *pending) {
	if cl.Closed() {
		return
	}
	level := slog.LevelWarn
	if h.draining.Load() {
		level = slog.LevelDebug // shutting down: every client still waiting gets this
	}
	h.log.Log(context.Background(), level, "closing connection: Kafka did not take a record, the client will resend it", "client", cl.ID, "kafka_topic", e.kafkaTopic, "error", e.err)
	code := packets.ErrServerBusy
	if errors.Is(e.err, bridge.ErrRecordTooLarge) {
		code = packets.ErrPacketTooLarge
	}
	h.disconnect(cl, code)
}

func failReason(err error) string {
	if r := dropReason(err); r != "budget_exhausted" {
		return r
	}
	return "kafka_error"
}
