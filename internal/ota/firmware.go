package ota

import "time"

// Firmware is one uploaded image of a product, identified by its version.
type Firmware struct {
	ProductID   string    `json:"product_id"`
	Version     string    `json:"version"`
	Size        int64     `json:"size"`
	MD5         string    `json:"md5"`    // 32 lowercase hex characters
	SHA256      string    `json:"sha256"` // 64 lowercase hex characters
	Description string    `json:"description"`
	BlobKey     string    `json:"-"` // where the bytes are in the Blobs backend
	CreatedAt   time.Time `json:"created_at"`
}

// FirmwareListParams selects a page of a product's firmware, ordered by version.
type FirmwareListParams struct {
	ProductID string
	After     string
	Limit     int
}
