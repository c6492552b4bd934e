package bridge

import (
	"context"
	"sync"
)

// budget bounds the bytes of records waiting for Kafka's acknowledgement.
// Acquire blocks (the caller is a publishing socket's read loop, so blocking
// there is what stops the bridge reading from that socket); TryAcquire never
// blocks and is for best-effort traffic.
type budget struct {
	mu      sync.Mutex
	limit   int64
	used    int64
	waiters int
	freed   chan struct{} // closed and replaced whenever bytes are released while someone waits
}

func newBudget(limit int64) *budget {
	return &budget{limit: limit, freed: make(chan struct{})}
}

// clamp keeps a single record that is larger than the whole budget from
// waiting forever: it may use the whole budget alone.
func (b *budget) clamp(n int64) int64 {
	if n > b.limit {
		return b.limit
	}
	return n
}

// TryAcquire takes n bytes (at most the limit: see clamp) if they are free now.
func (b *budget) TryAcquire(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used+n > b.limit {
		return false
	}
	b.used += n
	return true
}

// Acquire takes n bytes (at most the limit: see clamp), waiting until they
// are free or ctx ends.
func (b *budget) Acquire(ctx context.Context, n int64) error {
	for {
		b.mu.Lock()
		if b.used+n <= b.limit {
			b.used += n
			b.mu.Unlock()
			return nil
		}
		b.waiters++
		ch := b.freed
		b.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			b.mu.Lock()
			b.waiters--
			b.mu.Unlock()
			return ctx.Err()
		}
		b.mu.Lock()
		b.waiters--
		b.mu.Unlock()
	}
}

// Release returns n bytes, which may be the sum of several acquisitions
// (each was clamped when taken, so the sum is never clamped here).
func (b *budget) Release(n int64) {
	b.mu.Lock()
	b.used -= n
	if b.waiters > 0 {
		close(b.freed)
		b.freed = make(chan struct{})
	}
	b.mu.Unlock()
}

// Used returns the bytes in use.
func (b *budget) Used() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}
