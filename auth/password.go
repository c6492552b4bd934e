package auth

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/term"
)

// PasswordCost is the bcrypt cost HashPassword uses: 2^10 rounds, about
// 50–100 ms per check on a current server core. Every failed MQTT login
// pays it, which is the point, and so does every successful one.
const PasswordCost = 10

// maxLineBytes bounds a password read from a pipe.
const maxLineBytes = 4096

// ErrEmptyPassword is returned for an empty password: it would lock
// nothing.
var ErrEmptyPassword = errors.New("the password is empty")

// ErrPasswordMismatch is returned when the two passwords typed at a
// terminal differ.
var ErrPasswordMismatch = errors.New("the passwords do not match")

// HashPassword returns the bcrypt hash (cost PasswordCost) of pw, for the
// password_hash key of the users file. bcrypt reads at most 72 bytes, so
// a longer password is refused rather than silently cut.
func HashPassword(pw []byte) (string, error) {
	if len(pw) == 0 {
		return "", ErrEmptyPassword
	}
	if len(pw) > maxPasswordBytes {
		return "", fmt.Errorf("the password is %d bytes long; bcrypt uses at most %d", len(pw), maxPasswordBytes)
	}
	h, err := bcrypt.GenerateFromPassword(pw, PasswordCost)
	if err != nil {
		return "", fmt.Errorf("hashing the password: %w", err)
	}
	return string(h), nil
}

// ReadPassword reads a new password. When in is a terminal it writes a
// prompt to prompt, reads without echo, asks again to confirm and fails
// with ErrPasswordMismatch if the two differ. Otherwise (a pipe or a
// file) it reads one line, removing only the line ending ("\n" or "\r\n"),
// so that spaces stay part of the password. It reads byte by byte, leaving
// whatever follows the line unread. An empty password is ErrEmptyPassword.
func ReadPassword(in io.Reader, prompt io.Writer) ([]byte, error) {
	if f, ok := in.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		return readTerminal(int(f.Fd()), prompt)
	}
	pw, err := readLine(in)
	if err != nil {
		return nil, err
	}
	if len(pw) == 0 {
		return nil, ErrEmptyPassword
	}
	return pw, nil
}

func readTerminal(fd int, prompt io.Writer) ([]byte, error) {
	fmt.Fprint(prompt, "Password: ")
	pw, err := term.ReadPassword(fd)
	fmt.Fprintln(prompt)
	if err != nil {
		return nil, fmt.Errorf("reading the password: %w", err)
	}
	if len(pw) == 0 {
		return nil, ErrEmptyPassword
	}
	fmt.Fprint(prompt, "Password again: ")
	again, err := term.ReadPassword(fd)
	fmt.Fprintln(prompt)
	if err != nil {
		return nil, fmt.Errorf("reading the password: %w", err)
	}
	if !bytes.Equal(pw, again) {
		clear(pw)
		clear(again)
		return nil, ErrPasswordMismatch
	}
	clear(again)
	return pw, nil
}

func readLine(in io.Reader) ([]byte, error) {
	var line []byte
	b := make([]byte, 1)
	for {
		n, err := in.Read(b)
		if n == 1 {
			if b[0] == '\n' {
				break
			}
			if len(line) == maxLineBytes {
				clear(line)
				return nil, fmt.Errorf("reading the password: the line is longer than %d bytes", maxLineBytes)
			}
			line = append(line, b[0])
			continue
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			clear(line)
			return nil, fmt.Errorf("reading the password: %w", err)
		}
	}
	return bytes.TrimSuffix(line, []byte{'\r'}), nil
}
