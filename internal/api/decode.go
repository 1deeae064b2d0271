package api

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"unicode/utf8"

	"github.com/otad/otad/internal/ota"
)

// maxJSONBody caps every JSON request body but a job's; maxJobBody fits
// the largest job the API documents (ota.MaxJobDevices names of the longest
// kind, quoted and separated, with room for the options).
// maxBatchBody fits the largest device batch, each entry with the
// longest name and version and JSON's keys around them.
const (
	maxJSONBody  = 64 << 10
	maxJobBody   = ota.MaxJobDevices*(ota.DeviceNameMaxLen+3) + maxJSONBody
	maxBatchBody = ota.MaxDeviceBatch*(ota.DeviceNameMaxLen+ota.VersionMaxLen+32) + maxJSONBody
)

// decodeJSON reads exactly one JSON object into v, refusing unknown fields,
// wrong types, trailing data and bodies over maxJSONBody. The body is JSON
// whatever the content type says, as long as it says nothing else than
// JSON or curl's default for -d (application/x-www-form-urlencoded), so
// that `curl -d '{...}'` works as people type it.
func decodeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	return decodeJSONLimit(w, r, v, maxJSONBody)
}

// decodeJSONLimit is decodeJSON with a body limit of its own.
func decodeJSONLimit(w http.ResponseWriter, r *http.Request, v any, limit int64) error {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || (mt != "application/json" && mt != "application/merge-patch+json" && mt != "application/x-www-form-urlencoded") {
			return ota.Errorf(ota.EINVALID, "content type must be application/json")
		}
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		return jsonError(err)
	}
	if err := strictJSON(body); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonError(err)
	}
	if err := dec.Decode(&struct{}{}); err != io.EOF {
		return ota.Errorf(ota.EINVALID, "request body must hold exactly one JSON object")
	}
	return nil
}

// strictJSON refuses what encoding/json would quietly accept: invalid
// UTF-8 (it would be replaced), C1 control characters, keys twice in one
// object (the last would win) and keys that match a field only when case
// or Unicode folding is ignored ({"Disabled": true}): every key of the
// API is lowercase snake_case.
func strictJSON(body []byte) error {
	if !utf8.Valid(body) {
		return ota.Errorf(ota.EINVALID, "request body is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	type frame struct {
		object bool
		keys   map[string]bool
		key    bool // the next string token is a key
	}
	var stack []*frame
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return nil // a syntax error: the decoder says it with its offset
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		switch t := tok.(type) {
		case json.Delim:
			switch t {
			case '{', '[':
				if top != nil && top.object {
					top.key = true
				}
				stack = append(stack, &frame{object: t == '{', keys: map[string]bool{}, key: t == '{'})
			default:
				stack = stack[:len(stack)-1]
			}
			continue
		case string:
			if hasC1(t) {
				return ota.Errorf(ota.EINVALID, "request body holds a control character (U+0080 to U+009F)")
			}
			if top != nil && top.object && top.key {
				if !snakeKey(t) {
					return ota.Errorf(ota.EINVALID, "unknown field %q: fields are lowercase snake_case", truncateKey(t))
				}
				if top.keys[t] {
					return ota.Errorf(ota.EINVALID, "field %q appears twice", t)
				}
				top.keys[t] = true
				top.key = false
				continue
			}
		}
		if top != nil && top.object {
			top.key = true // a value was read: a key comes next
		}
	}
}

func hasC1(s string) bool {
	for _, r := range s {
		if r >= 0x80 && r <= 0x9f {
			return true
		}
	}
	return false
}

func snakeKey(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		if c := k[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

func truncateKey(k string) string {
	if len(k) > 64 {
		return k[:64] + "…"
	}
	return k
}

func jsonError(err error) error {
	var maxErr *http.MaxBytesError
	var syntaxErr *json.SyntaxError
	var typeErr *json.UnmarshalTypeError
	switch {
	case errors.As(err, &maxErr):
		return ota.Errorf(ota.ETOOLARGE, "request body is larger than %d bytes", maxErr.Limit)
	case errors.Is(err, io.EOF):
		return ota.Errorf(ota.EINVALID, "request body is empty")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return ota.Errorf(ota.EINVALID, "request body is truncated JSON")
	case errors.As(err, &syntaxErr):
		return ota.Errorf(ota.EINVALID, "malformed JSON at byte %d", syntaxErr.Offset)
	case errors.As(err, &typeErr):
		if typeErr.Field != "" {
			return ota.Errorf(ota.EINVALID, "field %q must be of type %s", typeErr.Field, typeErr.Type)
		}
		return ota.Errorf(ota.EINVALID, "request body must be a JSON object")
	default:
		// Unknown fields come back as a plain error from encoding/json.
		return ota.Errorf(ota.EINVALID, "invalid JSON: %s", trimJSONPrefix(err.Error()))
	}
}

func trimJSONPrefix(s string) string {
	const p = "json: "
	if len(s) > len(p) && s[:len(p)] == p {
		return s[len(p):]
	}
	return s
}

// page is one page of a list answer.
type page[T any] struct {
	Items      []T    `json:"items"`
	NextCursor string `json:"next_cursor,omitempty"`
}

// pageParams reads ?limit= and ?cursor= (an opaque key from next_cursor).
func pageParams(r *http.Request) (after string, limit int, err error) {
	if _, err := url.ParseQuery(r.URL.RawQuery); err != nil {
		return "", 0, ota.Errorf(ota.EINVALID, "malformed query string")
	}
	limit = ota.DefaultPageLimit
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > ota.MaxPageLimit {
			return "", 0, ota.Errorf(ota.EINVALID, "limit must be a number from 1 to %d", ota.MaxPageLimit)
		}
		limit = n
	}
	if c := r.URL.Query().Get("cursor"); c != "" {
		b, err := base64.RawURLEncoding.DecodeString(c)
		if err != nil || len(b) == 0 || len(b) > 256 || !printableText(b) {
			return "", 0, ota.Errorf(ota.EINVALID, "cursor is not one this server handed out")
		}
		after = string(b)
	}
	return after, limit, nil
}

// newPage builds a page answer; key gives the cursor of the last item.
// A full page gets a next cursor; a short one is the last.
func newPage[T any](items []T, limit int, key func(T) string) page[T] {
	p := page[T]{Items: items}
	if p.Items == nil {
		p.Items = []T{}
	}
	if len(items) == limit && limit > 0 {
		p.NextCursor = base64.RawURLEncoding.EncodeToString([]byte(key(items[len(items)-1])))
	}
	return p
}

// numberCursor reads a cursor that is a positive number (an ID or a
// sequence number, for pages from newest to oldest); 0 when there is none.
func numberCursor(after string) (int64, error) {
	if after == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(after, 10, 64)
	if err != nil || n <= 0 {
		return 0, ota.Errorf(ota.EINVALID, "cursor is not one this server handed out")
	}
	return n, nil
}

func boolParam(r *http.Request, name string) (*bool, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return nil, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return nil, ota.Errorf(ota.EINVALID, "%s must be true or false", name)
	}
	return &b, nil
}

// printableText reports whether b is UTF-8 without control characters:
// every cursor this server hands out is (names, versions, IDs).
func printableText(b []byte) bool {
	if !utf8.Valid(b) {
		return false
	}
	for _, r := range string(b) {
		if r < 0x20 || r >= 0x7f && r < 0xa0 {
			return false
		}
	}
	return true
}
