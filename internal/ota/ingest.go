package ota

import (
	"context"
	"crypto/md5"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultMaxFirmwareSize is the default limit on one firmware image.
const DefaultMaxFirmwareSize = 2 << 30

// IngestParams describes one firmware image being uploaded.
type IngestParams struct {
	Key     string // where the bytes go in the Blobs backend
	MaxSize int64  // more bytes than this is ETOOLARGE; <= 0 means DefaultMaxFirmwareSize
	// MD5 and SHA256, when set, are what the client says the image hashes
	// to, in hex; a mismatch is EINVALID.
	MD5    string
	SHA256 string
}

// IngestResult is what Ingest learned about an image while storing it.
type IngestResult struct {
	Size   int64
	MD5    string // lowercase hex
	SHA256 string // lowercase hex
}

// Ingest streams r into blobs under p.Key, computing the size, MD5 and
// SHA-256 in the same pass with memory that does not grow with the image.
// Either it returns the result and the blob is stored, or it returns an
// error and no blob remains:
//   - an empty image, a checksum mismatch, or r failing part way (a client
//     gone or a body shorter than announced) is EINVALID;
//   - more than p.MaxSize bytes is ETOOLARGE;
//   - anything else is the storage failing.
func Ingest(ctx context.Context, blobs Blobs, r io.Reader, p IngestParams) (*IngestResult, error) {
	maxSize := p.MaxSize
	if maxSize <= 0 {
		maxSize = DefaultMaxFirmwareSize
	}
	wantMD5, err := normalizeHex("md5", p.MD5, md5.Size)
	if err != nil {
		return nil, err
	}
	wantSHA, err := normalizeHex("sha256", p.SHA256, sha256.Size)
	if err != nil {
		return nil, err
	}

	// Refuse an empty body before anything is stored.
	var first [1]byte
	n, err := io.ReadFull(r, first[:])
	if n == 0 {
		if err == nil || errors.Is(err, io.EOF) {
			return nil, Errorf(EINVALID, "firmware image is empty")
		}
		return nil, bodyError(err)
	}

	hp := newHashPipe()
	defer hp.close()
	ir := &ingestReader{
		r:    io.MultiReader(strings.NewReader(string(first[:])), r),
		max:  maxSize,
		hash: hp,
	}
	written, err := blobs.Put(ctx, p.Key, ir)
	switch {
	case ir.tooLarge:
		// Put failed because the reader refused more bytes; whatever Put
		// says, make sure nothing is left.
		deleteBlob(ctx, blobs, p.Key)
		return nil, Errorf(ETOOLARGE, "firmware image is larger than %d bytes", maxSize)
	case ir.err != nil:
		deleteBlob(ctx, blobs, p.Key)
		return nil, bodyError(ir.err)
	case err != nil:
		deleteBlob(ctx, blobs, p.Key)
		return nil, fmt.Errorf("store firmware image: %w", err)
	case written != ir.n:
		deleteBlob(ctx, blobs, p.Key)
		return nil, fmt.Errorf("store firmware image: backend wrote %d of %d bytes", written, ir.n)
	}

	sumMD5, sumSHA := hp.close()
	res := &IngestResult{
		Size:   ir.n,
		MD5:    hex.EncodeToString(sumMD5),
		SHA256: hex.EncodeToString(sumSHA),
	}
	if wantMD5 != "" && wantMD5 != res.MD5 {
		deleteBlob(ctx, blobs, p.Key)
		return nil, Errorf(EINVALID, "md5 mismatch: the upload hashes to %s, the client said %s", res.MD5, wantMD5)
	}
	if wantSHA != "" && wantSHA != res.SHA256 {
		deleteBlob(ctx, blobs, p.Key)
		return nil, Errorf(EINVALID, "sha256 mismatch: the upload hashes to %s, the client said %s", res.SHA256, wantSHA)
	}
	return res, nil
}

// NewBlobKey returns a fresh key for an upload of productID's version. Every
// call returns another key, so an upload that fails or loses a race never
// touches the object of another. The version is reduced to characters that
// are safe in any file system and S3 key and never start with a dot, so a
// version such as "../x" stays one harmless name.
func NewBlobKey(productID, version string) string {
	var b strings.Builder
	b.WriteString(productID)
	b.WriteByte('/')
	for i := 0; i < len(version); i++ {
		c := version[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' && i > 0 {
			b.WriteByte(c)
		} else {
			b.WriteByte('_')
		}
	}
	var rnd [12]byte
	rand.Read(rnd[:])
	b.WriteByte('-')
	b.WriteString(hex.EncodeToString(rnd[:]))
	return b.String()
}

// DeleteBlob removes key with a context that outlives ctx's cancellation:
// cleanup after a failed request must happen even though the request is gone.
// It reports what went wrong, for the caller to log.
func DeleteBlob(ctx context.Context, blobs Blobs, key string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	if err := blobs.Delete(ctx, key); err != nil {
		return fmt.Errorf("delete blob %q: %w", key, err)
	}
	return nil
}

func deleteBlob(ctx context.Context, blobs Blobs, key string) { _ = DeleteBlob(ctx, blobs, key) }

func bodyError(err error) error {
	return &Error{Code: EINVALID, Message: "upload body ended early or failed: " + err.Error()}
}

// normalizeHex checks an optional hex digest of n bytes and lowercases it.
func normalizeHex(name, s string, n int) (string, error) {
	if s == "" {
		return "", nil
	}
	s = strings.ToLower(s)
	if b, err := hex.DecodeString(s); err != nil || len(b) != n {
		return "", Errorf(EINVALID, "%s must be %d hex characters", name, 2*n)
	}
	return s, nil
}

// ingestReader hashes and counts what passes through it and refuses to pass
// more than max bytes. It remembers why it failed, so that Ingest can tell
// the client's fault from the storage's.
type ingestReader struct {
	r        io.Reader
	max, n   int64
	hash     *hashPipe
	err      error // the source failed
	tooLarge bool
}

var errTooLarge = errors.New("firmware image too large")

func (ir *ingestReader) Read(p []byte) (int, error) {
	if ir.tooLarge {
		return 0, errTooLarge
	}
	if ir.err != nil {
		return 0, ir.err
	}
	// Read at most one byte past the limit, to learn that it was crossed.
	if left := ir.max + 1 - ir.n; int64(len(p)) > left {
		p = p[:left]
	}
	n, err := ir.r.Read(p)
	if ir.n+int64(n) > ir.max {
		ir.tooLarge = true
		return 0, errTooLarge
	}
	ir.n += int64(n)
	ir.hash.write(p[:n])
	if err != nil && err != io.EOF {
		ir.err = err
	}
	return n, err
}

// hashPipe computes the MD5 and the SHA-256 of what is written to it, each
// on a goroutine of its own. Hashing in line with the upload made it the
// slowest step: MD5 alone runs at a few hundred MB/s. Each write is copied
// into chunks borrowed from a pool shared by every upload, and at most
// hashChunks of them are in flight per pipe (a write waits when the hashes
// fall behind). A chunk goes back to the pool once both hashes have read
// it, so a pipe holds no chunk between writes: an upload whose client has
// stalled holds none.
type hashPipe struct {
	inFlight chan struct{} // one token per chunk being hashed
	work     [2]chan *hashChunk
	hashes   [2]hash.Hash
	wg       sync.WaitGroup
	closed   bool
	md5, sh  []byte
}

type hashChunk struct {
	buf  *[]byte // from hashChunkPool
	b    []byte  // the part of *buf written
	refs atomic.Int32
}

const (
	hashChunkSize = 256 << 10
	hashChunks    = 16
)

var hashChunkPool = sync.Pool{New: func() any {
	b := make([]byte, hashChunkSize)
	return &b
}}

func newHashPipe() *hashPipe {
	h := &hashPipe{inFlight: make(chan struct{}, hashChunks), hashes: [2]hash.Hash{md5.New(), sha256.New()}}
	for i := range h.work {
		h.work[i] = make(chan *hashChunk, hashChunks)
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			for c := range h.work[i] {
				h.hashes[i].Write(c.b)
				if c.refs.Add(-1) == 0 {
					hashChunkPool.Put(c.buf)
					<-h.inFlight
				}
			}
		}()
	}
	return h
}

func (h *hashPipe) write(p []byte) {
	for len(p) > 0 {
		h.inFlight <- struct{}{}
		buf := hashChunkPool.Get().(*[]byte)
		n := copy(*buf, p)
		c := &hashChunk{buf: buf, b: (*buf)[:n]}
		c.refs.Store(int32(len(h.work)))
		for _, w := range h.work {
			w <- c
		}
		p = p[n:]
	}
}

// close waits for the hashes and returns them; later calls return the
// same sums. It must be called, or the goroutines leak.
func (h *hashPipe) close() (md5sum, sha256sum []byte) {
	if !h.closed {
		h.closed = true
		for _, w := range h.work {
			close(w)
		}
		h.wg.Wait()
		h.md5, h.sh = h.hashes[0].Sum(nil), h.hashes[1].Sum(nil)
	}
	return h.md5, h.sh
}
