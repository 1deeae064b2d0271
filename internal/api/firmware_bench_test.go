package api_test

import (
	"bufio"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/feature/s3/manager"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/otad/otad/internal/firmware/firmwaretest"
)

// benchSize is the image the benchmark moves; OTAD_BENCH_SIZE_MIB changes it.
func benchSize(b *testing.B) int64 {
	if v := os.Getenv("OTAD_BENCH_SIZE_MIB"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("OTAD_BENCH_SIZE_MIB=%q", v)
		}
		return int64(n) << 20
	}
	return 256 << 20
}

// genReader yields n pseudo-random bytes without holding them: it is what
// a client streaming a large file looks like, seekable or not.
type genReader struct {
	rng *rand.ChaCha8
	n   int64
}

func newGen(n int64) *genReader {
	return &genReader{rng: rand.NewChaCha8([32]byte{'b', 'e', 'n', 'c', 'h'}), n: n}
}

func (g *genReader) Read(p []byte) (int, error) {
	if g.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > g.n {
		p = p[:g.n]
	}
	g.rng.Read(p)
	g.n -= int64(len(p))
	return len(p), nil
}

// BenchmarkFirmwareS3 moves one image (256 MiB) through otad's firmware
// stack (the real console API and download handler on loopback listeners,
// SQLite, the S3 backend) and, in the same run, directly with the AWS SDK
// to the same versitygw: upload with manager.Uploader at otad's part size
// and concurrency, download with one GetObject. It reports MB/s for each,
// for each, the CPU seconds this process spent per transfer (client
// included), and for otad's upload the growth of the process's peak RSS
// over its RSS before (the client's share included: a 64 KiB buffer).
// Client, otad and versitygw share the machine's cores.
//
//	./scripts/test.sh -run '^$' -bench FirmwareS3 -benchtime 5x ./internal/api/
func BenchmarkFirmwareS3(b *testing.B) {
	size := benchSize(b)
	be := firmwaretest.S3(b, 0)
	s := newFWServer(b, be, 0)
	ctx := b.Context()
	directUp := manager.NewUploader(be.Client, func(u *manager.Uploader) {
		u.PartSize = 5 << 20 // the backend's defaults
		u.Concurrency = 4
	})
	// Buffers the size curl uses, so the client is not what limits.
	client := &http.Client{Transport: &http.Transport{DisableCompression: true, WriteBufferSize: 64 << 10, ReadBufferSize: 64 << 10}}

	uploadOtad := func(b *testing.B, version string) {
		req, _ := http.NewRequestWithContext(ctx, "POST", s.url+"/v1/products/"+fwProduct+"/firmware?version="+url.QueryEscape(version), newGen(size))
		req.ContentLength = size
		req.Header.Set("Authorization", "Bearer "+fwToken)
		req.Header.Set("Content-Type", "application/octet-stream")
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 201 {
			b.Fatalf("upload: %d %s", resp.StatusCode, body)
		}
	}
	download := func(b *testing.B, body io.ReadCloser) {
		n, err := io.Copy(io.Discard, body)
		body.Close()
		if err != nil || n != size {
			b.Fatalf("downloaded %d of %d bytes: %v", n, size, err)
		}
	}

	// Each iteration makes both transfers back to back, so that the two
	// see the same load on a shared machine; the figures are per transfer.
	b.Run("upload", func(b *testing.B) {
		var otad, direct time.Duration
		var otadCPU, directCPU float64
		var growth int64
		for i := range b.N {
			version := fmt.Sprintf("bench-%d-%d", b.N, i)
			before := resetPeakRSS(b)
			c0 := cpuSeconds()
			start := time.Now()
			uploadOtad(b, version)
			otad += time.Since(start)
			otadCPU += cpuSeconds() - c0
			growth = max(growth, peakRSS(b)-before)
			if r := s.do("DELETE", "/v1/products/"+fwProduct+"/firmware/"+url.PathEscape(version), nil); r.status != 204 {
				b.Fatalf("delete: %d", r.status)
			}

			key := "direct-" + version
			c0 = cpuSeconds()
			start = time.Now()
			if _, err := directUp.Upload(ctx, &s3.PutObjectInput{Bucket: &be.Bucket, Key: &key, Body: newGen(size)}); err != nil {
				b.Fatal(err)
			}
			direct += time.Since(start)
			directCPU += cpuSeconds() - c0
			be.Client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &be.Bucket, Key: &key})
		}
		report(b, size, otad, direct)
		b.ReportMetric(otadCPU/float64(b.N), "otad-cpu-s")
		b.ReportMetric(directCPU/float64(b.N), "direct-cpu-s")
		b.ReportMetric(float64(growth)/(1<<20), "MiB-rss-growth")
	})

	// One image for both downloads, stored through otad.
	uploadOtad(b, "bench-download")
	row, err := s.store.FirmwareGet(ctx, fwProduct, "bench-download")
	if err != nil {
		b.Fatal(err)
	}
	dlURL := s.signer.URL(row, time.Now().Add(time.Hour))

	b.Run("download", func(b *testing.B) {
		var otad, direct time.Duration
		for range b.N {
			start := time.Now()
			req, _ := http.NewRequestWithContext(ctx, "GET", dlURL, nil)
			resp, err := client.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			if resp.StatusCode != 200 {
				b.Fatalf("download: %d", resp.StatusCode)
			}
			download(b, resp.Body)
			otad += time.Since(start)

			start = time.Now()
			out, err := be.Client.GetObject(ctx, &s3.GetObjectInput{Bucket: &be.Bucket, Key: &row.BlobKey})
			if err != nil {
				b.Fatal(err)
			}
			download(b, out.Body)
			direct += time.Since(start)
		}
		report(b, size, otad, direct)
	})
}

func report(b *testing.B, size int64, otad, direct time.Duration) {
	mbps := func(d time.Duration) float64 { return float64(size) * float64(b.N) / d.Seconds() / 1e6 }
	b.ReportMetric(mbps(otad), "otad-MB/s")
	b.ReportMetric(mbps(direct), "direct-MB/s")
	b.ReportMetric(100*direct.Seconds()/otad.Seconds(), "otad/direct-%")
	b.ReportMetric(0, "ns/op") // the pair's time says nothing on its own
}

func resetPeakRSS(b *testing.B) int64 {
	runtime.GC()
	debug.FreeOSMemory()
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		b.Fatalf("reset peak RSS: %v", err)
	}
	return procStatus(b, "VmRSS")
}

func peakRSS(b *testing.B) int64 { return procStatus(b, "VmHWM") }

// procStatus reads a size field of /proc/self/status, in bytes.
func procStatus(b *testing.B, field string) int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				b.Fatal(err)
			}
			return kb << 10
		}
	}
	b.Fatalf("no %s in /proc/self/status", field)
	return 0
}

// cpuSeconds is the CPU time this process (benchmark client and otad's
// handlers together; versitygw is another process) has used.
func cpuSeconds() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}
