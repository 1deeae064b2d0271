package api

import (
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/otad/otad/internal/ota"
)

// DownloadConfig is what the firmware download handler needs.
type DownloadConfig struct {
	Logger *slog.Logger
	Signer *ota.DownloadSigner
	Store  ota.Store
	Blobs  ota.Blobs
	// Registry, when set, receives the download metrics.
	Registry prometheus.Registerer
	// StallTimeout bounds how long one chunk of the answer may take to go
	// out, so a client that stops reading frees its connection; default 2m.
	// A device reads at least about 5 KB/s: a chunk takes seconds.
	StallTimeout time.Duration
	// Now tells the time URLs expire against; default time.Now.
	Now func() time.Time
	// RateLimit, when set, refuses downloads from an address that has
	// used up its rate limit on refused URLs (403, 404); a valid URL
	// takes nothing from it.
	RateLimit *RateLimiter
}

// Download serves firmware images to devices at {public URL}/{token}, as
// PROTOCOL.md ("Firmware download") demands: GET and HEAD, one Range of
// bytes answered 206 (with an end that may equal the size), 416 past the
// end, never compressed, 403 for an expired or forged URL and 404 for an
// unknown one. The URL's signature is the only authorization. Bytes stream
// from the blob backend, the range passed through, never whole in memory.
type Download struct {
	log    *slog.Logger
	signer *ota.DownloadSigner
	store  ota.Store
	blobs  ota.Blobs
	stall  time.Duration
	now    func() time.Time
	limit  *RateLimiter

	requests *prometheus.CounterVec
	bytes    prometheus.Counter
}

// NewDownload builds the download handler and registers its metrics.
func NewDownload(cfg DownloadConfig) (*Download, error) {
	if cfg.Signer == nil || cfg.Store == nil || cfg.Blobs == nil {
		return nil, errors.New("download handler needs a signer, a store and blobs")
	}
	d := &Download{
		log:    cfg.Logger,
		signer: cfg.Signer,
		store:  cfg.Store,
		blobs:  cfg.Blobs,
		stall:  cfg.StallTimeout,
		now:    cfg.Now,
		limit:  cfg.RateLimit,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "otad_firmware_downloads_total",
			Help: "Firmware download requests, by status code.",
		}, []string{"code"}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "otad_firmware_download_bytes_total",
			Help: "Firmware bytes sent to devices.",
		}),
	}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	d.log = d.log.With("component", "download")
	if d.stall <= 0 {
		d.stall = 2 * time.Minute
	}
	if d.now == nil {
		d.now = time.Now
	}
	if cfg.Registry != nil {
		for _, c := range []prometheus.Collector{d.requests, d.bytes} {
			if err := cfg.Registry.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return d, nil
}

const downloadChunk = 256 << 10

var downloadBufs = sync.Pool{New: func() any { return new([downloadChunk]byte) }}

// ServeHTTP serves a download. Devices behind one NAT address share it,
// so downloads are not limited per address as console requests are; only
// refused URLs (403, 404: a client guessing or replaying) take from a
// rate limit of the address's own (not its console requests' one), and an
// address that has used it up is answered 429 until it refills.
func (d *Download) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var code int
	key := "download:" + addressKey(r)
	if wait := d.limit.wait(key); wait > 0 {
		d.limit.refuse(w, "address", wait)
		code = plainError(w, http.StatusTooManyRequests, "too many refused download URLs from this address; try again later")
	} else {
		code = d.serve(w, r)
		if code == http.StatusForbidden || code == http.StatusNotFound {
			d.limit.take(key)
		}
	}
	d.requests.WithLabelValues(strconv.Itoa(code)).Inc()
}

func (d *Download) serve(w http.ResponseWriter, r *http.Request) int {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		return plainError(w, http.StatusMethodNotAllowed, "method not allowed")
	}
	token, ok := strings.CutPrefix(r.URL.Path, "/")
	if !ok || strings.Contains(token, "/") {
		return plainError(w, http.StatusNotFound, "no such download")
	}
	target, err := d.signer.Verify(token, d.now())
	if err != nil {
		if ota.IsCode(err, ota.EFORBIDDEN) {
			return plainError(w, http.StatusForbidden, ota.ErrorMessage(err))
		}
		return plainError(w, http.StatusNotFound, "no such download")
	}
	f, err := d.store.FirmwareGet(r.Context(), target.ProductID, target.Version)
	switch {
	case ota.IsCode(err, ota.ENOTFOUND):
		return plainError(w, http.StatusNotFound, "no such download")
	case err != nil:
		d.log.ErrorContext(r.Context(), "download: look up firmware", "product_id", target.ProductID, "version", target.Version, "err", err)
		return plainError(w, http.StatusServiceUnavailable, "try again later")
	case !target.Matches(f):
		// The version was deleted and uploaded again with other bytes.
		return plainError(w, http.StatusNotFound, "no such download")
	}

	etag := `"` + f.MD5 + `"`
	lastModified := f.CreatedAt.UTC().Format(http.TimeFormat)
	h := w.Header()
	h.Set("Accept-Ranges", "bytes")
	h.Set("ETag", etag)
	h.Set("Last-Modified", lastModified)
	// no-transform keeps proxies from compressing or recoding the image.
	h.Set("Cache-Control", "private, no-transform")

	rangeHeader := r.Header.Get("Range")
	if ir := r.Header.Get("If-Range"); ir != "" && ir != etag && ir != lastModified {
		rangeHeader = "" // the client's partial copy is of other bytes
	}
	start, end, partial, err := parseRange(rangeHeader, f.Size)
	if err != nil {
		// An empty body: the C SDK takes the body of any status but 403
		// and 404 as image data, and a device whose download finished
		// just before power loss resumes with bytes=SIZE-SIZE.
		h.Set("Content-Range", "bytes */"+strconv.FormatInt(f.Size, 10))
		h.Set("Content-Length", "0")
		h.Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
		return http.StatusRequestedRangeNotSatisfiable
	}
	length := end - start
	status := http.StatusOK
	if partial {
		status = http.StatusPartialContent
		h.Set("Content-Range", "bytes "+strconv.FormatInt(start, 10)+"-"+strconv.FormatInt(end-1, 10)+"/"+strconv.FormatInt(f.Size, 10))
	}
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Content-Length", strconv.FormatInt(length, 10))
	if r.Method == http.MethodHead {
		w.WriteHeader(status)
		return status
	}

	body, err := d.blobs.Open(r.Context(), f.BlobKey, start, length)
	if err != nil {
		h.Del("Content-Length")
		h.Del("Content-Range")
		h.Del("ETag")
		h.Del("Last-Modified")
		if ota.IsCode(err, ota.ENOTFOUND) {
			d.log.ErrorContext(r.Context(), "download: firmware image missing from storage", "product_id", f.ProductID, "version", f.Version)
			return plainError(w, http.StatusNotFound, "no such download")
		}
		if r.Context().Err() == nil {
			d.log.ErrorContext(r.Context(), "download: open firmware image", "product_id", f.ProductID, "version", f.Version, "err", err)
		}
		return plainError(w, http.StatusServiceUnavailable, "try again later")
	}
	defer body.Close()
	w.WriteHeader(status)
	n, err := d.copy(w, body, length)
	d.bytes.Add(float64(n))
	if err != nil && r.Context().Err() == nil {
		// The status is out; all that is left is to cut the answer short,
		// which the device notices from the Content-Length.
		d.log.WarnContext(r.Context(), "download: cut short", "product_id", f.ProductID, "version", f.Version,
			"sent", n, "want", length, "err", err)
	}
	return status
}

