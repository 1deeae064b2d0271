package ota

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"net/url"
	"strings"
	"time"
)

// Download URLs are what a device fetches its firmware from. The device SDKs
// constrain them (PROTOCOL.md, "Firmware download"): plain http must work,
// the host is at most 64 characters, the path is exactly one segment, and
// nothing in it may need escaping. So a URL is {public URL}/{token}, where
// the token is unpadded base64url of
//
//	format (1 byte, tokenFormat)
//	expiry (8 bytes, Unix seconds, big endian)
//	product ID (10 bytes)
//	MD5 prefix (4 bytes of the image's MD5: binds the URL to one upload, so
//	            a version deleted and uploaded again with other bytes no
//	            longer answers to old URLs)
//	version (1 to 32 bytes)
//	MAC (16 bytes: HMAC-SHA256 over everything before it, truncated)
//
// which makes a token 55 to 95 characters long.

const (
	tokenFormat    = 1
	tokenMD5Len    = 4
	tokenMACLen    = 16
	tokenHeaderLen = 1 + 8 + ProductIDLen + tokenMD5Len
	tokenMinLen    = tokenHeaderLen + 1 + tokenMACLen
	tokenMaxLen    = tokenHeaderLen + VersionMaxLen + tokenMACLen

	// DownloadHostMaxLen is the longest host (with port) a device SDK
	// accepts in a download URL.
	DownloadHostMaxLen = 64
	// DownloadSecretMinLen is the shortest download signing secret.
	DownloadSecretMinLen = 16
)

// DownloadSigner makes and checks signed, expiring firmware download URLs.
// It is safe for concurrent use. Replicas that share a bucket must share the
// secret, or a device may be sent to a replica that refuses its URL.
type DownloadSigner struct {
	base   string // scheme://host, no trailing slash
	secret []byte
}

// NewDownloadSigner returns a signer for URLs under publicURL, which must be
// an http or https URL with a host of at most 64 characters and no path
// (devices derive the Host header from everything before the last slash).
// The secret must be at least 16 bytes. Both problems are EINVALID.
func NewDownloadSigner(publicURL string, secret []byte) (*DownloadSigner, error) {
	base, err := DownloadBase(publicURL, true)
	if err != nil {
		return nil, err
	}
	if len(secret) < DownloadSecretMinLen {
		return nil, Errorf(EINVALID, "download signing secret must be at least %d bytes", DownloadSecretMinLen)
	}
	return &DownloadSigner{base: base, secret: append([]byte(nil), secret...)}, nil
}

