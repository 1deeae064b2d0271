package main

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/otad/otad/internal/firmware/firmwaretest"
	"github.com/otad/otad/internal/ota"
)

// s3Env makes a fresh bucket on the test S3 server and returns the
// settings that point otad at it. The credentials and region go where the
// AWS SDK's default chain finds them: the process environment.
func s3Env(t testing.TB) map[string]string {
	t.Helper()
	cfg := firmwaretest.S3Config(t, 0)
	t.Setenv("AWS_ACCESS_KEY_ID", cfg.AccessKeyID)
	t.Setenv("AWS_SECRET_ACCESS_KEY", cfg.SecretAccessKey)
	t.Setenv("AWS_REGION", cfg.Region)
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	return map[string]string{"OTAD_S3_BUCKET": cfg.Bucket, "OTAD_S3_ENDPOINT": cfg.Endpoint, "OTAD_S3_PATH_STYLE": "true"}
}

// downloadURL is the URL the engine would send a device for f.
func downloadURL(t testing.TB, a *app, f *ota.Firmware, expires time.Time) string {
	t.Helper()
	secret, err := a.store.SettingEnsure(context.Background(), "download_secret", "not used: the daemon set it")
	if err != nil {
		t.Fatal(err)
	}
	s, err := ota.NewDownloadSigner(a.publicURL, []byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	return s.URL(f, expires)
}

// postImage uploads body as version of product through the console API.
func postImage(t testing.TB, base, product, version string, body io.Reader, size int64) *ota.Firmware {
	t.Helper()
	req, err := http.NewRequest("POST", base+"/v1/products/"+product+"/firmware?version="+version, body)
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = size
	req.Header.Set("Authorization", "Bearer "+testToken)
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("upload %s: %d %s", version, resp.StatusCode, b)
	}
	var f ota.Firmware
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	return &f
}

func fetch(t *testing.T, url string, headers ...string) (int, http.Header, []byte) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Accept-Encoding", "gzip")
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, b
}

// TestFirmwareThroughDaemon uploads, downloads (whole, resumed, refused)
// and deletes an image through a running otad, on local files and on S3,
// with downloads on their own listener and on the console's.
func TestFirmwareThroughDaemon(t *testing.T) {
	for _, backend := range []string{"local", "s3"} {
		t.Run(backend, func(t *testing.T) {
			env := map[string]string{"OTAD_DOWNLOAD_ADDR": "127.0.0.1:0"}
			if backend == "s3" {
				for k, v := range s3Env(t) {
					env[k] = v
				}
			}
			a := startApp(t, "sqlite", env)
			a.do("POST", "/v1/products", map[string]string{"id": "FWDAEMON01", "name": "fw"}).wantStatus(t, 201)
			data := make([]byte, 6<<20+123)
			rand.NewChaCha8([32]byte{'d'}).Read(data)
			f := postImage(t, a.HTTPURL(), "FWDAEMON01", "1.0.0", bytes.NewReader(data), int64(len(data)))
			sum := md5.Sum(data)
			if f.MD5 != hex.EncodeToString(sum[:]) || f.Size != int64(len(data)) {
				t.Fatalf("upload answered %+v", f)
			}

			u := downloadURL(t, a.app, f, time.Now().Add(time.Hour))
			if !strings.HasPrefix(u, "http://"+dialable(a.downloadLn.Addr().String())+"/") {
				t.Fatalf("download URL %s is not on the download listener", u)
			}
			token := u[strings.LastIndexByte(u, '/')+1:]
			for _, base := range []string{"http://" + dialable(a.downloadLn.Addr().String()), a.HTTPURL()} {
				status, h, body := fetch(t, base+"/"+token)
				if status != 200 || !bytes.Equal(body, data) || h.Get("Content-Encoding") != "" {
					t.Fatalf("GET %s: %d, %d bytes, Content-Encoding %q", base, status, len(body), h.Get("Content-Encoding"))
				}
				off := int64(len(data)) / 3
				status, h, body = fetch(t, base+"/"+token, "Range", fmt.Sprintf("bytes=%d-%d", off, len(data)))
				if status != 206 || h.Get("Content-Range") != fmt.Sprintf("bytes %d-%d/%d", off, len(data)-1, len(data)) || !bytes.Equal(body, data[off:]) {
					t.Fatalf("resume on %s: %d %q, %d bytes", base, status, h.Get("Content-Range"), len(body))
				}
				if status, _, _ := fetch(t, base+"/"+token, "Range", fmt.Sprintf("bytes=%d-", len(data))); status != 416 {
					t.Errorf("range past the end on %s: %d", base, status)
				}
				swap := "A"
				if token[30] == 'A' {
					swap = "B"
				}
				forged := token[:30] + swap + token[31:]
				if status, _, _ := fetch(t, base+"/"+forged); status != 403 {
					t.Errorf("forged URL on %s: %d, want 403", base, status)
				}
				if status, _, _ := fetch(t, downloadURL(t, a.app, f, time.Now().Add(-time.Minute))); status != 403 {
					t.Errorf("expired URL: %d, want 403", status)
				}
				if status, _, _ := fetch(t, base+"/Zm9vYmFy"); status != 404 {
					t.Errorf("unknown URL on %s: %d, want 404", base, status)
				}
			}
			a.do("DELETE", "/v1/products/FWDAEMON01/firmware/1.0.0", nil).wantStatus(t, 204)
			if status, _, _ := fetch(t, u); status != 404 {
				t.Errorf("URL of a deleted version: %d, want 404", status)
			}
		})
	}
}

