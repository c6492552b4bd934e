package auth

import "sync/atomic"

// Live holds the users file or the tokens file in force, which a reload
// (SIGHUP) replaces whole. A reader calls Load once per decision and uses
// what it returns throughout, so it sees the old file or the new one,
// never a mix of both. Load is one atomic read, without a lock or an
// allocation: cheap enough for the ACL check of every publish.
//
// A nil *Live loads nil, which is what running without the file means (for
// Users: everything allowed). A Live made from a loaded file never holds
// nil: a reload that fails keeps the old file in force.
type Live[T Users | Tokens] struct {
	p atomic.Pointer[T]
}

// NewLive returns a Live holding v, or nil for a nil v (no file
// configured), so that the nil checks on the Live say whether the file is
// configured, as they did on v.
func NewLive[T Users | Tokens](v *T) *Live[T] {
	if v == nil {
		return nil
	}
	l := &Live[T]{}
	l.p.Store(v)
	return l
}

// Load returns the file in force; nil when l is nil.
func (l *Live[T]) Load() *T {
	if l == nil {
		return nil
	}
	return l.p.Load()
}

// Swap puts v in force for every decision made from now on and returns
// the file it replaces. v must not be nil: falling back to no users file
// would allow everyone everything, so Swap panics instead.
func (l *Live[T]) Swap(v *T) (old *T) {
	if v == nil {
		panic("auth: Live.Swap(nil): keep the old file when a reload fails")
	}
	return l.p.Swap(v)
}
