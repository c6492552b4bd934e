package auth

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeClock is a settable clock for the throttle.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func newTestThrottle(cfg ThrottleConfig) (*Throttle, *fakeClock) {
	c := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	th := NewThrottle(cfg)
	th.now = c.Now
	return th, c
}

func TestThrottleDelays(t *testing.T) {
	th, _ := newTestThrottle(ThrottleConfig{Failures: 3, Delay: 100 * time.Millisecond, MaxDelay: time.Second})
	const addr = "192.0.2.7:50000"
	want := []time.Duration{0, 0, 0, 100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond, time.Second, time.Second}
	for i, w := range want {
		if got := th.Delay(addr); got != w {
			t.Fatalf("after %d failures: delay %v, want %v", i, got, w)
		}
		th.Failed(addr)
	}
	if got := th.Delay("192.0.2.7:60000"); got != time.Second {
		t.Fatalf("another port of the same address: delay %v, want the same address's", got)
	}
	if got := th.Delay("192.0.2.8:50000"); got != 0 {
		t.Fatalf("another address: delay %v, want none", got)
	}
	for range 1000 {
		th.Failed(addr) // the doubling must not overflow
	}
	if got := th.Delay(addr); got != time.Second {
		t.Fatalf("after many failures: delay %v, want the cap", got)
	}
}

func TestThrottleWindow(t *testing.T) {
	th, clock := newTestThrottle(ThrottleConfig{Failures: 1, Window: time.Minute, Delay: time.Second, MaxDelay: time.Second})
	th.Failed("192.0.2.1")
	clock.Advance(30 * time.Second)
	th.Failed("192.0.2.2")
	clock.Advance(31 * time.Second)
	if got := th.Delay("192.0.2.1"); got != 0 {
		t.Fatalf("a minute after the last failure: delay %v, want none", got)
	}
	if got := th.Delay("192.0.2.2"); got != time.Second {
		t.Fatalf("31s after the last failure: delay %v, want 1s", got)
	}
	if got := th.tracked(); got != 1 {
		t.Fatalf("tracking %d addresses, want the expired one forgotten", got)
	}
}

func TestThrottleBoundedMemory(t *testing.T) {
	th, clock := newTestThrottle(ThrottleConfig{Failures: 1, MaxAddresses: 100})
	th.Failed("198.51.100.1")
	clock.Advance(time.Second)
	th.Failed("198.51.100.2")
	th.Failed("198.51.100.1") // most recent again
	for i := range 98 {
		clock.Advance(time.Millisecond)
		th.Failed(fmt.Sprintf("10.0.%d.%d", i/250, i%250))
	}
	if th.tracked() != 100 {
		t.Fatalf("tracking %d, want 100", th.tracked())
	}
	th.Failed("203.0.113.1")
	if th.tracked() != 100 {
		t.Fatalf("tracking %d, want the cap of 100", th.tracked())
	}
	if th.Delay("198.51.100.2") != 0 {
		t.Fatal("the address whose last failure is oldest was kept")
	}
	if th.Delay("198.51.100.1") == 0 || th.Delay("203.0.113.1") == 0 {
		t.Fatal("a recent address was forgotten")
	}
	for i := range 10000 {
		th.Failed(fmt.Sprintf("2001:db8:%x::1", i))
	}
	if th.tracked() != 100 {
		t.Fatalf("tracking %d after a flood, want 100", th.tracked())
	}
}

func TestThrottleAddressKeys(t *testing.T) {
	th, _ := newTestThrottle(ThrottleConfig{Failures: 1})
	th.Failed("[2001:db8:1:2:aaaa::1]:1883")
	for _, tt := range []struct {
		addr    string
		delayed bool
	}{
		{"[2001:db8:1:2:bbbb::9]:40000", true}, // same /64
		{"2001:db8:1:2::5", true},
		{"[2001:db8:1:3::1]:1883", false},
		{"192.0.2.1:1", false},
	} {
		if got := th.Delay(tt.addr) > 0; got != tt.delayed {
			t.Errorf("%s: delayed %v, want %v", tt.addr, got, tt.delayed)
		}
	}
	th.Failed("[::ffff:192.0.2.9]:5")
	if th.Delay("192.0.2.9:6") == 0 {
		t.Error("an IPv4-mapped address counts apart from its IPv4 form")
	}
	// What is not an IP address is not tracked.
	th.Failed("pipe")
	th.Failed("")
	if th.Delay("pipe") != 0 {
		t.Error("a non-IP address was delayed")
	}
}

func TestThrottleDefaultsAndNil(t *testing.T) {
	th := NewThrottle(ThrottleConfig{})
	if th.cfg != (ThrottleConfig{Failures: 5, Window: 10 * time.Minute, Delay: 500 * time.Millisecond, MaxDelay: 5 * time.Second, MaxAddresses: 10000}) {
		t.Fatalf("defaults %+v", th.cfg)
	}
	var none *Throttle
	none.Failed("192.0.2.1")
	if none.Delay("192.0.2.1") != 0 {
		t.Fatal("a nil throttle delayed")
	}
	err := ThrottleConfig{Failures: -1, Window: -time.Second, MaxAddresses: -2}.Validate()
	if err == nil {
		t.Fatal("negative settings validated")
	}
	for _, key := range []string{"failures", "window", "max_addresses"} {
		if !strings.Contains(err.Error(), key+":") {
			t.Errorf("error %q does not name %s", err, key)
		}
	}
	if err := (ThrottleConfig{}).Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestThrottleConcurrent(t *testing.T) {
	th := NewThrottle(ThrottleConfig{MaxAddresses: 50})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 500 {
				addr := fmt.Sprintf("10.%d.%d.1:1", g, i%60)
				th.Delay(addr)
				th.Failed(addr)
			}
		})
	}
	wg.Wait()
	if th.tracked() > 50 {
		t.Fatalf("tracking %d, over the cap", th.tracked())
	}
}
