package api

import (
	"context"
	"net/http"
	"slices"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/otad/otad/internal/ota"
)

// Jobs is the job engine as the API uses it.
type Jobs interface {
	CreateJob(ctx context.Context, j *ota.Job) error
	// ControlJob pauses, resumes, retries, advances or cancels a job
	// (ota.JobControl) and returns it as stored.
	ControlJob(ctx context.Context, id, action string) (*ota.Job, error)
	// DeleteDevice and SetDeviceDisabled change a device and close its
	// MQTT session on whichever replica holds it.
	DeleteDevice(ctx context.Context, productID, name string) error
	SetDeviceDisabled(ctx context.Context, productID, name string, disabled bool) error
}

type jobCreateRequest struct {
	FirmwareVersion     string         `json:"firmware_version"`
	Targets             ota.JobTargets `json:"targets"`
	TimeoutSeconds      int            `json:"timeout_seconds"`
	MaxRetries          *int           `json:"max_retries"`
	RetryBackoffSeconds int            `json:"retry_backoff_seconds"`
	MaxConcurrent       int            `json:"max_concurrent"`
	MaxPerMinute        int            `json:"max_per_minute"`
	StartAt             *time.Time     `json:"start_at"`
	// RollbackWindowSeconds omitted is ota.DefaultRollbackWindow; 0 turns
	// rollback detection off.
	RollbackWindowSeconds *int `json:"rollback_window_seconds"`

	Phases         []phaseRequest          `json:"phases"`
	PhaseSeed      int64                   `json:"phase_seed"`
	SpreadVersions bool                    `json:"spread_versions"`
	Abort          []ota.AbortCriterion    `json:"abort"`
	Rate           *ota.JobRate            `json:"rate"`
	Windows        []ota.MaintenanceWindow `json:"maintenance_windows"`
	EndAt          *time.Time              `json:"end_at"`
	Continuous     bool                    `json:"continuous"`
}

// phaseRequest is a phase as a client gives it: the options of
// ota.JobPhase without the progress the engine keeps.
type phaseRequest struct {
	Percent          float64              `json:"percent"`
	Count            int                  `json:"count"`
	SoakSeconds      int                  `json:"soak_seconds"`
	SuccessThreshold float64              `json:"success_threshold"`
	Abort            []ota.AbortCriterion `json:"abort"`
}

// jobDetail is a job with its executions counted per state, and per
// phase.
type jobDetail struct {
	*ota.Job
	Counts map[string]int `json:"counts"`
	Total  int            `json:"total"`
	Phases []phaseDetail  `json:"phases,omitempty"`
}

// phaseDetail is a phase of a job with its state and devices.
type phaseDetail struct {
	ota.JobPhase
	Index     int            `json:"index"`
	State     string         `json:"state"`
	Size      int            `json:"size"`
	Counts    map[string]int `json:"counts"`
	SoakUntil *time.Time     `json:"soak_until,omitempty"`
}

func (s *Server) jobCreate(w http.ResponseWriter, r *http.Request) error {
	var req jobCreateRequest
	if err := decodeJSONLimit(w, r, &req, maxJobBody); err != nil {
		return err
	}
	p, err := s.product(r)
	if err != nil {
		return err
	}
	j := &ota.Job{ProductID: p.ID, FirmwareVersion: req.FirmwareVersion, Targets: req.Targets,
		TimeoutSeconds: req.TimeoutSeconds, MaxRetries: ota.DefaultJobRetries, RetryBackoffSeconds: req.RetryBackoffSeconds,
		MaxConcurrent: req.MaxConcurrent, MaxPerMinute: req.MaxPerMinute, StartAt: req.StartAt,
		JobRollout: ota.JobRollout{PhaseSeed: req.PhaseSeed, SpreadVersions: req.SpreadVersions,
			Abort: req.Abort, Rate: req.Rate, Windows: req.Windows, EndAt: req.EndAt, Continuous: req.Continuous}}
	for _, ph := range req.Phases {
		j.Phases = append(j.Phases, ota.JobPhase{Percent: ph.Percent, Count: ph.Count, SoakSeconds: ph.SoakSeconds,
			SuccessThreshold: ph.SuccessThreshold, Abort: ph.Abort})
	}
	if req.MaxRetries != nil {
		j.MaxRetries = *req.MaxRetries
	}
	j.RollbackWindowSeconds = ota.DefaultRollbackWindow
	if req.RollbackWindowSeconds != nil {
		j.RollbackWindowSeconds = *req.RollbackWindowSeconds
	}
	if err := s.jobs.CreateJob(r.Context(), j); err != nil {
		return err
	}
	d, err := s.jobDetail(r.Context(), j)
	if err != nil {
		return err
	}
	w.Header().Set("Location", "/v1/products/"+p.ID+"/jobs/"+j.ID)
	return writeJSON(w, http.StatusCreated, d)
}

