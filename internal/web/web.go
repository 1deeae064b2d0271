// Package web holds otad's web console: plain HTML, CSS and JavaScript
// modules, embedded in the binary, with no build step. The API server
// serves them (index.html at /, the rest at /ui/{file}); everything the
// console shows or does goes through the public /v1 API with the token the
// user signs in with.
package web

import (
	"embed"
	"io/fs"
)

//go:embed static
var static embed.FS

// Files returns the console's files, flat: index.html and what it loads.
func Files() fs.FS {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embedded directory is always there
	}
	return sub
}
