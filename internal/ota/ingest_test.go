package ota

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
)

// memBlobs is the smallest Blobs that keeps its promise: Put stores all or
// nothing.
type memBlobs struct {
	mu      sync.Mutex
	m       map[string][]byte
	failPut error
}

func (b *memBlobs) Put(ctx context.Context, key string, r io.Reader) (int64, error) {
	data, err := io.ReadAll(r)
	if err == nil {
		err = b.failPut
	}
	if err != nil {
		return 0, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.m == nil {
		b.m = map[string][]byte{}
	}
	b.m[key] = data
	return int64(len(data)), nil
}

func (b *memBlobs) Open(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	panic("not used")
}

func (b *memBlobs) Delete(ctx context.Context, key string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.m, key)
	return nil
}

func (b *memBlobs) len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.m)
}

func TestIngest(t *testing.T) {
	data := bytes.Repeat([]byte("firmware"), 1000)
	m5 := md5.Sum(data)
	s256 := sha256.Sum256(data)
	md5hex, shahex := hex.EncodeToString(m5[:]), hex.EncodeToString(s256[:])
	broken := errors.New("connection reset")

	tests := []struct {
		name    string
		body    io.Reader
		params  IngestParams
		putErr  error
		code    string
		wantMsg string
	}{
		{name: "plain", body: bytes.NewReader(data)},
		{name: "one byte reads", body: iotest.OneByteReader(bytes.NewReader(data))},
		{name: "checksums match", body: bytes.NewReader(data), params: IngestParams{MD5: md5hex, SHA256: shahex}},
		{name: "checksums upper case", body: bytes.NewReader(data), params: IngestParams{MD5: strings.ToUpper(md5hex), SHA256: strings.ToUpper(shahex)}},
		{name: "exactly the limit", body: bytes.NewReader(data), params: IngestParams{MaxSize: int64(len(data))}},
		{name: "one byte over", body: bytes.NewReader(data), params: IngestParams{MaxSize: int64(len(data)) - 1}, code: ETOOLARGE},
		{name: "far over", body: io.MultiReader(bytes.NewReader(data), bytes.NewReader(data)), params: IngestParams{MaxSize: 10}, code: ETOOLARGE},
		{name: "empty", body: strings.NewReader(""), code: EINVALID, wantMsg: "empty"},
		{name: "md5 mismatch", body: bytes.NewReader(data), params: IngestParams{MD5: strings.Repeat("0", 32)}, code: EINVALID, wantMsg: "md5 mismatch"},
		{name: "sha256 mismatch", body: bytes.NewReader(data), params: IngestParams{SHA256: strings.Repeat("0", 64)}, code: EINVALID, wantMsg: "sha256 mismatch"},
		{name: "md5 not hex", body: bytes.NewReader(data), params: IngestParams{MD5: strings.Repeat("z", 32)}, code: EINVALID},
		{name: "sha256 too short", body: bytes.NewReader(data), params: IngestParams{SHA256: "abcd"}, code: EINVALID},
		{name: "body fails half way", body: io.MultiReader(bytes.NewReader(data), iotest.ErrReader(broken)), code: EINVALID, wantMsg: "connection reset"},
		{name: "body fails at once", body: iotest.ErrReader(broken), code: EINVALID},
		{name: "storage fails", body: bytes.NewReader(data), putErr: errors.New("disk full"), code: EINTERNAL},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			blobs := &memBlobs{failPut: tt.putErr}
			tt.params.Key = "P/1.0-x"
			res, err := Ingest(t.Context(), blobs, tt.body, tt.params)
			if code := ErrorCode(err); code != tt.code {
				t.Fatalf("Ingest code = %q (%v), want %q", code, err, tt.code)
			}
			if tt.code != "" {
				if !strings.Contains(err.Error(), tt.wantMsg) {
					t.Errorf("error %q does not mention %q", err, tt.wantMsg)
				}
				if n := blobs.len(); n != 0 {
					t.Errorf("%d blobs left behind after a failed ingest", n)
				}
				return
			}
			if res.Size != int64(len(data)) || res.MD5 != md5hex || res.SHA256 != shahex {
				t.Errorf("Ingest = %+v, want size %d md5 %s sha256 %s", res, len(data), md5hex, shahex)
			}
			if !bytes.Equal(blobs.m[tt.params.Key], data) {
				t.Error("stored bytes differ from the upload")
			}
		})
	}
}

func TestNewBlobKey(t *testing.T) {
	seen := map[string]bool{}
	for _, v := range []string{"1.0.0", "1.0.0", "../../etc/passwd", "%2e%2e", "a/b\\c", "..", "v1+build:7"} {
		k := NewBlobKey("ABCDEF1234", v)
		if seen[k] {
			t.Errorf("NewBlobKey returned %q twice", k)
		}
		seen[k] = true
		rest, ok := strings.CutPrefix(k, "ABCDEF1234/")
		if !ok || strings.ContainsAny(rest, "/\\%:+ ") || strings.HasPrefix(rest, ".") {
			t.Errorf("NewBlobKey(%q) = %q, not one safe name under the product", v, k)
		}
	}
}
