package api

import (
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/otad/otad/internal/ota"
)

// firmwareCreate stores an image sent as the raw request body, with
// ?version= (required), ?description=, and the optional ?md5= and ?sha256=
// the client expects the image to hash to. A multipart/form-data body works
// too: those fields as form fields, then the image as the last part. The
// image streams to the blob backend while it is hashed; memory does not
// grow with it. For a raw body every refusal that needs no body (unknown
// product, bad parameters, a version that exists, a Content-Length over
// the limit) comes before the body is read, so a client that sent
// "Expect: 100-continue" never sends it. Whatever fails later leaves no
// object and no row.
func (s *Server) firmwareCreate(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	if s.blobs == nil {
		return errNoBlobs
	}
	p, err := s.product(r)
	if err != nil {
		return err
	}
	select {
	case s.uploads <- struct{}{}:
		s.uploadsActive.Inc()
		defer func() {
			s.uploadsActive.Dec()
			<-s.uploads
		}()
	default:
		return ota.Errorf(ota.ETOOMANY, "%d firmware uploads are in progress, the most this server takes at once; try again shortly", cap(s.uploads))
	}
	q := r.URL.Query()
	up := uploadFields{"version": q.Get("version"), "description": q.Get("description"), "md5": q.Get("md5"), "sha256": q.Get("sha256")}

	mt, mtParams, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	form := mt == "multipart/form-data"
	if strings.HasPrefix(mt, "multipart/") && !form {
		return ota.Errorf(ota.EINVALID, "send the image as the raw request body (curl --data-binary @file) or as multipart/form-data")
	}
	// One byte over the limit is enough to know; MaxBytesReader also makes
	// the server close the connection instead of draining a huge body.
	limit := s.maxFirmwareSize + 1
	if form {
		limit += formEnvelopeMax
	}
	switch {
	case r.ContentLength == 0:
		return ota.Errorf(ota.EINVALID, "firmware image is empty")
	case r.ContentLength >= limit:
		return ota.Errorf(ota.ETOOLARGE, "firmware image is larger than %d bytes", s.maxFirmwareSize)
	}
	// The server has no overall read timeout (an image may take hours on a
	// slow link); instead every read must make progress in time.
	var image io.Reader = &stallReader{r: http.MaxBytesReader(w, r.Body, limit), rc: http.NewResponseController(w), timeout: s.uploadStall}
	var mr *multipart.Reader
	if form {
		if mtParams["boundary"] == "" {
			return ota.Errorf(ota.EINVALID, "multipart/form-data without a boundary")
		}
		mr = multipart.NewReader(image, mtParams["boundary"])
		if image, err = readFormFields(mr, up); err != nil {
			return err
		}
	}

	f := &ota.Firmware{ProductID: p.ID, Version: up["version"], Description: up["description"]}
	if err := ota.ValidateVersion(f.Version); err != nil {
		return err
	}
	if err := ota.ValidateText("description", f.Description, 1024); err != nil {
		return err
	}
	switch _, err := s.store.FirmwareGet(ctx, p.ID, f.Version); {
	case err == nil:
		return ota.Errorf(ota.ECONFLICT, "firmware version %s already exists", f.Version)
	case !ota.IsCode(err, ota.ENOTFOUND):
		return err
	}

	// A unique key per upload: a failed or raced upload never touches
	// another upload's object.
	f.BlobKey = ota.NewBlobKey(p.ID, f.Version)
	res, err := ota.Ingest(ctx, s.blobs, image, ota.IngestParams{
		Key:     f.BlobKey,
		MaxSize: s.maxFirmwareSize,
		MD5:     up["md5"],
		SHA256:  up["sha256"],
	})
	if err == nil && mr != nil {
		// Whatever follows the image would be silently dropped.
		if _, perr := mr.NextPart(); perr != io.EOF {
			if derr := ota.DeleteBlob(ctx, s.blobs, f.BlobKey); derr != nil {
				s.log.ErrorContext(ctx, "firmware upload: remove refused blob", "err", derr)
			}
			err = ota.Errorf(ota.EINVALID, "the image must be the form's last part")
		}
	}
	if err != nil {
		if ctx.Err() != nil {
			// The client is gone: nobody reads the answer, and the
			// failure is theirs. Ingest has removed the blob.
			s.log.InfoContext(ctx, "firmware upload abandoned", "product_id", p.ID, "version", f.Version)
		}
		return err
	}
	f.Size, f.MD5, f.SHA256 = res.Size, res.MD5, res.SHA256
	if err := s.store.FirmwareCreate(ctx, f); err != nil {
		// Lost a race with another upload of the version, or the product
		// went away: the row is not ours, so neither is any object.
		if derr := ota.DeleteBlob(ctx, s.blobs, f.BlobKey); derr != nil {
			s.log.ErrorContext(ctx, "firmware upload: remove orphan blob", "err", derr)
		}
		if ota.IsCode(err, ota.ECONFLICT) {
			err = ota.Errorf(ota.ECONFLICT, "firmware version %s already exists", f.Version)
		}
		return err
	}
	w.Header().Set("Location", "/v1/products/"+p.ID+"/firmware/"+url.PathEscape(f.Version))
	return writeJSON(w, http.StatusCreated, f)
}

