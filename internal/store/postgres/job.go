package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
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
		// The targets are read without locking their rows (insertTargets);
		// instead, a device delete of this product waits for this job and
		// then ends the device's new execution, or deleted it first and
		// this job does not see it.
		if err := lockTargets(ctx, tx, j.ProductID, true); err != nil {
			return err
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
		n, err := insertTargets(ctx, tx, j, p.Initial, p.Phases)
		if err != nil {
			if ota.IsCode(err, ota.ECONFLICT) {
				return ota.JobTargetsBusy(nil)
			}
			return err
		}
		if n == 0 {
			return ota.ErrJobTargetsNone
		}
		return appendEvents(ctx, tx, ota.JobEvent(j, "", j.Status, j.CreatedAt))
	})
}

// insertTargets inserts the executions of new job j's targets, each in
// the first state initial gives its version and, when phases is set, in
// the phase it gives. The targets are read without locking a device row:
// a report, which locks its device's row, never waits for a job's
// creation. A device whose version changes meanwhile starts from the
// version it had; its next report_version moves its execution on as any
// report does.
func insertTargets(ctx context.Context, tx pgx.Tx, j *ota.Job, initial func(string) ota.JobExecution, phases func([]ota.PhaseCandidate) []int) (int, error) {
	if phases != nil {
		return insertPhased(ctx, tx, j, initial, phases)
	}
	// One phase: the executions are made by one INSERT … SELECT, in the
	// database, with the first state of each version the targets had a
	// moment before. A device that has since moved to a version not read
	// then goes in with no state ('') and is given its first state right
	// after, by the (job_id, state) index: usually none.
	filter, arg := targetFilter(j.Targets, "$2")
	q := `SELECT DISTINCT d.version FROM devices d WHERE d.product_id = $1 AND ` + filter
	if j.Targets.All {
		// The distinct versions by the devices_version index, one probe
		// each, instead of reading every device.
		q = `WITH RECURSIVE v(version) AS (
				SELECT min(version) FROM devices WHERE product_id = $1 AND ` + filter + `
				UNION ALL
				SELECT (SELECT min(version) FROM devices WHERE product_id = $1 AND version > v.version) FROM v WHERE v.version IS NOT NULL)
			SELECT version FROM v WHERE version IS NOT NULL`
	}
	rows, err := tx.Query(ctx, q, j.ProductID, arg)
	versions, err := collect(rows, err, "target versions", scanString)
	if err != nil || len(versions) == 0 {
		return 0, err
	}
	states, percents, finished := firstStates(versions, initial)
	filter, arg = targetFilter(j.Targets, "$3")
	tag, err := tx.Exec(ctx, `INSERT INTO job_executions (job_id, product_id, device_name, state, from_version, percent, finished_at, created_at, updated_at, phase)
		SELECT $4, d.product_id, d.name, coalesce(m.state, ''), d.version, coalesce(m.percent, 0), m.finished_at, $5, $5, $9
		FROM devices d LEFT JOIN unnest($2::text[], $6::text[], $7::integer[], $8::timestamptz[]) AS m(version, state, percent, finished_at)
			ON m.version = d.version
		WHERE d.product_id = $1 AND `+filter+` ORDER BY d.name`,
		j.ProductID, versions, arg, j.ID, j.CreatedAt.UTC(), states, percents, finished, j.Phase)
	if err != nil {
		return 0, fmt.Errorf("create job executions: %w", interpretError(err, "job execution"))
	}
	rows, err = tx.Query(ctx, `SELECT DISTINCT from_version FROM job_executions WHERE job_id = $1 AND state = ''`, j.ID)
	late, err := collect(rows, err, "job executions without a state", scanString)
	if err != nil || len(late) == 0 {
		return int(tag.RowsAffected()), err
	}
	states, percents, finished = firstStates(late, initial)
	if _, err := tx.Exec(ctx, `UPDATE job_executions x SET state = m.state, percent = m.percent, finished_at = m.finished_at
		FROM unnest($2::text[], $3::text[], $4::integer[], $5::timestamptz[]) AS m(version, state, percent, finished_at)
		WHERE x.job_id = $1 AND x.state = '' AND x.from_version = m.version`, j.ID, late, states, percents, finished); err != nil {
		return 0, fmt.Errorf("create job executions: %w", interpretError(err, "job execution"))
	}
	return int(tag.RowsAffected()), nil
}

