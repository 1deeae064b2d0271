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

	// JobCreate stores a job and one execution per targeted device in one
	// transaction, resolving j.Targets against the devices as they are
	// then. Devices already on the job's version start done. It fails with
	// EINVALID when no device matches or a named device does not exist, and
	// with ECONFLICT, Detail []string naming the devices, when targeted
	// devices are in another active job; nothing is stored then.
	JobCreate(ctx context.Context, j *Job) error
	JobGet(ctx context.Context, id string) (*Job, error)
	JobList(ctx context.Context, params JobListParams) ([]*Job, error)
	// JobListActive returns every scheduled or running job of every product,
	// and canceled ones whose executions have not all ended.
	JobListActive(ctx context.Context) ([]*Job, error)
	// JobCounts counts a job's executions per state.
	JobCounts(ctx context.Context, id string) (map[string]int, error)
	// JobPace counts what rollout pacing needs.
	JobPace(ctx context.Context, id string, since time.Time) (JobPace, error)
	// JobStart moves a scheduled job to running; ECONFLICT if it is not scheduled.
	JobStart(ctx context.Context, id string) error
	// JobCancel cancels a scheduled or running job and its queued
	// executions; ECONFLICT if the job has already ended.
	JobCancel(ctx context.Context, id string, at time.Time) error
	// JobFinish completes a running job, or closes a canceled one, when none
	// of its executions is active. It reports whether it did.
	JobFinish(ctx context.Context, id string, at time.Time) (bool, error)

	JobExecutionGet(ctx context.Context, jobID, deviceName string) (*JobExecution, error)
	JobExecutionList(ctx context.Context, params JobExecutionListParams) ([]*JobExecution, error)
	// JobExecutionCurrent returns the device's active execution or, when it
	// has none, its most recent one; ENOTFOUND when it was never in a job.
	JobExecutionCurrent(ctx context.Context, productID, deviceName string) (*JobExecution, error)
	// JobExecutionTransition moves an execution between states,
	// compare-and-set on From (see JobExecutionTransitionParams).
	JobExecutionTransition(ctx context.Context, params JobExecutionTransitionParams) error
	// JobExecutionClaim marks up to Limit due, queued executions of online
	// devices notified, counting an attempt, and returns them. Concurrent
	// claims never return the same execution.
	JobExecutionClaim(ctx context.Context, params JobExecutionClaimParams) ([]*JobExecution, error)
	// JobExecutionsExpired returns in-progress executions whose deadline has passed.
	JobExecutionsExpired(ctx context.Context, now time.Time, limit int) ([]*JobExecution, error)

	// NodeHeartbeat records that node is alive at at, forgets nodes not
	// seen since staleBefore, and marks offline the devices held by nodes
	// it does not know (a crashed replica's). It returns how many devices
	// it marked offline.
	NodeHeartbeat(ctx context.Context, node string, at, staleBefore time.Time) (int, error)

	// SettingEnsure stores value under key unless the key is already set,
	// and returns the stored value: the first replica to ask decides.
	SettingEnsure(ctx context.Context, key, value string) (string, error)

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
