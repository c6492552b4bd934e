package auth

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

// openPTY opens a pseudo-terminal: the terminal end that ReadPassword reads
// and the controller end the test types into.
func openPTY(t *testing.T) (tty, ctl *os.File) {
	t.Helper()
	fd, err := syscall.Open("/dev/ptmx", syscall.O_RDWR|syscall.O_NOCTTY|syscall.O_CLOEXEC, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	ctl = os.NewFile(uintptr(fd), "ptmx")
	t.Cleanup(func() { ctl.Close() })
	var unlock int32
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), syscall.TIOCSPTLCK, uintptr(unsafe.Pointer(&unlock))); e != 0 {
		t.Fatalf("unlocking the pty: %v", e)
	}
	var n uint32
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), syscall.TIOCGPTN, uintptr(unsafe.Pointer(&n))); e != 0 {
		t.Fatalf("naming the pty: %v", e)
	}
	tty, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tty.Close() })
	// Drain what the terminal echoes, so that it never fills up.
	go func() { _, _ = io.Copy(io.Discard, ctl) }()
	return tty, ctl
}

func TestReadPasswordFromTerminal(t *testing.T) {
	tests := []struct {
		name, typed, want string
		err               error
	}{
		{"confirmed", "s3 cret\ns3 cret\n", "s3 cret", nil},
		{"mismatch", "s3cret\ns3cre7\n", "", ErrPasswordMismatch},
		{"empty", "\n", "", ErrEmptyPassword},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tty, ctl := openPTY(t)
			if _, err := ctl.Write([]byte(tt.typed)); err != nil {
				t.Fatal(err)
			}
			var prompt bytes.Buffer
			type result struct {
				pw  []byte
				err error
			}
			done := make(chan result, 1)
			go func() {
				pw, err := ReadPassword(tty, &prompt)
				done <- result{pw, err}
			}()
			var r result
			select {
			case r = <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("ReadPassword did not return")
			}
			if tt.err != nil {
				if !errors.Is(r.err, tt.err) {
					t.Fatalf("err %v, want %v", r.err, tt.err)
				}
				return
			}
			if r.err != nil || string(r.pw) != tt.want {
				t.Fatalf("got %q, %v; want %q", r.pw, r.err, tt.want)
			}
			if p := prompt.String(); !strings.Contains(p, "Password: ") || !strings.Contains(p, "Password again: ") {
				t.Fatalf("prompt %q, want it to ask twice", p)
			}
		})
	}
}
