package ota

import (
	"strings"
	"testing"
)

func TestValidateProductID(t *testing.T) {
	for _, c := range []struct {
		id string
		ok bool
	}{
		{"ABCDEF1234", true},
		{"0000000000", true},
		{"abcdef1234", false},
		{"ABCDEF123", false},
		{"ABCDEF12345", false},
		{"ABCDEF123-", false},
		{"ABCDEF123\x00", false},
		{"", false},
		{"ÄBCDEF1234", false},
	} {
		if err := ValidateProductID(c.id); (err == nil) != c.ok {
			t.Errorf("ValidateProductID(%q) = %v, want ok=%v", c.id, err, c.ok)
		} else if err != nil && ErrorCode(err) != EINVALID {
			t.Errorf("ValidateProductID(%q) code %q", c.id, ErrorCode(err))
		}
	}
	for range 100 {
		if id := NewProductID(); ValidateProductID(id) != nil {
			t.Fatalf("NewProductID() = %q is not valid", id)
		}
	}
}

func TestValidateDeviceName(t *testing.T) {
	for _, c := range []struct {
		name string
		ok   bool
	}{
		{"a", true},
		{"dev_1.a:b@c-d", true},
		{".", false}, {"..", false}, {"...", true}, {".a", true},
		{strings.Repeat("x", 48), true},
		{strings.Repeat("x", 49), false},
		{"", false},
		{"a b", false},
		{"a/b", false},
		{"a+b", false},
		{"a#", false},
		{"../etc", false},
		{"é", false},
	} {
		if err := ValidateDeviceName(c.name); (err == nil) != c.ok {
			t.Errorf("ValidateDeviceName(%q) = %v, want ok=%v", c.name, err, c.ok)
		}
	}
}

func TestValidateVersion(t *testing.T) {
	for _, c := range []struct {
		v  string
		ok bool
	}{
		{".", false}, {"..", false}, {"1..2", true},
		{"1.0.0", true},
		{"v2.3-rc1+build.5", true},
		{strings.Repeat("9", 32), true},
		{strings.Repeat("9", 33), false},
		{"", false},
		{"1.0 beta", false},
		{"1.0\x00", false},
		{"1.0\n", false},
		{"版本", false},
	} {
		if err := ValidateVersion(c.v); (err == nil) != c.ok {
			t.Errorf("ValidateVersion(%q) = %v, want ok=%v", c.v, err, c.ok)
		}
	}
}

func TestDeviceSecret(t *testing.T) {
	s := NewDeviceSecret()
	key, err := DecodeDeviceSecret(s)
	if err != nil || len(key) != DeviceSecretLen || len(s) != 24 || !strings.HasSuffix(s, "==") {
		t.Fatalf("secret %q decodes to %d bytes, %v", s, len(key), err)
	}
	if NewDeviceSecret() == s {
		t.Fatal("two secrets are equal")
	}
	if _, err := DecodeDeviceSecret("not base64!"); ErrorCode(err) != EINVALID {
		t.Fatalf("bad secret: %v", err)
	}
}

func TestSplitClientID(t *testing.T) {
	pid, name, err := SplitClientID("ABCDEF1234dev-1")
	if err != nil || pid != "ABCDEF1234" || name != "dev-1" {
		t.Fatalf("SplitClientID = %q %q %v", pid, name, err)
	}
	for _, bad := range []string{"", "ABCDEF1234", "abcdef1234dev", "ABCDEF1234dev/1", "ABCDEF1234" + strings.Repeat("x", 49)} {
		if _, _, err := SplitClientID(bad); err == nil {
			t.Errorf("SplitClientID(%q) accepted", bad)
		}
	}
	if ClientID("ABCDEF1234", "d") != "ABCDEF1234d" {
		t.Fatal("ClientID")
	}
}

func TestValidateText(t *testing.T) {
	for _, c := range []struct {
		s  string
		ok bool
	}{
		{"hello\tworld\n", true},
		{"日本語 🙂", true},
		{"a\x00b", false},
		{"a\x1bb", false},
		{"\xff", false},
		{strings.Repeat("a", 11), false},
	} {
		if err := ValidateText("f", c.s, 10+len(c.s)*boolInt(c.ok)); (err == nil) != c.ok {
			t.Errorf("ValidateText(%q) = %v, want ok=%v", c.s, err, c.ok)
		}
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func TestErrorCode(t *testing.T) {
	if ErrorCode(nil) != "" || ErrorMessage(nil) != "" {
		t.Fatal("nil error has a code")
	}
	wrapped := wrap(Errorf(ECONFLICT, "taken"))
	if ErrorCode(wrapped) != ECONFLICT || ErrorMessage(wrapped) != "taken" {
		t.Fatalf("wrapped: %q %q", ErrorCode(wrapped), ErrorMessage(wrapped))
	}
	plain := errPlain("secret internals")
	if ErrorCode(plain) != EINTERNAL || strings.Contains(ErrorMessage(plain), "secret") {
		t.Fatalf("plain error: %q %q", ErrorCode(plain), ErrorMessage(plain))
	}
}

type errPlain string

func (e errPlain) Error() string { return string(e) }

type wrapper struct{ err error }

func (w wrapper) Error() string { return "doing x: " + w.err.Error() }
func (w wrapper) Unwrap() error { return w.err }

func wrap(err error) error { return wrapper{err} }
