package auth

import (
	"sync"
	"testing"

	"golang.org/x/crypto/bcrypt"
)

func TestLive(t *testing.T) {
	var none *Live[Users]
	if none.Load() != nil {
		t.Fatal("a nil Live loaded a file")
	}
	if NewLive[Users](nil) != nil || NewLive[Tokens](nil) != nil {
		t.Fatal("NewLive(nil) is not nil: a missing file would look configured")
	}
	a := loadUsersText(t, "allow_anonymous: true\n")
	b := loadUsersText(t, "allow_anonymous: false\n")
	l := NewLive(a)
	if l.Load() != a {
		t.Fatal("Load does not return the file NewLive was given")
	}
	if old := l.Swap(b); old != a {
		t.Fatalf("Swap returned %p, want the file it replaced (%p)", old, a)
	}
	if l.Load() != b || l.Load().AllowAnonymous() {
		t.Fatal("Load does not return the swapped-in file")
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Error("Swap(nil) did not panic: a reload could fall back to no users file, which allows everything")
			}
		}()
		l.Swap(nil)
	}()
	if l.Load() != b {
		t.Fatal("Swap(nil) replaced the file in force")
	}
}

// Decisions running while files are swapped each see one whole file; the
// race detector checks the rest.
func TestLiveSwapWhileReading(t *testing.T) {
	open := loadUsersText(t, "acls:\n  - {all: true, topic: \"#\", access: all}\n")
	closed := loadUsersText(t, "acls:\n  - {all: true, topic: \"nothing\", access: all}\n")
	l := NewLive(open)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				u := l.Load()
				if u != open && u != closed {
					t.Error("Load returned neither file")
					return
				}
				if got, want := u.CanPublish("x", "c", "a/b"), u == open; got != want {
					t.Errorf("CanPublish = %v on the file that says %v", got, want)
					return
				}
			}
		}()
	}
	for i := range 1000 {
		if i%2 == 0 {
			l.Swap(closed)
		} else {
			l.Swap(open)
		}
	}
	close(stop)
	wg.Wait()
}

// The ACL check of every publish goes through Load: it must not allocate.
func TestLiveLoadDoesNotAllocate(t *testing.T) {
	l := NewLive(loadUsersText(t, "users:\n  - {username: dev}\nacls:\n  - {user: dev, topic: \"devices/%u/#\", access: all}\n"))
	var ok bool
	if n := testing.AllocsPerRun(100, func() { ok = l.Load().CanPublish("dev", "c1", "devices/dev/t") }); n != 0 {
		t.Fatalf("Load and CanPublish allocate %v times per check", n)
	}
	if !ok {
		t.Fatal("the check refused an allowed publish")
	}
}

func TestUsersRevokes(t *testing.T) {
	devHash, newHash := testHash(t, "pw", bcrypt.MinCost), testHash(t, "new-pw", bcrypt.MinCost)
	old := loadUsersText(t, `allow_anonymous: true
users:
  - {username: dev, password_hash: "`+devHash+`", groups: [a]}
  - {username: gone, password_hash: "`+devHash+`"}
  - {username: cert-only}
`)
	tests := []struct {
		name, file, user string
		want             bool
	}{
		{"unchanged", `allow_anonymous: true
users:
  - {username: dev, password_hash: "` + devHash + `", groups: [a]}
  - {username: cert-only}
`, "dev", false},
		{"removed", `users: [{username: dev, password_hash: "` + devHash + `"}]`, "gone", true},
		{"password changed", `users: [{username: dev, password_hash: "` + newHash + `"}]`, "dev", true},
		{"password removed", `users: [{username: dev}]`, "dev", true},
		{"password added to a certificate-only user", `users: [{username: cert-only, password_hash: "` + newHash + `"}]`, "cert-only", true},
		{"groups changed", `users: [{username: dev, password_hash: "` + devHash + `", groups: [b]}]`, "dev", false},
		{"anonymous no longer allowed", `users: [{username: dev}]`, "", true},
		{"anonymous still allowed", "allow_anonymous: true\n", "", false},
		{"a name the old file did not know either", "allow_anonymous: true\n", "stranger", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := loadUsersText(t, tt.file).Revokes(old, tt.user); got != tt.want {
				t.Fatalf("Revokes(%q) = %v, want %v", tt.user, got, tt.want)
			}
		})
	}
	var none *Users
	if none.Revokes(nil, "anyone") || none.Revokes(nil, "") {
		t.Error("without a users file nothing is revoked")
	}
	if !old.Admits("dev") || !old.Admits("") || old.Admits("stranger") || old.Len() != 3 {
		t.Errorf("Admits or Len wrong for the old file")
	}
}
