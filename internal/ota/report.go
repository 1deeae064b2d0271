package ota

import (
	"bytes"
	"encoding/json"
	"math"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/valyala/fastjson"
)

// MaxReportSize is the largest report payload a device may publish. Real
// reports are a few hundred bytes; anything bigger is refused unread.
const MaxReportSize = 2048

// MaxDownlinkSize is the most that topic plus payload of a message to a
// device may take: the C SDK's receive buffer.
const MaxDownlinkSize = 2048

// MaxResultMsgLen caps the free-text result_msg of a progress report; longer
// text is cut at a character boundary.
const MaxResultMsgLen = 256

// Report topics: a device publishes on its report topic and subscribes to
// its update topic, and to nothing else.
const (
	ReportTopicPrefix = "$ota/report/"
	UpdateTopicPrefix = "$ota/update/"
)

// ReportTopic returns the topic a device publishes its reports on.
func ReportTopic(productID, deviceName string) string {
	return ReportTopicPrefix + productID + "/" + deviceName
}

// UpdateTopic returns the topic a device receives otad's messages on.
func UpdateTopic(productID, deviceName string) string {
	return UpdateTopicPrefix + productID + "/" + deviceName
}

// ParseReport decodes a payload a device published on its report topic.
// It accepts what the device SDKs really send (PROTOCOL.md): percent and
// result_code as strings or numbers, progress possibly as a JSON-encoded
// string, percent missing outside downloading. It fails with ETOOLARGE for
// a payload over MaxReportSize and EINVALID for anything else it cannot
// read: not JSON, an unknown type, a bad version or state.
//
// Every stored report is parsed here on the device's connection, so it
// uses fastjson's validator and parser (no reflection, parsers reused)
// rather than encoding/json, at about a fifth of the cost. Keys match as
// encoding/json matches struct fields: case-insensitively, the last one
// of a name winning.
func ParseReport(productID, deviceName string, payload []byte, at time.Time) (Report, error) {
	if len(payload) > MaxReportSize {
		return Report{}, Errorf(ETOOLARGE, "report is %d bytes, more than %d", len(payload), MaxReportSize)
	}
	if !utf8.Valid(payload) {
		return Report{}, Errorf(EINVALID, "report is not UTF-8 text")
	}
	if fastjson.ValidateBytes(payload) != nil {
		return Report{}, errShape()
	}
	jp := jsonParsers.Get()
	defer jsonParsers.Put(jp)
	env, err := jp.ParseBytes(payload)
	if err != nil || env.Type() != fastjson.TypeObject {
		return Report{}, errShape()
	}
	typ := field(env, "type")
	if isNull(typ) {
		return Report{}, Errorf(EINVALID, "report has no type")
	}
	if typ.Type() != fastjson.TypeString {
		return Report{}, errShape()
	}
	r := Report{ProductID: productID, DeviceName: deviceName, Type: string(typ.GetStringBytes()), At: at}
	if r.Type != EventReportVersion && r.Type != EventReportProgress {
		return Report{}, Errorf(EINVALID, "unknown report type %q", truncate(r.Type, 32))
	}
	rep := field(env, "report")
	if isNull(rep) {
		return Report{}, Errorf(EINVALID, "%s: report object is missing", r.Type)
	}
	if rep.Type() != fastjson.TypeObject {
		return Report{}, errShape()
	}
	v, ok := jsonString(field(rep, "version"))
	if !ok {
		return Report{}, Errorf(EINVALID, "%s: version is missing or not a string", r.Type)
	}
	if err := ValidateVersion(v); err != nil {
		return Report{}, Errorf(EINVALID, "%s: %s", r.Type, ErrorMessage(err))
	}
	r.Version = v
	if r.Type == EventReportProgress {
		if err := parseProgress(field(rep, "progress"), &r); err != nil {
			return Report{}, err
		}
	}
	return r, nil
}

func errShape() error { return Errorf(EINVALID, "report is not a JSON object of the protocol's shape") }

// jsonParsers are reused: a parser keeps its buffers between payloads.
var jsonParsers fastjson.ParserPool

// field returns an object's member named key, or nil.
func field(o *fastjson.Value, key string) *fastjson.Value {
	var v *fastjson.Value
	o.GetObject().Visit(func(k []byte, kv *fastjson.Value) {
		if strings.EqualFold(string(k), key) {
			v = kv
		}
	})
	return v
}

