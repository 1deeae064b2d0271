package main

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/otad/otad/internal/ota"
)

// identity is one device's credentials, as the console API hands them out.
type identity struct {
	ProductID string
	Name      string
	Secret    string
}

// device is one simulated device. It behaves as the Tencent device SDKs do:
// connect with signed credentials, subscribe to its update topic, report
// its version, and (with upgrades enabled) act on update_firmware: download
// with progress reports, check the MD5, and report done or a failure code.
type device struct {
	id      identity
	sim     *simulator
	conn    *mqttConn
	mu      sync.Mutex
	version string // the installed firmware

	upgrading atomic.Bool
	rsp       chan string // versions answered by report_version_rsp
}

func (d *device) getVersion() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.version
}

func (d *device) setVersion(v string) {
	d.mu.Lock()
	d.version = v
	d.mu.Unlock()
}

func (d *device) clientID() string    { return ota.ClientID(d.id.ProductID, d.id.Name) }
func (d *device) reportTopic() string { return ota.ReportTopic(d.id.ProductID, d.id.Name) }
func (d *device) updateTopic() string { return ota.UpdateTopic(d.id.ProductID, d.id.Name) }

// connect signs fresh credentials (connID random, expiry an hour out, in
// milliseconds as the Java SDK does) and connects.
func (d *device) connect(ctx context.Context) error {
	user := fmt.Sprintf("%s;21010406;%05d;%d", d.clientID(), time.Now().UnixNano()%100000, time.Now().Add(time.Hour).UnixMilli())
	pass, err := ota.SignDeviceUsername(d.id.Secret, user, ota.SignHMACSHA256)
	if err != nil {
		return err
	}
	c, err := dialMQTT(ctx, d.sim.cfg.broker, d.clientID(), user, pass, d.sim.cfg.keepalive)
	if err != nil {
		return err
	}
	d.conn = c
	code, err := c.subscribe(ctx, d.updateTopic(), 1)
	if err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}
	if code > 2 {
		return fmt.Errorf("subscribe refused: %#x", code)
	}
	d.rsp = make(chan string, 1)
	go d.listen()
	return nil
}

// listen handles messages from otad until the connection ends.
func (d *device) listen() {
	for pk := range d.conn.incoming {
		var msg struct {
			Type       string          `json:"type"`
			Version    string          `json:"version"`
			ResultCode json.RawMessage `json:"result_code"`
			URL        string          `json:"url"`
			MD5        string          `json:"md5sum"`
			FileSize   json.RawMessage `json:"file_size"`
		}
		if err := json.Unmarshal(pk.Payload, &msg); err != nil {
			d.sim.count(&d.sim.stats.BadMessages)
			continue
		}
		switch msg.Type {
		case ota.TypeReportVersionRsp:
			// The C SDK needs a numeric 0; anything else is a bug in otad.
			if string(msg.ResultCode) != "0" {
				d.sim.count(&d.sim.stats.BadMessages)
			}
			select {
			case d.rsp <- msg.Version:
			default:
			}
		case ota.TypeUpdateFirmware:
			d.sim.count(&d.sim.stats.Updates)
			// Like the SDKs: one upgrade at a time; orders that arrive
			// meanwhile are ignored.
			if d.sim.cfg.upgrade && d.upgrading.CompareAndSwap(false, true) {
				go func() {
					defer d.upgrading.Store(false)
					d.upgrade(msg.Version, msg.URL, msg.MD5, string(msg.FileSize))
				}()
			}
		default:
			d.sim.count(&d.sim.stats.BadMessages)
		}
	}
}

// reportVersion publishes report_version at QoS 1 and, when the broker is
// otad, waits for its report_version_rsp.
func (d *device) reportVersion(ctx context.Context) error {
	version := d.getVersion()
	payload := fmt.Sprintf(`{"type": "report_version", "report": {"version": "%s"}}`, version)
	if err := d.conn.publish(ctx, d.reportTopic(), 1, []byte(payload)); err != nil {
		return err
	}
	if !d.sim.cfg.expectRsp {
		return nil
	}
	for {
		select {
		case v := <-d.rsp:
			if v == version {
				return nil
			}
		case <-ctx.Done():
			return errors.New("no report_version_rsp")
		}
	}
}

// reportProgress publishes one report_progress: QoS 0 for downloading, QoS
// 1 otherwise, as the SDKs do.
func (d *device) reportProgress(ctx context.Context, version, state string, percent, code int, msg string) error {
	qos := byte(1)
	pct := ""
	if state == ota.ProgressDownloading {
		qos = 0
		pct = `"percent": "` + strconv.Itoa(percent) + `", `
	}
	payload := fmt.Sprintf(`{"type": "report_progress", "report": {"progress": {"state": "%s", %s"result_code": "%d", "result_msg": "%s"}, "version": "%s"}}`,
		state, pct, code, msg, version)
	return d.conn.publish(ctx, d.reportTopic(), qos, []byte(payload))
}

// upgrade downloads the firmware, reporting progress, and installs it.
// Failure codes follow PROTOCOL.md: -1 timeout, -2 not found, -3 signature
// expired, -4 MD5 mismatch, -5 anything else.
func (d *device) upgrade(version, url, md5sum, size string) {
	ctx, cancel := context.WithTimeout(context.Background(), d.sim.cfg.upgradeTimeout)
	defer cancel()
	fail := func(code int, msg string) {
		d.sim.count(&d.sim.stats.UpgradesFailed)
		_ = d.reportProgress(ctx, version, ota.ProgressFail, 0, code, msg)
	}
	total, err := strconv.ParseInt(size, 10, 64)
	if err != nil || total <= 0 {
		fail(-5, "bad file_size")
		return
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		fail(-5, "bad url")
		return
	}
	resp, err := d.sim.http.Do(req)
	if err != nil {
		fail(-1, "time_out")
		return
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		fail(-2, "not found")
		return
	case http.StatusForbidden:
		fail(-3, "forbidden")
		return
	default:
		fail(-5, resp.Status)
		return
	}
	h := md5.New()
	var got int64
	buf := make([]byte, 32<<10)
	next := 0
	for {
		n, rerr := resp.Body.Read(buf)
		h.Write(buf[:n])
		got += int64(n)
		if pct := int(got * 100 / total); pct >= next && pct <= 100 {
			_ = d.reportProgress(ctx, version, ota.ProgressDownloading, pct, 0, "")
			next = pct/25*25 + 25
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			fail(-1, "time_out")
			return
		}
	}
	if got != total || hex.EncodeToString(h.Sum(nil)) != md5sum {
		fail(-4, "md5 mismatch")
		return
	}
	if err := d.reportProgress(ctx, version, ota.ProgressBurning, 0, 0, ""); err != nil {
		return
	}
	if err := d.reportProgress(ctx, version, ota.ProgressDone, 100, 0, ""); err != nil {
		return
	}
	d.setVersion(version)
	d.sim.count(&d.sim.stats.UpgradesDone)
	_ = d.reportVersion(ctx)
}