// A download that lasts longer than every request read timeout is not cut
// short by them: once a GET's headers are read, only the write stall
// timeout applies. The device here pauses twice the body read timeout
// and header timeout together, half way, on both listeners and backends.
func TestSlowDownloadOutlivesReadTimeouts(t *testing.T) {
	const timeout = time.Second
	for _, backend := range []string{"local", "s3"} {
		t.Run(backend, func(t *testing.T) {
			env := map[string]string{"OTAD_DOWNLOAD_ADDR": "127.0.0.1:0",
				"OTAD_BODY_READ_TIMEOUT": timeout.String(), "OTAD_HEADER_TIMEOUT": timeout.String()}
			if backend == "s3" {
				for k, v := range s3Env(t) {
					env[k] = v
				}
			}
			a := startApp(t, "sqlite", env)
			a.do("POST", "/v1/products", map[string]string{"id": "FWSLOW0001", "name": "fw"}).wantStatus(t, 201)
			// Far more than loopback's socket buffers hold: the server is
			// still writing while the device pauses.
			data := make([]byte, 64<<20)
			rand.NewChaCha8([32]byte{'s'}).Read(data)
			f := postImage(t, a.HTTPURL(), "FWSLOW0001", "1.0.0", bytes.NewReader(data), int64(len(data)))
			u := downloadURL(t, a.app, f, time.Now().Add(time.Hour))
			token := u[strings.LastIndexByte(u, '/')+1:]
			for _, base := range []string{"http://" + dialable(a.downloadLn.Addr().String()), a.HTTPURL()} {
				resp, err := http.Get(base + "/" + token)
				if err != nil {
					t.Fatal(err)
				}
				got := make([]byte, len(data))
				n, err := io.ReadFull(resp.Body, got[:len(data)/2])
				if err != nil {
					t.Fatalf("first half: %d bytes, %v", n, err)
				}
				time.Sleep(2 * (timeout + timeout)) // the device pauses: the point of the test
				m, err := io.ReadFull(resp.Body, got[n:])
				resp.Body.Close()
				if err != nil || !bytes.Equal(got, data) {
					t.Fatalf("download on %s after a pause: %d more bytes, %v", base, m, err)
				}
			}
		})
	}
}
