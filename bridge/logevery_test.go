package bridge

import (
	"testing"
	"time"
)

func TestLogEveryAllowsOncePerInterval(t *testing.T) {
	e := LogEvery{Interval: 50 * time.Millisecond}
	if !e.Allow() {
		t.Fatal("the first action was not allowed")
	}
	if e.Allow() {
		t.Fatal("a second action within the interval was allowed")
	}
	time.Sleep(60 * time.Millisecond)
	if !e.Allow() {
		t.Fatal("an action after the interval was not allowed")
	}
}

func TestErrorLogThrottlesEachKind(t *testing.T) {
	l := errorLog{interval: time.Minute}
	t0 := time.Unix(1000, 0)
	type step struct {
		kind    int
		at      time.Duration
		ok      bool
		skipped int
	}
	for i, s := range []step{
		{1, 0, true, 0},
		{1, time.Second, false, 0},
		{2, time.Second, true, 0}, // another kind is not held back
		{1, 2 * time.Second, false, 0},
		{1, time.Minute, true, 2},
		{1, time.Minute + time.Second, false, 0},
		{2, 2 * time.Minute, true, 0},
	} {
		ok, skipped := l.allow(s.kind, t0.Add(s.at))
		if ok != s.ok || skipped != s.skipped {
			t.Errorf("step %d (kind %d at %v): allow = %v, %d; want %v, %d", i, s.kind, s.at, ok, skipped, s.ok, s.skipped)
		}
	}
}
