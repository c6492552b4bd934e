package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
)

// Tokens is a loaded tokens file: the bearer tokens that the HTTP and
// WebSocket API accepts, each standing for a user. Only a SHA-256 hash of
// each token is kept; tokens are random high-entropy strings, so a fast
// hash is enough (unlike passwords). It is safe for concurrent use and,
// like Users, never changes after loading.
//
//	tokens:
//	  - name: ci          # unique; used in logs instead of the token
//	    user: dev         # the username the token acts as (for kafka_acls)
//	    sha256: "9f86d0…" # hex SHA-256 of the token, from `tributary token`
type Tokens struct {
	tokens []token
}

type token struct {
	name, user string
	hash       [sha256.Size]byte
}

type tokensFile struct {
	Tokens []tokenEntry `yaml:"tokens"`
}

type tokenEntry struct {
	Name   string `yaml:"name"`
	User   string `yaml:"user"`
	SHA256 string `yaml:"sha256"`
}

// LoadTokens reads and checks a tokens file, reporting every problem at
// once as LoadUsers does.
func LoadTokens(path string) (*Tokens, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading tokens file: %w", err)
	}
	return parseTokens(path, data)
}

func parseTokens(path string, data []byte) (*Tokens, error) {
	var f tokensFile
	p, ok := decodeStrict(path, data, &f)
	if !ok {
		return nil, p.err()
	}
	if !p.present("tokens") {
		p.addf(nil, "tokens: the list of tokens is missing")
		return nil, p.err()
	}
	t := &Tokens{}
	names := map[string]bool{}
	hashes := map[[sha256.Size]byte]string{}
	for i, e := range f.Tokens {
		at := []any{"tokens", i}
		switch {
		case e.Name == "":
			p.addf(append(at, "name"), "a name is required")
		case names[e.Name]:
			p.addf(append(at, "name"), "%q is listed twice", e.Name)
		}
		names[e.Name] = true
		if e.User == "" {
			p.addf(append(at, "user"), "token %q: a user is required", e.Name)
		}
		var h [sha256.Size]byte
		if n, err := hex.Decode(h[:], []byte(e.SHA256)); err != nil || n != sha256.Size || len(e.SHA256) != 2*sha256.Size {
			// Not echoed: someone may have pasted the token itself.
			p.addf(append(at, "sha256"), "token %q: want the 64 hex digits of the token's SHA-256 (from `tributary token`), not the token", e.Name)
			continue
		}
		if other, ok := hashes[h]; ok {
			p.addf(append(at, "sha256"), "token %q has the same hash as token %q", e.Name, other)
		}
		hashes[h] = e.Name
		t.tokens = append(t.tokens, token{name: e.Name, user: e.User, hash: h})
	}
	if len(p.errs) > 0 {
		return nil, p.err()
	}
	return t, nil
}

// TokenSum is a token's SHA-256, which is all the tokens file holds of
// it. A socket opened with a token keeps its sum rather than the token, to
// check after a reload that the token is still listed.
type TokenSum [sha256.Size]byte

// SumToken returns tok's TokenSum.
func SumToken(tok string) TokenSum { return sha256.Sum256([]byte(tok)) }

// Len returns how many tokens the file lists.
func (t *Tokens) Len() int {
	if t == nil {
		return 0
	}
	return len(t.tokens)
}

// Lookup returns the user a token acts as, and the token's name for logs.
// It compares against every token in constant time, so timing tells
// nothing about how much of a guess was right.
func (t *Tokens) Lookup(tok string) (username, name string, ok bool) {
	if tok == "" {
		return "", "", false
	}
	return t.LookupSum(SumToken(tok))
}

// LookupSum is Lookup for the token whose SHA-256 is sum.
func (t *Tokens) LookupSum(sum TokenSum) (username, name string, ok bool) {
	if t == nil {
		return "", "", false
	}
	found := -1
	for i := range t.tokens {
		if subtle.ConstantTimeCompare(sum[:], t.tokens[i].hash[:]) == 1 {
			found = i
		}
	}
	if found < 0 {
		return "", "", false
	}
	return t.tokens[found].user, t.tokens[found].name, true
}

// NewToken makes an API token: 32 random bytes, base64url without padding
// (43 characters). The token is shown once to whoever asked for it; only
// sha256hex goes into the tokens file.
func NewToken() (tok, sha256hex string, err error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", "", fmt.Errorf("making a token: %w", err)
	}
	tok = base64.RawURLEncoding.EncodeToString(b)
	h := sha256.Sum256([]byte(tok))
	return tok, hex.EncodeToString(h[:]), nil
}
