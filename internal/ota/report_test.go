package ota

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func intp(n int) *int { return &n }

func TestParseReport(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	type want struct {
		typ, version, state string
		percent, code       *int
		msg                 string
	}
	tests := []struct {
		name    string
		payload string
		want    want
		errCode string
	}{
		{"report_version", `{"type": "report_version", "report": {"version": "1.0.0"}}`,
			want{typ: EventReportVersion, version: "1.0.0"}, ""},
		{"downloading strings", `{"type": "report_progress", "report": {"progress": {"state": "downloading", "percent": "49", "result_code": "0", "result_msg": ""}, "version": "1.0.1"}}`,
			want{typ: EventReportProgress, version: "1.0.1", state: "downloading", percent: intp(49), code: intp(0)}, ""},
		{"downloading numbers", `{"type":"report_progress","report":{"progress":{"state":"downloading","percent":100,"result_code":0,"result_msg":""},"version":"1.0.1"}}`,
			want{typ: EventReportProgress, version: "1.0.1", state: "downloading", percent: intp(100), code: intp(0)}, ""},
		{"percent float whole", `{"type":"report_progress","report":{"progress":{"state":"downloading","percent":"49.0"},"version":"1.0.1"}}`,
			want{typ: EventReportProgress, version: "1.0.1", state: "downloading", percent: intp(49)}, ""},
		{"burning no percent", `{"type": "report_progress", "report": {"progress": {"state": "burning", "result_code": "0", "result_msg": ""}, "version": "1.0.1"}}`,
			want{typ: EventReportProgress, version: "1.0.1", state: "burning", code: intp(0)}, ""},
		{"done", `{"type": "report_progress", "report": {"progress": {"state": "done", "result_code": "0", "result_msg": ""}, "version": "1.0.1"}}`,
			want{typ: EventReportProgress, version: "1.0.1", state: "done", code: intp(0)}, ""},
		{"fail", `{"type": "report_progress", "report": {"progress": {"state": "fail", "result_code": "-4", "result_msg": "time_out"}, "version": "1.0.1"}}`,
			want{typ: EventReportProgress, version: "1.0.1", state: "fail", code: intp(-4), msg: "time_out"}, ""},
		{"fail numeric code", `{"type": "report_progress", "report": {"progress": {"state": "fail", "result_code": -2, "result_msg": "404"}, "version": "1.0.1"}}`,
			want{typ: EventReportProgress, version: "1.0.1", state: "fail", code: intp(-2), msg: "404"}, ""},
		{"progress as JSON string", `{"type":"report_progress","report":{"progress":"{\"state\":\"downloading\",\"percent\":\"10\",\"result_code\":\"0\",\"result_msg\":\"\"}","version":"1.0.1"}}`,
			want{typ: EventReportProgress, version: "1.0.1", state: "downloading", percent: intp(10), code: intp(0)}, ""},
		{"empty percent string", `{"type":"report_progress","report":{"progress":{"state":"done","percent":"","result_code":""},"version":"1.0.1"}}`,
			want{typ: EventReportProgress, version: "1.0.1", state: "done"}, ""},
		{"numeric result_msg", `{"type":"report_progress","report":{"progress":{"state":"fail","result_code":"-5","result_msg":42},"version":"1.0.1"}}`,
			want{typ: EventReportProgress, version: "1.0.1", state: "fail", code: intp(-5), msg: "42"}, ""},
		{"control chars stripped", `{"type":"report_progress","report":{"progress":{"state":"fail","result_code":"-5","result_msg":"a\u0000b\nc"},"version":"1.0.1"}}`,
			want{typ: EventReportProgress, version: "1.0.1", state: "fail", code: intp(-5), msg: "abc"}, ""},
		{"html kept", `{"type":"report_progress","report":{"progress":{"state":"fail","result_code":"-5","result_msg":"a&b<c>"},"version":"1.0.1"}}`,
			want{typ: EventReportProgress, version: "1.0.1", state: "fail", code: intp(-5), msg: "a&b<c>"}, ""},
		{"escapes decoded", `{"type":"report_progress","report":{"progress":{"state":"fail","result_code":"-5","result_msg":"say \"hi\"\u0021"},"version":"1.0\u002e1"}}`,
			want{typ: EventReportProgress, version: "1.0.1", state: "fail", code: intp(-5), msg: `say "hi"!`}, ""},
		{"extra fields ignored", `{"type":"report_version","report":{"version":"2.0","module":"mcu"},"id":7}`,
			want{typ: EventReportVersion, version: "2.0"}, ""},

		{"keys any case, last one wins", `{"Type":"report_version","report":{"version":"1.0","VERSION":"1.1"}}`,
			want{typ: EventReportVersion, version: "1.1"}, ""},

		{"not json", `hello`, want{}, EINVALID},
		{"number with plus", `{"type":"report_progress","report":{"progress":{"state":"downloading","percent":+5},"version":"1.0"}}`, want{}, EINVALID},
		{"number NaN", `{"type":"report_progress","report":{"progress":{"state":"downloading","percent":NaN},"version":"1.0"}}`, want{}, EINVALID},
		{"number leading zero", `{"type":"report_progress","report":{"progress":{"state":"downloading","percent":05},"version":"1.0"}}`, want{}, EINVALID},
		{"raw control char in string", "{\"type\":\"report_version\",\"report\":{\"version\":\"1.0\x01\"}}", want{}, EINVALID},
		{"trailing garbage", `{"type":"report_version","report":{"version":"1.0"}} x`, want{}, EINVALID},
		{"progress string of invalid JSON", `{"type":"report_progress","report":{"progress":"{\"state\":downloading}","version":"1.0"}}`, want{}, EINVALID},
		{"binary", "\x00\xff\xfe\x01", want{}, EINVALID},
		{"json array", `[1,2]`, want{}, EINVALID},
		{"truncated json", `{"type":"report_version","report":{"version":"1.0"`, want{}, EINVALID},
		{"no type", `{"report":{"version":"1.0"}}`, want{}, EINVALID},
		{"unknown type", `{"type":"report_bogus","report":{"version":"1.0"}}`, want{}, EINVALID},
		{"type not string", `{"type":5,"report":{"version":"1.0"}}`, want{}, EINVALID},
		{"no report", `{"type":"report_version"}`, want{}, EINVALID},
		{"no version", `{"type":"report_version","report":{}}`, want{}, EINVALID},
		{"version with space", `{"type":"report_version","report":{"version":"1 0"}}`, want{}, EINVALID},
		{"version too long", `{"type":"report_version","report":{"version":"` + strings.Repeat("1", 33) + `"}}`, want{}, EINVALID},
		{"version number", `{"type":"report_version","report":{"version":1}}`, want{}, EINVALID},
		{"progress missing", `{"type":"report_progress","report":{"version":"1.0"}}`, want{}, EINVALID},
		{"progress no state", `{"type":"report_progress","report":{"progress":{"percent":"1"},"version":"1.0"}}`, want{}, EINVALID},
		{"unknown state", `{"type":"report_progress","report":{"progress":{"state":"flying"},"version":"1.0"}}`, want{}, EINVALID},
		{"percent over 100", `{"type":"report_progress","report":{"progress":{"state":"downloading","percent":"101"},"version":"1.0"}}`, want{}, EINVALID},
		{"percent negative", `{"type":"report_progress","report":{"progress":{"state":"downloading","percent":-1},"version":"1.0"}}`, want{}, EINVALID},
		{"percent text", `{"type":"report_progress","report":{"progress":{"state":"downloading","percent":"half"},"version":"1.0"}}`, want{}, EINVALID},
		{"percent fraction", `{"type":"report_progress","report":{"progress":{"state":"downloading","percent":49.5},"version":"1.0"}}`, want{}, EINVALID},
		{"percent bool", `{"type":"report_progress","report":{"progress":{"state":"downloading","percent":true},"version":"1.0"}}`, want{}, EINVALID},
		{"result code huge", `{"type":"report_progress","report":{"progress":{"state":"fail","result_code":"99999999999"},"version":"1.0"}}`, want{}, EINVALID},
		{"progress string not json", `{"type":"report_progress","report":{"progress":"downloading","version":"1.0"}}`, want{}, EINVALID},
		{"progress version missing", `{"type":"report_progress","report":{"progress":{"state":"done"}}}`, want{}, EINVALID},
		{"too large", `{"type":"report_version","report":{"version":"1.0"},"pad":"` + strings.Repeat("x", MaxReportSize) + `"}`, want{}, ETOOLARGE},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := ParseReport("ABCDEFGHIJ", "dev1", []byte(tt.payload), at)
			if tt.errCode != "" {
				if ErrorCode(err) != tt.errCode {
					t.Fatalf("error = %v, want code %s", err, tt.errCode)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if r.ProductID != "ABCDEFGHIJ" || r.DeviceName != "dev1" || !r.At.Equal(at) {
				t.Errorf("identity/time = %q %q %v", r.ProductID, r.DeviceName, r.At)
			}
			if r.Type != tt.want.typ || r.Version != tt.want.version || r.State != tt.want.state || r.ResultMsg != tt.want.msg {
				t.Errorf("got type=%q version=%q state=%q msg=%q, want %+v", r.Type, r.Version, r.State, r.ResultMsg, tt.want)
			}
			if !eqIntp(r.Percent, tt.want.percent) {
				t.Errorf("percent = %v, want %v", deref(r.Percent), deref(tt.want.percent))
			}
			if !eqIntp(r.ResultCode, tt.want.code) {
				t.Errorf("result_code = %v, want %v", deref(r.ResultCode), deref(tt.want.code))
			}
		})
	}
}

