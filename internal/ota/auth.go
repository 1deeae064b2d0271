package ota

import (
	"crypto/hmac"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"hash"
	"strconv"
	"strings"
	"time"
)

// Signature algorithms a device names at the end of its MQTT password.
const (
	SignHMACSHA1   = "hmacsha1"
	SignHMACSHA256 = "hmacsha256"
)

// maxExpiryUnix is the last second of year 9999. Larger expiries mean the
// credentials do not expire: the C SDK sends 2^63-1, and the Python SDK the
// current time in milliseconds, which the cloud reads, as otad does, as
// seconds far in the future.
const maxExpiryUnix = 253402300799

// DeviceUsername is the signed MQTT username of a device:
// {productID}{deviceName};{appID};{connID};{expiry}.
type DeviceUsername struct {
	ProductID  string
	DeviceName string
	AppID      string
	ConnID     string
	// Expiry is when the credentials stop being valid; zero means never.
	Expiry time.Time
}

// ParseDeviceUsername reads a device's MQTT username. The expiry is Unix
// seconds, always (PROTOCOL.md): one beyond year 9999 means never. It fails
// with EUNAUTHORIZED for anything malformed.
func ParseDeviceUsername(username string) (DeviceUsername, error) {
	parts := strings.Split(username, ";")
	if len(parts) != 4 {
		return DeviceUsername{}, Errorf(EUNAUTHORIZED, "username must be {clientID};{appID};{connID};{expiry}")
	}
	var u DeviceUsername
	var err error
	if u.ProductID, u.DeviceName, err = SplitClientID(parts[0]); err != nil {
		return DeviceUsername{}, Errorf(EUNAUTHORIZED, "username does not start with a valid client id: %s", ErrorMessage(err))
	}
	u.AppID, u.ConnID = parts[1], parts[2]
	if u.AppID == "" || len(u.AppID) > 32 || !printableASCII(u.AppID) {
		return DeviceUsername{}, Errorf(EUNAUTHORIZED, "username app id must be 1 to 32 printable characters")
	}
	if u.ConnID == "" || len(u.ConnID) > 32 || !printableASCII(u.ConnID) {
		return DeviceUsername{}, Errorf(EUNAUTHORIZED, "username connection id must be 1 to 32 printable characters")
	}
	exp := parts[3]
	if exp == "" || len(exp) > 40 || strings.Trim(exp, "0123456789") != "" {
		return DeviceUsername{}, Errorf(EUNAUTHORIZED, "username expiry must be a Unix time in seconds")
	}
	// More digits than 64 bits hold, or past year 9999: never.
	if n, err := strconv.ParseUint(exp, 10, 64); err == nil && n <= maxExpiryUnix {
		u.Expiry = time.Unix(int64(n), 0).UTC()
	}
	return u, nil
}

// ClientID returns the client ID the username was signed for.
func (u DeviceUsername) ClientID() string { return ClientID(u.ProductID, u.DeviceName) }

// Expired reports whether the credentials have expired at now.
func (u DeviceUsername) Expired(now time.Time) bool {
	return !u.Expiry.IsZero() && now.After(u.Expiry)
}

// SignDeviceUsername returns the MQTT password for username: the lowercase
// hex HMAC of the username keyed with the device secret's decoded bytes,
// then ";" and the algorithm (SignHMACSHA1 or SignHMACSHA256).
func SignDeviceUsername(secret, username, alg string) (string, error) {
	key, err := DecodeDeviceSecret(secret)
	if err != nil {
		return "", err
	}
	h, err := signHash(alg)
	if err != nil {
		return "", err
	}
	m := hmac.New(h, key)
	m.Write([]byte(username))
	return hex.EncodeToString(m.Sum(nil)) + ";" + alg, nil
}

func signHash(alg string) (func() hash.Hash, error) {
	switch strings.ToLower(alg) {
	case SignHMACSHA1:
		return sha1.New, nil
	case SignHMACSHA256:
		return sha256.New, nil
	}
	return nil, Errorf(EUNAUTHORIZED, "password must end in ;%s or ;%s", SignHMACSHA1, SignHMACSHA256)
}

