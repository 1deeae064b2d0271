package postgres_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/otad/otad/internal/ota"
	"github.com/otad/otad/internal/store/storetest"
	"github.com/otad/otad/internal/store/testdb"
)

// BenchmarkDeviceReportsApply stores one batch of 125 progress reports of
// different devices a round, as the broker's report writer does under
// load (bench/mqtt.sh saw 124 a transaction): the devices locked and read,
// their rows and history written, committed.
func BenchmarkDeviceReportsApply(b *testing.B) {
	s := testdb.Postgres(b)
	ctx := context.Background()
	p := storetest.MustProduct(b, s)
	const devices, batch = 500, 125
	for i := range devices {
		storetest.MustDevice(b, s, p.ID, fmt.Sprintf("d%03d", i))
	}
	apply := func(_ context.Context, rb *ota.ReportBatch) error {
		for i, r := range rb.Reports {
			if d := rb.Devices[ota.DeviceKey{ProductID: r.ProductID, Name: r.DeviceName}]; d != nil {
				ota.ApplyReport(d, r, "n1")
				rb.Record[i] = true
			}
		}
		return nil
	}
	pct := 10
	round := 0
	for b.Loop() {
		reports := make([]ota.Report, batch)
		for i := range reports {
			reports[i] = ota.Report{ProductID: p.ID, DeviceName: fmt.Sprintf("d%03d", (round*batch+i)%devices), Type: ota.EventReportProgress,
				State: ota.ExecDownloading, Percent: &pct, At: ota.Now()}
		}
		round++
		if err := s.DeviceReportsApply(ctx, reports, apply); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*batch), "µs/report")
}
