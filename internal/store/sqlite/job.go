package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"time"

	"github.com/otad/otad/internal/ota"
)

// terminalStates is the SQL list of states in which an execution has ended.
const terminalStates = `('done', 'failed', 'timed_out', 'canceled')`

const jobColumns = `id, product_id, firmware_version, status, targets, timeout_seconds, max_retries, retry_backoff_seconds,
	max_concurrent, max_per_minute, start_at, created_at, completed_at`

func scanJob(row scanner) (*ota.Job, error) {
	var j ota.Job
	var targets string
	err := row.Scan(&j.ID, &j.ProductID, &j.FirmwareVersion, &j.Status, &targets, &j.TimeoutSeconds, &j.MaxRetries,
		&j.RetryBackoffSeconds, &j.MaxConcurrent, &j.MaxPerMinute, sqlTimePtr{&j.StartAt}, sqlTime{&j.CreatedAt}, sqlTimePtr{&j.CompletedAt})
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal([]byte(targets), &j.Targets); err != nil {
		return nil, fmt.Errorf("job %s targets: %w", j.ID, err)
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

func (s *Store) JobCreate(ctx context.Context, j *ota.Job) error {
	if j.CreatedAt.IsZero() {
		j.CreatedAt = ota.Now()
	}
	targets, err := json.Marshal(j.Targets)
	if err != nil {
		return fmt.Errorf("job targets: %w", err)
	}
	return s.inTx(ctx, func(tx *sql.Tx) error {
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
			WHERE e.product_id = ?1 AND e.state NOT IN `+terminalStates+` AND `+filter+` ORDER BY e.device_name LIMIT 1000`,
			j.ProductID, arg)
		busy, err := collect(rows, err, "busy devices", scanString)
		if err != nil {
			return err
		}
		if len(busy) > 0 {
			return ota.JobTargetsBusy(busy)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO jobs (`+jobColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			j.ID, j.ProductID, j.FirmwareVersion, j.Status, string(targets), j.TimeoutSeconds, j.MaxRetries, j.RetryBackoffSeconds,
			j.MaxConcurrent, j.MaxPerMinute, fmtTimePtr(j.StartAt), fmtTime(j.CreatedAt), fmtTimePtr(j.CompletedAt)); err != nil {
			return interpretError(err, "job")
		}
		at := fmtTime(j.CreatedAt)
		filter, arg = targetFilter(j.Targets, "?3")
		res, err := tx.ExecContext(ctx, `INSERT INTO job_executions (job_id, product_id, device_name, state, from_version, percent, finished_at, created_at, updated_at)
			SELECT ?4, d.product_id, d.name,
				CASE WHEN d.version = ?2 THEN 'done' ELSE 'queued' END, d.version,
				CASE WHEN d.version = ?2 THEN 100 ELSE 0 END,
				CASE WHEN d.version = ?2 THEN ?5 END, ?5, ?5
			FROM devices d WHERE d.product_id = ?1 AND `+filter, j.ProductID, j.FirmwareVersion, arg, j.ID, at)
		if err != nil {
			if ota.IsCode(interpretError(err, "job execution"), ota.ECONFLICT) {
				return ota.JobTargetsBusy(nil)
			}
			return fmt.Errorf("create job executions: %w", err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return ota.ErrJobTargetsNone
		}
		return nil
	})
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
	rows, err := s.read.QueryContext(ctx, `SELECT `+jobColumns+` FROM jobs WHERE status IN ('scheduled', 'running')
		OR (status = 'canceled' AND completed_at IS NULL) ORDER BY id`)
	return collect(rows, err, "active jobs", scanJob)
}

func (s *Store) JobCounts(ctx context.Context, id string) (map[string]int, error) {
	rows, err := s.read.QueryContext(ctx, `SELECT state, count(*) FROM job_executions WHERE job_id = ? GROUP BY state`, id)
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

func (s *Store) JobPace(ctx context.Context, id string, since time.Time) (ota.JobPace, error) {
	var p ota.JobPace
	err := s.read.QueryRowContext(ctx, `SELECT
		count(*) FILTER (WHERE state IN ('notified', 'downloading', 'burning')),
		count(*) FILTER (WHERE notified_at >= ?2),
		count(*) FILTER (WHERE state NOT IN `+terminalStates+`)
		FROM job_executions WHERE job_id = ?1`, id, fmtTime(since)).Scan(&p.InFlight, &p.NotifiedSince, &p.ActiveOrQueued)
	if err != nil {
		return p, fmt.Errorf("job pace: %w", err)
	}
	return p, nil
}

func (s *Store) JobStart(ctx context.Context, id string) error {
	err := s.execOne(ctx, "scheduled job", `UPDATE jobs SET status = 'running' WHERE id = ? AND status = 'scheduled'`, id)
	if ota.IsCode(err, ota.ENOTFOUND) {
		return ota.Errorf(ota.ECONFLICT, "job is not scheduled")
	}
	return err
}

func (s *Store) JobCancel(ctx context.Context, id string, at time.Time) error {
	return s.inTx(ctx, func(tx *sql.Tx) error {
		var status string
		if err := tx.QueryRowContext(ctx, `SELECT status FROM jobs WHERE id = ?`, id).Scan(&status); err != nil {
			return interpretError(err, "job")
		}
		if status != ota.JobScheduled && status != ota.JobRunning {
			return ota.Errorf(ota.ECONFLICT, "job is already %s", status)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE jobs SET status = 'canceled' WHERE id = ?`, id); err != nil {
			return fmt.Errorf("cancel job: %w", err)
		}
		_, err := tx.ExecContext(ctx, `UPDATE job_executions SET state = 'canceled', finished_at = ?2, updated_at = ?2, next_attempt_at = NULL
			WHERE job_id = ?1 AND state = 'queued'`, id, fmtTime(at))
		if err != nil {
			return fmt.Errorf("cancel job executions: %w", err)
		}
		return nil
	})
}

func (s *Store) JobFinish(ctx context.Context, id string, at time.Time) (bool, error) {
	res, err := s.write.ExecContext(ctx, `UPDATE jobs SET status = CASE WHEN status = 'running' THEN 'completed' ELSE status END, completed_at = ?2
		WHERE id = ?1 AND status IN ('running', 'canceled') AND completed_at IS NULL
		AND NOT EXISTS (SELECT 1 FROM job_executions WHERE job_id = ?1 AND state NOT IN `+terminalStates+`)`, id, fmtTime(at))
	if err != nil {
		return false, fmt.Errorf("finish job: %w", interpretError(err, "job"))
	}
	n, _ := res.RowsAffected()
	return n == 1, nil
}

const execColumns = `job_id, product_id, device_name, state, from_version, percent, attempts, result_code, result_msg,
	notified_at, deadline_at, next_attempt_at, finished_at, created_at, updated_at`

func scanExec(row scanner) (*ota.JobExecution, error) {
	var e ota.JobExecution
	err := row.Scan(&e.JobID, &e.ProductID, &e.DeviceName, &e.State, &e.FromVersion, &e.Percent, &e.Attempts, &e.ResultCode, &e.ResultMsg,
		sqlTimePtr{&e.NotifiedAt}, sqlTimePtr{&e.DeadlineAt}, sqlTimePtr{&e.NextAttemptAt}, sqlTimePtr{&e.FinishedAt},
		sqlTime{&e.CreatedAt}, sqlTime{&e.UpdatedAt})
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
	rows, err := s.read.QueryContext(ctx, `SELECT `+execColumns+` FROM job_executions WHERE job_id = ?1 AND device_name > ?2
		AND (?3 = '' OR state = ?3) ORDER BY device_name LIMIT ?4`, p.JobID, p.After, p.State, ota.PageLimit(p.Limit))
	return collect(rows, err, "job executions", scanExec)
}

func (s *Store) JobExecutionCurrent(ctx context.Context, productID, deviceName string) (*ota.JobExecution, error) {
	e, err := scanExec(s.read.QueryRowContext(ctx, `SELECT `+execColumns+` FROM job_executions WHERE product_id = ? AND device_name = ?
		ORDER BY (state NOT IN `+terminalStates+`) DESC, created_at DESC, job_id DESC LIMIT 1`, productID, deviceName))
	if err != nil {
		return nil, interpretError(err, "job execution")
	}
	return e, nil
}

func (s *Store) JobExecutionTransition(ctx context.Context, p ota.JobExecutionTransitionParams) error {
	var finished any
	if ota.ExecTerminal(p.To) {
		finished = fmtTime(p.At)
	}
	err := s.execOne(ctx, "job execution", `UPDATE job_executions SET state = ?4, percent = COALESCE(?5, percent),
		result_code = COALESCE(?6, result_code), result_msg = COALESCE(?7, result_msg),
		next_attempt_at = CASE WHEN ?4 = 'queued' THEN ?8 ELSE NULL END,
		deadline_at = CASE WHEN ?4 IN ('notified', 'downloading', 'burning') THEN deadline_at END,
		finished_at = ?9, updated_at = ?10
		WHERE job_id = ?1 AND device_name = ?2 AND state = ?3`,
		p.JobID, p.DeviceName, p.From, p.To, p.Percent, p.ResultCode, p.ResultMsg, fmtTimePtr(p.NextAttemptAt), finished, fmtTime(p.At))
	if ota.IsCode(err, ota.ENOTFOUND) {
		return ota.Errorf(ota.ECONFLICT, "job execution is no longer %s", p.From)
	}
	return err
}

func (s *Store) JobExecutionClaim(ctx context.Context, p ota.JobExecutionClaimParams) ([]*ota.JobExecution, error) {
	at := fmtTime(p.At)
	rows, err := s.write.QueryContext(ctx, `UPDATE job_executions SET state = 'notified', attempts = attempts + 1, percent = 0,
			notified_at = ?5, deadline_at = ?6, next_attempt_at = NULL, updated_at = ?5
		WHERE state = 'queued' AND (job_id, device_name) IN (
			SELECT x.job_id, x.device_name FROM job_executions x
			JOIN devices d ON d.product_id = x.product_id AND d.name = x.device_name
			WHERE x.job_id = ?1 AND x.state = 'queued' AND (x.next_attempt_at IS NULL OR x.next_attempt_at <= ?5)
				AND d.online AND NOT d.disabled AND ((?3 = '' AND d.node = ?2) OR x.device_name = ?3)
			ORDER BY x.next_attempt_at NULLS FIRST, x.device_name
			LIMIT ?4)
		RETURNING `+execColumns, p.JobID, p.Node, p.DeviceName, p.Limit, at, fmtTime(p.Deadline))
	return collect(rows, err, "claimed job executions", scanExec)
}

func (s *Store) JobExecutionsExpired(ctx context.Context, now time.Time, limit int) ([]*ota.JobExecution, error) {
	rows, err := s.read.QueryContext(ctx, `SELECT `+execColumns+` FROM job_executions
		WHERE deadline_at < ? AND state IN ('notified', 'downloading', 'burning') ORDER BY deadline_at LIMIT ?`, fmtTime(now), limit)
	return collect(rows, err, "expired job executions", scanExec)
}
