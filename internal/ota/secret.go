package ota

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"strings"
)

// SecretKeyLen is the length of the key that encrypts device secrets at
// rest (AES-256).
const SecretKeyLen = 32

// sealedPrefix starts a device secret as stored encrypted: the prefix,
// then base64 of the GCM nonce and the ciphertext. A stored secret without
// it is plaintext (rows from before a key was configured).
const sealedPrefix = "v1:"

// ParseSecretKey reads a secret key: 32 bytes in hex or in base64
// (standard or URL alphabet, padded or not).
func ParseSecretKey(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if len(s) == 2*SecretKeyLen {
		if b, err := hex.DecodeString(s); err == nil {
			return b, nil
		}
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil && len(b) == SecretKeyLen {
			return b, nil
		}
	}
	return nil, Errorf(EINVALID, "a secret key must be %d bytes in hex (%d digits) or base64 (such as the output of openssl rand -base64 32)", SecretKeyLen, 2*SecretKeyLen)
}

// SecretBox encrypts device secrets for storage with AES-256-GCM, the
// device's client ID as additional data, so that a sealed secret copied
// to another device's row does not open. A nil *SecretBox is "no key":
// it stores secrets as they are and opens only plaintext ones.
type SecretBox struct {
	key cipher.AEAD
	// old opens secrets sealed with the previous key, during a rotation.
	old cipher.AEAD
}

// NewSecretBox returns a box sealing with key and opening with key or,
// when given, old (see ParseSecretKey).
func NewSecretBox(key, old []byte) (*SecretBox, error) {
	b := &SecretBox{}
	var err error
	if b.key, err = newGCM(key); err != nil {
		return nil, err
	}
	if old != nil {
		if b.old, err = newGCM(old); err != nil {
			return nil, err
		}
	}
	return b, nil
}

func newGCM(key []byte) (cipher.AEAD, error) {
	if len(key) != SecretKeyLen {
		return nil, Errorf(EINVALID, "a secret key must be %d bytes", SecretKeyLen)
	}
	c, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(c)
}

// Encrypts reports whether the box seals secrets (it has a key).
func (b *SecretBox) Encrypts() bool { return b != nil }

// IsSealed reports whether a stored device secret is encrypted.
func IsSealed(stored string) bool { return strings.HasPrefix(stored, sealedPrefix) }

// Seal returns the stored form of a device's secret: encrypted when the
// box has a key, else the secret itself.
func (b *SecretBox) Seal(productID, name, secret string) string {
	if b == nil {
		return secret
	}
	nonce := make([]byte, b.key.NonceSize(), b.key.NonceSize()+len(secret)+b.key.Overhead())
	rand.Read(nonce)
	sealed := b.key.Seal(nonce, nonce, []byte(secret), []byte(ClientID(productID, name)))
	return sealedPrefix + base64.RawStdEncoding.EncodeToString(sealed)
}

// Open returns a device's secret from its stored form. A plaintext one is
// returned as it is. A sealed one that the box cannot open (no key, a
// wrong key, or a row of another device) is EINTERNAL.
func (b *SecretBox) Open(productID, name, stored string) (string, error) {
	secret, _, err := b.open(productID, name, stored)
	return secret, err
}

// Reseal returns the stored form a device's secret should have: sealed
// with the box's key. changed is false when stored already is; a secret
// that does not open is an error, as in Open.
func (b *SecretBox) Reseal(productID, name, stored string) (next string, changed bool, err error) {
	secret, current, err := b.open(productID, name, stored)
	if err != nil || current || b == nil {
		return stored, false, err
	}
	return b.Seal(productID, name, secret), true, nil
}

// open also reports whether stored is sealed with the box's current key
// (true for a plaintext secret when the box has none).
func (b *SecretBox) open(productID, name, stored string) (secret string, current bool, err error) {
	enc, ok := strings.CutPrefix(stored, sealedPrefix)
	if !ok {
		return stored, b == nil, nil
	}
	if b == nil {
		return "", false, Errorf(EINTERNAL, "device secret is encrypted but no secret key is configured")
	}
	raw, err := base64.RawStdEncoding.DecodeString(enc)
	if err != nil || len(raw) < b.key.NonceSize() {
		return "", false, Errorf(EINTERNAL, "device secret is not in the encrypted form otad writes")
	}
	ad := []byte(ClientID(productID, name))
	nonce, ct := raw[:b.key.NonceSize()], raw[b.key.NonceSize():]
	if p, err := b.key.Open(nil, nonce, ct, ad); err == nil {
		return string(p), true, nil
	}
	if b.old != nil {
		if p, err := b.old.Open(nil, nonce, ct, ad); err == nil {
			return string(p), false, nil
		}
	}
	return "", false, Errorf(EINTERNAL, "device secret does not decrypt with the configured secret key")
}