// jsonString returns a JSON string's text.
func jsonString(v *fastjson.Value) (string, bool) {
	if v == nil || v.Type() != fastjson.TypeString {
		return "", false
	}
	return string(v.GetStringBytes()), true
}

func parseProgress(v *fastjson.Value, r *Report) error {
	if isNull(v) {
		return Errorf(EINVALID, "report_progress: progress is missing")
	}
	notObject := func() error { return Errorf(EINVALID, "report_progress: progress is not an object") }
	// The public protocol page shows progress as a JSON-encoded string.
	if v.Type() == fastjson.TypeString {
		inner := v.GetStringBytes()
		if fastjson.ValidateBytes(inner) != nil {
			return notObject()
		}
		jp := jsonParsers.Get()
		defer jsonParsers.Put(jp)
		var err error
		if v, err = jp.ParseBytes(inner); err != nil {
			return notObject()
		}
	}
	if v.Type() != fastjson.TypeObject {
		return notObject()
	}
	state, ok := jsonString(field(v, "state"))
	if !ok {
		return Errorf(EINVALID, "report_progress: state is missing or not a string")
	}
	switch state {
	case ProgressDownloading, ProgressBurning, ProgressDone, ProgressFail:
		r.State = state
	default:
		return Errorf(EINVALID, "report_progress: unknown state %q", truncate(state, 32))
	}
	pct, ok, err := looseInt(field(v, "percent"))
	if err != nil {
		return Errorf(EINVALID, "report_progress: percent must be a whole number from 0 to 100")
	}
	if ok {
		if pct < 0 || pct > 100 {
			return Errorf(EINVALID, "report_progress: percent must be a whole number from 0 to 100")
		}
		r.Percent = &pct
	}
	code, ok, err := looseInt(field(v, "result_code"))
	if err != nil || ok && (code < math.MinInt32 || code > math.MaxInt32) {
		return Errorf(EINVALID, "report_progress: result_code must be a whole number")
	}
	if ok {
		r.ResultCode = &code
	}
	r.ResultMsg = looseText(field(v, "result_msg"))
	return nil
}

// looseInt reads a whole number sent as a JSON number or a string. A missing
// field, null or "" is not set (ok false).
func looseInt(v *fastjson.Value) (n int, ok bool, err error) {
	var s string
	switch {
	case isNull(v):
		return 0, false, nil
	case v.Type() == fastjson.TypeNumber:
		s = v.String() // the number as sent
	case v.Type() == fastjson.TypeString:
		if s = strings.TrimSpace(string(v.GetStringBytes())); s == "" {
			return 0, false, nil
		}
	default:
		return 0, false, strconv.ErrSyntax
	}
	if i, err := strconv.ParseInt(s, 10, 64); err == nil {
		if i < math.MinInt32 || i > math.MaxInt32 {
			return 0, false, strconv.ErrRange
		}
		return int(i), true, nil
	}
	// Some firmware prints percent as a float ("49.0"): accept whole values.
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f != math.Trunc(f) || math.IsInf(f, 0) || f < math.MinInt32 || f > math.MaxInt32 {
		return 0, false, strconv.ErrSyntax
	}
	return int(f), true, nil
}

// looseText reads free text sent as a string (or, leniently, a number),
// cut to MaxResultMsgLen bytes and cleared of control characters.
func looseText(v *fastjson.Value) string {
	var s string
	switch {
	case isNull(v):
		return ""
	case v.Type() == fastjson.TypeString:
		s = string(v.GetStringBytes())
	case v.Type() == fastjson.TypeNumber:
		s = v.String()
	default:
		return ""
	}
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == utf8.RuneError {
			return -1
		}
		return r
	}, s)
	return truncate(s, MaxResultMsgLen)
}

// truncate cuts s to at most n bytes without splitting a character.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

func isNull(v *fastjson.Value) bool {
	return v == nil || v.Type() == fastjson.TypeNull
}

// Downlink message types.
const (
	TypeReportVersionRsp = "report_version_rsp"
	TypeUpdateFirmware   = "update_firmware"
)

