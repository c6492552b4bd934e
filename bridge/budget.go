package bridge

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
)

// budget bounds the bytes of records waiting for Kafka's acknowledgement.
// Acquire blocks (the caller is a publishing socket's read loop, so blocking
// there is what stops the bridge reading from that socket); TryAcquire never
// blocks and is for best-effort traffic.
//
// Waiters are served in the order they came, and nobody takes bytes past
// one that waits: freed bytes go to the first waiter until it fits. A
// large record waiting for the budget to empty would otherwise wait for
// as long as smaller records (best-effort ones among them) kept taking
// each byte freed.
type budget struct {
	mu      sync.Mutex
	limit   int64
	used    int64
	waiting []*budgetWaiter // in arrival order
	// overHalf is whether more than half the limit is in use, readable
	// without the lock; set with used.
	overHalf atomic.Bool
}

type budgetWaiter struct {
	n     int64
	ready chan struct{} // closed once the bytes are taken for this waiter
	taken bool
}

func newBudget(limit int64) *budget {
	return &budget{limit: limit}
}

// clamp keeps a single record that is larger than the whole budget from
// waiting forever: it may use the whole budget alone.
func (b *budget) clamp(n int64) int64 {
	if n > b.limit {
		return b.limit
	}
	return n
}

// TryAcquire takes n bytes (at most the limit: see clamp) if they are free
// now and nobody waits for bytes.
func (b *budget) TryAcquire(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.waiting) > 0 || b.used+n > b.limit {
		return false
	}
	b.add(n)
	return true
}

// Acquire takes n bytes (at most the limit: see clamp), waiting until they
// are free, after those who waited first, or until ctx ends.
func (b *budget) Acquire(ctx context.Context, n int64) error {
	b.mu.Lock()
	if len(b.waiting) == 0 && b.used+n <= b.limit {
		b.add(n)
		b.mu.Unlock()
		return nil
	}
	w := &budgetWaiter{n: n, ready: make(chan struct{})}
	b.waiting = append(b.waiting, w)
	b.mu.Unlock()
	select {
	case <-w.ready:
		return nil
	case <-ctx.Done():
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if w.taken {
		// Granted as ctx ended: give the bytes back.
		b.add(-n)
	} else if i := slices.Index(b.waiting, w); i >= 0 {
		b.waiting = slices.Delete(b.waiting, i, i+1)
	}
	b.grant()
	return ctx.Err()
}

// grant takes bytes for the waiters at the head of the queue while they
// fit. It is called with b.mu held.
func (b *budget) grant() {
	for len(b.waiting) > 0 {
		w := b.waiting[0]
		if b.used+w.n > b.limit {
			return
		}
		b.add(w.n)
		w.taken = true
		close(w.ready)
		b.waiting[0] = nil
		b.waiting = b.waiting[1:]
	}
	b.waiting = nil
}

// Release returns n bytes, which may be the sum of several acquisitions
// (each was clamped when taken, so the sum is never clamped here).
func (b *budget) Release(n int64) {
	b.mu.Lock()
	b.add(-n)
	if len(b.waiting) > 0 {
		b.grant()
	}
	b.mu.Unlock()
}

// add changes the bytes in use by n; called with b.mu held.
func (b *budget) add(n int64) {
	b.used += n
	b.overHalf.Store(b.used > b.limit/2)
}

// Used returns the bytes in use.
func (b *budget) Used() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}
