package firmware_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/otad/otad/internal/firmware"
	"github.com/otad/otad/internal/firmware/firmwaretest"
	"github.com/otad/otad/internal/ota"
)

const partSize = firmwaretest.MinPartSize

// image returns n deterministic pseudo-random bytes.
func image(n int, seed uint64) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)}).Read(b)
	return b
}

// stream hides everything but Read, as a request body does.
type stream struct{ r io.Reader }

func (s stream) Read(p []byte) (int, error) { return s.r.Read(p) }

// failAfter delivers n bytes of r, then fails.
type failAfter struct {
	r   io.Reader
	n   int
	err error
}

func (f *failAfter) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, f.err
	}
	if len(p) > f.n {
		p = p[:f.n]
	}
	n, err := f.r.Read(p)
	f.n -= n
	return n, err
}

func readAll(t testing.TB, blobs ota.Blobs, key string, offset, length int64) []byte {
	t.Helper()
	rc, err := blobs.Open(t.Context(), key, offset, length)
	if err != nil {
		t.Fatalf("Open(%q, %d, %d): %v", key, offset, length, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read %q from %d: %v", key, offset, err)
	}
	return b
}

func TestRoundTrip(t *testing.T) {
	sizes := []int{0, 1, 4096, partSize - 1, partSize, partSize + 1, 2*partSize + 12345}
	firmwaretest.Run(t, func(t *testing.T, b *firmwaretest.Backend) {
		{
			for i, size := range sizes {
				data := image(size, uint64(i))
				key := ota.NewBlobKey("ABCDEF1234", "1.0.0")
				n, err := b.Blobs.Put(t.Context(), key, stream{bytes.NewReader(data)})
				if err != nil {
					t.Fatalf("Put %d bytes: %v", size, err)
				}
				if n != int64(size) {
					t.Fatalf("Put %d bytes returned %d", size, n)
				}
				if got := readAll(t, b.Blobs, key, 0, -1); sha256.Sum256(got) != sha256.Sum256(data) {
					t.Fatalf("size %d: read back %d bytes that differ from what was put", size, len(got))
				}
				ranges := [][2]int64{
					{0, 1}, {0, int64(size)}, {int64(size) / 3, -1}, {int64(size) / 3, int64(size) / 4},
					{int64(size) - 1, 1}, {int64(size) - 1, -1}, {int64(size), -1}, {int64(size), 10},
					{int64(size) + 10, -1}, {int64(size) / 2, int64(size)}, // runs past the end
				}
				for _, r := range ranges {
					if r[0] < 0 || r[1] == 0 {
						continue
					}
					lo := min(r[0], int64(size))
					hi := int64(size)
					if r[1] >= 0 {
						hi = min(r[0]+r[1], int64(size))
					}
					got := readAll(t, b.Blobs, key, r[0], r[1])
					if !bytes.Equal(got, data[lo:hi]) {
						t.Fatalf("size %d: Open(%d, %d) returned %d bytes, want data[%d:%d]", size, r[0], r[1], len(got), lo, hi)
					}
				}
				if err := b.Blobs.Delete(t.Context(), key); err != nil {
					t.Fatal(err)
				}
			}
		}
		if left := b.Leftovers(t); len(left) != 0 {
			t.Errorf("left behind after deleting everything: %v", left)
		}
	})
}

func TestMissing(t *testing.T) {
	firmwaretest.Run(t, func(t *testing.T, b *firmwaretest.Backend) {
		for _, length := range []int64{-1, 0, 10} {
			_, err := b.Blobs.Open(t.Context(), "ABCDEF1234/nope", 0, length)
			if !ota.IsCode(err, ota.ENOTFOUND) {
				t.Errorf("Open of a missing key (length %d): %v, want not_found", length, err)
			}
		}
		if err := b.Blobs.Delete(t.Context(), "ABCDEF1234/nope"); err != nil {
			t.Errorf("Delete of a missing key: %v", err)
		}
	})
}

func TestPutFailureLeavesNothing(t *testing.T) {
	broken := errors.New("client went away")
	firmwaretest.Run(t, func(t *testing.T, b *firmwaretest.Backend) {
		data := image(3*partSize, 7)
		keep := "ABCDEF1234/keep"
		if _, err := b.Blobs.Put(t.Context(), keep, bytes.NewReader(data[:100])); err != nil {
			t.Fatal(err)
		}
		// Fail at once, inside the first part, and after several parts
		// (which makes S3 start, and then abort, a multipart upload).
		for _, failAt := range []int{0, 1000, partSize + 1, 2*partSize + 5} {
			key := ota.NewBlobKey("ABCDEF1234", "1.0.0")
			_, err := b.Blobs.Put(t.Context(), key, &failAfter{r: bytes.NewReader(data), n: failAt, err: broken})
			if !errors.Is(err, broken) {
				t.Errorf("Put failing after %d bytes: error %v, want the reader's", failAt, err)
			}
			if _, err := b.Blobs.Open(t.Context(), key, 0, -1); !ota.IsCode(err, ota.ENOTFOUND) {
				t.Errorf("after a Put failing at %d bytes, Open: %v, want not_found", failAt, err)
			}
		}
		// A canceled context stops the upload even while bytes keep coming.
		ctx, cancel := context.WithCancel(t.Context())
		cancelAt := &cancelAfter{r: bytes.NewReader(data), n: 2*partSize + 5, cancel: cancel}
		if _, err := b.Blobs.Put(ctx, ota.NewBlobKey("ABCDEF1234", "1.0.0"), cancelAt); !errors.Is(err, context.Canceled) {
			t.Errorf("Put with a canceled context: %v, want context.Canceled", err)
		}
		if left := b.Leftovers(t); !slices.Equal(left, []string{keep}) {
			t.Errorf("after failed uploads the backend holds %v, want only %v", left, keep)
		}
	})
}

// cancelAfter cancels a context once n bytes have been read, and goes on.
type cancelAfter struct {
	r      io.Reader
	n      int
	cancel func()
}

func (c *cancelAfter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if c.n -= n; c.n <= 0 {
		c.cancel()
	}
	return n, err
}

func TestIngestBackends(t *testing.T) {
	firmwaretest.Run(t, func(t *testing.T, b *firmwaretest.Backend) {
		data := image(2*partSize+1, 3)
		sum := sha256.Sum256(data)
		good, err := ota.Ingest(t.Context(), b.Blobs, stream{bytes.NewReader(data)}, ota.IngestParams{Key: "P/good"})
		if err != nil {
			t.Fatal(err)
		}
		if good.Size != int64(len(data)) || good.SHA256 != hex.EncodeToString(sum[:]) {
			t.Fatalf("Ingest = %+v", good)
		}
		_, err = ota.Ingest(t.Context(), b.Blobs, stream{bytes.NewReader(data)}, ota.IngestParams{Key: "P/big", MaxSize: partSize + 10})
		if !ota.IsCode(err, ota.ETOOLARGE) {
			t.Errorf("Ingest over the limit: %v, want too_large", err)
		}
		_, err = ota.Ingest(t.Context(), b.Blobs, stream{bytes.NewReader(data)}, ota.IngestParams{Key: "P/bad", SHA256: strings.Repeat("ab", 32)})
		if !ota.IsCode(err, ota.EINVALID) {
			t.Errorf("Ingest with a wrong sha256: %v, want invalid", err)
		}
		if left := b.Leftovers(t); !slices.Equal(left, []string{"P/good"}) {
			t.Errorf("after failed ingests the backend holds %v, want only P/good", left)
		}
	})
}

func TestValidateKey(t *testing.T) {
	tests := []struct {
		key string
		ok  bool
	}{
		{"ABCDEF1234/1.0.0-0123abcd", true},
		{"a", true},
		{"a/b/c", true},
		{"a..b/c", true},
		{"%2e%2e/x", true}, // a literal name; no one decodes it
		{"", false},
		{"..", false},
		{".", false},
		{"../x", false},
		{"a/../../x", false},
		{"a/./b", false},
		{"/abs", false},
		{"a//b", false},
		{"a/", false},
		{".hidden", false},
		{"a/.tmp-123", false},
		{"a\\..\\b", false},
		{"a\x00b", false},
		{"a b", false},
		{"a\nb", false},
		{"caf\xc3\xa9", false},
		{strings.Repeat("a", 201), false},
		{strings.Repeat("a/", 256) + "a", false},
		{strings.Repeat("a", 200), true},
	}
	for _, tt := range tests {
		err := firmware.ValidateKey(tt.key)
		if (err == nil) != tt.ok {
			t.Errorf("ValidateKey(%q) = %v, want ok=%v", tt.key, err, tt.ok)
		}
		if err != nil && !ota.IsCode(err, ota.EINVALID) {
			t.Errorf("ValidateKey(%q) code %s, want invalid", tt.key, ota.ErrorCode(err))
		}
	}
}

func TestLocalStaysInside(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "firmware")
	outside := filepath.Join(parent, "outside")
	if err := os.Mkdir(outside, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(parent, "secret"), []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := firmware.NewLocal(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	// A symlink planted inside the directory must not lead out of it.
	if err := os.Symlink(outside, filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(parent, "secret"), filepath.Join(dir, "secretlink")); err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	for _, key := range []string{"../secret", "../outside/x", "/etc/passwd", "a\x00b", "..\\secret", strings.Repeat("x", 1000)} {
		if _, err := l.Put(ctx, key, strings.NewReader("evil")); !ota.IsCode(err, ota.EINVALID) {
			t.Errorf("Put(%q): %v, want invalid", key, err)
		}
		if _, err := l.Open(ctx, key, 0, -1); !ota.IsCode(err, ota.EINVALID) {
			t.Errorf("Open(%q): %v, want invalid", key, err)
		}
		if err := l.Delete(ctx, key); !ota.IsCode(err, ota.EINVALID) {
			t.Errorf("Delete(%q): %v, want invalid", key, err)
		}
	}
	if _, err := l.Put(ctx, "link/x", strings.NewReader("evil")); err == nil {
		t.Error("Put through a symlink that leads outside succeeded")
	}
	if rc, err := l.Open(ctx, "secretlink", 0, -1); err == nil {
		rc.Close()
		t.Error("Open through a symlink that leads outside succeeded")
	}
	if err := l.Delete(ctx, "secretlink"); err != nil {
		t.Logf("Delete(secretlink): %v", err) // removing the link itself is harmless
	}
	if b, err := os.ReadFile(filepath.Join(parent, "secret")); err != nil || string(b) != "keep" {
		t.Errorf("file outside the directory changed: %q, %v", b, err)
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 0 {
		t.Errorf("files created outside the directory: %v", entries)
	}
}

func TestLocalRemovesStaleTemp(t *testing.T) {
	dir := t.TempDir()
	stale := filepath.Join(dir, "P", ".tmp-0123")
	fresh := filepath.Join(dir, "P", ".tmp-4567")
	os.MkdirAll(filepath.Dir(stale), 0o700)
	for _, p := range []string{stale, fresh} {
		if err := os.WriteFile(p, []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := os.Chtimes(stale, old, old); err != nil {
		t.Fatal(err)
	}
	l, err := firmware.NewLocal(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if n, err := l.RemoveIncomplete(t.Context(), time.Now().Add(-time.Hour)); err != nil || n != 1 {
		t.Fatalf("RemoveIncomplete: %d, %v; want 1", n, err)
	}
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale temporary file survived: %v", err)
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Errorf("fresh temporary file (an upload in progress) was removed: %v", err)
	}
}

func TestS3RemoveIncomplete(t *testing.T) {
	b := firmwaretest.S3(t, partSize)
	s3b := b.Blobs.(*firmware.S3)
	ctx := t.Context()
	// What a process that died half way through an upload leaves behind.
	if _, err := b.Client.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: &b.Bucket, Key: aws.String("P/orphan")}); err != nil {
		t.Fatal(err)
	}
	if n, err := s3b.RemoveIncomplete(ctx, time.Now().Add(-time.Hour)); err != nil || n != 0 {
		t.Fatalf("RemoveIncomplete with a cut-off before the upload: %d, %v; want 0", n, err)
	}
	if left := b.Leftovers(t); !slices.Equal(left, []string{"upload:P/orphan"}) {
		t.Fatalf("a recent upload was touched: %v", left)
	}
	if n, err := s3b.RemoveIncomplete(ctx, time.Now().Add(time.Hour)); err != nil || n != 1 {
		t.Fatalf("RemoveIncomplete: %d, %v; want 1", n, err)
	}
	if left := b.Leftovers(t); len(left) != 0 {
		t.Errorf("after RemoveIncomplete the bucket holds %v", left)
	}
}
