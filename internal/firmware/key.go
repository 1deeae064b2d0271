// Package firmware stores firmware images: the ota.Blobs implementations
// for an S3-compatible bucket (S3) and for a local directory (Local).
package firmware

import (
	"strings"

	"github.com/otad/otad/internal/ota"
)

const (
	// KeyMaxLen is the longest blob key either backend accepts.
	KeyMaxLen = 512
	// keySegmentMaxLen keeps every segment a valid file name everywhere.
	keySegmentMaxLen = 200
)

// ValidateKey checks a blob key: slash-separated segments of printable ASCII
// without backslashes, none empty or starting with a dot (which rules out
// "." and ".." and keeps keys clear of Local's temporary files), at most
// KeyMaxLen bytes in all. Keys come from ota.NewBlobKey, never from a
// client, so this is a last line of defence: anything else is EINVALID and
// never reaches the file system or the bucket.
func ValidateKey(key string) error {
	if key == "" || len(key) > KeyMaxLen {
		return ota.Errorf(ota.EINVALID, "blob key must be 1 to %d bytes", KeyMaxLen)
	}
	for i := 0; i < len(key); i++ {
		if c := key[i]; c <= ' ' || c > '~' || c == '\\' {
			return ota.Errorf(ota.EINVALID, "blob key must be printable ASCII without spaces or backslashes")
		}
	}
	for seg := range strings.SplitSeq(key, "/") {
		if seg == "" || seg[0] == '.' || len(seg) > keySegmentMaxLen {
			return ota.Errorf(ota.EINVALID, "blob key segments must be 1 to %d bytes and not start with a dot", keySegmentMaxLen)
		}
	}
	return nil
}
