package api

import (
	"mime"
	"net/http"
	"net/url"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/otad/otad/internal/ota"
)

// firmwareCreate stores an image sent as the raw request body, with
// ?version= (required), ?description=, and the optional ?md5= and ?sha256=
// the client expects the image to hash to. The body streams to the blob
// backend while it is hashed; memory does not grow with the image. Every
// refusal that needs no body (unknown product, bad parameters, a version
// that exists, a Content-Length over the limit) comes before the body is
// read, so a client that sent "Expect: 100-continue" never sends it.
// Whatever fails later leaves no object and no row.
func (s *Server) firmwareCreate(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	if s.blobs == nil {
		s.writeError(w, r, errNoBlobs)
		return
	}
	p, err := s.product(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	q := r.URL.Query()
	f := &ota.Firmware{ProductID: p.ID, Version: q.Get("version"), Description: q.Get("description")}
	if err := ota.ValidateVersion(f.Version); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := ota.ValidateText("description", f.Description, 1024); err != nil {
		s.writeError(w, r, err)
		return
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); strings.HasPrefix(mt, "multipart/") {
		s.writeError(w, r, ota.Errorf(ota.EINVALID, "send the image as the raw request body (curl --data-binary @file), not as a multipart form"))
		return
	}
	switch {
	case r.ContentLength == 0:
		s.writeError(w, r, ota.Errorf(ota.EINVALID, "firmware image is empty"))
		return
	case r.ContentLength > s.maxFirmwareSize:
		s.writeError(w, r, ota.Errorf(ota.ETOOLARGE, "firmware image is larger than %d bytes", s.maxFirmwareSize))
		return
	}
	switch _, err := s.store.FirmwareGet(ctx, p.ID, f.Version); {
	case err == nil:
		s.writeError(w, r, ota.Errorf(ota.ECONFLICT, "firmware version %s already exists", f.Version))
		return
	case !ota.IsCode(err, ota.ENOTFOUND):
		s.writeError(w, r, err)
		return
	}

	// A unique key per upload: a failed or raced upload never touches
	// another upload's object.
	f.BlobKey = ota.NewBlobKey(p.ID, f.Version)
	// One byte over the limit is enough to know; MaxBytesReader also makes
	// the server close the connection instead of draining a huge body.
	body := http.MaxBytesReader(w, r.Body, s.maxFirmwareSize+1)
	res, err := ota.Ingest(ctx, s.blobs, body, ota.IngestParams{
		Key:     f.BlobKey,
		MaxSize: s.maxFirmwareSize,
		MD5:     q.Get("md5"),
		SHA256:  q.Get("sha256"),
	})
	if err != nil {
		if ctx.Err() != nil {
			// The client is gone: nobody reads the answer, and the
			// failure is theirs. Ingest has removed the blob.
			s.log.InfoContext(ctx, "firmware upload abandoned", "product_id", p.ID, "version", f.Version)
		}
		s.writeError(w, r, err)
		return
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
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Location", "/v1/products/"+p.ID+"/firmware/"+url.PathEscape(f.Version))
	writeJSON(w, http.StatusCreated, f)
}

func (s *Server) firmwareList(w http.ResponseWriter, r *http.Request) {
	p, err := s.product(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	after, limit, err := pageParams(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	fs, err := s.store.FirmwareList(r.Context(), ota.FirmwareListParams{ProductID: p.ID, After: after, Limit: limit})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, newPage(fs, limit, func(f *ota.Firmware) string { return f.Version }))
}

func (s *Server) firmwareGet(w http.ResponseWriter, r *http.Request) {
	f, err := s.firmware(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, f)
}

// firmwareDelete removes the row first (the store refuses while an active
// job uses the version), then the image. An image that cannot be removed
// is logged and left as an orphan: the version is gone either way.
func (s *Server) firmwareDelete(w http.ResponseWriter, r *http.Request) {
	f, err := s.firmware(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if s.blobs == nil {
		s.writeError(w, r, errNoBlobs)
		return
	}
	if err := s.store.FirmwareDelete(r.Context(), f.ProductID, f.Version); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := ota.DeleteBlob(r.Context(), s.blobs, f.BlobKey); err != nil {
		s.log.ErrorContext(r.Context(), "firmware delete: remove blob", "product_id", f.ProductID, "version", f.Version, "err", err)
	}
	w.WriteHeader(http.StatusNoContent)
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
