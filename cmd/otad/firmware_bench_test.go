package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/feature/s3/transfermanager"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/otad/otad/internal/firmware"
	"github.com/otad/otad/internal/firmware/firmwaretest"
	"github.com/otad/otad/internal/ota"
)

const benchProduct = "BENCH00001"

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

// BenchmarkFirmwareS3 moves one image (256 MiB) through a running otad
// (the whole daemon in this process, on loopback listeners, SQLite, the S3
// backend) and, back to back in the same run, directly with the AWS SDK to
// the same versitygw. Direct uploads use the transfer manager at otad's
// part size and concurrency, twice: "direct" with the SDK's defaults
// otherwise (over http every part's payload is signed, so hashed with
// SHA-256 by the client and by versitygw; CRC32 checksum header), and
// "unsigned" as otad's backend sends parts (UNSIGNED-PAYLOAD, CRC32).
// Downloads are one GetObject. It reports MB/s for each, the CPU seconds
// this process spent per transfer (client included), and for otad's upload
// the growth of the process's peak RSS over its RSS before (the client's
// share included: a 64 KiB buffer). Client, otad and versitygw share the
// machine's cores.
//
//	./scripts/test.sh -run '^$' -bench FirmwareS3 -benchtime 5x ./cmd/otad/
func BenchmarkFirmwareS3(b *testing.B) {
	size := benchSize(b)
	env := s3Env(b)
	bucket := env["OTAD_S3_BUCKET"]
	vars := map[string]string{
		"OTAD_HTTP_ADDR": "127.0.0.1:0",
		"OTAD_MQTT_ADDR": "127.0.0.1:0",
		"OTAD_DATA_DIR":  b.TempDir(),
		"OTAD_API_TOKEN": testToken,
		"OTAD_LOG_LEVEL": "warn",
	}
	for k, v := range env {
		vars[k] = v
	}
	cfg, err := parseConfig("otad", nil, func(k string) string { return vars[k] }, io.Discard)
	if err != nil {
		b.Fatal(err)
	}
	ctx := b.Context()
	a, err := newApp(ctx, cfg, cfg.logger(io.Discard), io.Discard)
	if err != nil {
		b.Fatal(err)
	}
	if err := a.Start(ctx); err != nil {
		a.Close(context.Background())
		b.Fatal(err)
	}
	b.Cleanup(func() { a.Close(context.Background()) })
	base := a.HTTPURL()
	if err := a.store.ProductCreate(ctx, &ota.Product{ID: benchProduct, Name: "bench"}); err != nil {
		b.Fatal(err)
	}

	s3c := firmwaretest.Client(firmware.S3Config{Endpoint: env["OTAD_S3_ENDPOINT"], Region: os.Getenv("AWS_REGION"),
		AccessKeyID: os.Getenv("AWS_ACCESS_KEY_ID"), SecretAccessKey: os.Getenv("AWS_SECRET_ACCESS_KEY")})
	directOpts := func(o *transfermanager.Options) {
		o.PartSizeBytes = 5 << 20 // the backend's defaults
		o.Concurrency = 4
	}
	directUp := transfermanager.New(s3c, directOpts)
	unsignedUp := transfermanager.New(unsignedClient{s3c}, directOpts)
	// Buffers the size curl uses, so the client is not what limits.
	client := &http.Client{Transport: &http.Transport{DisableCompression: true, WriteBufferSize: 64 << 10, ReadBufferSize: 64 << 10}}

	uploadOtad := func(b *testing.B, version string) {
		req, _ := http.NewRequestWithContext(ctx, "POST", base+"/v1/products/"+benchProduct+"/firmware?version="+url.QueryEscape(version), newGen(size))
		req.ContentLength = size
		req.Header.Set("Authorization", "Bearer "+testToken)
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
		var otad, direct, unsigned time.Duration
		var otadCPU, directCPU, unsignedCPU float64
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
			del, _ := http.NewRequestWithContext(ctx, "DELETE", base+"/v1/products/"+benchProduct+"/firmware/"+url.PathEscape(version), nil)
			del.Header.Set("Authorization", "Bearer "+testToken)
			if resp, err := client.Do(del); err != nil || resp.StatusCode != 204 {
				b.Fatalf("delete: %v %v", resp, err)
			} else {
				resp.Body.Close()
			}

			for _, d := range []struct {
				up   *transfermanager.Client
				took *time.Duration
				cpu  *float64
			}{{directUp, &direct, &directCPU}, {unsignedUp, &unsigned, &unsignedCPU}} {
				key := "direct-" + version
				resetPeakRSS(b) // each transfer starts from the same heap
				c0 := cpuSeconds()
				start := time.Now()
				if _, err := d.up.UploadObject(ctx, &transfermanager.UploadObjectInput{Bucket: &bucket, Key: &key, Body: newGen(size)}); err != nil {
					b.Fatal(err)
				}
				*d.took += time.Since(start)
				*d.cpu += cpuSeconds() - c0
				s3c.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &bucket, Key: &key})
			}
		}
		report(b, size, otad, direct)
		b.ReportMetric(float64(size)*float64(b.N)/unsigned.Seconds()/1e6, "unsigned-MB/s")
		b.ReportMetric(100*unsigned.Seconds()/otad.Seconds(), "otad/unsigned-%")
		b.ReportMetric(otadCPU/float64(b.N), "otad-cpu-s")
		b.ReportMetric(directCPU/float64(b.N), "direct-cpu-s")
		b.ReportMetric(unsignedCPU/float64(b.N), "unsigned-cpu-s")
		b.ReportMetric(float64(growth)/(1<<20), "MiB-rss-growth")
	})

	// One image for both downloads, stored through otad.
	uploadOtad(b, "bench-download")
	row, err := a.store.FirmwareGet(ctx, benchProduct, "bench-download")
	if err != nil {
		b.Fatal(err)
	}
	dlURL := downloadURL(b, a, row, time.Now().Add(time.Hour))

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
			out, err := s3c.GetObject(ctx, &s3.GetObjectInput{Bucket: &bucket, Key: &row.BlobKey})
			if err != nil {
				b.Fatal(err)
			}
			download(b, out.Body)
			direct += time.Since(start)
		}
		report(b, size, otad, direct)
	})
}

