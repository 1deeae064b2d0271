package api

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/otad/otad/internal/ota"
)

type deviceCreateRequest struct {
	Name    string `json:"name"`
	Version string `json:"version"`
}

// deviceCreated is the one answer that shows a device's secret.
type deviceCreated struct {
	*ota.Device
	Secret string `json:"secret"`
}

// deviceDetail is a device with its most recent history.
type deviceDetail struct {
	*ota.Device
	Events []*ota.DeviceEvent `json:"events"`
}

// deviceHistoryInDetail is how many events GET …/devices/{name} includes.
const deviceHistoryInDetail = 20

func (s *Server) deviceCreate(w http.ResponseWriter, r *http.Request) error {
	var req deviceCreateRequest
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	p, err := s.product(r)
	if err != nil {
		return err
	}
	d := &ota.Device{ProductID: p.ID, Name: req.Name, Version: req.Version, Secret: ota.NewDeviceSecret()}
	if err := d.Validate(); err != nil {
		return err
	}
	secret := d.Secret
	d.Secret = s.secrets.Seal(d.ProductID, d.Name, secret)
	if err := s.store.DeviceCreate(r.Context(), d); err != nil {
		return err
	}
	w.Header().Set("Location", "/v1/products/"+p.ID+"/devices/"+d.Name)
	w.Header().Set("Cache-Control", "no-store")
	return writeJSON(w, http.StatusCreated, deviceCreated{Device: d, Secret: secret})
}

type deviceBatchRequest struct {
	Devices []deviceCreateRequest `json:"devices"`
}

// deviceBatch registers up to ota.MaxDeviceBatch devices in one
// transaction, all or none, and streams them back with their secrets: JSON
// ({"items":[…]}, each item as deviceCreate answers) or, when the client
// accepts text/csv, the product_id,device_name,secret lines device SDKs'
// provisioning tools (and otasim) read.
func (s *Server) deviceBatch(w http.ResponseWriter, r *http.Request) error {
	var req deviceBatchRequest
	if err := decodeJSONLimit(w, r, &req, maxBatchBody); err != nil {
		return err
	}
	p, err := s.product(r)
	if err != nil {
		return err
	}
	if len(req.Devices) == 0 || len(req.Devices) > ota.MaxDeviceBatch {
		return ota.Errorf(ota.EINVALID, "devices: 1 to %d per batch", ota.MaxDeviceBatch)
	}
	ds, secrets := make([]*ota.Device, len(req.Devices)), make([]string, len(req.Devices))
	seen := make(map[string]bool, len(req.Devices))
	for i, e := range req.Devices {
		d := &ota.Device{ProductID: p.ID, Name: e.Name, Version: e.Version, Secret: ota.NewDeviceSecret()}
		if err := d.Validate(); err != nil {
			return ota.Errorf(ota.EINVALID, "devices[%d]: %s", i, ota.ErrorMessage(err))
		}
		if seen[d.Name] {
			return ota.Errorf(ota.EINVALID, "devices[%d]: %q is named twice", i, d.Name)
		}
		seen[d.Name] = true
		secrets[i] = d.Secret
		d.Secret = s.secrets.Seal(d.ProductID, d.Name, d.Secret)
		ds[i] = d
	}
	if err := s.store.DeviceCreate(r.Context(), ds...); err != nil {
		return err
	}
	w.Header().Set("Cache-Control", "no-store")
	if accepts(r, "text/csv") {
		w.Header().Set("Content-Type", "text/csv; charset=utf-8")
		w.WriteHeader(http.StatusCreated)
		bw := bufio.NewWriterSize(w, 64<<10)
		bw.WriteString("product_id,device_name,secret\n")
		for i, d := range ds {
			// Names, IDs and base64 secrets need no CSV quoting.
			fmt.Fprintf(bw, "%s,%s,%s\n", d.ProductID, d.Name, secrets[i])
		}
		return bw.Flush()
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	bw := bufio.NewWriterSize(w, 64<<10)
	enc := json.NewEncoder(bw)
	bw.WriteString(`{"items":[`)
	for i, d := range ds {
		if i > 0 {
			bw.WriteByte(',')
		}
		if err := enc.Encode(deviceCreated{Device: d, Secret: secrets[i]}); err != nil {
			return err
		}
	}
	bw.WriteString("]}\n")
	return bw.Flush()
}

// accepts reports whether the request's Accept header names mediaType.
func accepts(r *http.Request, mediaType string) bool {
	for _, part := range strings.Split(r.Header.Get("Accept"), ",") {
		mt, _, _ := strings.Cut(strings.TrimSpace(part), ";")
		if strings.EqualFold(strings.TrimSpace(mt), mediaType) {
			return true
		}
	}
	return false
}

func (s *Server) deviceList(w http.ResponseWriter, r *http.Request) error {
	p, err := s.product(r)
	if err != nil {
		return err
	}
	after, limit, err := pageParams(r)
	if err != nil {
		return err
	}
	params := ota.DeviceListParams{ProductID: p.ID, After: after, Limit: limit, Version: r.URL.Query().Get("version")}
	if params.Version != "" {
		if err := ota.ValidateVersion(params.Version); err != nil {
			return err
		}
	}
	if params.Online, err = boolParam(r, "online"); err != nil {
		return err
	}
	ds, err := s.store.DeviceList(r.Context(), params)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, newPage(ds, limit, func(d *ota.Device) string { return d.Name }))
}

