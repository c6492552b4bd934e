package bridge

import (
	"context"
	"testing"
	"time"

	"github.com/tributary-io/tributary/internal/testutil"
)

func TestBudget(t *testing.T) {
	b := newBudget(100)
	if !b.TryAcquire(60) {
		t.Fatal("TryAcquire(60) on an empty budget of 100 failed")
	}
	if b.TryAcquire(60) {
		t.Fatal("TryAcquire(60) succeeded with only 40 free")
	}
	got := make(chan error, 1)
	go func() { got <- b.Acquire(context.Background(), 60) }()
	select {
	case err := <-got:
		t.Fatalf("Acquire returned %v before bytes were released", err)
	case <-time.After(50 * time.Millisecond):
	}
	b.Release(60)
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("Acquire: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Acquire did not return after Release")
	}
	if u := b.Used(); u != 60 {
		t.Fatalf("Used = %d, want 60", u)
	}

	ctx, cancel := context.WithCancel(context.Background())
	go func() { got <- b.Acquire(ctx, 50) }()
	cancel()
	select {
	case err := <-got:
		if err == nil {
			t.Fatal("Acquire with a cancelled context returned nil")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Acquire ignored its context")
	}

	// A record larger than the whole budget may use it alone.
	b.Release(60)
	if !b.TryAcquire(b.clamp(1000)) {
		t.Fatal("a record larger than the budget could not take the empty budget")
	}
	if b.TryAcquire(1) {
		t.Fatal("the clamped record did not take the whole budget")
	}
	b.Release(b.clamp(1000))
	if u := b.Used(); u != 0 {
		t.Fatalf("Used = %d after releasing everything, want 0", u)
	}
}

// Freed bytes go to the first waiter: a record waiting for room is not
// passed over forever by smaller ones, waiting (Acquire) or best effort
// (TryAcquire), that would each fit in what one release frees.
func TestBudgetServesWaitersInOrder(t *testing.T) {
	b := newBudget(100)
	if !b.TryAcquire(90) {
		t.Fatal("TryAcquire(90) on an empty budget failed")
	}
	big := make(chan error, 1)
	go func() { big <- b.Acquire(context.Background(), 100) }()
	testutil.WaitFor(t, 5*time.Second, "the large record to wait", func() bool { b.mu.Lock(); defer b.mu.Unlock(); return len(b.waiting) == 1 })
	if b.TryAcquire(5) {
		t.Fatal("best-effort bytes were taken past a record waiting for room")
	}
	small := make(chan error, 1)
	go func() { small <- b.Acquire(context.Background(), 5) }()
	testutil.WaitFor(t, 5*time.Second, "the small record to wait", func() bool { b.mu.Lock(); defer b.mu.Unlock(); return len(b.waiting) == 2 })

	b.Release(50) // 40 used: neither the first (100) nor, behind it, the second fits in order
	select {
	case err := <-small:
		t.Fatalf("the small record took freed bytes (%v) ahead of the large one waiting first", err)
	case err := <-big:
		t.Fatalf("the large record got 100 bytes with 40 in use (%v)", err)
	case <-time.After(50 * time.Millisecond):
	}
	b.Release(40)
	if err := <-big; err != nil {
		t.Fatalf("the large record: %v", err)
	}
	if u := b.Used(); u != 100 {
		t.Fatalf("Used = %d with the large record in, want 100", u)
	}
	b.Release(100)
	if err := <-small; err != nil {
		t.Fatalf("the small record: %v", err)
	}

	// A waiter whose context ends leaves the queue, and those behind it
	// get what fits.
	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() { first <- b.Acquire(ctx, 100) }()
	testutil.WaitFor(t, 5*time.Second, "the first waiter", func() bool { b.mu.Lock(); defer b.mu.Unlock(); return len(b.waiting) == 1 })
	second := make(chan error, 1)
	go func() { second <- b.Acquire(context.Background(), 50) }()
	testutil.WaitFor(t, 5*time.Second, "the second waiter", func() bool { b.mu.Lock(); defer b.mu.Unlock(); return len(b.waiting) == 2 })
	cancel()
	if err := <-first; err == nil {
		t.Fatal("a waiter whose context ended got the bytes")
	}
	if err := <-second; err != nil {
		t.Fatalf("the waiter behind a cancelled one: %v", err)
	}
	if u := b.Used(); u != 55 {
		t.Fatalf("Used = %d, want 55 (5 + 50)", u)
	}
}
