// Package firmwaretest gives tests real blob backends: a Local in a temp
// dir, and an S3 on a fresh bucket of the S3 server that scripts/test.sh
// starts (versitygw), removed again when the test ends.
package firmwaretest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/otad/otad/internal/firmware"
	"github.com/otad/otad/internal/ota"
	"github.com/otad/otad/internal/store/testdb"
)

// Backend is one blob backend under test.
type Backend struct {
	Name  string
	Blobs ota.Blobs
	// Dir is the Local backend's directory.
	Dir string
	// Client and Bucket reach the S3 backend's bucket directly.
	Client *s3.Client
	Bucket string
}

// MinPartSize is the smallest multipart part S3 allows: tests that use it
// cross part boundaries with little data.
const MinPartSize = 5 << 20

// Run runs f once per backend, as the subtests "local" and "s3" (with
// MinPartSize parts). The s3 subtest skips when no S3 server is configured,
// or fails when OTAD_TEST_REQUIRE_SERVICES is set.
func Run(t *testing.T, f func(t *testing.T, b *Backend)) {
	t.Run("local", func(t *testing.T) { f(t, Local(t)) })
	t.Run("s3", func(t *testing.T) { f(t, S3(t, MinPartSize)) })
}

// Local returns a Local backend in a fresh temp dir.
func Local(t testing.TB) *Backend {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "firmware")
	l, err := firmware.NewLocal(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return &Backend{Name: "local", Blobs: l, Dir: dir}
}

// S3Config returns the configuration of a fresh, empty bucket on the test
// S3 server, deleted with everything in it when the test ends. A partSize
// of 0 takes the backend's default.
func S3Config(t testing.TB, partSize int64) firmware.S3Config {
	t.Helper()
	endpoint := os.Getenv("OTAD_TEST_S3_ENDPOINT")
	if endpoint == "" {
		testdb.SkipOrFail(t, "OTAD_TEST_S3_ENDPOINT is not set: run ./scripts/test.sh for the S3 tests")
	}
	var rnd [6]byte
	rand.Read(rnd[:])
	cfg := firmware.S3Config{
		Bucket:          "otad-test-" + hex.EncodeToString(rnd[:]),
		Endpoint:        endpoint,
		Region:          os.Getenv("OTAD_TEST_S3_REGION"),
		PathStyle:       true,
		AccessKeyID:     os.Getenv("OTAD_TEST_S3_ACCESS_KEY"),
		SecretAccessKey: os.Getenv("OTAD_TEST_S3_SECRET_KEY"),
		PartSize:        partSize,
	}
	client := Client(cfg)
	if _, err := client.CreateBucket(t.Context(), &s3.CreateBucketInput{Bucket: &cfg.Bucket}); err != nil {
		t.Fatalf("create test bucket: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		emptyBucket(t, ctx, client, cfg.Bucket)
		if _, err := client.DeleteBucket(ctx, &s3.DeleteBucketInput{Bucket: &cfg.Bucket}); err != nil {
			t.Errorf("delete test bucket: %v", err)
		}
	})
	return cfg
}

// S3 returns an S3 backend on a fresh bucket (see S3Config).
func S3(t testing.TB, partSize int64) *Backend {
	t.Helper()
	cfg := S3Config(t, partSize)
	b, err := firmware.NewS3(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &Backend{Name: "s3", Blobs: b, Client: Client(cfg), Bucket: cfg.Bucket}
}

// Client returns a plain SDK client for cfg's server, for what the backend
// does not do: creating buckets, listing, transfers that bypass otad.
func Client(cfg firmware.S3Config) *s3.Client {
	region := cfg.Region
	if region == "" {
		region = "us-east-1"
	}
	return s3.New(s3.Options{
		Region:       region,
		BaseEndpoint: aws.String(cfg.Endpoint),
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(cfg.AccessKeyID, cfg.SecretAccessKey, ""),
	})
}

// Leftovers lists everything the backend holds: every file under a Local's
// directory (temporary ones included), every object and every unfinished
// multipart upload (as "upload:" + key) in an S3 bucket. A test that made
// an upload fail expects none besides what it stored on purpose.
func (b *Backend) Leftovers(t testing.TB) []string {
	t.Helper()
	var out []string
	if b.Client == nil {
		err := filepath.WalkDir(b.Dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !d.IsDir() {
				rel, _ := filepath.Rel(b.Dir, p)
				out = append(out, filepath.ToSlash(rel))
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	objs, uploads := list(t, t.Context(), b.Client, b.Bucket)
	out = append(out, objs...)
	for _, u := range uploads {
		out = append(out, "upload:"+aws.ToString(u.Key))
	}
	sort.Strings(out)
	return out
}

func list(t testing.TB, ctx context.Context, c *s3.Client, bucket string) (keys []string, uploads []uploadRef) {
	t.Helper()
	p := s3.NewListObjectsV2Paginator(c, &s3.ListObjectsV2Input{Bucket: &bucket})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			t.Fatalf("list objects: %v", err)
		}
		for _, o := range page.Contents {
			keys = append(keys, aws.ToString(o.Key))
		}
	}
	mu, err := c.ListMultipartUploads(ctx, &s3.ListMultipartUploadsInput{Bucket: &bucket})
	if err != nil {
		t.Fatalf("list multipart uploads: %v", err)
	}
	for _, u := range mu.Uploads {
		uploads = append(uploads, uploadRef{Key: u.Key, UploadID: u.UploadId})
	}
	return keys, uploads
}

type uploadRef struct{ Key, UploadID *string }

func emptyBucket(t testing.TB, ctx context.Context, c *s3.Client, bucket string) {
	keys, uploads := list(t, ctx, c, bucket)
	for _, k := range keys {
		if _, err := c.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &bucket, Key: &k}); err != nil {
			t.Errorf("empty test bucket: %v", err)
		}
	}
	for _, u := range uploads {
		if _, err := c.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{Bucket: &bucket, Key: u.Key, UploadId: u.UploadID}); err != nil {
			t.Errorf("empty test bucket: %v", err)
		}
	}
}