// VerifyDevicePassword checks a device's MQTT password against its secret
// in constant time. It fails with EUNAUTHORIZED when the password is
// malformed or the signature does not match.
func VerifyDevicePassword(secret, username, password string) error {
	sig, alg, ok := strings.Cut(password, ";")
	if !ok {
		return authError(AuthBadPassword, Errorf(EUNAUTHORIZED, "password must be {hex signature};{algorithm}"))
	}
	h, err := signHash(alg)
	if err != nil {
		return authError(AuthBadPassword, err)
	}
	got, err := hex.DecodeString(sig)
	if err != nil {
		return authError(AuthBadPassword, Errorf(EUNAUTHORIZED, "password signature is not hex"))
	}
	key, err := DecodeDeviceSecret(secret)
	if err != nil {
		return authError(AuthBadSignature, Errorf(EUNAUTHORIZED, "device has no usable secret"))
	}
	m := hmac.New(h, key)
	m.Write([]byte(username))
	if !hmac.Equal(got, m.Sum(nil)) {
		return authError(AuthBadSignature, Errorf(EUNAUTHORIZED, "password signature does not match"))
	}
	return nil
}

// Reasons a device login is refused, carried in the Detail of the
// EUNAUTHORIZED error (for metrics and logs; devices only ever see "not
// authorized").
const (
	AuthBadUsername      = "bad_username"
	AuthBadPassword      = "bad_password"
	AuthClientIDMismatch = "client_id_mismatch"
	AuthUnknownDevice    = "unknown_device"
	AuthDisabled         = "disabled"
	AuthExpired          = "expired"
	AuthBadSignature     = "bad_signature"
)

// AuthReason returns the refusal reason of a login error, or "" when err
// carries none.
func AuthReason(err error) string {
	var e *Error
	if errors.As(err, &e) {
		if s, ok := e.Detail.(string); ok {
			return s
		}
	}
	return ""
}

func authError(reason string, err error) error {
	return &Error{Code: EUNAUTHORIZED, Message: ErrorMessage(err), Detail: reason}
}

// DeviceLogin is what a device presents in its MQTT CONNECT.
type DeviceLogin struct {
	ClientID string
	Username string
	Password string
}

// Check verifies a login against the device it names, at time now: the
// client ID must equal the one in the username, the device must be enabled,
// the credentials unexpired and the signature right. Every failure is
// EUNAUTHORIZED with a message saying which check failed (safe to log,
// never containing the secret).
func (l DeviceLogin) Check(d *Device, now time.Time) error {
	u, err := l.Parse(now)
	if err != nil {
		return err
	}
	if d.ProductID != u.ProductID || d.Name != u.DeviceName {
		return authError(AuthClientIDMismatch, Errorf(EUNAUTHORIZED, "credentials are for another device"))
	}
	if d.Disabled {
		return authError(AuthDisabled, Errorf(EUNAUTHORIZED, "device is disabled"))
	}
	return VerifyDevicePassword(d.Secret, l.Username, l.Password)
}

// Parse does the checks that need no device: the username's form, the
// client ID matching it, and the expiry. Connections that fail here are
// refused without a database lookup.
func (l DeviceLogin) Parse(now time.Time) (DeviceUsername, error) {
	u, err := ParseDeviceUsername(l.Username)
	if err != nil {
		return DeviceUsername{}, authError(AuthBadUsername, err)
	}
	if u.ClientID() != l.ClientID {
		return DeviceUsername{}, authError(AuthClientIDMismatch, Errorf(EUNAUTHORIZED, "client id does not match the username"))
	}
	if u.Expired(now) {
		return DeviceUsername{}, authError(AuthExpired, Errorf(EUNAUTHORIZED, "credentials expired"))
	}
	return u, nil
}
