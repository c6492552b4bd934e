package bridge

import (
	"context"
	"testing"
	"time"
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
