package bridge

import (
	"context"
	"fmt"
	"sort"
	"time"
)

// Broker describes one Kafka broker of the cluster.
type Broker struct {
	ID   int     `json:"id"`
	Host string  `json:"host"`
	Port int     `json:"port"`
	Rack *string `json:"rack"`
}

// Brokers describes the brokers of the cluster the producer is connected
// to, ordered by id. It asks with DescribeCluster (which knows racks) and
// falls back to a metadata request for brokers that do not support it.
func (p *Producer) Brokers(ctx context.Context) ([]Broker, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ctx, release, err := p.useHandles(ctx)
	if err != nil {
		return nil, fmt.Errorf("describing Kafka cluster: %w", err)
	}
	defer release()
	var out []Broker
	res, err := p.admin.DescribeCluster(ctx)
	if err == nil {
		for _, n := range res.Nodes {
			out = append(out, Broker{ID: n.ID, Host: n.Host, Port: n.Port, Rack: n.Rack})
		}
	} else {
		if ctx.Err() != nil {
			// GetMetadata cannot be cancelled: at Close, it would hold
			// the handles, and Close, for the rest of the timeout.
			return nil, fmt.Errorf("describing Kafka cluster: %w", err)
		}
		dl, _ := ctx.Deadline()
		md, mdErr := p.admin.GetMetadata(nil, false, max(1, int(time.Until(dl)/time.Millisecond)))
		if mdErr != nil {
			return nil, fmt.Errorf("describing Kafka cluster: %w", err)
		}
		for _, b := range md.Brokers {
			out = append(out, Broker{ID: int(b.ID), Host: b.Host, Port: b.Port})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// LookupTopic checks that topic exists, without creating it; the error
// wraps ErrUnknownTopic when it does not.
func (p *Producer) LookupTopic(ctx context.Context, topic string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return p.topics.lookup(ctx, topic)
}
