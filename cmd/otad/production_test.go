package main

import (
	"bytes"
	"crypto/md5"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/jackc/pgx/v5"

	"github.com/otad/otad/internal/firmware/firmwaretest"
	"github.com/otad/otad/internal/ota"
	"github.com/otad/otad/internal/store/testdb"
)

// TestProductionConfig runs the otad binary with the otad service's
// environment from deploy/docker-compose.yml (after cp .env.example .env),
// outside containers: the same variable names, with only addresses,
// credentials, paths and the token replaced by those of the PostgreSQL and
// versitygw that scripts/test.sh started. It then does what an operator
// and a device do: register a product and a device, upload firmware, run
// an upgrade job, and download the image from the URL the device is sent.
// State must land in PostgreSQL and the image in the bucket, none of it in
// the data dir.
func TestProductionConfig(t *testing.T) {
	compose := serviceEnv(t, mustLoadCompose(t), "otad")
	dbURL := testdb.PostgresURL(t)
	bucket := firmwaretest.S3Config(t, 0) // what compose's s3-bucket does
	dataDir := t.TempDir()
	mqttAddr, downloadAddr := freeAddr(t), freeAddr(t)
	publicURL := "http://" + downloadAddr

	// Only what differs outside containers; the rest (path style, log
	// level, …) is compose's, and every name must be one compose sets.
	replace := map[string]string{
		"OTAD_HTTP_ADDR":        "127.0.0.1:0",
		"OTAD_MQTT_ADDR":        mqttAddr,
		"OTAD_DOWNLOAD_ADDR":    downloadAddr,
		"OTAD_DATA_DIR":         dataDir,
		"OTAD_DATABASE_URL":     dbURL,
		"OTAD_S3_BUCKET":        bucket.Bucket,
		"OTAD_S3_ENDPOINT":      bucket.Endpoint,
		"AWS_ACCESS_KEY_ID":     bucket.AccessKeyID,
		"AWS_SECRET_ACCESS_KEY": bucket.SecretAccessKey,
		"AWS_REGION":            bucket.Region,
		"OTAD_PUBLIC_URL":       publicURL,
		"OTAD_API_TOKEN":        testToken,
	}
	env := map[string]string{}
	for k, v := range compose {
		env[k] = v
	}
	for k, v := range replace {
		if _, ok := compose[k]; !ok {
			t.Fatalf("compose's otad service does not set %s; this test assumes it does", k)
		}
		env[k] = v
	}
	// The test cannot bind port 80: it allows the download port, which
	// real deployments leave out (PROTOCOL.md).
	env["OTAD_PUBLIC_URL_ALLOW_PORT"] = "true"
	proc := startProcess(t, env)
	c := &consoleClient{t: t, base: proc.httpURL}

	c.call("GET", "/readyz", nil, 200, nil)
	// The image's HEALTHCHECK finds otad by the same OTAD_HTTP_ADDR.
	healthcheck := filepath.Join(t.TempDir(), "otad-healthcheck")
	if out, err := exec.Command("go", "build", "-o", healthcheck, "../otad-healthcheck").CombinedOutput(); err != nil {
		t.Fatalf("build otad-healthcheck: %v\n%s", err, out)
	}
	hc := exec.Command(healthcheck)
	hc.Env = []string{"OTAD_HTTP_ADDR=" + strings.TrimPrefix(proc.httpURL, "http://")}
	if out, err := hc.CombinedOutput(); err != nil {
		t.Errorf("otad-healthcheck against the running otad: %v\n%s", err, out)
	}
	var product struct{ ID string }
	c.call("POST", "/v1/products", strings.NewReader(`{"name":"Production check"}`), 201, &product)
	var device struct{ Name, Secret string }
	c.call("POST", "/v1/products/"+product.ID+"/devices", strings.NewReader(`{"name":"prod-1","version":"1.0.0"}`), 201, &device)

	// A firmware image of a few hundred KiB, uploaded through the API.
	image := make([]byte, 300<<10+17)
	rand.Read(image)
	sum := md5.Sum(image)
	md5hex := hex.EncodeToString(sum[:])
	var fw struct {
		MD5  string
		Size int64
	}
	c.call("POST", "/v1/products/"+product.ID+"/firmware?version=1.0.1", bytes.NewReader(image), 201, &fw)
	if fw.MD5 != md5hex || fw.Size != int64(len(image)) {
		t.Fatalf("upload stored md5 %s size %d, want %s %d", fw.MD5, fw.Size, md5hex, len(image))
	}

	// The image is in the bucket, the rows are in PostgreSQL, and the data
	// dir holds neither a SQLite file nor firmware files.
	objs, err := firmwaretest.Client(bucket).ListObjectsV2(t.Context(), &s3.ListObjectsV2Input{Bucket: &bucket.Bucket})
	if err != nil {
		t.Fatal(err)
	}
	if len(objs.Contents) != 1 || *objs.Contents[0].Size != int64(len(image)) {
		t.Errorf("bucket holds %d objects after one upload, want the image", len(objs.Contents))
	}
	conn, err := pgx.Connect(t.Context(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(t.Context())
	var n int
	if err := conn.QueryRow(t.Context(), `SELECT count(*) FROM firmware WHERE product_id = $1 AND version = '1.0.1'`, product.ID).Scan(&n); err != nil || n != 1 {
		t.Errorf("firmware rows in PostgreSQL: %d, %v", n, err)
	}
	filepath.WalkDir(dataDir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			t.Errorf("the data dir holds %s; production state belongs in PostgreSQL and S3", p)
		}
		return nil
	})

	// The device comes online, reports its version, and is sent the update
	// when a job targets it.
	dev := connectDevice(t, mqttAddr, product.ID, device.Name, device.Secret)
	dev.publish(t, `{"type":"report_version","report":{"version":"1.0.0"}}`)
	dev.waitFor(t, "report_version_rsp")
	var job struct{ ID string }
	c.call("POST", "/v1/products/"+product.ID+"/jobs",
		strings.NewReader(`{"firmware_version":"1.0.1","targets":{"devices":["prod-1"]}}`), 201, &job)
	var update ota.UpdateFirmware
	if err := json.Unmarshal(dev.waitFor(t, "update_firmware"), &update); err != nil {
		t.Fatal(err)
	}
	if update.MD5 != md5hex || update.FileSize != int64(len(image)) || update.Version != "1.0.1" {
		t.Errorf("update_firmware = %+v, want version 1.0.1, md5 %s, size %d", update, md5hex, len(image))
	}
	token, ok := strings.CutPrefix(update.URL, publicURL+"/")
	if !ok || token == "" || strings.Contains(token, "/") {
		t.Fatalf("download URL %q is not one path segment under OTAD_PUBLIC_URL %s", update.URL, publicURL)
	}

	// The device downloads it from the download listener, and resumes.
	resp, err := http.Get(update.URL)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Equal(got, image) {
		t.Fatalf("download: %s, %d bytes, want 200 and the image", resp.Status, len(got))
	}
	req, _ := http.NewRequest("GET", update.URL, nil)
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", 100000, len(image)))
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 206 || !bytes.Equal(got, image[100000:]) {
		t.Fatalf("resumed download: %s, %d bytes, want 206 and the rest of the image", resp.Status, len(got))
	}

	// The device installs it; the job completes.
	dev.publish(t, `{"type":"report_progress","report":{"progress":{"state":"done","result_code":"0","result_msg":""},"version":"1.0.1"}}`)
	waitFor(t, "the job to complete", func() bool {
		var j struct{ Status string }
		c.call("GET", "/v1/products/"+product.ID+"/jobs/"+job.ID, nil, 200, &j)
		return j.Status == "completed"
	})
}