func TestParseReportResultMsgTruncated(t *testing.T) {
	msg := strings.Repeat("é", MaxResultMsgLen) // 2 bytes each
	p := `{"type":"report_progress","report":{"progress":{"state":"fail","result_code":"-5","result_msg":"` + msg + `"},"version":"1.0"}}`
	r, err := ParseReport("ABCDEFGHIJ", "d", []byte(p), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(r.ResultMsg) > MaxResultMsgLen || len(r.ResultMsg) < MaxResultMsgLen-1 || strings.ContainsRune(r.ResultMsg, '\uFFFD') {
		t.Fatalf("result_msg len %d: %q", len(r.ResultMsg), r.ResultMsg)
	}
}

func eqIntp(a, b *int) bool { return a == nil && b == nil || a != nil && b != nil && *a == *b }

func deref(p *int) any {
	if p == nil {
		return nil
	}
	return *p
}

func TestEncodeDownlink(t *testing.T) {
	topic := UpdateTopic("ABCDEFGHIJ", "dev1")
	good := UpdateFirmware{Version: "1.0.1", URL: "http://fw.example.com/AbC123?sig=a&exp=1", MD5: "CC03E747A6AFBBCBF8BE7668ACFEBEE5", FileSize: 31242}
	tests := []struct {
		name    string
		msg     any
		want    string
		errCode string
	}{
		{"report_version_rsp", NewReportVersionRsp("1.0.0"),
			`{"type":"report_version_rsp","version":"1.0.0","result_code":0,"result_msg":"success"}`, ""},
		{"report_version_rsp pointer, type forced", &ReportVersionRsp{Type: "x", Version: "1.0.0", ResultMsg: "success"},
			`{"type":"report_version_rsp","version":"1.0.0","result_code":0,"result_msg":"success"}`, ""},
		{"update_firmware: no escaping, lowercase md5, numeric size", good,
			`{"type":"update_firmware","version":"1.0.1","url":"http://fw.example.com/AbC123?sig=a&exp=1","md5sum":"cc03e747a6afbbcbf8be7668acfebee5","file_size":31242}`, ""},
		{"update_firmware with extras", &UpdateFirmware{Version: "1.0.1", URL: "https://fw.example.com/T", MD5: good.MD5, FileSize: 1, SHA256: strings.Repeat("AB", 32), JobID: "job-1"},
			`{"type":"update_firmware","version":"1.0.1","url":"https://fw.example.com/T","md5sum":"cc03e747a6afbbcbf8be7668acfebee5","file_size":1,"sha256sum":"` + strings.Repeat("ab", 32) + `","job_id":"job-1"}`, ""},
		{"rsp nonzero code", ReportVersionRsp{Version: "1.0", ResultCode: 1}, "", EINVALID},
		{"rsp bad version", ReportVersionRsp{Version: ""}, "", EINVALID},
		{"unknown type", map[string]string{"type": "x"}, "", EINVALID},
		{"bad md5", with(good, func(m *UpdateFirmware) { m.MD5 = "xyz" }), "", EINVALID},
		{"zero size", with(good, func(m *UpdateFirmware) { m.FileSize = 0 }), "", EINVALID},
		{"bad sha", with(good, func(m *UpdateFirmware) { m.SHA256 = "00" }), "", EINVALID},
		{"ftp url", with(good, func(m *UpdateFirmware) { m.URL = "ftp://x/y" }), "", EINVALID},
		{"relative url", with(good, func(m *UpdateFirmware) { m.URL = "/y" }), "", EINVALID},
		{"two path segments", with(good, func(m *UpdateFirmware) { m.URL = "http://x/a/b" }), "", EINVALID},
		{"no path", with(good, func(m *UpdateFirmware) { m.URL = "http://x" }), "", EINVALID},
		{"long host", with(good, func(m *UpdateFirmware) { m.URL = "http://" + strings.Repeat("h", 65) + "/t" }), "", EINVALID},
		{"bad job id", with(good, func(m *UpdateFirmware) { m.JobID = "a b" }), "", EINVALID},
		{"too large", with(good, func(m *UpdateFirmware) { m.URL = "http://x/" + strings.Repeat("t", 2000) }), "", ETOOLARGE},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := EncodeDownlink(topic, tt.msg)
			if tt.errCode != "" {
				if ErrorCode(err) != tt.errCode {
					t.Fatalf("error = %v, want code %s", err, tt.errCode)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != tt.want {
				t.Fatalf("got  %s\nwant %s", b, tt.want)
			}
			if len(topic)+len(b) > MaxDownlinkSize || !json.Valid(b) {
				t.Fatalf("bad encoding %s", b)
			}
		})
	}
	// The caller's message is not modified.
	if good.MD5 != "CC03E747A6AFBBCBF8BE7668ACFEBEE5" || good.Type != "" {
		t.Fatalf("caller's message modified: %+v", good)
	}
}

func TestEncodeDownlinkExactLimit(t *testing.T) {
	topic := UpdateTopic("ABCDEFGHIJ", "dev1")
	base := UpdateFirmware{Version: "1.0.1", URL: "http://x/", MD5: strings.Repeat("a", 32), FileSize: 1}
	b, err := EncodeDownlink(topic, base)
	if ErrorCode(err) != EINVALID { // empty segment
		t.Fatalf("empty path: %v %s", err, b)
	}
	base.URL = "http://x/t"
	b, err = EncodeDownlink(topic, base)
	if err != nil {
		t.Fatal(err)
	}
	pad := MaxDownlinkSize - len(topic) - len(b)
	base.URL += strings.Repeat("t", pad)
	if b, err = EncodeDownlink(topic, base); err != nil || len(topic)+len(b) != MaxDownlinkSize {
		t.Fatalf("at the limit: %v, %d bytes", err, len(topic)+len(b))
	}
	base.URL += "t"
	if _, err = EncodeDownlink(topic, base); ErrorCode(err) != ETOOLARGE {
		t.Fatalf("one over the limit: %v", err)
	}
}

func with(m UpdateFirmware, f func(*UpdateFirmware)) UpdateFirmware {
	f(&m)
	return m
}

func TestTopics(t *testing.T) {
	if got := ReportTopic("ABCDEFGHIJ", "d-1"); got != "$ota/report/ABCDEFGHIJ/d-1" {
		t.Fatal(got)
	}
	if got := UpdateTopic("ABCDEFGHIJ", "d-1"); got != "$ota/update/ABCDEFGHIJ/d-1" {
		t.Fatal(got)
	}
}

func BenchmarkParseReport(b *testing.B) {
	p := []byte(`{"type": "report_progress", "report": {"progress": {"state": "downloading", "percent": "49", "result_code": "0", "result_msg": ""}, "version": "1.0.1"}}`)
	at := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseReport("ABCDEFGHIJ", "dev1", p, at); err != nil {
			b.Fatal(err)
		}
	}
}