// unsignedClient sends PutObject and UploadPart as UNSIGNED-PAYLOAD, as
// otad's S3 backend does.
type unsignedClient struct{ *s3.Client }

func unsignedPayload(o *s3.Options) { o.APIOptions = append(o.APIOptions, firmware.UnsignedPayload) }

func (c unsignedClient) PutObject(ctx context.Context, in *s3.PutObjectInput, opts ...func(*s3.Options)) (*s3.PutObjectOutput, error) {
	return c.Client.PutObject(ctx, in, append(slices.Clip(opts), unsignedPayload)...)
}

func (c unsignedClient) UploadPart(ctx context.Context, in *s3.UploadPartInput, opts ...func(*s3.Options)) (*s3.UploadPartOutput, error) {
	return c.Client.UploadPart(ctx, in, append(slices.Clip(opts), unsignedPayload)...)
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
	return procStatus(b, "self", "VmRSS")
}

func peakRSS(b *testing.B) int64 { return procStatus(b, "self", "VmHWM") }

// procStatus reads a size field of /proc/<proc>/status ("self" or a
// process ID), in bytes.
func procStatus(b testing.TB, proc, field string) int64 {
	b.Helper()
	f, err := os.Open("/proc/" + proc + "/status")
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
	b.Fatalf("no %s in /proc/%s/status", field, proc)
	return 0
}

// cpuSeconds is the CPU time this process (benchmark client and otad's
// handlers together; versitygw is another process) has used.
func cpuSeconds() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}
