package ota

import (
	"crypto/hmac"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"hash"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestParseDeviceUsername(t *testing.T) {
	now := time.Unix(1_800_000_000, 0).UTC()
	tests := []struct {
		name     string
		username string
		expiry   time.Time // zero: never
		expired  bool
		reason   string
	}{
		{"seconds", "ABCDEFGHIJdev1;21010406;12345;1800000100", time.Unix(1800000100, 0), false, ""},
		{"seconds past", "ABCDEFGHIJdev1;21010406;12345;1799999999", time.Unix(1799999999, 0), true, ""},
		// The Python SDK sends the current time in milliseconds: read as
		// seconds, as the cloud does, it is far in the future (never).
		{"current time in milliseconds", "ABCDEFGHIJdev1;12010126;abcde;1800000000000", time.Time{}, false, ""},
		{"milliseconds an hour ago", "ABCDEFGHIJdev1;12010126;abcde;1799996400000", time.Time{}, false, ""},
		{"last second of year 9999", "ABCDEFGHIJdev1;1;abcde;253402300799", time.Unix(253402300799, 0), false, ""},
		{"first second of year 10000", "ABCDEFGHIJdev1;1;abcde;253402300800", time.Time{}, false, ""},
		{"max int64 never", "ABCDEFGHIJdev1;12010126;abcde;" + strconv.FormatInt(1<<63-1, 10), time.Time{}, false, ""},
		{"beyond uint64 never", "ABCDEFGHIJdev1;12010126;abcde;99999999999999999999999", time.Time{}, false, ""},
		{"year 9999 seconds", "ABCDEFGHIJdev1;1;abcde;253402300799", time.Unix(253402300799, 0), false, ""},
		{"device name with punctuation", "ABCDEFGHIJa_b.c:d@e-f;1;abcde;1800000100", time.Unix(1800000100, 0), false, ""},

		{"three parts", "ABCDEFGHIJdev1;1;1800000100", time.Time{}, false, AuthBadUsername},
		{"five parts", "ABCDEFGHIJdev1;1;a;1;1", time.Time{}, false, AuthBadUsername},
		{"empty", "", time.Time{}, false, AuthBadUsername},
		{"short client id", "ABCDEFGHIJ;1;abcde;1800000100", time.Time{}, false, AuthBadUsername},
		{"lowercase product", "abcdefghijdev1;1;abcde;1800000100", time.Time{}, false, AuthBadUsername},
		{"empty app id", "ABCDEFGHIJdev1;;abcde;1800000100", time.Time{}, false, AuthBadUsername},
		{"empty conn id", "ABCDEFGHIJdev1;1;;1800000100", time.Time{}, false, AuthBadUsername},
		{"negative expiry", "ABCDEFGHIJdev1;1;abcde;-5", time.Time{}, false, AuthBadUsername},
		{"text expiry", "ABCDEFGHIJdev1;1;abcde;soon", time.Time{}, false, AuthBadUsername},
		{"empty expiry", "ABCDEFGHIJdev1;1;abcde;", time.Time{}, false, AuthBadUsername},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, err := (DeviceLogin{ClientID: strings.SplitN(tt.username, ";", 2)[0], Username: tt.username}).Parse(now)
			if tt.reason != "" {
				if ErrorCode(err) != EUNAUTHORIZED || AuthReason(err) != tt.reason {
					t.Fatalf("err = %v (reason %q), want %s", err, AuthReason(err), tt.reason)
				}
				return
			}
			if tt.expired {
				if AuthReason(err) != AuthExpired {
					t.Fatalf("err = %v, want expired", err)
				}
				u, err = ParseDeviceUsername(tt.username)
			}
			if err != nil {
				t.Fatal(err)
			}
			if !u.Expiry.Equal(tt.expiry) {
				t.Fatalf("expiry = %v, want %v", u.Expiry, tt.expiry)
			}
			if u.Expired(now) != tt.expired {
				t.Fatalf("expired = %v", u.Expired(now))
			}
		})
	}
}

