package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"time"
)

// provision creates devices through otad's console API and writes their
// credentials as the CSV the simulator reads:
//
//	otasim provision -api http://127.0.0.1:8080 -token $TOKEN -product SIM0000001 -n 100 -out devices.csv
//
// The product is created when it does not exist yet.
func provision(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("otasim provision", flag.ContinueOnError)
	api := fs.String("api", "http://127.0.0.1:8080", "otad's console API")
	token := fs.String("token", os.Getenv("OTAD_API_TOKEN"), "console API token (default $OTAD_API_TOKEN)")
	product := fs.String("product", "", "product ID, 10 characters [A-Z0-9] (required)")
	n := fs.Int("n", 100, "number of devices")
	prefix := fs.String("prefix", "sim-", "device names are PREFIX plus a five-digit index")
	version := fs.String("version", "1.0.0", "the devices' initial version")
	out := fs.String("out", "devices.csv", "CSV file to write")
	allowRemote := fs.Bool("allow-remote", false, "allow an API address that is not loopback")
	if err := fs.Parse(args); err != nil {
		return err
	}
	u, err := url.Parse(*api)
	if err != nil || u.Host == "" {
		return fmt.Errorf("-api %q is not a URL", *api)
	}
	if !*allowRemote && !isLoopback(u.Hostname()) {
		return fmt.Errorf("-api %s is not a loopback address (use -allow-remote)", *api)
	}
	switch {
	case *token == "":
		return errors.New("-token (or OTAD_API_TOKEN) is required")
	case *product == "":
		return errors.New("-product is required")
	case *n < 1 || *n > maxDevices:
		return fmt.Errorf("-n must be 1 to %d", maxDevices)
	}
	c := &apiClient{base: *api, token: *token, http: &http.Client{Timeout: 2 * time.Minute}}

	status, body, err := c.call(ctx, "GET", "/v1/products/"+*product, nil)
	if err != nil {
		return err
	}
	if status == http.StatusNotFound {
		status, body, err = c.call(ctx, "POST", "/v1/products", map[string]string{"id": *product, "name": "simulated " + *product})
		if err != nil {
			return err
		}
		if status != http.StatusCreated {
			return fmt.Errorf("create product %s: %d %s", *product, status, body)
		}
	} else if status != http.StatusOK {
		return fmt.Errorf("get product %s: %d %s", *product, status, body)
	}

	// One batch: the devices are registered all or none.
	start := time.Now()
	batch := make([]map[string]string, *n)
	for i := range batch {
		batch[i] = map[string]string{"name": fmt.Sprintf("%s%05d", *prefix, i), "version": *version}
	}
	status, body, err = c.call(ctx, "POST", "/v1/products/"+*product+"/device-batches", map[string]any{"devices": batch})
	if err != nil {
		return err
	}
	if status != http.StatusCreated {
		return fmt.Errorf("create devices: %d %s", status, body)
	}
	var created struct {
		Items []struct{ Name, Secret string }
	}
	if err := json.Unmarshal(body, &created); err != nil {
		return fmt.Errorf("create devices: %w", err)
	}
	rows := make([][]string, len(created.Items))
	for i, d := range created.Items {
		rows[i] = []string{*product, d.Name, d.Secret}
	}

	var buf bytes.Buffer
	w := csv.NewWriter(&buf)
	w.Write([]string{"product_id", "device_name", "secret"})
	w.WriteAll(rows)
	if err := os.WriteFile(*out, buf.Bytes(), 0o600); err != nil {
		return err
	}
	return json.NewEncoder(stdout).Encode(map[string]any{
		"phase": "provisioned", "product": *product, "devices": *n, "file": *out, "seconds": round(time.Since(start).Seconds()),
	})
}

// apiClient calls otad's console API.
type apiClient struct {
	base, token string
	http        *http.Client
}

func (c *apiClient) call(ctx context.Context, method, path string, body any) (int, []byte, error) {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, nil, err
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, r)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	// A batch's answer carries every device's secret: about 150 bytes each.
	b, err := io.ReadAll(io.LimitReader(resp.Body, int64(maxDevices)*256+1<<20))
	return resp.StatusCode, b, err
}
