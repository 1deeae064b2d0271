package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/otad/otad/internal/ota"
	"github.com/otad/otad/internal/store/sqltext"
)

// activeStates and inFlightStates are ota.ExecActiveStates and
// ota.ExecInFlightStates as SQL lists.
var (
	activeStates   = sqltext.Strings(ota.ExecActiveStates)
	inFlightStates = sqltext.Strings(ota.ExecInFlightStates)
)

const jobColumns = `id, product_id, firmware_version, status, targets, timeout_seconds, max_retries, retry_backoff_seconds,
	max_concurrent, max_per_minute, start_at, created_at, completed_at, rollback_window_seconds, rollout, rev`

func scanJob(row scanner) (*ota.Job, error) {
	var j ota.Job
	var targets, rollout string
	err := row.Scan(&j.ID, &j.ProductID, &j.FirmwareVersion, &j.Status, &targets, &j.TimeoutSeconds, &j.MaxRetries,
		&j.RetryBackoffSeconds, &j.MaxConcurrent, &j.MaxPerMinute, sqlTimePtr{&j.StartAt}, sqlTime{&j.CreatedAt}, sqlTimePtr{&j.CompletedAt},
		&j.RollbackWindowSeconds, &rollout, &j.Rev)
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal([]byte(targets), &j.Targets); err != nil {
		return nil, fmt.Errorf("job %s targets: %w", j.ID, err)
	}
	if err := ota.UnmarshalRollout(&j, rollout); err != nil {
		return nil, err
	}
	return &j, nil
}

// targetFilter is the SQL condition on devices d selecting a job's
// targets, and its one argument (a JSON array), bound to the placeholder
// param.
func targetFilter(t ota.JobTargets, param string) (string, string) {
	switch {
	case t.All:
		return param + " = '[]'", "[]"
	case len(t.Versions) > 0:
		b, _ := json.Marshal(t.Versions)
		return "d.version IN (SELECT value FROM json_each(" + param + "))", string(b)
	default:
		b, _ := json.Marshal(t.Devices)
		return "d.name IN (SELECT value FROM json_each(" + param + "))", string(b)
	}
}