// device loads the device named in the path.
func (s *Server) device(r *http.Request) (*ota.Device, error) {
	pid, name := chi.URLParam(r, "pid"), chi.URLParam(r, "name")
	if err := ota.ValidateProductID(pid); err != nil {
		return nil, err
	}
	if err := ota.ValidateDeviceName(name); err != nil {
		return nil, err
	}
	return s.store.DeviceGet(r.Context(), pid, name)
}

func (s *Server) deviceGet(w http.ResponseWriter, r *http.Request) error {
	d, err := s.device(r)
	if err != nil {
		return err
	}
	evs, err := s.store.DeviceEventList(r.Context(), ota.DeviceEventListParams{ProductID: d.ProductID, DeviceName: d.Name, Limit: deviceHistoryInDetail})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, deviceDetail{Device: d, Events: evs})
}

type deviceUpdateRequest struct {
	Disabled *bool `json:"disabled"`
}

// deviceUpdate enables or disables a device. Disabling closes its MQTT
// session at once.
func (s *Server) deviceUpdate(w http.ResponseWriter, r *http.Request) error {
	var req deviceUpdateRequest
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	d, err := s.device(r)
	if err != nil {
		return err
	}
	if req.Disabled != nil {
		if err := s.jobs.SetDeviceDisabled(r.Context(), d.ProductID, d.Name, *req.Disabled); err != nil {
			return err
		}
		d.Disabled = *req.Disabled
	}
	return writeJSON(w, http.StatusOK, d)
}

func (s *Server) deviceDelete(w http.ResponseWriter, r *http.Request) error {
	d, err := s.device(r)
	if err != nil {
		return err
	}
	if err := s.jobs.DeleteDevice(r.Context(), d.ProductID, d.Name); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) deviceEvents(w http.ResponseWriter, r *http.Request) error {
	d, err := s.device(r)
	if err != nil {
		return err
	}
	after, limit, err := pageParams(r)
	if err != nil {
		return err
	}
	// Event cursors are event IDs: history pages go from newest to oldest.
	before, err := numberCursor(after)
	if err != nil {
		return err
	}
	evs, err := s.store.DeviceEventList(r.Context(), ota.DeviceEventListParams{ProductID: d.ProductID, DeviceName: d.Name, Before: before, Limit: limit})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, newPage(evs, limit, func(e *ota.DeviceEvent) string { return strconv.FormatInt(e.ID, 10) }))
}
