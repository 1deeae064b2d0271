package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

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

func scanJob(row pgx.Row) (*ota.Job, error) {
	var j ota.Job
	var targets, rollout string
	err := row.Scan(&j.ID, &j.ProductID, &j.FirmwareVersion, &j.Status, &targets, &j.TimeoutSeconds, &j.MaxRetries,
		&j.RetryBackoffSeconds, &j.MaxConcurrent, &j.MaxPerMinute, &j.StartAt, &j.CreatedAt, &j.CompletedAt,
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
	j.CreatedAt = utc(j.CreatedAt)
	j.StartAt, j.CompletedAt = utcPtr(j.StartAt), utcPtr(j.CompletedAt)
	return &j, nil
}

// targetFilter is the SQL condition on devices d selecting a job's
// targets, and its one argument, bound to the placeholder param.
func targetFilter(t ota.JobTargets, param string) (string, any) {
	switch {
	case t.All:
		return param + "::text[] IS NULL", []string(nil)
	case len(t.Versions) > 0:
		return "d.version = ANY(" + param + "::text[])", t.Versions
	default:
		return "d.name = ANY(" + param + "::text[])", t.Devices
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
	return s.inTx(ctx, pgx.TxOptions{}, func(tx pgx.Tx) error {
		// Hold the firmware row: a concurrent FirmwareDelete waits for
		// this job, then sees it, or deleted it first and this fails.
		var one int
		err := tx.QueryRow(ctx, `SELECT 1 FROM firmware WHERE product_id = $1 AND version = $2 FOR SHARE`, j.ProductID, j.FirmwareVersion).Scan(&one)
		if errors.Is(err, pgx.ErrNoRows) {
			return ota.Errorf(ota.EINVALID, "firmware version %s has not been uploaded", j.FirmwareVersion)
		}
		if err != nil {
			return interpretError(err, "job firmware")
		}
		if len(j.Targets.Devices) > 0 {
			rows, err := tx.Query(ctx, `SELECT name FROM unnest($2::text[]) AS t(name)
				WHERE NOT EXISTS (SELECT 1 FROM devices WHERE product_id = $1 AND devices.name = t.name) ORDER BY name LIMIT 100`,
				j.ProductID, j.Targets.Devices)
			missing, err := collect(rows, err, "missing devices", scanString)
			if err != nil {
				return err
			}
			if len(missing) > 0 {
				return ota.JobTargetsMissing(missing)
			}
		}
		filter, arg := targetFilter(j.Targets, "$2")
		rows, err := tx.Query(ctx, `SELECT e.device_name FROM job_executions e JOIN devices d ON d.product_id = e.product_id AND d.name = e.device_name
			WHERE e.product_id = $1 AND e.state IN `+activeStates+` AND `+filter+` ORDER BY e.device_name LIMIT 1000`, j.ProductID, arg)
		busy, err := collect(rows, err, "busy devices", scanString)
		if err != nil {
			return err
		}
		if len(busy) > 0 {
			return ota.JobTargetsBusy(busy)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO jobs (`+jobColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, 0)`,
			j.ID, j.ProductID, j.FirmwareVersion, j.Status, string(targets), j.TimeoutSeconds, j.MaxRetries, j.RetryBackoffSeconds,
			j.MaxConcurrent, j.MaxPerMinute, utcPtr(j.StartAt), j.CreatedAt, utcPtr(j.CompletedAt), j.RollbackWindowSeconds, ota.MarshalRollout(j)); err != nil {
			return interpretError(err, "job")
		}
		n, _, err := insertExecutions(ctx, tx, j, j.CreatedAt, p.Initial, false)
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

// assignPhases sets the phase of each execution of a new job as phases
// says.
func assignPhases(ctx context.Context, tx pgx.Tx, jobID string, phases func([]ota.PhaseCandidate) []int) error {
	rows, err := tx.Query(ctx, `SELECT device_name, from_version, state FROM job_executions WHERE job_id = $1 ORDER BY device_name`, jobID)
	cs, err := collect(rows, err, "job executions", func(row pgx.Row) (ota.PhaseCandidate, error) {
		var c ota.PhaseCandidate
		return c, row.Scan(&c.Name, &c.Version, &c.State)
	})
	if err != nil {
		return err
	}
	var names []string
	var nums []int32
	for i, ph := range phases(cs) {
		if ph != 0 {
			names, nums = append(names, cs[i].Name), append(nums, int32(ph))
		}
	}
	_, err = tx.Exec(ctx, `UPDATE job_executions x SET phase = u.phase FROM unnest($2::text[], $3::integer[]) AS u(name, phase)
		WHERE x.job_id = $1 AND x.device_name = u.name`, jobID, names, nums)
	if err != nil {
		return fmt.Errorf("assign phases: %w", err)
	}
	return nil
}

func scanString(row pgx.Row) (string, error) {
	var v string
	return v, row.Scan(&v)
}

func (s *Store) JobGet(ctx context.Context, id string) (*ota.Job, error) {
	j, err := scanJob(s.pool.QueryRow(ctx, `SELECT `+jobColumns+` FROM jobs WHERE id = $1`, id))
	if err != nil {
		return nil, interpretError(err, "job")
	}
	return j, nil
}

func (s *Store) JobList(ctx context.Context, p ota.JobListParams) ([]*ota.Job, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+jobColumns+` FROM jobs WHERE product_id = $1 AND id > $2 ORDER BY id LIMIT $3`,
		p.ProductID, p.After, ota.PageLimit(p.Limit))
	return collect(rows, err, "jobs", scanJob)
}

func (s *Store) JobListActive(ctx context.Context) ([]*ota.Job, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+jobColumns+` FROM jobs WHERE status IN ('scheduled', 'running', 'paused')
		OR (status = 'canceled' AND completed_at IS NULL) ORDER BY id`)
	return collect(rows, err, "active jobs", scanJob)
}

func (s *Store) JobCounts(ctx context.Context, id string) (map[string]int, error) {
	rows, err := s.pool.Query(ctx, `SELECT state, count(*) FROM job_executions WHERE job_id = $1 GROUP BY state`, id)
	if err != nil {
		return nil, fmt.Errorf("count job executions: %w", err)
	}
	counts := map[string]int{}
	var state string
	var n int
	_, err = pgx.ForEachRow(rows, []any{&state, &n}, func() error { counts[state] = n; return nil })
	if err != nil {
		return nil, fmt.Errorf("count job executions: %w", err)
	}
	return counts, nil
}

func (s *Store) JobSetStatus(ctx context.Context, p ota.JobStatusParams) error {
	return s.inTx(ctx, pgx.TxOptions{}, func(tx pgx.Tx) error {
		j, err := scanJob(tx.QueryRow(ctx, `UPDATE jobs SET status = $3, completed_at = COALESCE($4, completed_at), rev = rev + 1 WHERE id = $1 AND status = $2
			RETURNING `+jobColumns, p.ID, p.From, p.To, utcPtr(p.CompletedAt)))
		if errors.Is(err, pgx.ErrNoRows) {
			return ota.Errorf(ota.ECONFLICT, "job is not %s", p.From)
		}
		if err != nil {
			return fmt.Errorf("set job status: %w", interpretError(err, "job"))
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
	err := s.inTx(ctx, pgx.TxOptions{}, func(tx pgx.Tx) error {
		changed = nil
		from, err := scanJob(tx.QueryRow(ctx, `SELECT `+jobColumns+` FROM jobs WHERE id = $1 FOR UPDATE`, p.ID))
		if err != nil {
			return interpretError(err, "job")
		}
		to, err := p.Job(from)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE jobs SET status = $2, completed_at = $3, rollout = $4, rev = rev + 1 WHERE id = $1`,
			p.ID, to.Status, utcPtr(to.CompletedAt), ota.MarshalRollout(to)); err != nil {
			return fmt.Errorf("change job: %w", interpretError(err, "job"))
		}
		to.Rev = from.Rev + 1
		evs := ota.JobChangeEvents(from, to, p.At)
		if len(p.States) > 0 {
			rows, err := tx.Query(ctx, `SELECT `+sqltext.Qualify("x.", execColumns)+` FROM job_executions x WHERE x.job_id = $1 AND x.state = ANY($2::text[])
				AND (NOT $3 OR NOT EXISTS (SELECT 1 FROM job_executions y WHERE y.product_id = x.product_id AND y.device_name = x.device_name
					AND y.job_id <> x.job_id AND y.state IN `+activeStates+`))
				ORDER BY x.device_name FOR UPDATE OF x`, p.ID, p.States, p.Exclusive)
			xs, err := collect(rows, err, "job executions", scanExec)
			if err != nil {
				return err
			}
			var froms []*ota.JobExecution
			for _, x := range xs {
				if y, ok := p.Apply(to, x); ok {
					froms, changed = append(froms, x), append(changed, y)
				}
			}
			if err := execUpdateAll(ctx, tx, changed); err != nil {
				return err
			}
			evs = append(evs, executionEvents(froms, changed)...)
		}
		return appendEvents(ctx, tx, evs...)
	})
	return changed, err
}

func (s *Store) JobPhaseCounts(ctx context.Context, id string, since *time.Time) ([]ota.PhaseCounts, error) {
	rows, err := s.pool.Query(ctx, `SELECT x.phase, x.state, count(*),
			count(*) FILTER (WHERE x.attempts > 0 AND ($2::timestamptz IS NULL OR x.finished_at >= $2)),
			count(*) FILTER (WHERE x.state = 'done' AND d.name IS NOT NULL AND (NOT d.online OR d.version <> j.firmware_version))
		FROM job_executions x JOIN jobs j ON j.id = x.job_id
			LEFT JOIN devices d ON d.product_id = x.product_id AND d.name = x.device_name
		WHERE x.job_id = $1 GROUP BY x.phase, x.state ORDER BY x.phase`, id, utcPtr(since))
	if err != nil {
		return nil, fmt.Errorf("count job phases: %w", err)
	}
	var out []ota.PhaseCounts
	var phase, n, ended, unhealthy int
	var state string
	_, err = pgx.ForEachRow(rows, []any{&phase, &state, &n, &ended, &unhealthy}, func() error {
		out = ota.AddPhaseCount(out, phase, state, n, ended, unhealthy)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("count job phases: %w", err)
	}
	return out, nil
}

func (s *Store) JobExecutionsAdd(ctx context.Context, p ota.JobAddParams) (int, error) {
	var added int
	err := s.inTx(ctx, pgx.TxOptions{}, func(tx pgx.Tx) error {
		n, xs, err := insertExecutions(ctx, tx, p.Job, p.At, p.Initial, true)
		if err != nil {
			return err
		}
		added = n
		return appendEvents(ctx, tx, executionEvents(make([]*ota.JobExecution, len(xs)), xs)...)
	})
	return added, err
}

// insertExecutions inserts the executions of job j's targets, in its
// current phase, their first states from initial per distinct version:
// all of them for a new job, or (onlyNew) those of devices in neither j
// nor another active job, which it then returns. The targets are
// share-locked: their versions stay until the executions are in.
func insertExecutions(ctx context.Context, tx pgx.Tx, j *ota.Job, at time.Time, initial func(string) ota.JobExecution, onlyNew bool) (int, []*ota.JobExecution, error) {
	// fresh keeps the devices in neither this job (param) nor another
	// active one.
	fresh := func(param string) string {
		if !onlyNew {
			return ""
		}
		return ` AND NOT EXISTS (SELECT 1 FROM job_executions x WHERE x.product_id = d.product_id AND x.device_name = d.name
			AND (x.job_id = ` + param + ` OR x.state IN ` + activeStates + `))`
	}
	filter, arg := targetFilter(j.Targets, "$2")
	args := []any{j.ProductID, arg}
	if onlyNew {
		args = append(args, j.ID)
	}
	rows, err := tx.Query(ctx, `SELECT DISTINCT version FROM (SELECT d.version FROM devices d WHERE d.product_id = $1 AND `+filter+fresh("$3")+`
		ORDER BY d.name FOR SHARE OF d) t`, args...)
	versions, err := collect(rows, err, "target versions", scanString)
	if err != nil || len(versions) == 0 {
		return 0, nil, err
	}
	states, percents, finished := make([]string, len(versions)), make([]int32, len(versions)), make([]*time.Time, len(versions))
	for i, v := range versions {
		x := initial(v)
		states[i], percents[i], finished[i] = x.State, int32(x.Percent), utcPtr(x.FinishedAt)
	}
	filter, arg = targetFilter(j.Targets, "$3")
	q := `INSERT INTO job_executions (job_id, product_id, device_name, state, from_version, percent, finished_at, created_at, updated_at, phase)
		SELECT $4, d.product_id, d.name, m.state, d.version, m.percent, m.finished_at, $5, $5, $9
		FROM devices d JOIN unnest($2::text[], $6::text[], $7::integer[], $8::timestamptz[]) AS m(version, state, percent, finished_at)
			ON m.version = d.version
		WHERE d.product_id = $1 AND ` + filter + fresh("$4")
	args = []any{j.ProductID, versions, arg, j.ID, at.UTC(), states, percents, finished, j.Phase}
	if !onlyNew {
		tag, err := tx.Exec(ctx, q, args...)
		if err != nil {
			return 0, nil, fmt.Errorf("create job executions: %w", interpretError(err, "job execution"))
		}
		return int(tag.RowsAffected()), nil, nil
	}
	rows, err = tx.Query(ctx, q+` ON CONFLICT DO NOTHING RETURNING `+execColumns, args...)
	xs, err := collect(rows, err, "added job executions", scanExec)
	return len(xs), xs, err
}

const execColumns = `job_id, product_id, device_name, state, from_version, percent, attempts, result_code, result_msg,
	notified_at, deadline_at, next_attempt_at, finished_at, created_at, updated_at, rev, phase`

func scanExec(row pgx.Row) (*ota.JobExecution, error) {
	var e ota.JobExecution
	err := row.Scan(&e.JobID, &e.ProductID, &e.DeviceName, &e.State, &e.FromVersion, &e.Percent, &e.Attempts, &e.ResultCode, &e.ResultMsg,
		&e.NotifiedAt, &e.DeadlineAt, &e.NextAttemptAt, &e.FinishedAt, &e.CreatedAt, &e.UpdatedAt, &e.Rev, &e.Phase)
	if err != nil {
		return nil, err
	}
	e.NotifiedAt, e.DeadlineAt, e.NextAttemptAt, e.FinishedAt = utcPtr(e.NotifiedAt), utcPtr(e.DeadlineAt), utcPtr(e.NextAttemptAt), utcPtr(e.FinishedAt)
	e.CreatedAt, e.UpdatedAt = utc(e.CreatedAt), utc(e.UpdatedAt)
	e.ResultName = ota.ResultName(e.ResultCode)
	return &e, nil
}

func (s *Store) JobExecutionGet(ctx context.Context, jobID, deviceName string) (*ota.JobExecution, error) {
	e, err := scanExec(s.pool.QueryRow(ctx, `SELECT `+execColumns+` FROM job_executions WHERE job_id = $1 AND device_name = $2`, jobID, deviceName))
	if err != nil {
		return nil, interpretError(err, "job execution")
	}
	return e, nil
}

func (s *Store) JobExecutionList(ctx context.Context, p ota.JobExecutionListParams) ([]*ota.JobExecution, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+execColumns+` FROM job_executions WHERE job_id = $1 AND device_name > $2
		AND ($3 = '' OR state = $3) ORDER BY device_name LIMIT $4`, p.JobID, p.After, p.State, ota.PageLimit(p.Limit))
	return collect(rows, err, "job executions", scanExec)
}

func (s *Store) JobExecutionCurrent(ctx context.Context, productID, deviceName string) (*ota.JobExecution, error) {
	e, err := scanExec(s.pool.QueryRow(ctx, `SELECT `+execColumns+` FROM job_executions WHERE product_id = $1 AND device_name = $2
		ORDER BY (state IN `+activeStates+`) DESC, created_at DESC, job_id DESC LIMIT 1`, productID, deviceName))
	if err != nil {
		return nil, interpretError(err, "job execution")
	}
	return e, nil
}

func (s *Store) JobExecutionUpdate(ctx context.Context, x *ota.JobExecution) error {
	return s.inTx(ctx, pgx.TxOptions{}, func(tx pgx.Tx) error {
		var from ota.JobExecution
		err := tx.QueryRow(ctx, `SELECT state FROM job_executions WHERE job_id = $1 AND device_name = $2 AND rev = $3 FOR UPDATE`,
			x.JobID, x.DeviceName, x.Rev).Scan(&from.State)
		if errors.Is(err, pgx.ErrNoRows) {
			return ota.Errorf(ota.ECONFLICT, "job execution of %s changed meanwhile", x.DeviceName)
		}
		if err != nil {
			return fmt.Errorf("update job execution: %w", err)
		}
		if err := execUpdateAll(ctx, tx, []*ota.JobExecution{x}); err != nil {
			return err
		}
		if e, ok := ota.ExecutionEvent(&from, x); ok {
			return appendEvents(ctx, tx, e)
		}
		return nil
	})
}

// execUpdateAll writes xs in one statement, each compare-and-set on its
// Rev, and increments their Revs: ECONFLICT, and nothing written, when any
// one changed meanwhile (within a transaction the caller rolls back).
func execUpdateAll(ctx context.Context, db execer, xs []*ota.JobExecution) error {
	if len(xs) == 0 {
		return nil
	}
	n := len(xs)
	jobs, names, states, msgs := make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	revs, percents, attempts, codes := make([]int32, n), make([]int32, n), make([]int32, n), make([]int32, n)
	notified, deadline, next, finished, updated := make([]*time.Time, n), make([]*time.Time, n), make([]*time.Time, n), make([]*time.Time, n), make([]time.Time, n)
	for i, x := range xs {
		jobs[i], names[i], states[i], msgs[i] = x.JobID, x.DeviceName, x.State, x.ResultMsg
		revs[i], percents[i], attempts[i], codes[i] = int32(x.Rev), int32(x.Percent), int32(x.Attempts), int32(x.ResultCode)
		notified[i], deadline[i], next[i], finished[i], updated[i] = utcPtr(x.NotifiedAt), utcPtr(x.DeadlineAt), utcPtr(x.NextAttemptAt), utcPtr(x.FinishedAt), x.UpdatedAt.UTC()
	}
	tag, err := db.Exec(ctx, `UPDATE job_executions x SET state = u.state, percent = u.percent, attempts = u.attempts,
			result_code = u.result_code, result_msg = u.result_msg, notified_at = u.notified_at, deadline_at = u.deadline_at,
			next_attempt_at = u.next_attempt_at, finished_at = u.finished_at, updated_at = u.updated_at, rev = x.rev + 1
		FROM unnest($1::text[], $2::text[], $3::integer[], $4::text[], $5::integer[], $6::integer[], $7::integer[], $8::text[],
			$9::timestamptz[], $10::timestamptz[], $11::timestamptz[], $12::timestamptz[], $13::timestamptz[])
			AS u(job_id, device_name, rev, state, percent, attempts, result_code, result_msg, notified_at, deadline_at, next_attempt_at, finished_at, updated_at)
		WHERE x.job_id = u.job_id AND x.device_name = u.device_name AND x.rev = u.rev`,
		jobs, names, revs, states, percents, attempts, codes, msgs, notified, deadline, next, finished, updated)
	if err != nil {
		return fmt.Errorf("update job executions: %w", interpretError(err, "job execution"))
	}
	if int(tag.RowsAffected()) != n {
		return ota.Errorf(ota.ECONFLICT, "%d of %d job executions changed meanwhile", n-int(tag.RowsAffected()), n)
	}
	for _, x := range xs {
		x.Rev++
	}
	return nil
}

func (s *Store) JobExecutionClaim(ctx context.Context, p ota.JobExecutionClaimParams) ([]*ota.JobExecution, error) {
	var claimed []*ota.JobExecution
	err := s.inTx(ctx, pgx.TxOptions{}, func(tx pgx.Tx) error {
		claimed = nil
		// The job's row lock orders the claims of every replica, so the
		// pace counted here holds until this transaction commits.
		var one int
		if err := tx.QueryRow(ctx, `SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE`, p.JobID).Scan(&one); err != nil {
			return interpretError(err, "job")
		}
		var pace ota.JobPace
		if err := tx.QueryRow(ctx, `SELECT
			count(*) FILTER (WHERE state IN `+inFlightStates+`),
			count(*) FILTER (WHERE notified_at > $2),
			count(*) FILTER (WHERE attempts > 0),
			count(*) FILTER (WHERE attempts > 0 AND state = 'done'),
			max(notified_at)
			FROM job_executions WHERE job_id = $1`, p.JobID, p.Since.UTC()).Scan(&pace.InFlight, &pace.NotifiedSince,
			&pace.Notified, &pace.Succeeded, &pace.LastNotifiedAt); err != nil {
			return fmt.Errorf("job pace: %w", err)
		}
		limit := p.Limit(pace)
		if limit <= 0 {
			return nil
		}
		rows, err := tx.Query(ctx, `SELECT `+sqltext.Qualify("x.", execColumns)+` FROM job_executions x
			JOIN devices d ON d.product_id = x.product_id AND d.name = x.device_name
			WHERE x.job_id = $1 AND x.state = 'queued' AND (x.next_attempt_at IS NULL OR x.next_attempt_at <= $3)
				AND x.phase <= $5 AND d.online AND d.ready AND NOT d.disabled AND d.node = $2
			ORDER BY x.next_attempt_at NULLS FIRST, x.device_name
			LIMIT $4 FOR UPDATE OF x SKIP LOCKED`, p.JobID, p.Node, p.At.UTC(), limit, p.MaxPhase)
		due, err := collect(rows, err, "due job executions", scanExec)
		if err != nil {
			return err
		}
		var froms []*ota.JobExecution
		for _, x := range due {
			if y, ok := p.Claim(x); ok {
				froms, claimed = append(froms, x), append(claimed, y)
			}
		}
		if err := execUpdateAll(ctx, tx, claimed); err != nil {
			return err
		}
		return appendEvents(ctx, tx, executionEvents(froms, claimed)...)
	})
	return claimed, err
}

func (s *Store) JobExecutionsExpired(ctx context.Context, now time.Time, limit int) ([]*ota.JobExecution, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+execColumns+` FROM job_executions
		WHERE deadline_at < $1 AND state IN `+inFlightStates+` ORDER BY deadline_at LIMIT $2`, now.UTC(), limit)
	return collect(rows, err, "expired job executions", scanExec)
}