func (s *Server) firmwareList(w http.ResponseWriter, r *http.Request) error {
	p, err := s.product(r)
	if err != nil {
		return err
	}
	after, limit, err := pageParams(r)
	if err != nil {
		return err
	}
	fs, err := s.store.FirmwareList(r.Context(), ota.FirmwareListParams{ProductID: p.ID, After: after, Limit: limit})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, newPage(fs, limit, func(f *ota.Firmware) string { return f.Version }))
}

func (s *Server) firmwareGet(w http.ResponseWriter, r *http.Request) error {
	f, err := s.firmware(r)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, f)
}

// firmwareDelete removes the row first (the store refuses while an active
// job uses the version), then the image. An image that cannot be removed
// is logged and left as an orphan: the version is gone either way.
func (s *Server) firmwareDelete(w http.ResponseWriter, r *http.Request) error {
	f, err := s.firmware(r)
	if err != nil {
		return err
	}
	if s.blobs == nil {
		return errNoBlobs
	}
	if err := s.store.FirmwareDelete(r.Context(), f.ProductID, f.Version); err != nil {
		return err
	}
	if err := ota.DeleteBlob(r.Context(), s.blobs, f.BlobKey); err != nil {
		s.log.ErrorContext(r.Context(), "firmware delete: remove blob", "product_id", f.ProductID, "version", f.Version, "err", err)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// firmware loads the product's firmware named in the path.
func (s *Server) firmware(r *http.Request) (*ota.Firmware, error) {
	p, err := s.product(r)
	if err != nil {
		return nil, err
	}
	version, err := pathParam(r, "version")
	if err != nil {
		return nil, err
	}
	if err := ota.ValidateVersion(version); err != nil {
		return nil, err
	}
	return s.store.FirmwareGet(r.Context(), p.ID, version)
}

// pathParam returns a path parameter decoded. chi routes on the escaped
// path when the request has one (a version with a slash arrives as %2F),
// and its parameters are then escaped too.
func pathParam(r *http.Request, name string) (string, error) {
	v := chi.URLParam(r, name)
	if r.URL.RawPath == "" {
		return v, nil
	}
	u, err := url.PathUnescape(v)
	if err != nil {
		return "", ota.Errorf(ota.EINVALID, "%s is not a valid path segment", name)
	}
	return u, nil
}

// errNoBlobs answers firmware writes on a server built without storage.
var errNoBlobs = &ota.Error{Code: ota.EUNAVAILABLE, Message: "firmware storage is not configured"}

// stallReader gives every read of a request body its own deadline.
type stallReader struct {
	r       io.Reader
	rc      *http.ResponseController
	timeout time.Duration
}

func (s *stallReader) Read(p []byte) (int, error) {
	// Without deadline support (a wrapped writer that hides it), reads
	// simply have none.
	_ = s.rc.SetReadDeadline(time.Now().Add(s.timeout))
	return s.r.Read(p)
}

// uploadFields are an upload's parameters by name.
type uploadFields map[string]string

const (
	formFieldMax  = 4 << 10
	formFieldsMax = 8
	// formEnvelopeMax is what a form may add to the image's size: its
	// fields, part headers and boundaries.
	formEnvelopeMax = formFieldsMax*(formFieldMax+1024) + 1024
)

// readFormFields reads the fields of a firmware upload form into up, up to
// the part that holds the image (one with a file name, or named "file"),
// and returns that part. A field also given in the query must agree.
func readFormFields(mr *multipart.Reader, up uploadFields) (io.Reader, error) {
	for n := 0; ; n++ {
		part, err := mr.NextPart()
		switch {
		case err == io.EOF:
			return nil, ota.Errorf(ota.EINVALID, "the form has no file part")
		case err != nil:
			return nil, ota.Errorf(ota.EINVALID, "malformed multipart body: %v", err)
		case part.FileName() != "" || part.FormName() == "file":
			return part, nil
		case n >= formFieldsMax:
			return nil, ota.Errorf(ota.EINVALID, "the form has more than %d fields", formFieldsMax)
		}
		name := part.FormName()
		old, known := up[name]
		if !known {
			return nil, ota.Errorf(ota.EINVALID, "unknown form field %q: use version, description, md5, sha256, then the file", name)
		}
		b, err := io.ReadAll(io.LimitReader(part, formFieldMax+1))
		if err != nil {
			return nil, ota.Errorf(ota.EINVALID, "malformed multipart body: %v", err)
		}
		if len(b) > formFieldMax {
			return nil, ota.Errorf(ota.EINVALID, "form field %q is longer than %d bytes", name, formFieldMax)
		}
		if old != "" && old != string(b) {
			return nil, ota.Errorf(ota.EINVALID, "%s differs between the query and the form", name)
		}
		up[name] = string(b)
	}
}
