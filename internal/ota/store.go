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

	// DeviceCreate stores devices, and a device.created event for each, in
	// one transaction: all of them or none. A name already taken is
	// ECONFLICT (DevicesTaken, naming them when known).
	DeviceCreate(ctx context.Context, ds ...*Device) error
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
	// DevicePresenceBatch records connects and disconnects, each device's
	// in the order given, in one transaction. It returns an error for the
	// batch when nothing was written, else one per change: ENOTFOUND for a
	// device that does not exist.
	DevicePresenceBatch(ctx context.Context, params []DevicePresenceParams) ([]error, error)
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
	// JobChange changes a job and the executions it selects (see
	// JobChangeParams) in one transaction, and returns the executions it
	// changed. Every write of a job is compare-and-set on its Rev.
	JobChange(ctx context.Context, params JobChangeParams) ([]*JobExecution, error)
	// JobPhaseCounts counts a job's executions per phase and state (see
	// PhaseCounts and JobPhaseCountsParams), phases in order.
	JobPhaseCounts(ctx context.Context, params JobPhaseCountsParams) ([]PhaseCounts, error)
	// JobExecutionsAdd adds the devices a continuous job now targets and
	// that are in no active job, to the job's current phase; it returns
	// how many.
	JobExecutionsAdd(ctx context.Context, params JobAddParams) (int, error)

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
	// EventsPrune deletes up to limit events, device history entries and
	// audit log entries and webhook delivery records older than before, and
	// reports how many it
	// deleted.
	EventsPrune(ctx context.Context, before time.Time, limit int) (int, error)

	// WebhookCreate stores a webhook with its cursor at the end of the
	// event log, so that it receives what happens from then on (its own
	// webhook.created first, if it passes the filters), and appends that
	// event. w.CreatedAt, UpdatedAt and Cursor are set.
	WebhookCreate(ctx context.Context, w *Webhook) error
	WebhookGet(ctx context.Context, id string) (*Webhook, error)
	WebhookList(ctx context.Context, params WebhookListParams) ([]*Webhook, error)
	// WebhookUpdate stores a webhook's settings (see WebhookUpdateParams),
	// its cursor and failures untouched: ECONFLICT when its Rev changed
	// since it was read. It increments Rev and sets UpdatedAt.
	WebhookUpdate(ctx context.Context, params WebhookUpdateParams) error
	// WebhookDelete removes a webhook and its deliveries and appends
	// webhook.deleted.
	WebhookDelete(ctx context.Context, id string) error
	// WebhookListDue returns the IDs of the enabled webhooks whose cursor
	// is behind the newest event.
	WebhookListDue(ctx context.Context, limit int) ([]string, error)
	// WebhookAttempt records an attempt at a delivery (see
	// WebhookAttemptParams) in one transaction and returns the webhook as
	// it is then. ENOTFOUND when the webhook is gone, ECONFLICT when its
	// cursor is no longer From (another worker moved it): nothing is
	// written then.
	WebhookAttempt(ctx context.Context, params WebhookAttemptParams) (*Webhook, error)
	// WebhookAdvance moves a webhook's cursor from from to to, past events
	// that do not pass its filters; ECONFLICT when it is no longer from.
	WebhookAdvance(ctx context.Context, id string, from, to int64) error
	WebhookDeliveryList(ctx context.Context, params WebhookDeliveryListParams) ([]*WebhookDelivery, error)

	// Stats counts what the OTA gauges show.
	Stats(ctx context.Context) (Stats, error)
	// PoolStats reports the use of the store's connections.
	PoolStats() PoolStats

	// SettingEnsure stores value under key unless the key is already set,
	// and returns the stored value: the first replica to ask decides.
	SettingEnsure(ctx context.Context, key, value string) (string, error)

	// TokenCreate stores a console API token (its hash) and appends
	// token.created; ECONFLICT when its ID or hash is taken.
	TokenCreate(ctx context.Context, t *APIToken) error
	// TokenEnsure makes t the one usable token of its origin, in one
	// transaction: it stores t unless a token with its hash exists (revoked
	// or not), then, when that token is of t.Origin and not revoked,
	// revokes every other token of t.Origin not yet revoked. It returns the token stored under
	// t's hash. Events as TokenCreate and TokenRevoke.
	TokenEnsure(ctx context.Context, t *APIToken) (*APIToken, error)
	// TokenGet returns a token by ID, revoked or not.
	TokenGet(ctx context.Context, id string) (*APIToken, error)
	// TokenGetByHash finds a token, revoked or not, by the SHA-256 of its
	// secret.
	TokenGetByHash(ctx context.Context, hash string) (*APIToken, error)
	// TokenList returns a page of the tokens not revoked.
	TokenList(ctx context.Context, params TokenListParams) ([]*APIToken, error)
	// TokenCount counts every token ever stored, revoked ones too.
	TokenCount(ctx context.Context) (int, error)
	// TokenRevoke revokes a token at at and appends token.revoked:
	// ENOTFOUND when no token of that ID is unrevoked, ErrLastAdmin
	// (ECONFLICT) when it is the last admin token usable at at.
	TokenRevoke(ctx context.Context, id string, at time.Time) (*APIToken, error)
	// TokenTouch records that a token was used at at, unless a later use
	// is recorded already.
	TokenTouch(ctx context.Context, id string, at time.Time) error

	// AuditAppend adds an entry to the audit log and sets its ID.
	AuditAppend(ctx context.Context, e *AuditEntry) error
	// AuditList returns a page of the audit log after params.After,
	// oldest first.
	AuditList(ctx context.Context, params AuditListParams) ([]*AuditEntry, error)

	// DeviceSecretList returns a page of every device's stored secret,
	// ordered by product ID and name, for re-encryption.
	DeviceSecretList(ctx context.Context, params DeviceSecretListParams) ([]DeviceSecret, error)
	// DeviceSecretUpdate replaces a device's stored secret, compare-and-set
	// on Old: ECONFLICT when it changed or the device is gone.
	DeviceSecretUpdate(ctx context.Context, params DeviceSecretUpdateParams) error
}

// DeviceSecret is a device's secret as stored (see SecretBox).
type DeviceSecret struct {
	ProductID, Name, Stored string
}

// DeviceSecretListParams selects a page of DeviceSecretList: the devices
// after (AfterProduct, AfterName).
type DeviceSecretListParams struct {
	AfterProduct, AfterName string
	Limit                   int
}

// DeviceSecretUpdateParams replaces a device's stored secret Old by New.
type DeviceSecretUpdateParams struct {
	ProductID, Name, Old, New string
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
