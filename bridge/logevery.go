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

// Throttle lets one log line through per Interval and counts the ones it
// held back since, so that a flood cannot fill the disk but its volume
// still shows. The first line always goes through.
type Throttle struct {
	Interval   time.Duration
	mu         sync.Mutex
	last       time.Time
	suppressed int
}

// Allow reports whether a line may be logged at now, and how many were
// held back since the last one that was.
func (l *Throttle) Allow(now time.Time) (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.last.IsZero() && now.Sub(l.last) < l.Interval {
		l.suppressed++
		return false, 0
	}
	suppressed, l.suppressed, l.last = l.suppressed, 0, now
	return true, suppressed
}

// errorLog is a Throttle per kind of error. librdkafka reports a broker it
// cannot reach many times a second for as long as it is down.
type errorLog struct {
	interval time.Duration
	mu       sync.Mutex
	kinds    map[int]*Throttle
}

// allow reports whether an error of kind may be logged now, and how many
// of its kind were not logged since the last one that was.
func (l *errorLog) allow(kind int, now time.Time) (bool, int) {
	l.mu.Lock()
	k, seen := l.kinds[kind]
	if !seen {
		if l.kinds == nil {
			l.kinds = map[int]*Throttle{}
		}
		k = &Throttle{Interval: l.interval}
		l.kinds[kind] = k
	}
	l.mu.Unlock()
	return k.Allow(now)
}
