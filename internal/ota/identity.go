package ota

import (
	"crypto/rand"
	"encoding/base64"
	"unicode/utf8"
)

// ProductIDLen is the fixed length of a product ID. A fixed length is what
// lets an MQTT client ID (product ID + device name, no separator) be split.
const ProductIDLen = 10

// DeviceNameMaxLen is the longest device name the protocol allows.
const DeviceNameMaxLen = 48

// VersionMaxLen is the longest firmware version string.
const VersionMaxLen = 32

const productIDAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

// ValidateProductID checks a product ID: exactly 10 characters of [A-Z0-9].
func ValidateProductID(id string) error {
	if len(id) != ProductIDLen {
		return Errorf(EINVALID, "product id must be exactly %d characters of A-Z and 0-9", ProductIDLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return Errorf(EINVALID, "product id must be exactly %d characters of A-Z and 0-9", ProductIDLen)
		}
	}
	return nil
}

// NewProductID returns a random product ID.
func NewProductID() string {
	b := make([]byte, ProductIDLen)
	// Rejection sampling keeps every character equally likely.
	buf := make([]byte, 1)
	for i := 0; i < len(b); {
		rand.Read(buf)
		if int(buf[0]) >= 256-256%len(productIDAlphabet) {
			continue
		}
		b[i] = productIDAlphabet[int(buf[0])%len(productIDAlphabet)]
		i++
	}
	return string(b)
}

// ValidateDeviceName checks a device name: 1 to 48 characters of
// [A-Za-z0-9_.:@-].
func ValidateDeviceName(name string) error {
	if name == "." || name == ".." {
		// Names become path segments (URLs, topics): these two would walk.
		return Errorf(EINVALID, "device name must not be . or ..")
	}
	if len(name) < 1 || len(name) > DeviceNameMaxLen {
		return Errorf(EINVALID, "device name must be 1 to %d characters of A-Z a-z 0-9 _ . : @ -", DeviceNameMaxLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '_' || c == '.' || c == ':' || c == '@' || c == '-'
		if !ok {
			return Errorf(EINVALID, "device name must be 1 to %d characters of A-Z a-z 0-9 _ . : @ -", DeviceNameMaxLen)
		}
	}
	return nil
}

// ValidateVersion checks a firmware version: 1 to 32 printable ASCII
// characters, no spaces. A version becomes part of storage keys and
// appears in MQTT payloads, so anything else is refused.
func ValidateVersion(v string) error {
	if v == "." || v == ".." {
		return Errorf(EINVALID, "version must not be . or ..")
	}
	if len(v) < 1 || len(v) > VersionMaxLen {
		return Errorf(EINVALID, "version must be 1 to %d printable characters", VersionMaxLen)
	}
	for i := 0; i < len(v); i++ {
		if v[i] <= ' ' || v[i] > '~' {
			return Errorf(EINVALID, "version must be 1 to %d printable characters without spaces", VersionMaxLen)
		}
	}
	return nil
}

// DeviceSecretLen is the number of random bytes in a device secret.
const DeviceSecretLen = 16

// NewDeviceSecret returns a new device secret: 16 random bytes in padded
// standard base64. The HMAC key is the decoded bytes (see DecodeDeviceSecret).
func NewDeviceSecret() string {
	b := make([]byte, DeviceSecretLen)
	rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}

// DecodeDeviceSecret returns the HMAC key of a device secret.
func DecodeDeviceSecret(secret string) ([]byte, error) {
	b, err := base64.StdEncoding.DecodeString(secret)
	if err != nil || len(b) == 0 {
		return nil, Errorf(EINVALID, "device secret is not base64")
	}
	return b, nil
}

// ClientID returns the MQTT client ID of a device.
func ClientID(productID, deviceName string) string { return productID + deviceName }

// SplitClientID splits an MQTT client ID into product ID and device name,
// validating both.
func SplitClientID(clientID string) (productID, deviceName string, err error) {
	if len(clientID) <= ProductIDLen {
		return "", "", Errorf(EINVALID, "client id too short")
	}
	productID, deviceName = clientID[:ProductIDLen], clientID[ProductIDLen:]
	if err := ValidateProductID(productID); err != nil {
		return "", "", err
	}
	if err := ValidateDeviceName(deviceName); err != nil {
		return "", "", err
	}
	return productID, deviceName, nil
}

// ValidateText checks a free-text field (names, descriptions): at most max
// bytes of valid UTF-8 without control characters other than newline and tab.
func ValidateText(field, s string, max int) error {
	if len(s) > max {
		return Errorf(EINVALID, "%s must be at most %d bytes", field, max)
	}
	if !validUTF8NoControl(s) {
		return Errorf(EINVALID, "%s must be UTF-8 text without control characters", field)
	}
	return nil
}

func validUTF8NoControl(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 && r != '\n' && r != '\t' || r == 0x7f {
			return false
		}
	}
	return true
}
