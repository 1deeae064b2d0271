// Package client speaks otad's console API (internal/api/openapi.yaml) for
// otactl: one request helper that sends the bearer token, turns
// problem+json answers into *Problem errors, pages through next_cursor,
// and follows the Server-Sent Events stream across reconnections. It uses
// only the public API.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Client calls one otad server.
type Client struct {
	// BaseURL is the server's address, such as http://127.0.0.1:8080.
	BaseURL string
	// Token is the console API bearer token.
	Token string
	// HTTP sends the requests; nil is http.DefaultClient.
	HTTP *http.Client
	// UserAgent names the caller in the server's logs.
	UserAgent string
	// Retries is how many times a request refused for its rate (429), or a
	// read the server could not serve (503), is sent again after the
	// server's Retry-After (at most MaxRetryWait each); 0 is DefaultRetries,
	// a negative number none.
	Retries int
}

// DefaultRetries is Client.Retries when it is 0.
const DefaultRetries = 4

// MaxRetryWait bounds one wait before a request is sent again.
const MaxRetryWait = 30 * time.Second

// Problem is an error answer of the API: RFC 9457 problem details with
// otad's stable code, or, for an answer that is not problem+json (a proxy's
// error page), its status and the start of its body.
type Problem struct {
	Status int             `json:"status"`
	Title  string          `json:"title"`
	Detail string          `json:"detail"`
	Code   string          `json:"code"`
	Extra  json.RawMessage `json:"extra,omitempty"`
}

// Error reads as one line: "409 conflict: device already exists".
func (p *Problem) Error() string {
	code := p.Code
	if code == "" {
		code = strings.ToLower(http.StatusText(p.Status))
	}
	msg := fmt.Sprintf("%d %s", p.Status, code)
	if p.Detail != "" {
		msg += ": " + p.Detail
	}
	// A conflict names the devices in the way (a job over devices already
	// in another): say how many, and the first few.
	var extra struct {
		Devices []string `json:"devices"`
	}
	if json.Unmarshal(p.Extra, &extra) == nil && len(extra.Devices) > 0 {
		const show = 5
		names := extra.Devices[:min(show, len(extra.Devices))]
		msg += fmt.Sprintf(" (%d devices: %s", len(extra.Devices), strings.Join(names, ", "))
		if len(extra.Devices) > show {
			msg += ", …"
		}
		msg += ")"
	}
	return oneLine(msg)
}

// ErrorCode is the problem code of err ("not_found", "conflict", …), or ""
// when err is no API answer.
func ErrorCode(err error) string {
	var p *Problem
	if errors.As(err, &p) {
		return p.Code
	}
	return ""
}

// Path joins path segments, each percent-encoded: Path("/v1/products", pid,
// "firmware", "1.0/beta") is /v1/products/PID/firmware/1.0%2Fbeta.
func Path(base string, segments ...string) string {
	var b strings.Builder
	b.WriteString(base)
	for _, s := range segments {
		b.WriteByte('/')
		b.WriteString(url.PathEscape(s))
	}
	return b.String()
}

// Request is one call of the API.
type Request struct {
	Method string
	Path   string // already escaped (see Path)
	Query  url.Values
	// JSON is marshalled as the body unless nil.
	JSON any
	// Body is sent raw when JSON is nil, with ContentType and, when known
	// (>= 0), ContentLength.
	Body          io.Reader
	ContentType   string
	ContentLength int64
	// Header is added to the request.
	Header http.Header
}

// Do sends r and decodes a 2xx answer's JSON into out: nil discards it, a
// *json.RawMessage keeps it as sent. Any other answer is a *Problem.
func (c *Client) Do(ctx context.Context, r Request, out any) error {
	resp, err := c.send(ctx, r, c.retries())
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		return err
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("%s %s: reading the answer: %w", r.Method, r.Path, err)
	}
	if raw, ok := out.(*json.RawMessage); ok {
		if !json.Valid(body) {
			return fmt.Errorf("%s %s: the answer is not JSON", r.Method, r.Path)
		}
		*raw = body
		return nil
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("%s %s: decoding the answer: %w", r.Method, r.Path, err)
	}
	return nil
}

// Get is Do of a GET with a query.
func (c *Client) Get(ctx context.Context, path string, q url.Values, out any) error {
	return c.Do(ctx, Request{Method: http.MethodGet, Path: path, Query: q}, out)
}

// retries is Retries with its default.
func (c *Client) retries() int {
	if c.Retries == 0 {
		return DefaultRetries
	}
	return c.Retries
}