func (s *Store) JobCreate(ctx context.Context, p ota.JobCreateParams) error {
	j := p.Job
	if j.CreatedAt.IsZero() {
		j.CreatedAt = ota.Now()
	}
	targets, err := json.Marshal(j.Targets)
	if err != nil {
		return fmt.Errorf("job targets: %w", err)
	}
	return s.inTx(ctx, func(tx *sql.Tx) error {
		// The one writer connection serialises this with FirmwareDelete.
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM firmware WHERE product_id = ? AND version = ?`, j.ProductID, j.FirmwareVersion).Scan(&n); err != nil {
			return fmt.Errorf("job firmware: %w", err)
		}
		if n == 0 {
			return ota.Errorf(ota.EINVALID, "firmware version %s has not been uploaded", j.FirmwareVersion)
		}
		if len(j.Targets.Devices) > 0 {
			names, _ := json.Marshal(j.Targets.Devices)
			rows, err := tx.QueryContext(ctx, `SELECT value FROM json_each(?2) AS t
				WHERE NOT EXISTS (SELECT 1 FROM devices WHERE product_id = ?1 AND devices.name = t.value) ORDER BY value LIMIT 100`,
				j.ProductID, string(names))
			missing, err := collect(rows, err, "missing devices", scanString)
			if err != nil {
				return err
			}
			if len(missing) > 0 {
				return ota.JobTargetsMissing(missing)
			}
		}
		filter, arg := targetFilter(j.Targets, "?2")
		rows, err := tx.QueryContext(ctx, `SELECT e.device_name FROM job_executions e JOIN devices d ON d.product_id = e.product_id AND d.name = e.device_name
			WHERE e.product_id = ?1 AND e.state IN `+activeStates+` AND `+filter+` ORDER BY e.device_name LIMIT 1000`,
			j.ProductID, arg)
		busy, err := collect(rows, err, "busy devices", scanString)
		if err != nil {
			return err
		}
		if len(busy) > 0 {
			return ota.JobTargetsBusy(busy)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO jobs (`+jobColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)`,
			j.ID, j.ProductID, j.FirmwareVersion, j.Status, string(targets), j.TimeoutSeconds, j.MaxRetries, j.RetryBackoffSeconds,
			j.MaxConcurrent, j.MaxPerMinute, fmtTimePtr(j.StartAt), fmtTime(j.CreatedAt), fmtTimePtr(j.CompletedAt), j.RollbackWindowSeconds,
			ota.MarshalRollout(j)); err != nil {
			return interpretError(err, "job")
		}
		n, _, err = insertExecutions(ctx, tx, j, j.CreatedAt, p.Initial, false, nil)
		if err != nil {
			if ota.IsCode(err, ota.ECONFLICT) {
				return ota.JobTargetsBusy(nil)
			}
			return err
		}
		if n == 0 {
			return ota.ErrJobTargetsNone
		}
		if p.Phases != nil {
			if err := assignPhases(ctx, tx, j.ID, p.Phases); err != nil {
				return err
			}
		}
		return appendEvents(ctx, tx, ota.JobEvent(j, "", j.Status, j.CreatedAt))
	})
}

// insertExecutions inserts the executions of job j's targets, in its
// current phase, their first states from initial per distinct version:
// all of them for a new job, or (onlyNew) those of devices in neither j
// nor another active job, which it then returns. The transaction holds
// the only writer, so the versions cannot change before the insert.
func insertExecutions(ctx context.Context, tx *sql.Tx, j *ota.Job, at time.Time, initial func(string) ota.JobExecution, onlyNew bool, only []string) (int, []*ota.JobExecution, error) {
	// fresh keeps the devices in neither this job (?4) nor another active
	// one, and, when only is set, among only (?7).
	fresh := ""
	var onlyJSON any
	if onlyNew {
		fresh = ` AND NOT EXISTS (SELECT 1 FROM job_executions x WHERE x.product_id = d.product_id AND x.device_name = d.name
			AND (x.job_id = ?4 OR x.state IN ` + activeStates + `))`
		if only != nil {
			b, _ := json.Marshal(only)
			onlyJSON = string(b)
			fresh += ` AND d.name IN (SELECT value FROM json_each(?7))`
		}
	}
	filter, arg := targetFilter(j.Targets, "?2")
	args := []any{j.ProductID, arg}
	if onlyNew {
		args = append(args, nil, j.ID)
		if only != nil {
			args = append(args, nil, nil, onlyJSON)
		}
	}
	rows, err := tx.QueryContext(ctx, `SELECT DISTINCT d.version FROM devices d WHERE d.product_id = ?1 AND `+filter+fresh, args...)
	versions, err := collect(rows, err, "target versions", scanString)
	if err != nil || len(versions) == 0 {
		return 0, nil, err
	}
	type first struct {
		Version  string `json:"v"`
		State    string `json:"s"`
		Percent  int    `json:"p"`
		Finished any    `json:"f"`
	}
	firsts := make([]first, len(versions))
	for i, v := range versions {
		x := initial(v)
		firsts[i] = first{Version: v, State: x.State, Percent: x.Percent, Finished: fmtTimePtr(x.FinishedAt)}
	}
	m, _ := json.Marshal(firsts)
	filter, arg = targetFilter(j.Targets, "?3")
	q := `INSERT INTO job_executions (job_id, product_id, device_name, state, from_version, percent, finished_at, created_at, updated_at, phase)
		SELECT ?4, d.product_id, d.name, m.value ->> 's', d.version, m.value ->> 'p', m.value ->> 'f', ?5, ?5, ?6
		FROM devices d JOIN json_each(?2) m ON m.value ->> 'v' = d.version
		WHERE d.product_id = ?1 AND ` + filter + fresh
	args = []any{j.ProductID, string(m), arg, j.ID, fmtTime(at), j.Phase}
	if only != nil {
		args = append(args, onlyJSON)
	}
	if !onlyNew {
		res, err := tx.ExecContext(ctx, q, args...)
		if err != nil {
			return 0, nil, fmt.Errorf("create job executions: %w", interpretError(err, "job execution"))
		}
		n, _ := res.RowsAffected()
		return int(n), nil, nil
	}
	rows, err = tx.QueryContext(ctx, q+` ON CONFLICT DO NOTHING RETURNING `+execColumns, args...)
	xs, err := collect(rows, err, "added job executions", scanExec)
	return len(xs), xs, err
}

// assignPhases sets the phase of each execution of a new job as phases
// says.
func assignPhases(ctx context.Context, tx *sql.Tx, jobID string, phases func([]ota.PhaseCandidate) []int) error {
	rows, err := tx.QueryContext(ctx, `SELECT device_name, from_version, state FROM job_executions WHERE job_id = ? ORDER BY device_name`, jobID)
	cs, err := collect(rows, err, "job executions", func(row scanner) (ota.PhaseCandidate, error) {
		var c ota.PhaseCandidate
		return c, row.Scan(&c.Name, &c.Version, &c.State)
	})
	if err != nil {
		return err
	}
	type set struct {
		Name  string `json:"n"`
		Phase int    `json:"p"`
	}
	var sets []set
	for i, ph := range phases(cs) {
		if ph != 0 {
			sets = append(sets, set{cs[i].Name, ph})
		}
	}
	b, _ := json.Marshal(sets)
	_, err = tx.ExecContext(ctx, `UPDATE job_executions SET phase = u.value ->> 'p'
		FROM json_each(?2) u WHERE job_id = ?1 AND device_name = u.value ->> 'n'`, jobID, string(b))
	if err != nil {
		return fmt.Errorf("assign phases: %w", err)
	}
	return nil
}

func scanString(row scanner) (string, error) {
	var v string
	return v, row.Scan(&v)
}

func (s *Store) JobGet(ctx context.Context, id string) (*ota.Job, error) {
	j, err := scanJob(s.read.QueryRowContext(ctx, `SELECT `+jobColumns+` FROM jobs WHERE id = ?`, id))
	if err != nil {
		return nil, interpretError(err, "job")
	}
	return j, nil
}

func (s *Store) JobList(ctx context.Context, p ota.JobListParams) ([]*ota.Job, error) {
	rows, err := s.read.QueryContext(ctx, `SELECT `+jobColumns+` FROM jobs WHERE product_id = ? AND id > ? ORDER BY id LIMIT ?`,
		p.ProductID, p.After, ota.PageLimit(p.Limit))
	return collect(rows, err, "jobs", scanJob)
}

func (s *Store) JobListActive(ctx context.Context) ([]*ota.Job, error) {
	rows, err := s.read.QueryContext(ctx, `SELECT `+jobColumns+` FROM jobs WHERE status IN ('scheduled', 'running', 'paused')
		OR (status = 'canceled' AND completed_at IS NULL) ORDER BY id`)
	return collect(rows, err, "active jobs", scanJob)
}

func (s *Store) JobCounts(ctx context.Context, id string) (map[string]int, error) {
	rows, err := s.read.QueryContext(ctx, `SELECT state, sum(n) FROM job_counts WHERE job_id = ? GROUP BY state HAVING sum(n) <> 0`, id)
	type pair struct {
		state string
		n     int
	}
	pairs, err := collect(rows, err, "job counts", func(row scanner) (pair, error) {
		var p pair
		return p, row.Scan(&p.state, &p.n)
	})
	if err != nil {
		return nil, err
	}
	counts := map[string]int{}
	for _, p := range pairs {
		counts[p.state] = p.n
	}
	return counts, nil
}

func (s *Store) JobSetStatus(ctx context.Context, p ota.JobStatusParams) error {
	return s.inTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE jobs SET status = ?3, completed_at = COALESCE(?4, completed_at), rev = rev + 1 WHERE id = ?1 AND status = ?2`,
			p.ID, p.From, p.To, fmtTimePtr(p.CompletedAt))
		if err != nil {
			return fmt.Errorf("set job status: %w", interpretError(err, "job"))
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return ota.Errorf(ota.ECONFLICT, "job is not %s", p.From)
		}
		j, err := scanJob(tx.QueryRowContext(ctx, `SELECT `+jobColumns+` FROM jobs WHERE id = ?`, p.ID))
		if err != nil {
			return interpretError(err, "job")
		}
		at := ota.Now()
		if p.CompletedAt != nil {
			at = *p.CompletedAt
		}
		return appendEvents(ctx, tx, ota.JobEvent(j, p.From, p.To, at))
	})
}

