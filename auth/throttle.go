package auth

import (
	"container/list"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"
)

// ThrottleConfig configures the failed-login throttle.
type ThrottleConfig struct {
	// Failures is how many failed logins an address may make before its
	// attempts are slowed down. Default 5.
	Failures int `yaml:"failures"`
	// Window is how long an address's failures are remembered after its
	// last one. Default 10m.
	Window time.Duration `yaml:"window"`
	// Delay is the wait imposed on the first attempt over the limit; it
	// doubles with every further failure. Default 500ms.
	Delay time.Duration `yaml:"delay"`
	// MaxDelay caps the wait. Default 5s.
	MaxDelay time.Duration `yaml:"max_delay"`
	// MaxAddresses caps how many addresses are tracked; past it the one
	// whose last failure is oldest is forgotten. Default 10000.
	MaxAddresses int `yaml:"max_addresses"`
}

// Validate reports every negative setting, naming its key.
func (c ThrottleConfig) Validate() error {
	var errs []error
	if c.Failures < 0 {
		errs = append(errs, fmt.Errorf("failures: %d is negative", c.Failures))
	}
	for _, d := range []struct {
		key string
		v   time.Duration
	}{{"window", c.Window}, {"delay", c.Delay}, {"max_delay", c.MaxDelay}} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%s: %s is negative", d.key, d.v))
		}
	}
	if c.MaxAddresses < 0 {
		errs = append(errs, fmt.Errorf("max_addresses: %d is negative", c.MaxAddresses))
	}
	return errors.Join(errs...)
}

func (c *ThrottleConfig) fillDefaults() {
	if c.Failures <= 0 {
		c.Failures = 5
	}
	if c.Window <= 0 {
		c.Window = 10 * time.Minute
	}
	if c.Delay <= 0 {
		c.Delay = 500 * time.Millisecond
	}
	if c.MaxDelay <= 0 {
		c.MaxDelay = 5 * time.Second
	}
	if c.MaxDelay < c.Delay {
		c.MaxDelay = c.Delay
	}
	if c.MaxAddresses <= 0 {
		c.MaxAddresses = 10000
	}
}

// Throttle slows down repeated failed logins from one address: after
// Failures failures, each new attempt from that address waits Delay,
// doubling with each further failure up to MaxDelay, until Window passes
// without failures. A success does not reset it: one valid account must
// not clear the way for guesses at another. IPv6 addresses count by their /64, which one
// host usually holds whole. Memory is bounded by MaxAddresses.
//
// The wait applies per attempt, so many parallel connections from one
// address each wait once; each of them still costs the attacker a bcrypt
// comparison's worth of server time, which is what bounds that.
//
// It is safe for concurrent use; a nil *Throttle never delays.
type Throttle struct {
	cfg   ThrottleConfig
	now   func() time.Time
	mu    sync.Mutex
	addrs map[netip.Prefix]*list.Element // of *failures
	lru   list.List                      // oldest last failure at the front
}

type failures struct {
	key   netip.Prefix
	count int
	last  time.Time
}

// NewThrottle returns a throttle; zero settings take their defaults.
func NewThrottle(cfg ThrottleConfig) *Throttle {
	cfg.fillDefaults()
	return &Throttle{cfg: cfg, now: time.Now, addrs: map[netip.Prefix]*list.Element{}}
}

// Delay returns how long an attempt from addr ("host:port" or a bare IP)
// should wait before its credentials are checked.
func (t *Throttle) Delay(addr string) time.Duration {
	if t == nil {
		return 0
	}
	key, ok := addrKey(addr)
	if !ok {
		return 0
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.expire()
	e, ok := t.addrs[key]
	if !ok {
		return 0
	}
	over := e.Value.(*failures).count - t.cfg.Failures
	if over < 0 {
		return 0
	}
	d := t.cfg.Delay
	for ; over > 0 && d < t.cfg.MaxDelay; over-- {
		d *= 2
	}
	return min(d, t.cfg.MaxDelay)
}

// Failed records a failed login from addr.
func (t *Throttle) Failed(addr string) {
	if t == nil {
		return
	}
	key, ok := addrKey(addr)
	if !ok {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	t.expire()
	if e, ok := t.addrs[key]; ok {
		f := e.Value.(*failures)
		f.count++
		f.last = now
		t.lru.MoveToBack(e)
		return
	}
	for t.lru.Len() >= t.cfg.MaxAddresses {
		t.forget(t.lru.Front())
	}
	t.addrs[key] = t.lru.PushBack(&failures{key: key, count: 1, last: now})
}

// tracked returns how many addresses are remembered.
func (t *Throttle) tracked() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.lru.Len()
}

// expire forgets addresses whose last failure is older than the window;
// they are at the front of the list.
func (t *Throttle) expire() {
	cutoff := t.now().Add(-t.cfg.Window)
	for e := t.lru.Front(); e != nil && !e.Value.(*failures).last.After(cutoff); e = t.lru.Front() {
		t.forget(e)
	}
}

func (t *Throttle) forget(e *list.Element) {
	delete(t.addrs, e.Value.(*failures).key)
	t.lru.Remove(e)
}

// addrKey maps an address to what is counted: the IP, or for IPv6 its /64.
func addrKey(addr string) (netip.Prefix, bool) {
	host := addr
	if h, _, err := net.SplitHostPort(addr); err == nil {
		host = h
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Prefix{}, false
	}
	ip = ip.Unmap().WithZone("")
	bits := 32
	if ip.Is6() {
		bits = 64
	}
	p, err := ip.Prefix(bits)
	return p, err == nil
}