func (s *Server) jobDetail(ctx context.Context, j *ota.Job) (*jobDetail, error) {
	counts, err := s.store.JobCounts(ctx, j.ID)
	if err != nil {
		return nil, err
	}
	d := &jobDetail{Job: j, Counts: everyState(counts)}
	for _, n := range counts {
		d.Total += n
	}
	if len(j.Phases) == 0 {
		return d, nil
	}
	phases, err := s.store.JobPhaseCounts(ctx, ota.JobPhaseCountsParams{JobID: j.ID})
	if err != nil {
		return nil, err
	}
	byPhase := map[int]map[string]int{}
	for _, p := range phases {
		byPhase[p.Phase] = p.Counts
	}
	for i, ph := range j.Phases {
		pd := phaseDetail{JobPhase: ph, Index: i, State: j.PhaseState(i), Counts: everyState(byPhase[i])}
		for _, n := range byPhase[i] {
			pd.Size += n
		}
		if ph.SoakFrom != nil {
			pd.SoakUntil = new(ph.SoakFrom.Add(time.Duration(ph.SoakSeconds) * time.Second))
		}
		d.Phases = append(d.Phases, pd)
	}
	return d, nil
}

// everyState is counts with every execution state present.
func everyState(counts map[string]int) map[string]int {
	all := make(map[string]int, len(ota.ExecStates))
	for _, st := range ota.ExecStates {
		all[st] = counts[st]
	}
	return all
}

func (s *Server) jobList(w http.ResponseWriter, r *http.Request) error {
	p, err := s.product(r)
	if err != nil {
		return err
	}
	after, limit, err := pageParams(r)
	if err != nil {
		return err
	}
	js, err := s.store.JobList(r.Context(), ota.JobListParams{ProductID: p.ID, After: after, Limit: limit})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, newPage(js, limit, func(j *ota.Job) string { return j.ID }))
}

// job loads the job named in the path, which must belong to the product
// named in the path.
func (s *Server) job(r *http.Request) (*ota.Job, error) {
	pid, id := chi.URLParam(r, "pid"), chi.URLParam(r, "id")
	if err := ota.ValidateProductID(pid); err != nil {
		return nil, err
	}
	if err := ota.ValidateJobID(id); err != nil {
		return nil, err
	}
	j, err := s.store.JobGet(r.Context(), id)
	if err != nil {
		return nil, err
	}
	if j.ProductID != pid {
		return nil, ota.Errorf(ota.ENOTFOUND, "job not found")
	}
	return j, nil
}

func (s *Server) jobGet(w http.ResponseWriter, r *http.Request) error {
	j, err := s.job(r)
	if err != nil {
		return err
	}
	d, err := s.jobDetail(r.Context(), j)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, d)
}

func (s *Server) jobDevices(w http.ResponseWriter, r *http.Request) error {
	j, err := s.job(r)
	if err != nil {
		return err
	}
	after, limit, err := pageParams(r)
	if err != nil {
		return err
	}
	state := r.URL.Query().Get("state")
	if state != "" && !slices.Contains(ota.ExecStates, state) {
		return ota.Errorf(ota.EINVALID, "state must be one of queued, notified, downloading, burning, done, failed, timed_out, canceled")
	}
	xs, err := s.store.JobExecutionList(r.Context(), ota.JobExecutionListParams{JobID: j.ID, State: state, After: after, Limit: limit})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, newPage(xs, limit, func(x *ota.JobExecution) string { return x.DeviceName }))
}

// jobControl answers POST …/jobs/{id}/{action}: pause, resume, retry,
// advance or cancel.
func (s *Server) jobControl(action string) func(w http.ResponseWriter, r *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		j, err := s.job(r)
		if err != nil {
			return err
		}
		if j, err = s.jobs.ControlJob(r.Context(), j.ID, action); err != nil {
			return err
		}
		d, err := s.jobDetail(r.Context(), j)
		if err != nil {
			return err
		}
		return writeJSON(w, http.StatusOK, d)
	}
}
