package auth

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestNewTokenAndLookup(t *testing.T) {
	tok, sum, err := NewToken()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || len(raw) != 32 || len(tok) != 43 {
		t.Fatalf("token %q: want 32 random bytes in base64url without padding", tok)
	}
	if h := sha256.Sum256([]byte(tok)); hex.EncodeToString(h[:]) != sum {
		t.Fatalf("hash %s is not the token's SHA-256", sum)
	}
	other, _, err := NewToken()
	if err != nil || other == tok {
		t.Fatal("two tokens are the same")
	}

	path := filepath.Join(t.TempDir(), "tokens.yaml")
	text := "tokens:\n  - name: ci\n    user: dev\n    sha256: " + sum + "\n  - name: upper\n    user: ops\n    sha256: " +
		strings.ToUpper(hex.EncodeToString(sha256.New().Sum(nil))) + "\n"
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	tokens, err := LoadTokens(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		tok, user, name string
		ok              bool
	}{
		{tok, "dev", "ci", true},
		{other, "", "", false},
		{tok[:42], "", "", false},
		{"", "", "", false},  // the empty string's hash is listed (upper case), but an empty token is never valid
		{sum, "", "", false}, // the hash is not the token
	} {
		user, name, ok := tokens.Lookup(tt.tok)
		if user != tt.user || name != tt.name || ok != tt.ok {
			t.Errorf("Lookup(%q) = %q, %q, %v; want %q, %q, %v", tt.tok, user, name, ok, tt.user, tt.name, tt.ok)
		}
	}
	var none *Tokens
	if _, _, ok := none.Lookup(tok); ok {
		t.Error("a nil *Tokens accepted a token")
	}
}

func TestLoadTokensProblems(t *testing.T) {
	sum := strings.Repeat("ab", 32)
	tests := []struct {
		name, text string
		want       []string
	}{
		{"missing list", "other: 1\n", []string{"tokens.yaml:1: other: unknown key", "tokens: the list of tokens is missing"}},
		{"unknown key", "tokens:\n  - name: ci\n    user: dev\n    sha256: " + sum + "\n    secret: x\n", []string{"tokens.yaml:5: tokens[0].secret: unknown key"}},
		{"no name", "tokens:\n  - user: dev\n    sha256: " + sum + "\n", []string{"tokens.yaml:2: tokens[0].name: a name is required"}},
		{"no user", "tokens:\n  - name: ci\n    sha256: " + sum + "\n", []string{"tokens.yaml:2: tokens[0].user: token \"ci\": a user is required"}},
		{"token instead of hash", "tokens:\n  - name: ci\n    user: dev\n    sha256: pasted-the-token-itself\n", []string{"tokens.yaml:4: tokens[0].sha256: token \"ci\": want the 64 hex digits"}},
		{"short hash", "tokens:\n  - name: ci\n    user: dev\n    sha256: " + sum[:62] + "\n", []string{"tokens[0].sha256"}},
		{"duplicates", "tokens:\n  - name: ci\n    user: dev\n    sha256: " + sum + "\n  - name: ci\n    user: ops\n    sha256: " + sum + "\n",
			[]string{"tokens.yaml:5: tokens[1].name: \"ci\" is listed twice", "tokens.yaml:7: tokens[1].sha256: token \"ci\" has the same hash"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseTokens("tokens.yaml", []byte(tt.text))
			if err == nil {
				t.Fatal("loaded, want an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error:\n%v\nwant it to contain %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "pasted-the-token-itself") {
				t.Errorf("the error repeats what may be a token:\n%v", err)
			}
		})
	}
}

// A socket keeps only its token's sum and checks it again after a reload.
func TestLookupSum(t *testing.T) {
	tok, sum, err := NewToken()
	if err != nil {
		t.Fatal(err)
	}
	tokens, err := parseTokens("tokens.yaml", []byte("tokens:\n  - {name: ci, user: dev, sha256: "+sum+"}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if user, name, ok := tokens.LookupSum(SumToken(tok)); !ok || user != "dev" || name != "ci" {
		t.Fatalf("LookupSum = %q, %q, %v; want dev, ci, true", user, name, ok)
	}
	if _, _, ok := tokens.LookupSum(SumToken(tok + "x")); ok {
		t.Fatal("LookupSum accepted another token's sum")
	}
	var none *Tokens
	if _, _, ok := none.LookupSum(SumToken(tok)); ok || none.Len() != 0 || tokens.Len() != 1 {
		t.Fatal("a nil *Tokens accepted a token, or Len is wrong")
	}
}