// ReportVersionRsp answers every report_version. ResultCode must be the
// number 0: the C SDK ignores all later updates after anything else.
type ReportVersionRsp struct {
	Type       string `json:"type"`
	Version    string `json:"version"`
	ResultCode int    `json:"result_code"`
	ResultMsg  string `json:"result_msg"`
}

// NewReportVersionRsp returns the answer to a report_version of version.
func NewReportVersionRsp(version string) ReportVersionRsp {
	return ReportVersionRsp{Type: TypeReportVersionRsp, Version: version, ResultCode: 0, ResultMsg: "success"}
}

// UpdateFirmware tells a device to download and install a firmware.
type UpdateFirmware struct {
	Type     string `json:"type"`
	Version  string `json:"version"`
	URL      string `json:"url"`
	MD5      string `json:"md5sum"`    // 32 lowercase hex characters
	FileSize int64  `json:"file_size"` // a JSON number, never a string
	// The SDKs ignore extra fields; these help newer firmware and tracing.
	SHA256 string `json:"sha256sum,omitempty"`
	JobID  string `json:"job_id,omitempty"`
}

// maxURLHost is the longest host part the device SDKs accept in a URL.
const maxURLHost = 64

// Validate checks the message against what device SDKs accept (see
// PROTOCOL.md) and normalises the checksums to lowercase.
func (m *UpdateFirmware) Validate() error {
	if err := ValidateVersion(m.Version); err != nil {
		return err
	}
	u, err := url.Parse(m.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.Fragment != "" {
		return Errorf(EINVALID, "update url must be an absolute http or https URL")
	}
	if len(u.Host) > maxURLHost {
		return Errorf(EINVALID, "update url host must be at most %d characters", maxURLHost)
	}
	// The Python SDK derives its Host header from everything between "://"
	// and the last "/": the path must be one segment.
	if p := u.EscapedPath(); len(p) < 2 || strings.Count(p, "/") != 1 {
		return Errorf(EINVALID, "update url path must be exactly one segment")
	}
	m.MD5 = strings.ToLower(m.MD5)
	if !isHex(m.MD5, 32) {
		return Errorf(EINVALID, "md5sum must be 32 hex characters")
	}
	if m.FileSize <= 0 {
		return Errorf(EINVALID, "file_size must be positive")
	}
	if m.SHA256 != "" {
		m.SHA256 = strings.ToLower(m.SHA256)
		if !isHex(m.SHA256, 64) {
			return Errorf(EINVALID, "sha256sum must be 64 hex characters")
		}
	}
	if len(m.JobID) > 64 || !printableASCII(m.JobID) {
		return Errorf(EINVALID, "job_id must be at most 64 printable characters")
	}
	return nil
}

func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// EncodeDownlink validates msg (a ReportVersionRsp or UpdateFirmware, as a
// value or a pointer) and encodes it as the device SDKs need: its type set,
// no escaping of characters that need none (the C SDK does not decode
// escapes), and topic plus payload at most MaxDownlinkSize bytes. It fails
// with EINVALID for an unknown or invalid message and ETOOLARGE when the
// message does not fit.
func EncodeDownlink(topic string, msg any) ([]byte, error) {
	var v any
	switch m := msg.(type) {
	case ReportVersionRsp:
		return EncodeDownlink(topic, &m)
	case *ReportVersionRsp:
		c := *m
		c.Type = TypeReportVersionRsp
		if err := ValidateVersion(c.Version); err != nil {
			return nil, err
		}
		if c.ResultCode != 0 {
			return nil, Errorf(EINVALID, "report_version_rsp result_code must be 0")
		}
		v = &c
	case UpdateFirmware:
		return EncodeDownlink(topic, &m)
	case *UpdateFirmware:
		c := *m
		c.Type = TypeUpdateFirmware
		if err := c.Validate(); err != nil {
			return nil, err
		}
		v = &c
	default:
		return nil, Errorf(EINVALID, "unknown downlink message %T", msg)
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, Errorf(EINVALID, "encode downlink message: %v", err)
	}
	b := bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
	if len(topic)+len(b) > MaxDownlinkSize {
		return nil, Errorf(ETOOLARGE, "message of %d bytes does not fit the %d bytes a device can receive", len(topic)+len(b), MaxDownlinkSize)
	}
	return b, nil
}
