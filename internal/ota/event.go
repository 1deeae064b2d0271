package ota

import (
	"encoding/json"
	"strings"
	"time"
)

// Event is one entry of the event log: every change otad stores appends
// one, in the same transaction as the change, with a sequence number that
// grows strictly in commit order. The API lists them, streams them (SSE)
// and, later, webhooks deliver them.
type Event struct {
	Seq        int64           `json:"seq"`
	Type       string          `json:"type"`
	ProductID  string          `json:"product_id,omitempty"`
	JobID      string          `json:"job_id,omitempty"`
	DeviceName string          `json:"device_name,omitempty"`
	Data       json.RawMessage `json:"data,omitempty"`
	CreatedAt  time.Time       `json:"created_at"`
}

// Event log types. An execution's event is LogExecutionPrefix plus its new
// state (execution.done), a job's LogJobPrefix plus its new status.
const (
	LogExecutionPrefix     = "execution."
	LogJobPrefix           = "job."
	LogJobCreated          = "job.created"
	LogJobClosed           = "job.closed" // a canceled job whose last device ended
	LogJobPhase            = "job.phase_started"
	LogDeviceCreated       = "device.created"
	LogDeviceDeleted       = "device.deleted"
	LogDeviceDisabled      = "device.disabled"
	LogDeviceEnabled       = "device.enabled"
	LogDeviceOnline        = "device.online"
	LogDeviceOffline       = "device.offline"
	LogDeviceVersion       = "device.version_reported"
	LogFirmwareUploaded    = "firmware.uploaded"
	LogFirmwareDeleted     = "firmware.deleted"
	LogTokenCreated        = "token.created"
	LogTokenRevoked        = "token.revoked"
	MaxEventTypesPerFilter = 32 // entries of one type filter
)

// EventListParams selects a page of the event log, oldest first.
type EventListParams struct {
	After int64 // events with a greater sequence number
	// Types keeps events of these types; "execution.*" keeps a prefix.
	// Empty keeps all.
	Types      []string
	ProductID  string
	JobID      string
	DeviceName string
	Limit      int
}

// Matches reports whether e passes the filters of p (Types, ProductID,
// JobID, DeviceName), so that a stream filters as the list does.
func (p *EventListParams) Matches(e *Event) bool {
	if p.ProductID != "" && e.ProductID != p.ProductID || p.JobID != "" && e.JobID != p.JobID ||
		p.DeviceName != "" && e.DeviceName != p.DeviceName {
		return false
	}
	if len(p.Types) == 0 {
		return true
	}
	for _, t := range p.Types {
		if prefix, ok := strings.CutSuffix(t, "*"); ok && strings.HasPrefix(e.Type, prefix) || t == e.Type {
			return true
		}
	}
	return false
}

// ValidateEventTypes checks a type filter: at most
// MaxEventTypesPerFilter entries, each one ValidateEventType accepts.
func ValidateEventTypes(types []string) error {
	if len(types) > MaxEventTypesPerFilter {
		return Errorf(EINVALID, "type names at most %d types", MaxEventTypesPerFilter)
	}
	for _, t := range types {
		if err := ValidateEventType(t); err != nil {
			return err
		}
	}
	return nil
}

// ValidateEventType checks one entry of an event type filter: a type or a
// prefix ending in ".*".
func ValidateEventType(t string) error {
	if t == "" || len(t) > 64 {
		return Errorf(EINVALID, "event type must be 1 to 64 characters")
	}
	for i := 0; i < len(t); i++ {
		c := t[i]
		if !(c >= 'a' && c <= 'z' || c == '_' || c == '.' || c == '*' && i == len(t)-1 && i > 0 && t[i-1] == '.') {
			return Errorf(EINVALID, "event type %q: lowercase letters, _ and ., optionally ending in .*", truncate(t, 64))
		}
	}
	return nil
}

