package api

import (
	"net/http"

	"github.com/go-chi/chi/v5"

	"github.com/otad/otad/internal/ota"
)

type productCreateRequest struct {
	ID          string `json:"id"`
	Name        string `json:"name"`
	Description string `json:"description"`
}

func (s *Server) productCreate(w http.ResponseWriter, r *http.Request) error {
	var req productCreateRequest
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	p := &ota.Product{ID: req.ID, Name: req.Name, Description: req.Description}
	if p.ID == "" {
		p.ID = ota.NewProductID()
	}
	if err := p.Validate(); err != nil {
		return err
	}
	if err := s.store.ProductCreate(r.Context(), p); err != nil {
		return err
	}
	w.Header().Set("Location", "/v1/products/"+p.ID)
	return writeJSON(w, http.StatusCreated, p)
}

func (s *Server) productList(w http.ResponseWriter, r *http.Request) error {
	after, limit, err := pageParams(r)
	if err != nil {
		return err
	}
	ps, err := s.store.ProductList(r.Context(), ota.ProductListParams{After: after, Limit: limit})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, newPage(ps, limit, func(p *ota.Product) string { return p.ID }))
}

func (s *Server) productGet(w http.ResponseWriter, r *http.Request) error {
	p, err := s.product(r)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, p)
}

// product loads the product named in the path, validating the ID first so
// that malformed IDs never reach the database.
func (s *Server) product(r *http.Request) (*ota.Product, error) {
	pid := chi.URLParam(r, "pid")
	if err := ota.ValidateProductID(pid); err != nil {
		return nil, err
	}
	return s.store.ProductGet(r.Context(), pid)
}
