package engine

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/otad/otad/internal/ota"
)

// statsCollector serves the OTA gauges of /metrics from the store at each
// scrape: jobs by status, executions of unfinished jobs by state, devices
// registered and online, and the store's connection use. A store that does
// not answer within statsTimeout leaves the gauges out of that scrape.
type statsCollector struct {
	store      ota.Store
	jobs       *prometheus.Desc
	executions *prometheus.Desc
	devices    *prometheus.Desc
	online     *prometheus.Desc
	pool       *prometheus.Desc
	poolMax    *prometheus.Desc
}

const statsTimeout = 5 * time.Second

func newStatsCollector(store ota.Store) *statsCollector {
	return &statsCollector{
		store:      store,
		jobs:       prometheus.NewDesc("otad_jobs", "Jobs by status.", []string{"status"}, nil),
		executions: prometheus.NewDesc("otad_job_executions", "Device executions of jobs not yet ended, by state.", []string{"state"}, nil),
		devices:    prometheus.NewDesc("otad_devices", "Devices registered.", nil, nil),
		online:     prometheus.NewDesc("otad_devices_online", "Devices connected to any replica.", nil, nil),
		pool:       prometheus.NewDesc("otad_db_connections", "Database connections of this replica, by use.", []string{"use"}, nil),
		poolMax:    prometheus.NewDesc("otad_db_connections_max", "Most database connections this replica opens.", nil, nil),
	}
}

func (c *statsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.jobs, c.executions, c.devices, c.online, c.pool, c.poolMax} {
		ch <- d
	}
}

func (c *statsCollector) Collect(ch chan<- prometheus.Metric) {
	p := c.store.PoolStats()
	ch <- prometheus.MustNewConstMetric(c.pool, prometheus.GaugeValue, float64(p.InUse), "in_use")
	ch <- prometheus.MustNewConstMetric(c.pool, prometheus.GaugeValue, float64(p.Idle), "idle")
	ch <- prometheus.MustNewConstMetric(c.poolMax, prometheus.GaugeValue, float64(p.Max))
	ctx, cancel := context.WithTimeout(context.Background(), statsTimeout)
	defer cancel()
	st, err := c.store.Stats(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.jobs, err)
		return
	}
	for _, s := range []string{ota.JobScheduled, ota.JobRunning, ota.JobCompleted, ota.JobCanceled} {
		ch <- prometheus.MustNewConstMetric(c.jobs, prometheus.GaugeValue, float64(st.JobsByStatus[s]), s)
	}
	for _, s := range ota.ExecStates {
		ch <- prometheus.MustNewConstMetric(c.executions, prometheus.GaugeValue, float64(st.ExecutionsByState[s]), s)
	}
	ch <- prometheus.MustNewConstMetric(c.devices, prometheus.GaugeValue, float64(st.Devices))
	ch <- prometheus.MustNewConstMetric(c.online, prometheus.GaugeValue, float64(st.DevicesOnline))
}
