package api

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/otad/otad/internal/ota"
)

// consoleCSP keeps the console to its own files: scripts and styles only
// from /ui/ (no inline script or style element), requests only to this
// origin, never framed, no form posting anywhere.
const consoleCSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// consoleFile is one file of the console, read once when the server is built.
type consoleFile struct {
	name  string
	body  []byte
	etag  string
	ctype string
}

// loadConsole reads every file at the top of fsys: the page at / is
// index.html, the rest is served under /ui/{file}. The files are flat, so
// that each path is one fixed route.
func loadConsole(fsys fs.FS) (map[string]*consoleFile, error) {
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		return nil, fmt.Errorf("read console files: %w", err)
	}
	files := map[string]*consoleFile{}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		body, err := fs.ReadFile(fsys, e.Name())
		if err != nil {
			return nil, fmt.Errorf("read console file %s: %w", e.Name(), err)
		}
		ctype := mime.TypeByExtension(path.Ext(e.Name()))
		if ctype == "" {
			ctype = "application/octet-stream"
		}
		sum := sha256.Sum256(body)
		files[e.Name()] = &consoleFile{name: e.Name(), body: body, etag: `"` + hex.EncodeToString(sum[:12]) + `"`, ctype: ctype}
	}
	if files["index.html"] == nil {
		return nil, fmt.Errorf("console files have no index.html")
	}
	return files, nil
}

// console serves the web console: index.html at /, the other files at
// /ui/{file}. Everything the console does, it does through /v1 with the
// token the user signs in with; these files need none.
func (s *Server) console(w http.ResponseWriter, r *http.Request) {
	name := "index.html"
	if r.URL.Path != "/" {
		name = chi.URLParam(r, "file")
	}
	h := w.Header()
	h.Set("Content-Security-Policy", consoleCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	f := s.consoleFiles[name]
	if f == nil || strings.HasPrefix(name, ".") {
		s.writeError(w, r, ota.Errorf(ota.ENOTFOUND, "no such console file"))
		return
	}
	// Revalidated on every load (cheap: the ETag answers 304), so a new
	// otad's console is never mixed with an old one's cached modules.
	h.Set("Cache-Control", "no-cache")
	h.Set("ETag", f.etag)
	h.Set("Content-Type", f.ctype)
	http.ServeContent(w, r, f.name, time.Time{}, bytes.NewReader(f.body))
}