// firstStates are the first states, percents and finished times initial
// gives versions, as arrays for SQL.
func firstStates(versions []string, initial func(string) ota.JobExecution) ([]string, []int32, []*time.Time) {
	states, percents, finished := make([]string, len(versions)), make([]int32, len(versions)), make([]*time.Time, len(versions))
	for i, v := range versions {
		x := initial(v)
		states[i], percents[i], finished[i] = x.State, int32(x.Percent), utcPtr(x.FinishedAt)
	}
	return states, percents, finished
}

// insertPhased inserts the executions of new job j's targets in one COPY,
// in the phases phases gives them (drawn in Go, at random with the job's
// seed): the targets are read in one statement, sorted by name, with the
// first state initial gives their version.
func insertPhased(ctx context.Context, tx pgx.Tx, j *ota.Job, initial func(string) ota.JobExecution, phases func([]ota.PhaseCandidate) []int) (int, error) {
	filter, arg := targetFilter(j.Targets, "$2")
	rows, err := tx.Query(ctx, `SELECT d.name, d.version FROM devices d WHERE d.product_id = $1 AND `+filter+` ORDER BY d.name`, j.ProductID, arg)
	firsts := map[string]ota.JobExecution{}
	cs, err := collect(rows, err, "job targets", func(row pgx.Row) (ota.PhaseCandidate, error) {
		var c ota.PhaseCandidate
		if err := row.Scan(&c.Name, &c.Version); err != nil {
			return c, err
		}
		x, ok := firsts[c.Version]
		if !ok {
			x = initial(c.Version)
			firsts[c.Version] = x
		}
		c.State = x.State
		return c, nil
	})
	if err != nil || len(cs) == 0 {
		return 0, err
	}
	ph := phases(cs)
	at := j.CreatedAt.UTC()
	n, err := tx.CopyFrom(ctx, pgx.Identifier{"job_executions"},
		[]string{"job_id", "product_id", "device_name", "state", "from_version", "percent", "finished_at", "created_at", "updated_at", "phase"},
		pgx.CopyFromSlice(len(cs), func(i int) ([]any, error) {
			c, x := cs[i], firsts[cs[i].Version]
			return []any{j.ID, j.ProductID, c.Name, x.State, c.Version, int32(x.Percent), utcPtr(x.FinishedAt), at, at, int32(ph[i])}, nil
		}))
	if err != nil {
		return 0, fmt.Errorf("create job executions: %w", interpretError(err, "job execution"))
	}
	return int(n), nil
}

