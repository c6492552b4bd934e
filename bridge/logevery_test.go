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