func TestDeviceLoginCheck(t *testing.T) {
	now := time.Unix(1_800_000_000, 0).UTC()
	key := []byte("0123456789abcdef")
	secret := base64.StdEncoding.EncodeToString(key)
	dev := &Device{ProductID: "ABCDEFGHIJ", Name: "dev1", Secret: secret}
	user := "ABCDEFGHIJdev1;21010406;12345;1800000100"
	sign := func(h func() hash.Hash) string {
		m := hmac.New(h, key)
		m.Write([]byte(user))
		return hex.EncodeToString(m.Sum(nil))
	}
	sha1sig, sha256sig := sign(sha1.New), sign(sha256.New)
	// SignDeviceUsername agrees with an independent computation.
	if p, _ := SignDeviceUsername(secret, user, SignHMACSHA256); p != sha256sig+";hmacsha256" {
		t.Fatalf("SignDeviceUsername = %s", p)
	}
	if p, _ := SignDeviceUsername(secret, user, SignHMACSHA1); p != sha1sig+";hmacsha1" {
		t.Fatalf("SignDeviceUsername = %s", p)
	}
	disabled := *dev
	disabled.Disabled = true
	other := *dev
	other.Secret = base64.StdEncoding.EncodeToString([]byte("another key 1234"))

	tests := []struct {
		name   string
		login  DeviceLogin
		dev    *Device
		reason string // "" ok
	}{
		{"sha256", DeviceLogin{"ABCDEFGHIJdev1", user, sha256sig + ";hmacsha256"}, dev, ""},
		{"sha1", DeviceLogin{"ABCDEFGHIJdev1", user, sha1sig + ";hmacsha1"}, dev, ""},
		{"uppercase hex accepted", DeviceLogin{"ABCDEFGHIJdev1", user, strings.ToUpper(sha256sig) + ";hmacsha256"}, dev, ""},
		{"wrong alg for signature", DeviceLogin{"ABCDEFGHIJdev1", user, sha1sig + ";hmacsha256"}, dev, AuthBadSignature},
		{"wrong secret", DeviceLogin{"ABCDEFGHIJdev1", user, sha256sig + ";hmacsha256"}, &other, AuthBadSignature},
		{"tampered username", DeviceLogin{"ABCDEFGHIJdev1", "ABCDEFGHIJdev1;21010406;12345;1800000999", sha256sig + ";hmacsha256"}, dev, AuthBadSignature},
		{"unknown alg", DeviceLogin{"ABCDEFGHIJdev1", user, sha256sig + ";hmacmd5"}, dev, AuthBadPassword},
		{"no alg", DeviceLogin{"ABCDEFGHIJdev1", user, sha256sig}, dev, AuthBadPassword},
		{"not hex", DeviceLogin{"ABCDEFGHIJdev1", user, "zz;hmacsha256"}, dev, AuthBadPassword},
		{"empty password", DeviceLogin{"ABCDEFGHIJdev1", user, ""}, dev, AuthBadPassword},
		{"client id mismatch", DeviceLogin{"ABCDEFGHIJdev2", user, sha256sig + ";hmacsha256"}, dev, AuthClientIDMismatch},
		{"disabled", DeviceLogin{"ABCDEFGHIJdev1", user, sha256sig + ";hmacsha256"}, &disabled, AuthDisabled},
		{"expired", DeviceLogin{"ABCDEFGHIJdev1", "ABCDEFGHIJdev1;21010406;12345;1700000000", ""}, dev, AuthExpired},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.login.Check(tt.dev, now)
			if tt.reason == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if ErrorCode(err) != EUNAUTHORIZED || AuthReason(err) != tt.reason {
				t.Fatalf("err = %v (reason %q), want %s", err, AuthReason(err), tt.reason)
			}
			if strings.Contains(err.Error(), secret) {
				t.Fatal("error leaks the secret")
			}
		})
	}
}