// lockTargets takes product productID's job targets lock for the rest of
// the transaction: exclusive for a job's creation, which reads its targets
// in one snapshot without locking them, shared for a device's deletion.
// The two are ordered, deletions not among themselves; a report, which
// takes neither, never waits for a job's creation.
func lockTargets(ctx context.Context, tx pgx.Tx, productID string, exclusive bool) error {
	fn := "pg_advisory_xact_lock_shared"
	if exclusive {
		fn = "pg_advisory_xact_lock"
	}
	if _, err := tx.Exec(ctx, `SELECT `+fn+`(hashtext('otad job targets ' || $1))`, productID); err != nil {
		return fmt.Errorf("job targets lock: %w", err)
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

// jobCountRows are job $1's rows of job_counts and job_count_deltas:
// their sums by phase, state and attempted are its executions' counts.
const jobCountRows = `(SELECT phase, state, attempted, n FROM job_counts WHERE job_id = $1
	UNION ALL SELECT phase, state, attempted, n FROM job_count_deltas WHERE job_id = $1) c`

// foldCounts adds job id's count deltas into its counts, in a transaction
// that holds the job's row (so that two folds never race on a count row).
func foldCounts(ctx context.Context, tx pgx.Tx, id string) error {
	_, err := tx.Exec(ctx, `WITH d AS (DELETE FROM job_count_deltas WHERE job_id = $1 RETURNING phase, state, attempted, n)
		INSERT INTO job_counts (job_id, phase, state, attempted, n)
		SELECT $1, phase, state, attempted, sum(n) FROM d GROUP BY phase, state, attempted
		ON CONFLICT (job_id, phase, state, attempted) DO UPDATE SET n = job_counts.n + excluded.n`, id)
	if err != nil {
		return fmt.Errorf("fold job counts: %w", err)
	}
	return nil
}

func (s *Store) JobCounts(ctx context.Context, id string) (map[string]int, error) {
	rows, err := s.pool.Query(ctx, `SELECT state, sum(n) FROM `+jobCountRows+` GROUP BY state HAVING sum(n) <> 0`, id)
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
		if err := foldCounts(ctx, tx, p.ID); err != nil {
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
				ORDER BY x.device_name LIMIT NULLIF($4::integer, 0) FOR UPDATE OF x`, p.ID, p.States, p.Exclusive, max(p.Limit, 0))
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

func (s *Store) JobPhaseCounts(ctx context.Context, p ota.JobPhaseCountsParams) ([]ota.PhaseCounts, error) {
	// The counts, and the attempted ones among them, from the counters;
	// those ended since a time, and the unhealthy done ones of the current
	// phase, from the executions they are about (by index).
	id, since := p.JobID, p.Since
	batch := &pgx.Batch{}
	batch.Queue(`SELECT phase, state, sum(n), coalesce(sum(n) FILTER (WHERE attempted), 0) FROM `+jobCountRows+`
		GROUP BY phase, state HAVING sum(n) <> 0`, id)
	if since != nil {
		batch.Queue(`SELECT phase, state, count(*) FROM job_executions WHERE job_id = $1 AND attempts > 0 AND finished_at >= $2
			GROUP BY phase, state`, id, utcPtr(since))
	}
	if p.Unhealthy {
		batch.Queue(`SELECT count(*) FROM job_executions x JOIN jobs j ON j.id = x.job_id
				JOIN devices d ON d.product_id = x.product_id AND d.name = x.device_name
			WHERE x.job_id = $1 AND x.state = 'done' AND x.phase = $2 AND (NOT d.online OR d.version <> j.firmware_version)`, id, p.Phase)
	}
	br := s.pool.SendBatch(ctx, batch)
	defer br.Close()
	byPhase := map[int]*ota.PhaseCounts{}
	get := func(phase int) *ota.PhaseCounts {
		p := byPhase[phase]
		if p == nil {
			p = &ota.PhaseCounts{Phase: phase, Counts: map[string]int{}, EndedSince: map[string]int{}}
			byPhase[phase] = p
		}
		return p
	}
	var phase, n, attempted int
	var state string
	rows, err := br.Query()
	if err == nil {
		_, err = pgx.ForEachRow(rows, []any{&phase, &state, &n, &attempted}, func() error {
			p := get(phase)
			p.Counts[state] += n
			if since == nil {
				p.EndedSince[state] += attempted
			}
			return nil
		})
	}
	if err == nil && since != nil {
		rows, err = br.Query()
		if err == nil {
			_, err = pgx.ForEachRow(rows, []any{&phase, &state, &n}, func() error { get(phase).EndedSince[state] += n; return nil })
		}
	}
	if err == nil && p.Unhealthy {
		if err = br.QueryRow().Scan(&n); err == nil && n > 0 {
			get(p.Phase).Unhealthy = n
		}
	}
	if err != nil {
		return nil, fmt.Errorf("count job phases: %w", err)
	}
	out := make([]ota.PhaseCounts, 0, len(byPhase))
	for _, p := range byPhase {
		out = append(out, *p)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Phase < out[b].Phase })
	return out, nil
}

func (s *Store) JobExecutionsAdd(ctx context.Context, p ota.JobAddParams) (int, error) {
	var added int
	err := s.inTx(ctx, pgx.TxOptions{}, func(tx pgx.Tx) error {
		xs, err := addExecutions(ctx, tx, p.Job, p.At, p.Initial, p.Devices)
		if err != nil {
			return err
		}
		added = len(xs)
		return appendEvents(ctx, tx, executionEvents(make([]*ota.JobExecution, len(xs)), xs)...)
	})
	return added, err
}

// addExecutions adds to continuous job j, in its current phase, the
// devices of its targets (among only, when set) in neither j nor another
// active job, their first states from initial per distinct version, and
// returns them. The targets are share-locked: their versions stay until
// the executions are in. A new job's executions are inserted by
// insertTargets instead.
func addExecutions(ctx context.Context, tx pgx.Tx, j *ota.Job, at time.Time, initial func(string) ota.JobExecution, only []string) ([]*ota.JobExecution, error) {
	// fresh keeps the devices in neither this job (jobParam) nor another
	// active one, by two lookups by index (the primary key, the active
	// one), and, when only is set, among only (onlyParam).
	fresh := func(jobParam, onlyParam string) string {
		q := ` AND NOT EXISTS (SELECT 1 FROM job_executions x WHERE x.job_id = ` + jobParam + ` AND x.device_name = d.name)
			AND NOT EXISTS (SELECT 1 FROM job_executions x WHERE x.product_id = d.product_id AND x.device_name = d.name
				AND x.state IN ` + activeStates + `)`
		if only != nil {
			q += ` AND d.name = ANY(` + onlyParam + `::text[])`
		}
		return q
	}
	filter, arg := targetFilter(j.Targets, "$2")
	args := []any{j.ProductID, arg, j.ID}
	if only != nil {
		args = append(args, only)
	}
	rows, err := tx.Query(ctx, `SELECT DISTINCT version FROM (SELECT d.version FROM devices d WHERE d.product_id = $1 AND `+filter+fresh("$3", "$4")+`
		ORDER BY d.name FOR SHARE OF d) t`, args...)
	versions, err := collect(rows, err, "target versions", scanString)
	if err != nil || len(versions) == 0 {
		return nil, err
	}
	states, percents, finished := firstStates(versions, initial)
	filter, arg = targetFilter(j.Targets, "$3")
	args = []any{j.ProductID, versions, arg, j.ID, at.UTC(), states, percents, finished, j.Phase}
	if only != nil {
		args = append(args, only)
	}
	rows, err = tx.Query(ctx, `INSERT INTO job_executions (job_id, product_id, device_name, state, from_version, percent, finished_at, created_at, updated_at, phase)
		SELECT $4, d.product_id, d.name, m.state, d.version, m.percent, m.finished_at, $5, $5, $9
		FROM devices d JOIN unnest($2::text[], $6::text[], $7::integer[], $8::timestamptz[]) AS m(version, state, percent, finished_at)
			ON m.version = d.version
		WHERE d.product_id = $1 AND `+filter+fresh("$4", "$10")+` ON CONFLICT DO NOTHING RETURNING `+execColumns, args...)
	return collect(rows, err, "added job executions", scanExec)
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
	// Two statements, so that each is planned for its own index: the
	// primary key, or (job_id, state, device_name).
	if p.State == "" {
		rows, err := s.pool.Query(ctx, `SELECT `+execColumns+` FROM job_executions WHERE job_id = $1 AND device_name > $2
			ORDER BY device_name LIMIT $3`, p.JobID, p.After, ota.PageLimit(p.Limit))
		return collect(rows, err, "job executions", scanExec)
	}
	rows, err := s.pool.Query(ctx, `SELECT `+execColumns+` FROM job_executions WHERE job_id = $1 AND state = $3 AND device_name > $2
		ORDER BY state, device_name LIMIT $4`, p.JobID, p.After, p.State, ota.PageLimit(p.Limit))
	return collect(rows, err, "job executions", scanExec)
}

// currentExecution is a subquery of device (pid, name)'s current
// execution: its active one, else its latest ended one, each looked up by
// its own partial index (job_executions_active, job_executions_ended):
// a new job's executions, all active, are in one index of the two.
func currentExecution(pid, name string) string {
	return `(SELECT * FROM (
			(SELECT * FROM job_executions WHERE product_id = ` + pid + ` AND device_name = ` + name + ` AND state IN ` + activeStates + ` LIMIT 1)
			UNION ALL
			(SELECT * FROM job_executions WHERE product_id = ` + pid + ` AND device_name = ` + name + ` AND state NOT IN ` + activeStates + `
				ORDER BY created_at DESC, job_id DESC LIMIT 1)) c
		ORDER BY (state IN ` + activeStates + `) DESC LIMIT 1)`
}

func (s *Store) JobExecutionCurrent(ctx context.Context, productID, deviceName string) (*ota.JobExecution, error) {
	e, err := scanExec(s.pool.QueryRow(ctx, `SELECT `+execColumns+` FROM `+currentExecution("$1", "$2")+` x`, productID, deviceName))
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
		var productID string
		if err := tx.QueryRow(ctx, `SELECT product_id FROM jobs WHERE id = $1 FOR UPDATE`, p.JobID).Scan(&productID); err != nil {
			return interpretError(err, "job")
		}
		if err := foldCounts(ctx, tx, p.JobID); err != nil {
			return err
		}
		// The pace from the counters and, for the notifications of the
		// last minute and the latest one, the notified_at index.
		var pace ota.JobPace
		if !p.Unpaced {
			if err := tx.QueryRow(ctx, `SELECT coalesce(sum(n) FILTER (WHERE state IN `+inFlightStates+`), 0),
				(SELECT count(*) FROM job_executions WHERE job_id = $1 AND notified_at > $2),
				coalesce(sum(n) FILTER (WHERE attempted), 0), coalesce(sum(n) FILTER (WHERE attempted AND state = 'done'), 0),
				(SELECT max(notified_at) FROM job_executions WHERE job_id = $1 AND notified_at IS NOT NULL)
				FROM `+jobCountRows,
				p.JobID, p.Since.UTC()).Scan(&pace.InFlight, &pace.NotifiedSince,
				&pace.Notified, &pace.Succeeded, &pace.LastNotifiedAt); err != nil {
				return fmt.Errorf("job pace: %w", err)
			}
		}
		limit := p.Limit(pace)
		if limit <= 0 {
			return nil
		}
		// From the devices online on this replica (devices_online), which
		// one replica's connections bound, in name order from where the
		// pass's previous claim ended, to each one's execution in this
		// job: a claim costs the same whether the job has a thousand
		// devices or a million, and stops at its limit. The lateral
		// subquery (its LIMIT keeps it one) makes every plan look the
		// execution up by the device, whatever the statistics say: a
		// job's first claims run on executions just inserted, which the
		// planner has not counted yet, and a join it planned from those
		// counts compared every online device with every execution.
		rows, err := tx.Query(ctx, `SELECT `+sqltext.Qualify("x.", execColumns)+` FROM devices d
			CROSS JOIN LATERAL (SELECT * FROM job_executions x
				WHERE x.job_id = $1 AND x.product_id = d.product_id AND x.device_name = d.name AND x.state = 'queued'
					AND (x.next_attempt_at IS NULL OR x.next_attempt_at <= $3) AND x.phase <= $5 LIMIT 1) x
			WHERE d.product_id = $6 AND d.online AND d.node = $2 AND d.name > $7 AND d.ready AND NOT d.disabled
			ORDER BY d.name
			LIMIT $4 FOR UPDATE OF x SKIP LOCKED`, p.JobID, p.Node, p.At.UTC(), limit, p.MaxPhase, productID, p.After)
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
