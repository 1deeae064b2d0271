package ota

import (
	"context"
	"io"
)

// Blobs stores firmware images: an S3-compatible bucket in production, a
// local directory by default.
type Blobs interface {
	// Put stores the bytes of r under key and returns how many were written.
	// It either stores everything or leaves nothing behind: on any error
	// (r failing, ctx canceled, storage failing) no object remains.
	Put(ctx context.Context, key string, r io.Reader) (int64, error)
	// Open returns length bytes of key from offset; length < 0 reads to the
	// end. A missing key is ENOTFOUND.
	Open(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error)
	// Delete removes key. Deleting a missing key is not an error.
	Delete(ctx context.Context, key string) error
}

// Notifier delivers downlink messages to devices; the MQTT broker
// implements it.
type Notifier interface {
	// Publish sends msg, encoded as PROTOCOL.md demands, to the device's
	// update topic at QoS 1.
	Publish(ctx context.Context, productID, deviceName string, msg any) error
	// Disconnect closes the device's session, if it has one.
	Disconnect(productID, deviceName string)
}
