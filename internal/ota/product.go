package ota

import "time"

// Product is a family of devices sharing firmware.
type Product struct {
	ID          string    `json:"id"`
	Name        string    `json:"name"`
	Description string    `json:"description"`
	CreatedAt   time.Time `json:"created_at"`
}

// Validate checks a product before it is stored.
func (p *Product) Validate() error {
	if err := ValidateProductID(p.ID); err != nil {
		return err
	}
	if p.Name == "" {
		return Errorf(EINVALID, "name is required")
	}
	if err := ValidateText("name", p.Name, 128); err != nil {
		return err
	}
	return ValidateText("description", p.Description, 1024)
}

// ProductListParams selects a page of products, ordered by ID.
type ProductListParams struct {
	After string // return products whose ID sorts after this one
	Limit int
}
