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
	"strings"
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
	Behaviour *behaviour // from the CSV's fourth column; nil: from -behaviour
}

// device is one simulated device. It behaves as the Tencent device SDKs do:
// connect with signed credentials, subscribe to its update topic, report
// its version, and (with upgrades enabled) act on update_firmware: download
// with progress reports, check the MD5, and report done or a failure code,
// or misbehave as its behaviour says.
type device struct {
	id     identity
	sim    *simulator
	ctx    context.Context // the run's
	behave behaviour

	mu           sync.Mutex
	conn         *mqttConn
	version      string    // the installed firmware
	stopping     bool      // the run closes the connection on purpose
	offlineUntil time.Time // an offline device stays away until then
	dialMu       sync.Mutex
	broker       int // index of the broker in -broker's list; guarded by dialMu once running

	upgrading atomic.Bool
	rsp       chan string // versions answered by report_version_rsp

	// What this device saw and did, for -per-device.
	updates     atomic.Int64 // update_firmware received
	attempts    atomic.Int64 // upgrades started
	done        atomic.Int64 // upgrades reported done
	failed      atomic.Int64 // upgrades reported failed
	reconnects  atomic.Int64
	resumedFrom atomic.Int64 // the last Range start of a resumed download
}

func newDevice(ctx context.Context, s *simulator, id identity, b behaviour) *device {
	d := &device{id: id, sim: s, ctx: ctx, behave: b, rsp: make(chan string, 1)}
	d.setVersion(s.cfg.version)
	return d
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

func (d *device) getConn() *mqttConn {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.conn
}

// online reports whether the device has a live connection.
func (d *device) online() bool {
	c := d.getConn()
	return c != nil && !isClosed(c.done)
}

// stop closes the connection for good, at the end of the run.
func (d *device) stop() {
	d.mu.Lock()
	d.stopping = true
	c := d.conn
	d.mu.Unlock()
	if c != nil {
		c.close()
	}
}

func (d *device) clientID() string    { return ota.ClientID(d.id.ProductID, d.id.Name) }
func (d *device) reportTopic() string { return ota.ReportTopic(d.id.ProductID, d.id.Name) }
func (d *device) updateTopic() string { return ota.UpdateTopic(d.id.ProductID, d.id.Name) }

// connect signs fresh credentials (connID random, and as expiry the
// current time in milliseconds, as the Python SDK does: read as seconds, as
// the cloud and otad read it, it never expires), connects and subscribes.
func (d *device) connect(ctx context.Context) error {
	user := fmt.Sprintf("%s;21010406;%05d;%d", d.clientID(), time.Now().UnixNano()%100000, time.Now().UnixMilli())
	pass, err := ota.SignDeviceUsername(d.id.Secret, user, ota.SignHMACSHA256)
	if err != nil {
		return err
	}
	brokers := d.sim.cfg.brokers
	c, err := dialMQTT(ctx, brokers[d.broker%len(brokers)], d.clientID(), user, pass, d.sim.cfg.keepalive)
	if err != nil {
		d.broker++ // fail over to the next broker of the list
		return err
	}
	d.mu.Lock()
	d.conn = c
	d.mu.Unlock()
	go d.listen(c)
	code, err := c.subscribe(ctx, d.updateTopic(), 1)
	if err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}
	if code > 2 {
		return fmt.Errorf("subscribe refused: %#x", code)
	}
	return nil
}

// redial connects again and reports the version, as a device does after
// it lost its connection; it does nothing if the device is online.
func (d *device) redial(ctx context.Context) error {
	d.dialMu.Lock()
	defer d.dialMu.Unlock()
	if d.online() {
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, d.sim.cfg.connectTimeout)
	defer cancel()
	err := d.connect(cctx)
	if err == nil {
		err = d.reportVersion(cctx)
	}
	if err != nil {
		if c := d.getConn(); c != nil {
			c.drop()
		}
		return err
	}
	d.reconnects.Add(1)
	d.sim.count(&d.sim.stats.Reconnects)
	return nil
}

// supervise reconnects the device whenever its connection ends and the run
// did not end it (-reconnect): otad restarted, or the device went offline.
func (d *device) supervise() {
	backoff := 200 * time.Millisecond
	for {
		c := d.getConn()
		select {
		case <-c.done:
		case <-d.ctx.Done():
			return
		}
		for {
			d.mu.Lock()
			stopping, wait := d.stopping, time.Until(d.offlineUntil)
			d.mu.Unlock()
			if stopping {
				return
			}
			if !sleepCtx(d.ctx, max(wait, backoff)) {
				return
			}
			if err := d.redial(d.ctx); err == nil {
				backoff = 200 * time.Millisecond
				break
			}
			backoff = min(backoff*2, 5*time.Second)
		}
	}
}

