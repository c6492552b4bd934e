package auth

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"
)

func TestHashPassword(t *testing.T) {
	t.Parallel() // bcrypt at cost 10 takes seconds under the race detector
	h, err := HashPassword([]byte("correct horse"))
	if err != nil {
		t.Fatal(err)
	}
	if cost, err := bcrypt.Cost([]byte(h)); err != nil || cost != PasswordCost {
		t.Fatalf("cost %d, %v; want %d", cost, err, PasswordCost)
	}
	if _, err := checkHash(h); err != nil {
		t.Fatalf("the users file would refuse the hash: %v", err)
	}
	if err := bcrypt.CompareHashAndPassword([]byte(h), []byte("correct horse")); err != nil {
		t.Fatalf("the hash does not check: %v", err)
	}
	if _, err := HashPassword(nil); !errors.Is(err, ErrEmptyPassword) {
		t.Fatalf("empty password: %v", err)
	}
	if _, err := HashPassword(bytes.Repeat([]byte("x"), 73)); err == nil || !strings.Contains(err.Error(), "at most 72") {
		t.Fatalf("73-byte password: %v", err)
	}
}

// oneByteReader hands out one byte per Read, like a slow pipe.
type oneByteReader struct{ r io.Reader }

func (o oneByteReader) Read(p []byte) (int, error) { return o.r.Read(p[:1]) }

func TestReadPasswordFromPipe(t *testing.T) {
	tests := []struct {
		name, in, want string
		err            string
	}{
		{"line", "s3cret\n", "s3cret", ""},
		{"crlf", "s3cret\r\n", "s3cret", ""},
		{"no newline", "s3cret", "s3cret", ""},
		{"spaces kept", "  s3 cret \t\n", "  s3 cret \t", ""},
		{"only the first line", "first\nsecond\n", "first", ""},
		{"empty", "\n", "", "empty"},
		{"nothing", "", "", "empty"},
		{"too long", strings.Repeat("x", maxLineBytes+1) + "\n", "", "longer than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var prompt bytes.Buffer
			r := strings.NewReader(tt.in)
			pw, err := ReadPassword(oneByteReader{r}, &prompt)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err %v, want one containing %q", err, tt.err)
				}
				return
			}
			if err != nil || string(pw) != tt.want {
				t.Fatalf("got %q, %v; want %q", pw, err, tt.want)
			}
			if prompt.Len() != 0 {
				t.Fatalf("prompted %q when reading from a pipe", prompt.String())
			}
			if tt.name == "only the first line" && r.Len() != len("second\n") {
				t.Fatalf("read past the line: %d bytes left", r.Len())
			}
		})
	}
}
