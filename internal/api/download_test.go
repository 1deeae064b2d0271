package api

import "testing"

func TestParseRange(t *testing.T) {
	const size = 1000
	tests := []struct {
		header     string
		start, end int64
		partial    bool
		err        error
	}{
		{"", 0, size, false, nil},
		{"bytes=0-", 0, size, true, nil},
		{"bytes=0-0", 0, 1, true, nil},
		{"bytes=0-999", 0, size, true, nil},
		{"bytes=0-1000", 0, size, true, nil}, // end = size: what a device SDK sends
		{"bytes=500-1000", 500, size, true, nil},
		{"bytes=500-99999999", 500, size, true, nil},
		{"bytes=999-", 999, size, true, nil},
		{"bytes=999-1000", 999, size, true, nil},
		{"bytes=100-199", 100, 200, true, nil},
		{"bytes=-1", 999, size, true, nil},
		{"bytes=-1000", 0, size, true, nil},
		{"bytes=-5000", 0, size, true, nil},
		{"Bytes=10-19", 10, 20, true, nil},
		{"bytes= 10-19 ", 10, 20, true, nil},
		{"bytes=1000-", 0, 0, false, errRangeUnsatisfiable},
		{"bytes=1000-1000", 0, 0, false, errRangeUnsatisfiable},
		{"bytes=5000-6000", 0, 0, false, errRangeUnsatisfiable},
		{"bytes=-0", 0, 0, false, errRangeUnsatisfiable},
		{"bytes=20-10", 0, 0, false, errRangeSyntax},
		{"bytes=", 0, 0, false, errRangeSyntax},
		{"bytes=-", 0, 0, false, errRangeSyntax},
		{"bytes=abc", 0, 0, false, errRangeSyntax},
		{"bytes=a-b", 0, 0, false, errRangeSyntax},
		{"bytes=+1-2", 0, 0, false, errRangeSyntax},
		{"bytes=-+2", 0, 0, false, errRangeSyntax},
		{"bytes=1 -2", 0, 0, false, errRangeSyntax},
		{"bytes=0x10-", 0, 0, false, errRangeSyntax},
		{"bytes=99999999999999999999-", 0, 0, false, errRangeSyntax},
		{"bytes=1-99999999999999999999", 0, 0, false, errRangeSyntax},
		{"bytes=0-1,5-6", 0, size, false, nil}, // several ranges: ignored, whole image
		{"items=0-5", 0, size, false, nil},     // another unit: ignored
		{"garbage", 0, size, false, nil},
	}
	for _, tt := range tests {
		start, end, partial, err := parseRange(tt.header, size)
		if start != tt.start || end != tt.end || partial != tt.partial || err != tt.err {
			t.Errorf("parseRange(%q) = %d, %d, %v, %v; want %d, %d, %v, %v",
				tt.header, start, end, partial, err, tt.start, tt.end, tt.partial, tt.err)
		}
	}
	if _, _, _, err := parseRange("bytes=0-", 0); err != errRangeUnsatisfiable {
		t.Errorf("a range of an empty image: %v, want unsatisfiable", err)
	}
	if _, _, _, err := parseRange("bytes=-5", 0); err != errRangeUnsatisfiable {
		t.Errorf("a suffix of an empty image: %v, want unsatisfiable", err)
	}
}
