package ota

import (
	"fmt"
	"time"
)

// Device is one physical device of a product.
type Device struct {
	ProductID string `json:"product_id"`
	Name      string `json:"name"`
	// Secret is the device's HMAC key in base64. The API shows it only once,
	// in the answer to the create call.
	Secret     string     `json:"-"`
	Version    string     `json:"version"`
	Online     bool       `json:"online"`
	LastSeenAt *time.Time `json:"last_seen_at"`
	Disabled   bool       `json:"disabled"`
	// Node names the otad replica that holds (or last held) the device's
	// connection.
	Node string `json:"-"`
	// Ready says the device reported its version in its current
	// connection: only then is it sent update_firmware (a message sooner
	// crosses its report_version, which then asks for it again).
	Ready bool `json:"-"`
	// Upgrade is the last upgrade progress the device reported, if any.
	Upgrade   *UpgradeProgress `json:"upgrade"`
	CreatedAt time.Time        `json:"created_at"`
}

// UpgradeProgress is the latest report_progress of a device.
type UpgradeProgress struct {
	Version    string    `json:"version"` // target version being installed
	State      string    `json:"state"`   // downloading, burning, done, failed (the device's "fail")
	Percent    int       `json:"percent"`
	ResultCode int       `json:"result_code"`
	ResultName string    `json:"result_name"` // ResultName(ResultCode)
	ResultMsg  string    `json:"result_msg"`
	UpdatedAt  time.Time `json:"updated_at"`
}

// Validate checks a device before it is stored.
func (d *Device) Validate() error {
	if err := ValidateProductID(d.ProductID); err != nil {
		return err
	}
	if err := ValidateDeviceName(d.Name); err != nil {
		return err
	}
	if _, err := DecodeDeviceSecret(d.Secret); err != nil {
		return err
	}
	if d.Version != "" {
		if err := ValidateVersion(d.Version); err != nil {
			return err
		}
	}
	return nil
}

// DeviceListParams selects a page of a product's devices, ordered by name.
type DeviceListParams struct {
	ProductID string
	Version   string // only devices on this version, when set
	Online    *bool  // only online (true) or offline (false) devices, when set
	After     string // return devices whose name sorts after this one
	Limit     int
}

// DevicePresenceParams records a device connecting or disconnecting.
type DevicePresenceParams struct {
	ProductID  string
	DeviceName string
	Online     bool
	// Node names the otad replica holding the connection. A disconnect
	// reported by a node that no longer holds the device (it reconnected
	// elsewhere) changes nothing.
	Node string
	At   time.Time
}

// DeviceEvent is one entry of a device's history: a report it sent, or a
// connection change.
type DeviceEvent struct {
	ID         int64     `json:"id"`
	ProductID  string    `json:"-"`
	DeviceName string    `json:"-"`
	Type       string    `json:"type"`
	Version    string    `json:"version,omitempty"`
	State      string    `json:"state,omitempty"`
	Percent    *int      `json:"percent,omitempty"`
	ResultCode *int      `json:"result_code,omitempty"`
	ResultMsg  string    `json:"result_msg,omitempty"`
	CreatedAt  time.Time `json:"created_at"`
}

// Device event types.
const (
	EventReportVersion  = "report_version"
	EventReportProgress = "report_progress"
	EventConnected      = "connected"
	EventDisconnected   = "disconnected"
)

// Progress states a device reports.
const (
	ProgressDownloading = "downloading"
	ProgressBurning     = "burning"
	ProgressDone        = "done"
	ProgressFail        = "fail"
)

// DeviceEventListParams selects a page of a device's history, newest first.
type DeviceEventListParams struct {
	ProductID  string
	DeviceName string
	Before     int64 // return events with an ID below this one, when set
	Limit      int
}

// Report is one message a device published on its report topic, validated.
type Report struct {
	ProductID  string
	DeviceName string
	Type       string // EventReportVersion or EventReportProgress
	Version    string // current version, or the target version for progress
	State      string // progress only
	Percent    *int
	ResultCode *int
	ResultMsg  string
	At         time.Time
}

// MaxDeviceBatch is the most devices one batch registers.
const MaxDeviceBatch = 100_000

// DevicesTaken is the error of devices whose names are taken; names may
// be empty when the conflict was only seen at insertion.
func DevicesTaken(names []string) error {
	if len(names) == 0 {
		return Errorf(ECONFLICT, "device already exists")
	}
	msg := "device already exists"
	if len(names) > 1 {
		msg = fmt.Sprintf("%d devices already exist", len(names))
	}
	return &Error{Code: ECONFLICT, Message: msg, Detail: map[string]any{"devices": names}}
}

// DeviceCreatedEvents are the events of devices created.
func DeviceCreatedEvents(ds []*Device) []Event {
	evs := make([]Event, len(ds))
	for i, d := range ds {
		evs[i] = DeviceChangeEvent(LogDeviceCreated, d.ProductID, d.Name, d.CreatedAt, map[string]string{"version": d.Version})
	}
	return evs
}