func newEvent(typ, productID, jobID, device string, at time.Time, data any) Event {
	e := Event{Type: typ, ProductID: productID, JobID: jobID, DeviceName: device, CreatedAt: at}
	if data != nil {
		e.Data, _ = json.Marshal(data)
	}
	return e
}

// ExecutionEvent is the event of an execution moving from from to to; ok is
// false when its state did not change (progress in place is no event).
func ExecutionEvent(from, to *JobExecution) (e Event, ok bool) {
	if from != nil && from.State == to.State {
		return Event{}, false
	}
	data := struct {
		From       string `json:"from,omitempty"`
		State      string `json:"state"`
		Attempts   int    `json:"attempts"`
		ResultCode int    `json:"result_code"`
		ResultName string `json:"result_name"`
		ResultMsg  string `json:"result_msg"`
	}{State: to.State, Attempts: to.Attempts, ResultCode: to.ResultCode, ResultName: ResultName(to.ResultCode), ResultMsg: to.ResultMsg}
	if from != nil {
		data.From = from.State
	}
	return newEvent(LogExecutionPrefix+to.State, to.ProductID, to.JobID, to.DeviceName, to.UpdatedAt, data), true
}

// JobEvent is the event of a job created or moved from one status to
// another.
func JobEvent(j *Job, from, to string, at time.Time) Event {
	typ := LogJobPrefix + to
	switch {
	case from == "":
		typ = LogJobCreated
	case from == JobCanceled && to == JobCanceled:
		typ = LogJobClosed
	}
	data := struct {
		From            string `json:"from,omitempty"`
		Status          string `json:"status"`
		FirmwareVersion string `json:"firmware_version,omitempty"`
		Reason          string `json:"reason,omitempty"`
	}{From: from, Status: to, FirmwareVersion: j.FirmwareVersion, Reason: j.StatusReason}
	return newEvent(typ, j.ProductID, j.ID, "", at, data)
}

// JobChangeEvents are the events of job from becoming to at at: its
// status, and the phase it moved to.
func JobChangeEvents(from, to *Job, at time.Time) []Event {
	var evs []Event
	if from.Status != to.Status {
		evs = append(evs, JobEvent(to, from.Status, to.Status, at))
	}
	if from.Phase != to.Phase {
		data := struct {
			Phase  int    `json:"phase"`
			From   int    `json:"from"`
			Result string `json:"result"`
		}{to.Phase, from.Phase, to.Phases[from.Phase].Result}
		evs = append(evs, newEvent(LogJobPhase, to.ProductID, to.ID, "", at, data))
	}
	return evs
}

// DeviceChangeEvent is an event of a device with optional data.
func DeviceChangeEvent(typ, productID, name string, at time.Time, data any) Event {
	return newEvent(typ, productID, "", name, at, data)
}

// FirmwareEvent is the event of a firmware version uploaded or deleted.
func FirmwareEvent(typ string, f *Firmware, at time.Time) Event {
	data := struct {
		Version string `json:"version"`
		Size    int64  `json:"size,omitempty"`
		MD5     string `json:"md5,omitempty"`
	}{Version: f.Version, Size: f.Size, MD5: f.MD5}
	return newEvent(typ, f.ProductID, "", "", at, data)
}

// PresenceEvent is the event of a device connecting or disconnecting.
func PresenceEvent(p DevicePresenceParams) Event {
	typ := LogDeviceOffline
	if p.Online {
		typ = LogDeviceOnline
	}
	return newEvent(typ, p.ProductID, "", p.DeviceName, p.At, nil)
}

// ReportEvents are the events a batch of reports adds beside its
// executions' moves: each recorded report_version.
func ReportEvents(b *ReportBatch) []Event {
	var evs []Event
	for i, r := range b.Reports {
		if b.Record[i] && r.Type == EventReportVersion {
			evs = append(evs, newEvent(LogDeviceVersion, r.ProductID, "", r.DeviceName, r.At, map[string]string{"version": r.Version}))
		}
	}
	return evs
}
