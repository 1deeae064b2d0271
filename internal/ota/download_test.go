package ota

import (
	"encoding/base64"
	"net/url"
	"strings"
	"testing"
	"time"
)

func testSigner(t testing.TB) *DownloadSigner {
	t.Helper()
	s, err := NewDownloadSigner("http://fw.example.com", []byte("0123456789abcdef0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

var testFirmware = &Firmware{ProductID: "ABCDEF1234", Version: "1.0.1", MD5: "cc03e747a6afbbcbf8be7668acfebee5"}

func TestNewDownloadSigner(t *testing.T) {
	secret := []byte("0123456789abcdef")
	tests := []struct {
		url string
		ok  bool
	}{
		{"http://fw.example.com", true},
		{"http://fw.example.com/", true},
		{"https://fw.example.com:8443", true},
		{"http://127.0.0.1:8080", true},
		{"http://" + strings.Repeat("a", 64), true},
		{"http://" + strings.Repeat("a", 65), false},
		{"ftp://fw.example.com", false},
		{"fw.example.com", false},
		{"http://fw.example.com/firmware", false},
		{"http://fw.example.com/?x=1", false},
		{"http://user:pw@fw.example.com", false},
		{"http://", false},
		{"", false},
	}
	for _, tt := range tests {
		_, err := NewDownloadSigner(tt.url, secret)
		if (err == nil) != tt.ok {
			t.Errorf("NewDownloadSigner(%q) error = %v, want ok=%v", tt.url, err, tt.ok)
		}
		if err != nil && ErrorCode(err) != EINVALID {
			t.Errorf("NewDownloadSigner(%q) code = %s, want invalid", tt.url, ErrorCode(err))
		}
	}
	if _, err := NewDownloadSigner("http://fw.example.com", []byte("short")); ErrorCode(err) != EINVALID {
		t.Errorf("short secret: error = %v, want invalid", err)
	}
}

func TestDownloadURLShape(t *testing.T) {
	s := testSigner(t)
	now := time.Now()
	for _, v := range []string{"1", "1.0.1", strings.Repeat("~", VersionMaxLen), "a/../b%2e&?#"} {
		f := *testFirmware
		f.Version = v
		raw := s.URL(&f, now.Add(time.Hour))
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		if u.Host != "fw.example.com" || u.RawQuery != "" {
			t.Errorf("URL %q: unexpected host or query", raw)
		}
		tok := strings.TrimPrefix(u.Path, "/")
		if strings.Contains(tok, "/") || tok == "" {
			t.Errorf("URL %q: path is not exactly one segment", raw)
		}
		if url.PathEscape(tok) != tok || u.EscapedPath() != u.Path {
			t.Errorf("URL %q: token needs escaping", raw)
		}
		if len(tok) > 95 {
			t.Errorf("token of version %q is %d characters, want at most 95", v, len(tok))
		}
		got, err := s.Verify(tok, now)
		if err != nil {
			t.Fatalf("Verify(%q): %v", tok, err)
		}
		if got.ProductID != f.ProductID || got.Version != v || !got.Matches(&f) {
			t.Errorf("Verify = %+v, want product %s version %q", got, f.ProductID, v)
		}
	}
}

func TestDownloadVerify(t *testing.T) {
	s := testSigner(t)
	now := time.Unix(1_800_000_000, 0)
	good := s.Token(testFirmware, now.Add(time.Minute))
	other, err := NewDownloadSigner("http://fw.example.com", []byte("another secret of 32 bytes......"))
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := base64.RawURLEncoding.DecodeString(good)
	flip := func(i int) string {
		b := append([]byte(nil), raw...)
		b[i] ^= 1
		return base64.RawURLEncoding.EncodeToString(b)
	}
	// Re-signing with a bad format byte or bad fields yields tokens with
	// a valid MAC but content the signer never writes.
	resign := func(mutate func([]byte) []byte) string {
		b := mutate(append([]byte(nil), raw[:len(raw)-tokenMACLen]...))
		return base64.RawURLEncoding.EncodeToString(append(b, s.mac(b)...))
	}

	tests := []struct {
		name  string
		token string
		now   time.Time
		code  string
	}{
		{"valid", good, now, ""},
		{"valid until the last second", good, now.Add(time.Minute - time.Nanosecond), ""},
		{"expired at expiry", good, now.Add(time.Minute), EFORBIDDEN},
		{"expired long ago", good, now.Add(24 * time.Hour), EFORBIDDEN},
		{"expiry tampered", flip(8), now, EFORBIDDEN},
		{"product tampered", flip(10), now, EFORBIDDEN},
		{"md5 tampered", flip(tokenHeaderLen - 1), now, EFORBIDDEN},
		{"version tampered", flip(tokenHeaderLen), now, EFORBIDDEN},
		{"mac tampered", flip(len(raw) - 1), now, EFORBIDDEN},
		{"other secret", other.Token(testFirmware, now.Add(time.Minute)), now, EFORBIDDEN},
		{"format byte", flip(0), now, ENOTFOUND},
		{"empty", "", now, ENOTFOUND},
		{"not base64", strings.Repeat("*", len(good)), now, ENOTFOUND},
		{"padded", good + "=", now, ENOTFOUND},
		{"truncated", good[:len(good)-3], now, EFORBIDDEN},
		{"too short", good[:20], now, ENOTFOUND},
		{"too long", good + strings.Repeat("A", 60), now, ENOTFOUND},
		{"standard base64", strings.NewReplacer("-", "+", "_", "/").Replace(good) + "+/", now, ENOTFOUND},
		{"favicon", "favicon.ico", now, ENOTFOUND},
		{"bad product, valid mac", resign(func(b []byte) []byte { b[9] = 'a'; return b }), now, ENOTFOUND},
		{"bad version, valid mac", resign(func(b []byte) []byte { return append(b, ' ') }), now, ENOTFOUND},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.Verify(tt.token, tt.now)
			if code := ErrorCode(err); code != tt.code {
				t.Fatalf("Verify code = %q (%v), want %q", code, err, tt.code)
			}
			if err == nil && !got.Matches(testFirmware) {
				t.Fatalf("Verify = %+v, does not match the signed firmware", got)
			}
		})
	}
}

func TestDownloadTargetMatches(t *testing.T) {
	s := testSigner(t)
	now := time.Now()
	got, err := s.Verify(s.Token(testFirmware, now.Add(time.Hour)), now)
	if err != nil {
		t.Fatal(err)
	}
	reuploaded := *testFirmware
	reuploaded.MD5 = "00000000a6afbbcbf8be7668acfebee5"
	if got.Matches(&reuploaded) {
		t.Error("a token matches a re-upload of the version with other bytes")
	}
	upper := *testFirmware
	upper.MD5 = strings.ToUpper(upper.MD5)
	if !got.Matches(&upper) {
		t.Error("MD5 case matters to Matches")
	}
}

// Download URLs carry no port: the C SDK resolves "host:80" as a host name.
func TestDownloadBasePort(t *testing.T) {
	for _, c := range []struct {
		url       string
		allowPort bool
		want      string // "" for refused
	}{
		{"http://fw.example.com:80", false, "http://fw.example.com"},
		{"http://fw.example.com:80/", false, "http://fw.example.com"},
		{"https://fw.example.com:443", false, "https://fw.example.com"},
		{"http://[2001:db8::1]:80", false, "http://[2001:db8::1]"},
		{"http://fw.example.com", false, "http://fw.example.com"},
		{"http://fw.example.com:8080", false, ""},
		{"https://fw.example.com:80", false, ""},
		{"http://fw.example.com:8080", true, "http://fw.example.com:8080"},
		{"http://fw.example.com:80", true, "http://fw.example.com"},
	} {
		got, err := DownloadBase(c.url, c.allowPort)
		if c.want == "" {
			if err == nil || ErrorCode(err) != EINVALID || !strings.Contains(ErrorMessage(err), "C device SDK") {
				t.Errorf("DownloadBase(%q, %v) = %q, %v; want refused, saying why", c.url, c.allowPort, got, err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("DownloadBase(%q, %v) = %q, %v; want %q", c.url, c.allowPort, got, err, c.want)
		}
	}
	s, err := NewDownloadSigner("http://fw.example.com:80", []byte("0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}
	f := &Firmware{ProductID: "ABCDEFGHIJ", Version: "1.0", MD5: "cc03e747a6afbbcbf8be7668acfebee5"}
	if u := s.URL(f, time.Now().Add(time.Hour)); !strings.HasPrefix(u, "http://fw.example.com/") {
		t.Errorf("URL %q keeps the port", u)
	}
}