// sleepCtx waits for d or until ctx ends; it reports whether d passed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// listen handles messages from otad until the connection ends.
func (d *device) listen(c *mqttConn) {
	for pk := range c.incoming {
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
			d.updates.Add(1)
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
	if err := d.getConn().publish(ctx, d.reportTopic(), 1, []byte(payload)); err != nil {
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
	return d.getConn().publish(ctx, d.reportTopic(), qos, []byte(payload))
}

// upgrade downloads the firmware, reporting progress, and installs it, or
// misbehaves as the device's behaviour says. Failure codes follow
// PROTOCOL.md: -1 timeout, -2 not found, -3 signature expired, -4 MD5
// mismatch, -5 anything else.
func (d *device) upgrade(version, url, md5sum, size string) {
	ctx, cancel := context.WithTimeout(d.ctx, d.sim.cfg.upgradeTimeout)
	defer cancel()
	attempt := d.attempts.Add(1)
	s := d.sim
	s.upgradeStarted()
	ended := false
	end := func() { // the device stops upgrading, before its last report
		if !ended {
			ended = true
			s.stats.Upgrading.Add(-1)
		}
	}
	defer end()
	fail := func(code int, msg string) {
		end()
		s.count(&s.stats.UpgradesFailed)
		d.failed.Add(1)
		_ = d.reportProgress(ctx, version, ota.ProgressFail, 0, code, msg)
	}
	total, err := strconv.ParseInt(size, 10, 64)
	if err != nil || total <= 0 {
		fail(-5, "bad file_size")
		return
	}
	h := md5.New()
	var got int64
	next := 0
	progress := func() {
		if pct := int(got * 100 / total); pct >= next && pct <= 100 {
			_ = d.reportProgress(ctx, version, ota.ProgressDownloading, pct, 0, "")
			next = pct/25*25 + 25
		}
	}
	// The download, in one or (offline) two requests.
	limit := total
	switch d.behave.kind {
	case behaveOffline, behaveStall:
		limit = total / 2
	}
	for got < total {
		code, msg := d.download(ctx, url, got, limit, h, &got, progress)
		if code != 0 {
			fail(code, msg)
			return
		}
		if got >= total {
			break
		}
		switch d.behave.kind {
		case behaveStall:
			<-ctx.Done() // never read the rest, never report
			return
		case behaveOffline:
			if !d.dropOffline(ctx) {
				return
			}
			d.resumedFrom.Store(got)
			limit = total
		default:
			fail(-4, "short download")
			return
		}
	}
	if got != total || hex.EncodeToString(h.Sum(nil)) != md5sum {
		fail(-4, "md5 mismatch")
		return
	}
	switch {
	case d.behave.kind == behaveFail, d.behave.kind == behaveFlaky && attempt == 1:
		fail(d.behave.code, "simulated failure")
		return
	case d.behave.kind == behaveTimeout:
		return // silent from here on: otad times the attempt out
	}
	// Burn and boot the new image whether or not the reports get through
	// (otad may be restarting): a device that lost them reports its new
	// version when it reconnects (-reconnect).
	_ = d.reportProgress(ctx, version, ota.ProgressBurning, 0, 0, "")
	if d.behave.kind != behaveRollback {
		d.setVersion(version)
	}
	end()
	d.done.Add(1)
	s.count(&s.stats.UpgradesDone)
	_ = d.reportProgress(ctx, version, ota.ProgressDone, 100, 0, "")
	// A rolled-back device boots its old image and reports that version.
	_ = d.reportVersion(ctx)
}

// download reads the firmware from byte from up to byte limit into h,
// at the simulator's download rate, counting into got. It returns a
// failure code and message, or 0.
func (d *device) download(ctx context.Context, url string, from, limit int64, h io.Writer, got *int64, progress func()) (int, string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return -5, "bad url"
	}
	want := http.StatusOK
	if from > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", from))
		want = http.StatusPartialContent
	}
	resp, err := d.sim.http.Do(req)
	if err != nil {
		return -1, "time_out"
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case want:
	case http.StatusNotFound:
		return -2, "not found"
	case http.StatusForbidden:
		return -3, "forbidden"
	default:
		return -5, resp.Status
	}
	if from > 0 && !strings.HasPrefix(resp.Header.Get("Content-Range"), fmt.Sprintf("bytes %d-", from)) {
		return -5, "bad content-range"
	}
	rate := d.sim.cfg.downloadRate
	bufSize := int64(32 << 10)
	if rate > 0 {
		bufSize = min(bufSize, max(rate/10, 512))
	}
	buf := make([]byte, bufSize)
	start, startGot := time.Now(), *got
	for *got < limit {
		n, rerr := resp.Body.Read(buf[:min(int64(len(buf)), limit-*got)])
		h.Write(buf[:n])
		*got += int64(n)
		progress()
		if rate > 0 {
			// The device reads no faster than its link.
			due := time.Duration(float64(*got-startGot) / float64(rate) * float64(time.Second))
			if !sleepCtx(ctx, due-time.Since(start)) {
				return -1, "time_out"
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return -1, "time_out"
		}
	}
	return 0, ""
}

// dropOffline loses the connection (no DISCONNECT, as a device losing its
// network), stays away for -offline-for, and comes back: connect and
// report the version. It reports whether the device is back.
func (d *device) dropOffline(ctx context.Context) bool {
	d.mu.Lock()
	d.offlineUntil = time.Now().Add(d.sim.cfg.offlineFor)
	c := d.conn
	d.mu.Unlock()
	c.drop()
	if !sleepCtx(ctx, d.sim.cfg.offlineFor) {
		return false
	}
	for {
		if err := d.redial(ctx); err == nil {
			return true
		}
		if !sleepCtx(ctx, 500*time.Millisecond) {
			return false
		}
	}
}
