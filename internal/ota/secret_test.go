package ota

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"strings"
	"testing"
)

func TestParseSecretKey(t *testing.T) {
	raw := bytes.Repeat([]byte{0xab}, 32)
	for _, s := range []string{
		hex.EncodeToString(raw), strings.ToUpper(hex.EncodeToString(raw)),
		base64.StdEncoding.EncodeToString(raw), base64.RawStdEncoding.EncodeToString(raw),
		base64.URLEncoding.EncodeToString(raw), " " + base64.StdEncoding.EncodeToString(raw) + "\n",
	} {
		if k, err := ParseSecretKey(s); err != nil || !bytes.Equal(k, raw) {
			t.Errorf("ParseSecretKey(%q) = %x, %v", s, k, err)
		}
	}
	for _, s := range []string{"", "short", hex.EncodeToString(raw[:31]), base64.StdEncoding.EncodeToString(raw[:16]),
		base64.StdEncoding.EncodeToString(append(raw, 1)), strings.Repeat("z", 64)} {
		if _, err := ParseSecretKey(s); !IsCode(err, EINVALID) {
			t.Errorf("ParseSecretKey(%q): %v, want invalid", s, err)
		}
	}
}

func TestSecretBox(t *testing.T) {
	key1, key2 := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	box, err := NewSecretBox(key1, nil)
	if err != nil {
		t.Fatal(err)
	}
	secret := NewDeviceSecret()
	sealed := box.Seal("ABCDEF1234", "dev", secret)
	if !IsSealed(sealed) || strings.Contains(sealed, secret) {
		t.Fatalf("sealed %q", sealed)
	}
	if box.Seal("ABCDEF1234", "dev", secret) == sealed {
		t.Fatal("two seals of one secret are equal: the nonce is not random")
	}
	if got, err := box.Open("ABCDEF1234", "dev", sealed); err != nil || got != secret {
		t.Fatalf("Open = %q, %v", got, err)
	}
	// Another device's row, another key, no key, garbage: never opens.
	other, _ := NewSecretBox(key2, nil)
	var none *SecretBox
	for name, open := range map[string]func() (string, error){
		"swapped row": func() (string, error) { return box.Open("ABCDEF1234", "dev2", sealed) },
		"other key":   func() (string, error) { return other.Open("ABCDEF1234", "dev", sealed) },
		"no key":      func() (string, error) { return none.Open("ABCDEF1234", "dev", sealed) },
		"truncated":   func() (string, error) { return box.Open("ABCDEF1234", "dev", sealed[:len(sealed)-4]) },
		"not base64":  func() (string, error) { return box.Open("ABCDEF1234", "dev", "v1:!!!") },
		"short":       func() (string, error) { return box.Open("ABCDEF1234", "dev", "v1:AAAA") },
	} {
		if got, err := open(); err == nil || got != "" {
			t.Errorf("%s: opened %q, %v", name, got, err)
		}
	}
	// Plaintext rows open as they are, with a key or without.
	for _, b := range []*SecretBox{box, none} {
		if got, err := b.Open("ABCDEF1234", "dev", secret); err != nil || got != secret {
			t.Errorf("plaintext Open = %q, %v", got, err)
		}
	}
	if none.Seal("ABCDEF1234", "dev", secret) != secret || none.Encrypts() || !box.Encrypts() {
		t.Fatal("a nil box must store secrets as they are")
	}

	// Reseal: plaintext and the old key's rows change, current ones do not.
	rotated, _ := NewSecretBox(key2, key1)
	for _, c := range []struct {
		name    string
		b       *SecretBox
		stored  string
		changed bool
	}{
		{"plaintext, key", box, secret, true},
		{"plaintext, no key", none, secret, false},
		{"current key", box, sealed, false},
		{"old key", rotated, sealed, true},
	} {
		next, changed, err := c.b.Reseal("ABCDEF1234", "dev", c.stored)
		if err != nil || changed != c.changed {
			t.Fatalf("%s: Reseal changed=%v, %v", c.name, changed, err)
		}
		if got, err := c.b.Open("ABCDEF1234", "dev", next); err != nil || got != secret {
			t.Fatalf("%s: resealed secret opens as %q, %v", c.name, got, err)
		}
		if changed && !IsSealed(next) {
			t.Fatalf("%s: resealed to %q", c.name, next)
		}
	}
	if _, _, err := other.Reseal("ABCDEF1234", "dev", sealed); err == nil {
		t.Fatal("Reseal with a wrong key succeeded")
	}
}

func TestScope(t *testing.T) {
	for _, c := range []struct {
		have, need Scope
		ok         bool
	}{
		{ScopeRead, ScopeRead, true}, {ScopeRead, ScopeOperator, false}, {ScopeRead, ScopeAdmin, false},
		{ScopeOperator, ScopeRead, true}, {ScopeOperator, ScopeOperator, true}, {ScopeOperator, ScopeAdmin, false},
		{ScopeAdmin, ScopeRead, true}, {ScopeAdmin, ScopeOperator, true}, {ScopeAdmin, ScopeAdmin, true},
		{"", ScopeRead, false}, {"root", ScopeRead, false},
	} {
		if got := c.have.Allows(c.need); got != c.ok {
			t.Errorf("%q.Allows(%q) = %v", c.have, c.need, got)
		}
	}
}