// freeAddr returns a loopback address nothing listens on right now, for a
// listener whose address must be known before otad starts.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// consoleClient calls a running otad's console API with the test token.
type consoleClient struct {
	t    *testing.T
	base string
}

// call sends the request, fails the test unless the answer has status, and
// decodes a JSON answer into out when out is not nil.
// get reads path (200) into out.
func (c *consoleClient) get(path string, out any) { c.call("GET", path, nil, 200, out) }

func (c *consoleClient) call(method, path string, body io.Reader, status int, out any) {
	c.t.Helper()
	req, err := http.NewRequestWithContext(c.t.Context(), method, c.base+path, body)
	if err != nil {
		c.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+testToken)
	if body != nil && strings.Contains(path, "/firmware") {
		req.Header.Set("Content-Type", "application/octet-stream")
	} else if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != status {
		c.t.Fatalf("%s %s: %s %s, want %d", method, path, resp.Status, b, status)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			c.t.Fatalf("%s %s: %v in %s", method, path, err, b)
		}
	}
}

// mqttDevice is a device connected the way the device SDKs connect: MQTT
// 3.1.1, signed username, subscribed to its update topic.
type mqttDevice struct {
	client      paho.Client
	reportTopic string
	msgs        chan []byte
}

func connectDevice(t *testing.T, addr, productID, name, secret string) *mqttDevice {
	t.Helper()
	user := ota.ClientID(productID, name) + ";21010406;a1b2c;" + strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10)
	pass, err := ota.SignDeviceUsername(secret, user, ota.SignHMACSHA256)
	if err != nil {
		t.Fatal(err)
	}
	d := &mqttDevice{reportTopic: ota.ReportTopic(productID, name), msgs: make(chan []byte, 16)}
	o := paho.NewClientOptions().AddBroker("tcp://" + addr).
		SetClientID(ota.ClientID(productID, name)).SetUsername(user).SetPassword(pass).
		SetProtocolVersion(4).SetCleanSession(true).SetAutoReconnect(false).
		SetConnectTimeout(10 * time.Second)
	d.client = paho.NewClient(o)
	if tok := d.client.Connect(); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		t.Fatalf("device connect: %v", tok.Error())
	}
	t.Cleanup(func() { d.client.Disconnect(0) })
	tok := d.client.Subscribe(ota.UpdateTopic(productID, name), 1, func(_ paho.Client, m paho.Message) { d.msgs <- m.Payload() })
	if !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		t.Fatalf("device subscribe: %v", tok.Error())
	}
	return d
}

func (d *mqttDevice) publish(t *testing.T, payload string) {
	t.Helper()
	if tok := d.client.Publish(d.reportTopic, 1, false, payload); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		t.Fatalf("device publish: %v", tok.Error())
	}
}

// waitFor returns the next message of type typ on the update topic,
// skipping others.
func (d *mqttDevice) waitFor(t *testing.T, typ string) []byte {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case m := <-d.msgs:
			var head struct{ Type string }
			if json.Unmarshal(m, &head) == nil && head.Type == typ {
				return m
			}
		case <-deadline:
			t.Fatalf("the device was not sent %s within 30s", typ)
		}
	}
}
