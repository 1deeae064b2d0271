package main

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/otad/otad/internal/firmware/firmwaretest"
	"github.com/otad/otad/internal/ota"
)

// tcpProxy forwards connections to target until cut, which closes its
// listener and every connection: an outage of whatever is behind it, as
// otad sees one. restore listens on the same address again.
type tcpProxy struct {
	t      *testing.T
	addr   string
	target string

	mu    sync.Mutex
	ln    net.Listener
	conns []net.Conn
}

func newTCPProxy(t *testing.T, target string) *tcpProxy {
	p := &tcpProxy{t: t, target: target}
	p.listen("127.0.0.1:0")
	t.Cleanup(p.cut)
	return p
}

func (p *tcpProxy) listen(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		p.t.Fatal(err)
	}
	p.mu.Lock()
	p.ln, p.addr = ln, ln.Addr().String()
	p.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", p.target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			go func() { io.Copy(u, c); u.Close() }()
			go func() { io.Copy(c, u); c.Close() }()
		}
	}()
}

func (p *tcpProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func (p *tcpProxy) restore() { p.listen(p.addr) }

// The sweeper removes, at start and then every OTAD_SWEEP_INTERVAL, what
// no firmware row accounts for once it is older than OTAD_SWEEP_GRACE:
// on local files an image and a temporary file a crash left (SQLite), on
// S3 an object and the multipart upload of an upload that S3 failed
// during, whose abort could not reach S3 either (PostgreSQL). Stored
// firmware stays, byte for byte.
func TestSweepLeftovers(t *testing.T) {
	env := map[string]string{"OTAD_SWEEP_INTERVAL": "1s", "OTAD_SWEEP_GRACE": "3s", "OTAD_BODY_READ_TIMEOUT": "2s"}
	pid := "SWEEP00001"
	image := strings.Repeat("firmware", 1000)
	swept := func(a *testApp, kind string) float64 {
		return metric(t, a.HTTPURL(), `otad_firmware_swept_total{kind="`+kind+`"}`)
	}

	t.Run("local", func(t *testing.T) {
		a := startApp(t, "sqlite", env)
		a.do("POST", "/v1/products", map[string]string{"id": pid, "name": "s"}).wantStatus(t, 201)
		kept := postImage(t, a.HTTPURL(), pid, "1.0", strings.NewReader(image), int64(len(image)))
		dir := filepath.Join(a.cfg.DataDir, "firmware", pid)
		old := time.Now().Add(-time.Hour)
		var leftovers []string
		for _, name := range []string{"1.1-0123456789abcdef01234567", ".tmp-0123456789abcdef"} {
			p := filepath.Join(dir, name)
			if err := os.WriteFile(p, []byte("left"), 0o640); err != nil {
				t.Fatal(err)
			}
			os.Chtimes(p, old, old)
			leftovers = append(leftovers, p)
		}
		waitFor(t, "the leftovers to be swept", func() bool {
			for _, p := range leftovers {
				if _, err := os.Stat(p); err == nil {
					return false
				}
			}
			return true
		})
		if got := a.getImage(t, kept); got != image {
			t.Fatalf("the stored image changed: %d bytes", len(got))
		}
		if swept(a, "orphan") != 1 || swept(a, "incomplete") != 1 {
			t.Errorf("swept %v orphans, %v incomplete", swept(a, "orphan"), swept(a, "incomplete"))
		}
	})

	t.Run("s3", func(t *testing.T) {
		cfg := firmwaretest.S3Config(t, 0)
		client := firmwaretest.Client(cfg)
		direct := strings.TrimPrefix(cfg.Endpoint, "http://")
		proxy := newTCPProxy(t, direct)
		s3env := s3Env(t)
		s3env["OTAD_S3_BUCKET"], s3env["OTAD_S3_ENDPOINT"] = cfg.Bucket, "http://"+proxy.addr
		for k, v := range env {
			s3env[k] = v
		}
		a := startApp(t, "postgres", s3env)
		a.do("POST", "/v1/products", map[string]string{"id": pid, "name": "s"}).wantStatus(t, 201)
		kept := postImage(t, a.HTTPURL(), pid, "1.0", strings.NewReader(image), int64(len(image)))
		orphan := pid + "/1.1-0123456789abcdef01234567"
		if _, err := client.PutObject(t.Context(), &s3.PutObjectInput{Bucket: &cfg.Bucket, Key: &orphan, Body: strings.NewReader("left")}); err != nil {
			t.Fatal(err)
		}
		uploads := func() int {
			out, err := client.ListMultipartUploads(t.Context(), &s3.ListMultipartUploadsInput{Bucket: &cfg.Bucket})
			if err != nil {
				t.Fatal(err)
			}
			return len(out.Uploads)
		}
		// An upload of more than one part: its multipart upload starts,
		// then S3 goes away, and the client stops sending. The upload
		// fails and its abort cannot reach S3.
		conn := stallUpload(t, strings.TrimPrefix(a.HTTPURL(), "http://"), pid, "2.0", 6<<20)
		waitFor(t, "the multipart upload to start", func() bool { return uploads() == 1 })
		proxy.cut()
		conn.SetReadDeadline(time.Now().Add(2 * time.Minute))
		answer, _ := io.ReadAll(conn)
		t.Logf("the interrupted upload was answered %.40q", answer)
		if n := uploads(); n != 1 {
			t.Fatalf("%d multipart uploads after the outage, want the interrupted one", n)
		}
		proxy.restore()
		waitFor(t, "the multipart upload to be aborted and the orphan removed", func() bool {
			_, err := client.HeadObject(t.Context(), &s3.HeadObjectInput{Bucket: &cfg.Bucket, Key: &orphan})
			return uploads() == 0 && err != nil
		})
		if got := a.getImage(t, kept); got != image {
			t.Fatalf("the stored image changed: %d bytes", len(got))
		}
		if swept(a, "orphan") != 1 || swept(a, "incomplete") != 1 {
			t.Errorf("swept %v orphans, %v incomplete", swept(a, "orphan"), swept(a, "incomplete"))
		}
		if metric(t, a.HTTPURL(), "otad_firmware_sweep_errors_total") < 1 {
			t.Errorf("no sweep failed during the outage")
		}
		a.do("GET", "/v1/products/"+pid+"/firmware/2.0", nil).wantProblem(t, 404, "not_found")
	})
}

// getImage downloads f's image as a device would.
func (a *testApp) getImage(t *testing.T, f *ota.Firmware) string {
	t.Helper()
	status, _, body := fetch(t, downloadURL(t, a.app, f, time.Now().Add(time.Hour)))
	if status != 200 {
		t.Fatalf("download of %s: %d", f.Version, status)
	}
	return string(body)
}
