package bridge

import (
	"sync/atomic"
	"time"
)

// LogEvery allows an action, such as a log line that could otherwise
// flood, at most once per Interval, across goroutines.
type LogEvery struct {
	Interval time.Duration
	last     atomic.Int64
}

// Allow reports whether the action may happen now; if so, the next is
// allowed an Interval later.
func (e *LogEvery) Allow() bool {
	now := time.Now().UnixNano()
	last := e.last.Load()
	return now-last >= int64(e.Interval) && e.last.CompareAndSwap(last, now)
}