func (s *Store) JobChange(ctx context.Context, p ota.JobChangeParams) ([]*ota.JobExecution, error) {
	var changed []*ota.JobExecution
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		changed = nil
		from, err := scanJob(tx.QueryRowContext(ctx, `SELECT `+jobColumns+` FROM jobs WHERE id = ?`, p.ID))
		if err != nil {
			return interpretError(err, "job")
		}
		to, err := p.Job(from)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE jobs SET status = ?2, completed_at = ?3, rollout = ?4, rev = rev + 1 WHERE id = ?1`,
			p.ID, to.Status, fmtTimePtr(to.CompletedAt), ota.MarshalRollout(to)); err != nil {
			return fmt.Errorf("change job: %w", interpretError(err, "job"))
		}
		to.Rev = from.Rev + 1
		if err := appendEvents(ctx, tx, ota.JobChangeEvents(from, to, p.At)...); err != nil {
			return err
		}
		if len(p.States) == 0 {
			return nil
		}
		states, _ := json.Marshal(p.States)
		rows, err := tx.QueryContext(ctx, `SELECT `+sqltext.Qualify("x.", execColumns)+` FROM job_executions x
			WHERE x.job_id = ?1 AND x.state IN (SELECT value FROM json_each(?2))
			AND (NOT ?3 OR NOT EXISTS (SELECT 1 FROM job_executions y WHERE y.product_id = x.product_id AND y.device_name = x.device_name
				AND y.job_id <> x.job_id AND y.state IN `+activeStates+`))
			ORDER BY x.device_name LIMIT CASE WHEN ?4 > 0 THEN ?4 ELSE -1 END`, p.ID, string(states), p.Exclusive, p.Limit)
		xs, err := collect(rows, err, "job executions", scanExec)
		if err != nil {
			return err
		}
		for _, x := range xs {
			if y, ok := p.Apply(to, x); ok {
				if err := execUpdate(ctx, tx, x, y); err != nil {
					return err
				}
				changed = append(changed, y)
			}
		}
		return nil
	})
	return changed, err
}

func (s *Store) JobPhaseCounts(ctx context.Context, p ota.JobPhaseCountsParams) ([]ota.PhaseCounts, error) {
	// The counts, and the attempted ones, from the counters; those ended
	// since a time, and the unhealthy done ones of the current phase, from
	// the executions they are about (by index).
	id, since := p.JobID, p.Since
	type row struct {
		phase, n, ended int
		state           string
	}
	ended := `coalesce(sum(n) FILTER (WHERE attempted), 0)`
	if since != nil {
		ended = `(SELECT count(*) FROM job_executions x WHERE x.job_id = c.job_id AND x.phase = c.phase AND x.state = c.state
			AND x.attempts > 0 AND x.finished_at >= ?2)`
	}
	rows, err := s.read.QueryContext(ctx, `SELECT phase, state, sum(n), `+ended+` FROM job_counts c WHERE job_id = ?1
		GROUP BY phase, state HAVING sum(n) <> 0 ORDER BY phase`, id, fmtTimePtr(since))
	rs, err := collect(rows, err, "job phase counts", func(sc scanner) (row, error) {
		var r row
		return r, sc.Scan(&r.phase, &r.state, &r.n, &r.ended)
	})
	if err != nil {
		return nil, err
	}
	var out []ota.PhaseCounts
	for _, r := range rs {
		out = ota.AddPhaseCount(out, r.phase, r.state, r.n, r.ended)
	}
	if p.Unhealthy {
		var n int
		if err := s.read.QueryRowContext(ctx, `SELECT count(*) FROM job_executions x JOIN jobs j ON j.id = x.job_id
				JOIN devices d ON d.product_id = x.product_id AND d.name = x.device_name
			WHERE x.job_id = ?1 AND x.state = 'done' AND x.phase = ?2 AND (NOT d.online OR d.version <> j.firmware_version)`,
			id, p.Phase).Scan(&n); err != nil {
			return nil, fmt.Errorf("count unhealthy devices: %w", interpretError(err, "job"))
		}
		for i := range out {
			if out[i].Phase == p.Phase {
				out[i].Unhealthy = n
			}
		}
	}
	return out, nil
}

func (s *Store) JobExecutionsAdd(ctx context.Context, p ota.JobAddParams) (int, error) {
	var added int
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		n, xs, err := insertExecutions(ctx, tx, p.Job, p.At, p.Initial, true, p.Devices)
		if err != nil {
			return err
		}
		added = n
		for _, x := range xs {
			if e, ok := ota.ExecutionEvent(nil, x); ok {
				if err := appendEvents(ctx, tx, e); err != nil {
					return err
				}
			}
		}
		return nil
	})
	return added, err
}

const execColumns = `job_id, product_id, device_name, state, from_version, percent, attempts, result_code, result_msg,
	notified_at, deadline_at, next_attempt_at, finished_at, created_at, updated_at, rev, phase`

func scanExec(row scanner) (*ota.JobExecution, error) {
	var e ota.JobExecution
	err := row.Scan(&e.JobID, &e.ProductID, &e.DeviceName, &e.State, &e.FromVersion, &e.Percent, &e.Attempts, &e.ResultCode, &e.ResultMsg,
		sqlTimePtr{&e.NotifiedAt}, sqlTimePtr{&e.DeadlineAt}, sqlTimePtr{&e.NextAttemptAt}, sqlTimePtr{&e.FinishedAt},
		sqlTime{&e.CreatedAt}, sqlTime{&e.UpdatedAt}, &e.Rev, &e.Phase)
	e.ResultName = ota.ResultName(e.ResultCode)
	return &e, err
}

func (s *Store) JobExecutionGet(ctx context.Context, jobID, deviceName string) (*ota.JobExecution, error) {
	e, err := scanExec(s.read.QueryRowContext(ctx, `SELECT `+execColumns+` FROM job_executions WHERE job_id = ? AND device_name = ?`, jobID, deviceName))
	if err != nil {
		return nil, interpretError(err, "job execution")
	}
	return e, nil
}

func (s *Store) JobExecutionList(ctx context.Context, p ota.JobExecutionListParams) ([]*ota.JobExecution, error) {
	if p.State == "" {
		rows, err := s.read.QueryContext(ctx, `SELECT `+execColumns+` FROM job_executions WHERE job_id = ?1 AND device_name > ?2
			ORDER BY device_name LIMIT ?3`, p.JobID, p.After, ota.PageLimit(p.Limit))
		return collect(rows, err, "job executions", scanExec)
	}
	rows, err := s.read.QueryContext(ctx, `SELECT `+execColumns+` FROM job_executions WHERE job_id = ?1 AND state = ?3 AND device_name > ?2
		ORDER BY state, device_name LIMIT ?4`, p.JobID, p.After, p.State, ota.PageLimit(p.Limit))
	return collect(rows, err, "job executions", scanExec)
}

func (s *Store) JobExecutionCurrent(ctx context.Context, productID, deviceName string) (*ota.JobExecution, error) {
	e, err := scanExec(s.read.QueryRowContext(ctx, `SELECT `+execColumns+` FROM job_executions WHERE product_id = ? AND device_name = ?
		ORDER BY (state IN `+activeStates+`) DESC, created_at DESC, job_id DESC LIMIT 1`, productID, deviceName))
	if err != nil {
		return nil, interpretError(err, "job execution")
	}
	return e, nil
}

func (s *Store) JobExecutionUpdate(ctx context.Context, x *ota.JobExecution) error {
	return s.inTx(ctx, func(tx *sql.Tx) error {
		var from ota.JobExecution
		err := tx.QueryRowContext(ctx, `SELECT state FROM job_executions WHERE job_id = ? AND device_name = ? AND rev = ?`, x.JobID, x.DeviceName, x.Rev).Scan(&from.State)
		if errors.Is(err, sql.ErrNoRows) {
			return ota.Errorf(ota.ECONFLICT, "job execution of %s changed meanwhile", x.DeviceName)
		}
		if err != nil {
			return fmt.Errorf("update job execution: %w", interpretError(err, "job execution"))
		}
		return execUpdate(ctx, tx, &from, x)
	})
}

// execUpdate writes x compare-and-set on its Rev, increments it, and logs
// the event of its move from from.
func execUpdate(ctx context.Context, tx *sql.Tx, from, x *ota.JobExecution) error {
	res, err := tx.ExecContext(ctx, `UPDATE job_executions SET state = ?4, percent = ?5, attempts = ?6, result_code = ?7, result_msg = ?8,
		notified_at = ?9, deadline_at = ?10, next_attempt_at = ?11, finished_at = ?12, updated_at = ?13, rev = rev + 1
		WHERE job_id = ?1 AND device_name = ?2 AND rev = ?3`,
		x.JobID, x.DeviceName, x.Rev, x.State, x.Percent, x.Attempts, x.ResultCode, x.ResultMsg,
		fmtTimePtr(x.NotifiedAt), fmtTimePtr(x.DeadlineAt), fmtTimePtr(x.NextAttemptAt), fmtTimePtr(x.FinishedAt), fmtTime(x.UpdatedAt))
	if err != nil {
		return fmt.Errorf("update job execution: %w", interpretError(err, "job execution"))
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return ota.Errorf(ota.ECONFLICT, "job execution of %s changed meanwhile", x.DeviceName)
	}
	x.Rev++
	if e, ok := ota.ExecutionEvent(from, x); ok {
		return appendEvents(ctx, tx, e)
	}
	return nil
}

func (s *Store) JobExecutionClaim(ctx context.Context, p ota.JobExecutionClaimParams) ([]*ota.JobExecution, error) {
	var claimed []*ota.JobExecution
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		claimed = nil
		var pace ota.JobPace
		if !p.Unpaced {
			// The pace from the counters and, for the notifications of the
			// last minute and the latest one, the notified_at index.
			if err := tx.QueryRowContext(ctx, `SELECT coalesce(sum(n) FILTER (WHERE state IN `+inFlightStates+`), 0),
				(SELECT count(*) FROM job_executions WHERE job_id = ?1 AND notified_at > ?2),
				coalesce(sum(n) FILTER (WHERE attempted), 0), coalesce(sum(n) FILTER (WHERE attempted AND state = 'done'), 0),
				(SELECT max(notified_at) FROM job_executions WHERE job_id = ?1 AND notified_at IS NOT NULL)
				FROM job_counts WHERE job_id = ?1`, p.JobID, fmtTime(p.Since)).Scan(&pace.InFlight, &pace.NotifiedSince,
				&pace.Notified, &pace.Succeeded, sqlTimePtr{&pace.LastNotifiedAt}); err != nil {
				return fmt.Errorf("job pace: %w", err)
			}
		}
		limit := p.Limit(pace)
		if limit <= 0 {
			return nil
		}
		rows, err := tx.QueryContext(ctx, `SELECT `+sqltext.Qualify("x.", execColumns)+` FROM job_executions x
			JOIN devices d ON d.product_id = x.product_id AND d.name = x.device_name
			WHERE x.job_id = ?1 AND x.state = 'queued' AND (x.next_attempt_at IS NULL OR x.next_attempt_at <= ?3)
				AND x.phase <= ?5 AND d.online AND d.ready AND NOT d.disabled AND d.node = ?2 AND x.device_name > ?6
			ORDER BY x.device_name
			LIMIT ?4`, p.JobID, p.Node, fmtTime(p.At), limit, p.MaxPhase, p.After)
		due, err := collect(rows, err, "due job executions", scanExec)
		if err != nil {
			return err
		}
		for _, x := range due {
			y, ok := p.Claim(x)
			if !ok {
				continue
			}
			if err := execUpdate(ctx, tx, x, y); err != nil {
				return err
			}
			claimed = append(claimed, y)
		}
		return nil
	})
	return claimed, err
}

func (s *Store) JobExecutionsExpired(ctx context.Context, now time.Time, limit int) ([]*ota.JobExecution, error) {
	rows, err := s.read.QueryContext(ctx, `SELECT `+execColumns+` FROM job_executions
		WHERE deadline_at < ? AND state IN `+inFlightStates+` ORDER BY deadline_at LIMIT ?`, fmtTime(now), limit)
	return collect(rows, err, "expired job executions", scanExec)
}
