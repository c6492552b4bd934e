package bridge

import (
	"sync"
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

// errorLog throttles log lines per kind of error: the first of a kind is
// logged at once, later ones at most once per interval, each saying how
// many were left out since. librdkafka reports a broker it cannot reach
// many times a second for as long as it is down.
type errorLog struct {
	interval time.Duration
	mu       sync.Mutex
	kinds    map[int]*errorKind
}

type errorKind struct {
	last    time.Time
	skipped int
}

// allow reports whether an error of kind may be logged now, and how many
// of its kind were not logged since the last one that was.
func (l *errorLog) allow(kind int, now time.Time) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.kinds == nil {
		l.kinds = map[int]*errorKind{}
	}
	k, seen := l.kinds[kind]
	if !seen {
		k = &errorKind{}
		l.kinds[kind] = k
	} else if now.Sub(k.last) < l.interval {
		k.skipped++
		return false, 0
	}
	skipped := k.skipped
	k.last, k.skipped = now, 0
	return true, skipped
}
