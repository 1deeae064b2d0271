package broker

import (
	"errors"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	logins           *prometheus.CounterVec
	refused          *prometheus.CounterVec
	aclDenied        *prometheus.CounterVec
	reports          *prometheus.CounterVec
	dropped          *prometheus.CounterVec
	downlinks        *prometheus.CounterVec
	downlinksDropped prometheus.Counter
	connectTimeouts  prometheus.Counter
	batchSize        prometheus.Histogram
	commitSeconds    prometheus.Histogram
	presencePending  prometheus.Gauge
	reportsPending   prometheus.Gauge
	presenceErrors   prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, b *Broker) (*metrics, error) {
	m := &metrics{
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "otad_mqtt_logins_total",
			Help: "Devices authenticated, by method (password, certificate).",
		}, []string{"method"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "otad_mqtt_connections_refused_total",
			Help: "MQTT connections refused, by reason.",
		}, []string{"reason"}),
		aclDenied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "otad_mqtt_acl_denied_total",
			Help: "Publishes and subscriptions refused by the topic ACL.",
		}, []string{"action"}),
		reports: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "otad_mqtt_reports_stored_total",
			Help: "Device reports written to the store, by type.",
		}, []string{"type"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "otad_mqtt_reports_dropped_total",
			Help: "Device messages dropped: too_large, malformed (not a valid report), store_error.",
		}, []string{"reason"}),
		downlinks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "otad_mqtt_downlinks_total",
			Help: "Messages published to devices, by type.",
		}, []string{"type"}),
		downlinksDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "otad_mqtt_downlinks_dropped_total",
			Help: "Messages to devices dropped because the device's write queue was full.",
		}),
		connectTimeouts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "otad_mqtt_connect_timeouts_total",
			Help: "Connections closed for not sending CONNECT in time.",
		}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "otad_mqtt_report_batch_size",
			Help:    "Reports written per store transaction.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 6),
		}),
		commitSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "otad_mqtt_report_commit_seconds",
			Help:    "Duration of report batch transactions.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 8),
		}),
		presencePending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "otad_mqtt_presence_pending",
			Help: "Connect and disconnect events waiting to be written.",
		}),
		reportsPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "otad_mqtt_reports_pending",
			Help: "Reports received and not yet written or refused (the report queue's depth).",
		}),
		presenceErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "otad_mqtt_presence_errors_total",
			Help: "Connect and disconnect events that could not be written.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	clients := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "otad_mqtt_clients_connected",
		Help: "Devices connected to this broker.",
	}, func() float64 {
		if b.server == nil {
			return 0
		}
		return float64(atomic.LoadInt64(&b.server.Info.ClientsConnected))
	})
	var errs []error
	for _, c := range []prometheus.Collector{m.logins, m.refused, m.aclDenied, m.reports, m.dropped, m.downlinks,
		m.downlinksDropped, m.connectTimeouts, m.batchSize, m.commitSeconds, m.presencePending, m.reportsPending, m.presenceErrors, clients} {
		errs = append(errs, reg.Register(c))
	}
	return m, errors.Join(errs...)
}
