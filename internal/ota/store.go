package ota

import (
	"context"
	"time"
)

// Store keeps otad's state. Two implementations exist, PostgreSQL and SQLite,
// and both pass the same contract suite (internal/store/storetest).
//
// Methods return *Error with ENOTFOUND when a named row does not exist and
// ECONFLICT when a unique key is taken or a compare-and-set lost its race.
// Other errors are internal.
type Store interface {
	// Ping checks that the database answers.
	Ping(ctx context.Context) error
	Close() error

	ProductCreate(ctx context.Context, p *Product) error
	ProductGet(ctx context.Context, id string) (*Product, error)
	ProductList(ctx context.Context, params ProductListParams) ([]*Product, error)

	DeviceCreate(ctx context.Context, d *Device) error
	DeviceGet(ctx context.Context, productID, name string) (*Device, error)
	DeviceList(ctx context.Context, params DeviceListParams) ([]*Device, error)
	// DeviceDelete removes a device and its history.
	DeviceDelete(ctx context.Context, productID, name string) error
	// DeviceSetDisabled enables or disables a device's MQTT access.
	DeviceSetDisabled(ctx context.Context, productID, name string, disabled bool) error
	// DevicePresence records a connect or disconnect and its history event.
	DevicePresence(ctx context.Context, params DevicePresenceParams) error
	// DeviceReportsRecord applies a batch of device reports in one
	// transaction: each is appended to the device's history, a
	// report_version sets the device's version and last-seen time, and a
	// report_progress sets its current upgrade progress. Reports of devices
	// that no longer exist are skipped. When it returns nil, every report is
	// durable.
	DeviceReportsRecord(ctx context.Context, reports []Report) error
	DeviceEventList(ctx context.Context, params DeviceEventListParams) ([]*DeviceEvent, error)

	FirmwareCreate(ctx context.Context, f *Firmware) error
	FirmwareGet(ctx context.Context, productID, version string) (*Firmware, error)
	FirmwareList(ctx context.Context, params FirmwareListParams) ([]*Firmware, error)
	// FirmwareDelete removes a firmware row. It fails with ECONFLICT while a
	// job that is not completed or canceled uses the version.
	FirmwareDelete(ctx context.Context, productID, version string) error

	// TokenCreate stores the hash of a console API token.
	TokenCreate(ctx context.Context, t *APIToken) error
	// TokenGetByHash finds a token by the SHA-256 of its secret.
	TokenGetByHash(ctx context.Context, hash string) (*APIToken, error)
	TokenCount(ctx context.Context) (int, error)
}

// APIToken is a console API bearer token. Only its hash is stored.
type APIToken struct {
	ID        string
	Name      string
	Hash      string // hex SHA-256 of the token
	CreatedAt time.Time
}

// MaxPageLimit caps every list call.
const MaxPageLimit = 1000

// DefaultPageLimit is used when a list call names no limit.
const DefaultPageLimit = 100

// PageLimit normalises a requested page size.
func PageLimit(n int) int {
	switch {
	case n <= 0:
		return DefaultPageLimit
	case n > MaxPageLimit:
		return MaxPageLimit
	}
	return n
}

// Now returns the current time as stores keep it: UTC, whole microseconds.
func Now() time.Time { return time.Now().UTC().Truncate(time.Microsecond) }
