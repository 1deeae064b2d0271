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
	// DeviceDelete removes a device and its history in one transaction.
	// Its job executions stay, for the jobs' records: each one that has not
	// ended is replaced by end's result first (Step with EventDeviceDeleted).
	DeviceDelete(ctx context.Context, productID, name string, end func(x *JobExecution) (*JobExecution, bool)) error
	// DeviceSetDisabled enables or disables a device's MQTT access.
	DeviceSetDisabled(ctx context.Context, productID, name string, disabled bool) error
	// DevicePresence records a connect or disconnect and its history event.
	DevicePresence(ctx context.Context, params DevicePresenceParams) error
	// DeviceReportsApply applies a batch of device reports in one
	// transaction: it reads the reporting devices and their current
	// executions (locked against other writers where the engine allows),
	// calls apply with them, and writes what apply changed: the devices, the
	// reports apply records into their history, and the executions, each
	// compare-and-set on its Rev. apply may run more than once (a lost
	// race is retried) and must have no effect outside the batch. When it
	// returns nil, everything is durable. An execution changed meanwhile is
	// ECONFLICT, and nothing is written.
	DeviceReportsApply(ctx context.Context, reports []Report, apply func(ctx context.Context, b *ReportBatch) error) error
	DeviceEventList(ctx context.Context, params DeviceEventListParams) ([]*DeviceEvent, error)

	FirmwareCreate(ctx context.Context, f *Firmware) error
	FirmwareGet(ctx context.Context, productID, version string) (*Firmware, error)
	FirmwareList(ctx context.Context, params FirmwareListParams) ([]*Firmware, error)
	// FirmwareDelete removes a firmware row. It fails with ECONFLICT while a
	// scheduled or running job uses the version or any execution of any
	// job of the version has not ended.
	FirmwareDelete(ctx context.Context, productID, version string) error
	// FirmwareBlobKeys returns those of keys that are the blob key of some
	// firmware row, in any order: the others are leftovers the sweeper
	// may remove.
	FirmwareBlobKeys(ctx context.Context, keys []string) ([]string, error)

	// JobCreate stores a job and one execution per targeted device in one
	// transaction, resolving the job's targets against the devices as they
	// are then, and holding the firmware row so that it cannot be deleted
	// meanwhile (a deleted one is EINVALID). It fails with EINVALID when no
	// device matches or a named device does not exist, and with ECONFLICT,
	// Detail naming the devices, when targeted devices are in another
	// active job; nothing is stored then.
	JobCreate(ctx context.Context, params JobCreateParams) error
	JobGet(ctx context.Context, id string) (*Job, error)
	JobList(ctx context.Context, params JobListParams) ([]*Job, error)
	// JobListActive returns every scheduled or running job of every product,
	// and canceled ones not yet closed (CompletedAt nil).
	JobListActive(ctx context.Context) ([]*Job, error)
	// JobCounts counts a job's executions per state.
	JobCounts(ctx context.Context, id string) (map[string]int, error)
	// JobSetStatus moves a job between statuses, compare-and-set on From:
	// ECONFLICT when it is no longer in From.
	JobSetStatus(ctx context.Context, params JobStatusParams) error
	// JobCancel cancels a scheduled or running job and applies Cancel to
	// its executions that have not ended, in one transaction; ECONFLICT if
	// the job has already ended. It returns the executions it changed.
	JobCancel(ctx context.Context, params JobCancelParams) ([]*JobExecution, error)

	JobExecutionGet(ctx context.Context, jobID, deviceName string) (*JobExecution, error)
	JobExecutionList(ctx context.Context, params JobExecutionListParams) ([]*JobExecution, error)
	// JobExecutionCurrent returns the device's active execution or, when it
	// has none, its most recent one; ENOTFOUND when it was never in a job.
	JobExecutionCurrent(ctx context.Context, productID, deviceName string) (*JobExecution, error)
	// JobExecutionUpdate stores x, compare-and-set on x.Rev, and increments
	// x.Rev: ECONFLICT when the execution was written since it was read.
	JobExecutionUpdate(ctx context.Context, x *JobExecution) error
	// JobExecutionClaim claims executions for notification (see
	// JobExecutionClaimParams) and returns them as stored. Concurrent claims
	// never return the same execution.
	JobExecutionClaim(ctx context.Context, params JobExecutionClaimParams) ([]*JobExecution, error)
	// JobExecutionsExpired returns in-flight executions whose deadline has passed.
	JobExecutionsExpired(ctx context.Context, now time.Time, limit int) ([]*JobExecution, error)

	// NodeHeartbeat records that node is alive at at, forgets nodes not
	// seen since staleBefore, and marks offline the devices held by nodes
	// it does not know (a crashed replica's). It returns how many devices
	// it marked offline.
	NodeHeartbeat(ctx context.Context, node string, at, staleBefore time.Time) (int, error)

	// EventList returns a page of the event log after params.After, oldest
	// first.
	EventList(ctx context.Context, params EventListParams) ([]*Event, error)
	// EventLastSeq returns the sequence number of the newest event, 0 for
	// none.
	EventLastSeq(ctx context.Context) (int64, error)
	// EventsPrune deletes up to limit events and device history entries
	// older than before, and reports how many it deleted.
	EventsPrune(ctx context.Context, before time.Time, limit int) (int, error)

	// Stats counts what the OTA gauges show.
	Stats(ctx context.Context) (Stats, error)
	// PoolStats reports the use of the store's connections.
	PoolStats() PoolStats

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

// Stats is what the OTA gauges of /metrics show.
type Stats struct {
	JobsByStatus map[string]int
	// ExecutionsByState counts the executions of jobs not yet ended
	// (scheduled, running, canceled and not yet closed).
	ExecutionsByState map[string]int
	Devices           int
	DevicesOnline     int
}

// PoolStats is how a store uses its database connections.
type PoolStats struct {
	InUse, Idle, Max int
}