// copy sends length bytes of body in chunks, each with its own write
// deadline: a device that stops reading gives its connection back after
// the stall timeout, while a slow one may take days over a large image.
// The request's read deadline (headers, body) is lifted first: net/http
// watches the connection while the handler runs, and a read deadline
// passing there would cancel the request half way through the image.
func (d *Download) copy(w http.ResponseWriter, body io.Reader, length int64) (int64, error) {
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Time{})
	deadlines := rc.SetWriteDeadline(time.Time{}) == nil
	if deadlines {
		// The connection may serve another request after this one.
		defer rc.SetWriteDeadline(time.Time{})
	}
	buf := downloadBufs.Get().(*[downloadChunk]byte)
	defer downloadBufs.Put(buf)
	var sent int64
	for sent < length {
		n, err := io.ReadFull(body, buf[:min(int64(len(buf)), length-sent)])
		if n > 0 {
			if deadlines {
				rc.SetWriteDeadline(time.Now().Add(d.stall))
			}
			if _, werr := w.Write(buf[:n]); werr != nil {
				return sent, werr
			}
			sent += int64(n)
		}
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return sent, errors.New("firmware image is shorter than its recorded size")
			}
			return sent, err
		}
	}
	return sent, nil
}

func plainError(w http.ResponseWriter, status int, msg string) int {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	io.WriteString(w, msg+"\n")
	return status
}

// parseRange interprets a Range header for a representation of size bytes
// and returns the half-open interval [start, end) to send, and whether
// that is a part (206) rather than the whole (200).
//
// It follows RFC 9110 section 14 for one range: "bytes=N-M" (an M at or
// past the end, such as M = size, means to the end), "bytes=N-" and the
// suffix form "bytes=-S". A header in another unit, or one with several
// ranges, is ignored and the whole image is sent, as the RFC allows. A
// malformed bytes range, or one that starts at or past the end, is an
// error: the caller answers 416 rather than send bytes a device would
// append to its partial copy in the wrong place.
func parseRange(h string, size int64) (start, end int64, partial bool, err error) {
	if h == "" {
		return 0, size, false, nil
	}
	unit, spec, ok := strings.Cut(h, "=")
	if !ok || !strings.EqualFold(strings.TrimSpace(unit), "bytes") {
		return 0, size, false, nil
	}
	if strings.Contains(spec, ",") {
		return 0, size, false, nil
	}
	first, last, ok := strings.Cut(strings.TrimSpace(spec), "-")
	if !ok {
		return 0, 0, false, errRangeSyntax
	}
	if first == "" { // suffix: the last S bytes
		n, ok := parseDigits(last)
		if !ok {
			return 0, 0, false, errRangeSyntax
		}
		if n == 0 || size == 0 {
			return 0, 0, false, errRangeUnsatisfiable
		}
		return max(size-n, 0), size, true, nil
	}
	start, ok = parseDigits(first)
	if !ok {
		return 0, 0, false, errRangeSyntax
	}
	end = size
	if last != "" {
		l, ok := parseDigits(last)
		if !ok || l < start {
			return 0, 0, false, errRangeSyntax
		}
		if l < size-1 {
			end = l + 1
		}
	}
	if start >= size {
		return 0, 0, false, errRangeUnsatisfiable
	}
	return start, end, true, nil
}

var (
	errRangeSyntax        = errors.New("malformed Range header: use bytes=N-M, bytes=N- or bytes=-N")
	errRangeUnsatisfiable = errors.New("range starts at or past the end of the firmware image")
)

// parseDigits parses a non-negative decimal number of ASCII digits only
// (no sign, no spaces), refusing values that overflow int64.
func parseDigits(s string) (int64, bool) {
	if s == "" || len(s) > 19 {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil
}