// send sends r and returns a 2xx answer with its body unread; any other
// answer is read and returned as a *Problem. A 429 (the server's rate
// limit refused the request before doing anything), or a 503 to a GET or
// HEAD, is sent again after the answer's Retry-After, when the body can be
// sent again, up to retries times.
func (c *Client) send(ctx context.Context, r Request, retries int) (*http.Response, error) {
	req, err := c.newRequest(ctx, r)
	if err != nil {
		return nil, err
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	for attempt := 0; ; attempt++ {
		resp, err := hc.Do(req)
		if err != nil {
			return nil, err // *url.Error names the method and URL
		}
		if resp.StatusCode >= 200 && resp.StatusCode < 300 {
			return resp, nil
		}
		wait, again := retryAfter(req, resp)
		if !again || attempt >= retries || (req.Body != nil && req.GetBody == nil) {
			defer resp.Body.Close()
			return nil, readProblem(resp)
		}
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		if err := sleep(ctx, wait); err != nil {
			return nil, err
		}
		if req.GetBody != nil {
			body, err := req.GetBody()
			if err != nil {
				return nil, err
			}
			req.Body = body
		}
	}
}

// sleep waits for d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// retryAfter says whether resp is an answer to send req again after, and
// how long to wait: the Retry-After header (seconds or an HTTP date),
// else one second, at most MaxRetryWait.
func retryAfter(req *http.Request, resp *http.Response) (time.Duration, bool) {
	switch {
	case resp.StatusCode == http.StatusTooManyRequests:
	case resp.StatusCode == http.StatusServiceUnavailable && (req.Method == http.MethodGet || req.Method == http.MethodHead):
	default:
		return 0, false
	}
	wait := time.Second
	if v := strings.TrimSpace(resp.Header.Get("Retry-After")); v != "" {
		if n, err := strconv.Atoi(v); err == nil && n >= 0 {
			wait = time.Duration(n) * time.Second
		} else if t, err := http.ParseTime(v); err == nil {
			wait = time.Until(t)
		}
	}
	return min(max(wait, 0), MaxRetryWait), true
}

func (c *Client) newRequest(ctx context.Context, r Request) (*http.Request, error) {
	if c.BaseURL == "" {
		return nil, errors.New("no server: give --server, OTAD_URL or `otactl config set server URL`")
	}
	target := strings.TrimRight(c.BaseURL, "/") + r.Path
	if len(r.Query) > 0 {
		target += "?" + r.Query.Encode()
	}
	body, length, ctype := r.Body, r.ContentLength, r.ContentType
	if r.JSON != nil {
		b, err := json.Marshal(r.JSON)
		if err != nil {
			return nil, err
		}
		body, length, ctype = bytes.NewReader(b), int64(len(b)), "application/json"
	}
	if body == nil {
		length = 0
	}
	req, err := http.NewRequestWithContext(ctx, r.Method, target, body)
	if err != nil {
		return nil, fmt.Errorf("server address %q: %w", c.BaseURL, err)
	}
	if length >= 0 {
		req.ContentLength = length
	}
	for k, vs := range r.Header {
		req.Header[k] = vs
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	if c.UserAgent != "" {
		req.Header.Set("User-Agent", c.UserAgent)
	}
	return req, nil
}

// readProblem makes an error answer a *Problem.
func readProblem(resp *http.Response) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	p := &Problem{Status: resp.StatusCode}
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if mt == "application/problem+json" || mt == "application/json" {
		if json.Unmarshal(body, p) == nil && (p.Code != "" || p.Detail != "") {
			p.Status = resp.StatusCode
			return p
		}
	}
	// Not otad's answer (a proxy's, or a server that is no otad): keep
	// the start of what it said.
	p.Detail = strings.TrimSpace(string(body))
	if len(p.Detail) > 200 || !utf8.ValidString(p.Detail) || strings.HasPrefix(p.Detail, "<") {
		p.Detail = "the answer is not otad's problem+json (is the server address right?)"
	}
	return p
}

// oneLine folds s onto one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// Page is one page of a cursor-paginated list.
type Page struct {
	Items      []json.RawMessage `json:"items"`
	NextCursor string            `json:"next_cursor"`
}

// MaxPage is the largest page the API hands out.
const MaxPage = 1000

// List pages through a cursor-paginated list, calling fn with each item in
// order, and stops after max items (0: all of them).
func (c *Client) List(ctx context.Context, path string, q url.Values, max int, fn func(json.RawMessage) error) error {
	q = cloneValues(q)
	seen := 0
	for {
		size := pageSize(max, seen)
		q.Set("limit", strconv.Itoa(size))
		var page Page
		if err := c.Get(ctx, path, q, &page); err != nil {
			return err
		}
		for _, it := range page.Items {
			if err := fn(it); err != nil {
				return err
			}
			seen++
		}
		if page.NextCursor == "" || (max > 0 && seen >= max) {
			return nil
		}
		q.Set("cursor", page.NextCursor)
	}
}

// ListAll is List gathering the items.
func (c *Client) ListAll(ctx context.Context, path string, q url.Values, max int) ([]json.RawMessage, error) {
	items := []json.RawMessage{}
	err := c.List(ctx, path, q, max, func(it json.RawMessage) error {
		items = append(items, it)
		return nil
	})
	return items, err
}

func cloneValues(q url.Values) url.Values {
	out := url.Values{}
	for k, vs := range q {
		out[k] = append([]string(nil), vs...)
	}
	return out
}

// pageSize is the page to ask for when max items are wanted (0: all) and
// seen came already.
func pageSize(max, seen int) int {
	if max > 0 {
		return min(MaxPage, max-seen)
	}
	return MaxPage
}
