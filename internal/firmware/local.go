package firmware

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/otad/otad/internal/ota"
)

// Local keeps firmware images as files under one directory: the embedded
// default. Every key is one file. All file system access goes through an
// os.Root, so no key, symlink or race can reach outside the directory.
type Local struct {
	root *os.Root
}

var _ ota.Blobs = (*Local)(nil)

const (
	tempPrefix  = ".tmp-"
	copyBufSize = 256 << 10
	waitBufSize = 16 << 10
)

// copyBufs are the large copy buffers, shared by every upload.
var copyBufs = sync.Pool{New: func() any {
	b := make([]byte, copyBufSize)
	return &b
}}

// copyFlowing copies r to w. A read from a client's upload may wait for
// as long as the client stalls, holding its buffer: copyFlowing waits
// with a small buffer of its own and borrows a large one from copyBufs
// only while bytes flow, that is after a read that filled its buffer
// (more bytes were waiting). A short read means the source is drained for
// now, so the large buffer goes back before the next read. 500 stalled
// uploads then hold 500 small buffers, not 500 large ones.
func copyFlowing(w io.Writer, r io.Reader) (int64, error) {
	small := make([]byte, waitBufSize)
	var big *[]byte
	defer func() {
		if big != nil {
			copyBufs.Put(big)
		}
	}()
	var n int64
	for {
		buf := small
		if big != nil {
			buf = *big
		}
		nr, rerr := r.Read(buf)
		if nr > 0 {
			nw, werr := w.Write(buf[:nr])
			n += int64(nw)
			if werr != nil {
				return n, werr
			}
		}
		switch {
		case rerr == io.EOF:
			return n, nil
		case rerr != nil:
			return n, rerr
		case nr == len(buf) && big == nil:
			big = copyBufs.Get().(*[]byte)
		case nr < len(buf) && big != nil:
			copyBufs.Put(big)
			big = nil
		}
	}
}

// NewLocal returns a Local that stores files under dir, creating it when
// missing. The temporary files a crash leaves behind are RemoveIncomplete's
// (the Sweeper's) to remove.
func NewLocal(dir string) (*Local, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("create firmware directory: %w", err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("open firmware directory: %w", err)
	}
	return &Local{root: root}, nil
}

// Close releases the directory.
func (l *Local) Close() error { return l.root.Close() }

// Put writes r to a temporary file next to key, syncs it and renames it into
// place, so a reader sees either nothing or the whole image, even after a
// crash. On any error the temporary file is removed. An invalid key is
// EINVALID.
func (l *Local) Put(ctx context.Context, key string, r io.Reader) (n int64, err error) {
	if err := ValidateKey(key); err != nil {
		return 0, err
	}
	dir := path.Dir(key)
	if err := l.root.MkdirAll(dir, 0o750); err != nil {
		return 0, fmt.Errorf("local put: %w", err)
	}
	var rnd [8]byte
	rand.Read(rnd[:])
	tmp := path.Join(dir, tempPrefix+hex.EncodeToString(rnd[:]))
	f, err := l.root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return 0, fmt.Errorf("local put: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			l.root.Remove(tmp)
		}
	}()

	n, err = copyFlowing(f, &ctxReader{ctx: ctx, r: r})
	if err != nil {
		return 0, fmt.Errorf("local put: %w", err)
	}
	if err = f.Sync(); err != nil {
		return 0, fmt.Errorf("local put: sync: %w", err)
	}
	if err = f.Close(); err != nil {
		return 0, fmt.Errorf("local put: close: %w", err)
	}
	if err = ctx.Err(); err != nil {
		return 0, fmt.Errorf("local put: %w", err)
	}
	if err = l.root.Rename(tmp, key); err != nil {
		return 0, fmt.Errorf("local put: rename: %w", err)
	}
	// Make the rename durable. It has happened: failing here must not
	// delete what another reader may already have opened.
	if d, derr := l.root.Open(dir); derr == nil {
		d.Sync()
		d.Close()
	}
	return n, nil
}

// Open returns up to length bytes of key from offset (length < 0: to the
// end); a range past the end yields fewer bytes or none. A missing key is
// ENOTFOUND, an invalid key or a negative offset EINVALID.
func (l *Local) Open(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	if err := ValidateKey(key); err != nil {
		return nil, err
	}
	if offset < 0 {
		return nil, ota.Errorf(ota.EINVALID, "negative offset")
	}
	f, err := l.root.Open(key)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ota.Errorf(ota.ENOTFOUND, "firmware image not found")
	} else if err != nil {
		return nil, fmt.Errorf("local open: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("local open: %w", err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, ota.Errorf(ota.ENOTFOUND, "firmware image not found")
	}
	n := max(fi.Size()-offset, 0)
	if length >= 0 && length < n {
		n = length
	}
	if n > 0 && offset > 0 {
		if _, err := f.Seek(offset, io.SeekStart); err != nil {
			f.Close()
			return nil, fmt.Errorf("local open: %w", err)
		}
	}
	return &localReader{f: f, lr: io.LimitedReader{R: f, N: n}}, nil
}

// Delete removes key; a missing key is no error, an invalid one EINVALID.
func (l *Local) Delete(ctx context.Context, key string) error {
	if err := ValidateKey(key); err != nil {
		return err
	}
	if err := l.root.Remove(key); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("local delete: %w", err)
	}
	return nil
}

// List calls fn with every stored image, some at a time; temporary files
// and files whose names no key has are not listed.
func (l *Local) List(ctx context.Context, fn func([]Object) error) error {
	var batch []Object
	err := fs.WalkDir(l.root.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("scan firmware directory: %w", err)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if !d.Type().IsRegular() || ValidateKey(p) != nil {
			return nil // a directory, a temporary file, nothing Put wrote
		}
		fi, err := d.Info()
		if err != nil {
			return nil // removed meanwhile
		}
		batch = append(batch, Object{Key: p, Modified: fi.ModTime()})
		if len(batch) == listBatch {
			err, batch = fn(batch), nil
		}
		return err
	})
	if err == nil && len(batch) > 0 {
		err = fn(batch)
	}
	return err
}

// RemoveIncomplete removes the temporary files of uploads that a crash
// left behind, last written before before, and says how many it removed.
// An upload in progress writes to its file all along, so a file untouched
// for long is nobody's.
func (l *Local) RemoveIncomplete(ctx context.Context, before time.Time) (int, error) {
	removed := 0
	err := fs.WalkDir(l.root.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("scan firmware directory: %w", err)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if d.Type().IsRegular() && strings.HasPrefix(d.Name(), tempPrefix) {
			if fi, err := d.Info(); err == nil && fi.ModTime().Before(before) {
				if err := l.root.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
					return fmt.Errorf("remove temporary file: %w", err)
				}
				removed++
			}
		}
		return nil
	})
	return removed, err
}

// localReader reads a section of a file. Its WriteTo hands the
// *io.LimitedReader of the *os.File to the destination, which lets an
// http.ResponseWriter use sendfile.
type localReader struct {
	f  *os.File
	lr io.LimitedReader
}

func (r *localReader) Read(p []byte) (int, error)         { return r.lr.Read(p) }
func (r *localReader) WriteTo(w io.Writer) (int64, error) { return io.Copy(w, &r.lr) }
func (r *localReader) Close() error                       { return r.f.Close() }

// ctxReader fails reads once ctx is done, so that a canceled upload stops
// even while its source keeps delivering bytes.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r *ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}