// DownloadBase checks a public download URL against the device SDKs'
// rules and returns it as scheme://host[:port]: http or https, a host of at
// most 64 characters, and no path, query or credentials (devices derive the
// Host header from everything before the last slash). The scheme's own port
// (:80, :443) is dropped: the C SDK takes everything between "://" and the
// first "/" as the host name, so http://host:80/x fails its DNS lookup. Any
// other port is refused unless allowPort, since C SDK devices then cannot
// download at all. A URL that breaks a rule is EINVALID.
func DownloadBase(publicURL string, allowPort bool) (string, error) {
	u, err := url.Parse(publicURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", Errorf(EINVALID, "public URL must be an absolute http:// or https:// URL")
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.ForceQuery || (u.Path != "" && u.Path != "/") {
		return "", Errorf(EINVALID, "public URL must be scheme://host[:port] with no path, query or credentials: device SDKs take everything before the last slash as the host")
	}
	host := u.Host
	if port := u.Port(); port != "" {
		if port == map[string]string{"http": "80", "https": "443"}[u.Scheme] {
			host = strings.TrimSuffix(host, ":"+port)
		} else if !allowPort {
			return "", Errorf(EINVALID, "public URL must not name port %s: Tencent's C device SDK connects to port 80 (443 for https) "+
				"and takes host:port for the host name, so its devices could not download; serve downloads on port 80 "+
				"(OTAD_DOWNLOAD_ADDR=:80 or a proxy), or allow the port knowing it breaks those devices", port)
		}
	}
	if len(host) > DownloadHostMaxLen {
		return "", Errorf(EINVALID, "public URL host must be at most %d characters (a device SDK limit)", DownloadHostMaxLen)
	}
	return u.Scheme + "://" + host, nil
}

// URL returns the download URL of f that stops working at expires.
// f must carry a valid product ID, version and MD5.
func (s *DownloadSigner) URL(f *Firmware, expires time.Time) string {
	return s.base + "/" + s.Token(f, expires)
}

// Token returns the last path segment of f's download URL.
func (s *DownloadSigner) Token(f *Firmware, expires time.Time) string {
	b := make([]byte, 0, tokenMaxLen)
	b = append(b, tokenFormat)
	b = binary.BigEndian.AppendUint64(b, uint64(expires.Unix()))
	b = append(b, f.ProductID...)
	b = append(b, md5Prefix(f.MD5)...)
	b = append(b, f.Version...)
	b = append(b, s.mac(b)...)
	return base64.RawURLEncoding.EncodeToString(b)
}

// DownloadTarget is what a verified token names.
type DownloadTarget struct {
	ProductID string
	Version   string
	Expires   time.Time
	md5Prefix []byte
}

// Matches reports whether f is the upload the token was signed for: the
// same version may have been deleted and uploaded again with other bytes.
func (t *DownloadTarget) Matches(f *Firmware) bool {
	return f.ProductID == t.ProductID && f.Version == t.Version && hmac.Equal(md5Prefix(f.MD5), t.md5Prefix)
}

// Verify checks a token at time now. A token that does not decode into one
// this signer could have made is ENOTFOUND (the device reports "file does not
// exist"); a well-formed token whose MAC does not match, or whose expiry has
// passed, is EFORBIDDEN (the device reports "signature expired").
func (s *DownloadSigner) Verify(token string, now time.Time) (*DownloadTarget, error) {
	if len(token) < base64.RawURLEncoding.EncodedLen(tokenMinLen) || len(token) > base64.RawURLEncoding.EncodedLen(tokenMaxLen) {
		return nil, Errorf(ENOTFOUND, "no such download")
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(token)
	if err != nil || len(b) < tokenMinLen || b[0] != tokenFormat {
		return nil, Errorf(ENOTFOUND, "no such download")
	}
	body, mac := b[:len(b)-tokenMACLen], b[len(b)-tokenMACLen:]
	if !hmac.Equal(mac, s.mac(body)) {
		return nil, Errorf(EFORBIDDEN, "download URL signature does not match")
	}
	// The MAC holds, so the fields are as this signer wrote them; checking
	// them again only guards against a secret shared with buggy signers.
	t := &DownloadTarget{
		Expires:   time.Unix(int64(binary.BigEndian.Uint64(body[1:9])), 0).UTC(),
		ProductID: string(body[9 : 9+ProductIDLen]),
		md5Prefix: body[9+ProductIDLen : tokenHeaderLen],
		Version:   string(body[tokenHeaderLen:]),
	}
	if ValidateProductID(t.ProductID) != nil || ValidateVersion(t.Version) != nil {
		return nil, Errorf(ENOTFOUND, "no such download")
	}
	if !now.Before(t.Expires) {
		return nil, Errorf(EFORBIDDEN, "download URL expired")
	}
	return t, nil
}

func (s *DownloadSigner) mac(b []byte) []byte {
	h := hmac.New(sha256.New, s.secret)
	h.Write([]byte("otad download v1\x00"))
	h.Write(b)
	return h.Sum(nil)[:tokenMACLen]
}

// md5Prefix returns the first bytes of a hex MD5, or zeros when it is not
// hex (which then matches no stored firmware).
func md5Prefix(md5hex string) []byte {
	b, err := hex.DecodeString(strings.ToLower(md5hex))
	if err != nil || len(b) < tokenMD5Len {
		return make([]byte, tokenMD5Len)
	}
	return b[:tokenMD5Len]
}
