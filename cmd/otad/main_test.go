package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestVersionAndMigrate(t *testing.T) {
	var out bytes.Buffer
	if err := run(t.Context(), []string{"version"}, func(string) string { return "" }, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	if out.String() != "otad dev\n" {
		t.Fatalf("version printed %q", out.String())
	}
	out.Reset()
	if err := run(t.Context(), []string{"--version"}, func(string) string { return "" }, &out, io.Discard); err != nil || out.String() != "otad dev\n" {
		t.Fatalf("--version: %v, printed %q", err, out.String())
	}
	var help bytes.Buffer
	if err := run(t.Context(), []string{"-h"}, func(string) string { return "" }, io.Discard, &help); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("-h: %v", err)
	}
	// Secrets given in the environment are never printed as defaults.
	help.Reset()
	secretEnv := map[string]string{"OTAD_API_TOKEN": "env-token-0123456789", "OTAD_SECRET_KEY": strings.Repeat("ab", 32)}
	if err := run(t.Context(), []string{"-h"}, func(k string) string { return secretEnv[k] }, io.Discard, &help); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("-h: %v", err)
	}
	for _, secret := range secretEnv {
		if strings.Contains(help.String(), secret) {
			t.Errorf("-h prints a secret from the environment:\n%s", help.String())
		}
	}
	for _, want := range []string{"serve", "migrate", "version", "-http-addr"} {
		if !strings.Contains(help.String(), want) {
			t.Errorf("-h does not mention %s:\n%s", want, help.String())
		}
	}
	dir := t.TempDir()
	env := func(k string) string { return map[string]string{"OTAD_DATA_DIR": dir}[k] }
	out.Reset()
	if err := run(t.Context(), []string{"migrate"}, env, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "applied 0001_init.sql") {
		t.Fatalf("first migrate printed %q", out.String())
	}
	out.Reset()
	if err := run(t.Context(), []string{"migrate"}, env, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	if out.String() != "database is up to date\n" {
		t.Fatalf("second migrate printed %q", out.String())
	}
}

func TestConfigErrors(t *testing.T) {
	for _, c := range []struct {
		env  map[string]string
		args []string
		want string
	}{
		{map[string]string{"OTAD_DATABASE_URL": "mysql://x"}, nil, "OTAD_DATABASE_URL"},
		{map[string]string{"OTAD_S3_PATH_STYLE": "perhaps"}, nil, "OTAD_S3_PATH_STYLE"},
		{map[string]string{"OTAD_SHUTDOWN_TIMEOUT": "soon"}, nil, "OTAD_SHUTDOWN_TIMEOUT"},
		{map[string]string{"OTAD_LOG_LEVEL": "loud"}, nil, "OTAD_LOG_LEVEL"},
		{map[string]string{"OTAD_PUBLIC_URL": "ftp://x"}, nil, "OTAD_PUBLIC_URL"},
		// The C SDK takes host:port for the host name: a port is refused
		// at start, saying why, unless explicitly allowed.
		{map[string]string{"OTAD_PUBLIC_URL": "http://fw.example.com:8080"}, nil, "OTAD_PUBLIC_URL: public URL must not name port 8080: Tencent's C device SDK"},
		{map[string]string{"OTAD_PUBLIC_URL_ALLOW_PORT": "maybe"}, nil, "OTAD_PUBLIC_URL_ALLOW_PORT"},
		{map[string]string{"OTAD_API_TOKEN": "short"}, nil, "OTAD_API_TOKEN"},
		{map[string]string{"OTAD_SECRET_KEY": "c2hvcnQ="}, nil, "OTAD_SECRET_KEY: a secret key must be 32 bytes"},
		{map[string]string{"OTAD_SECRET_KEY": strings.Repeat("ab", 32), "OTAD_SECRET_KEY_OLD": "nope"}, nil, "OTAD_SECRET_KEY_OLD: a secret key"},
		{map[string]string{"OTAD_SECRET_KEY_OLD": strings.Repeat("ab", 32)}, nil, "OTAD_SECRET_KEY_OLD is set but OTAD_SECRET_KEY is not"},
		{map[string]string{"OTAD_S3_ENDPOINT": "http://127.0.0.1:9000"}, nil, "OTAD_S3_BUCKET"},
		{map[string]string{"OTAD_MQTT_TLS_CLIENT_CA": "/etc/ca.pem"}, nil, "OTAD_MQTT_TLS_CLIENT_CA needs the TLS listener"},
		{map[string]string{"OTAD_RATE_LIMIT": "-1"}, nil, "OTAD_RATE_LIMIT"},
		{map[string]string{"OTAD_SWEEP_GRACE": "0s"}, nil, "OTAD_SWEEP_GRACE"},
		{nil, []string{"-no-such-flag"}, "no-such-flag"},
		{nil, []string{"stray"}, "stray"},
	} {
		err := run(t.Context(), c.args, func(k string) string { return c.env[k] }, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("env %v args %v: error %v, want mention of %s", c.env, c.args, err, c.want)
		}
	}
}

func TestSecretFromFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "token")
	os.WriteFile(file, []byte("file-token-0123456789\n"), 0o600)
	cfg, err := parseConfig("otad", nil, func(k string) string {
		return map[string]string{"OTAD_API_TOKEN_FILE": file}[k]
	}, io.Discard)
	if err != nil || cfg.APIToken != "file-token-0123456789" {
		t.Fatalf("token from file = %q, %v", cfg.APIToken, err)
	}
}

// TestGracefulShutdown holds a request open while otad shuts down: the
// request completes and is stored; new connections are refused.
func TestGracefulShutdown(t *testing.T) {
	active := make(chan struct{}, 1)
	a := startApp(t, "sqlite", nil, func(a *app) {
		a.httpSrv.ConnState = func(_ net.Conn, s http.ConnState) {
			if s == http.StateActive {
				active <- struct{}{}
			}
		}
	})
	pr, pw := io.Pipe()
	req, _ := http.NewRequest("POST", a.HTTPURL()+"/v1/products", pr)
	req.Header.Set("Authorization", "Bearer "+testToken)
	req.Header.Set("Content-Type", "application/json")
	done := make(chan *http.Response, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Error(err)
		}
		done <- resp
	}()
	pw.Write([]byte(`{"id": "SLOW000001", `))
	select { // the server is reading the request
	case <-active:
	case <-time.After(30 * time.Second):
		t.Fatal("the request never became active")
	}

	closed := make(chan error, 1)
	go func() { closed <- a.Close(context.Background()) }()
	waitFor(t, "listener to close", func() bool {
		c, err := net.DialTimeout("tcp", strings.TrimPrefix(a.HTTPURL(), "http://"), time.Second)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	select {
	case <-closed:
		t.Fatal("Close returned while a request was in flight")
	default:
	}
	pw.Write([]byte(`"name": "finished during shutdown"}`))
	pw.Close()
	resp := <-done
	if resp == nil || resp.StatusCode != 201 {
		t.Fatalf("in-flight request: %v", resp)
	}
	resp.Body.Close()
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
}

// waitFor polls cond until it holds, failing after a generous deadline.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitProgress waits for cond like waitFor, but for work that moves at the
// machine's pace (a long delivery backlog): it fails only when the count
// cond reports stops growing for 60 seconds.
func waitProgress(t testing.TB, what string, cond func() (bool, int)) {
	t.Helper()
	last, deadline := -1, time.Now()
	for {
		ok, n := cond()
		if ok {
			return
		}
		if n != last {
			last, deadline = n, time.Now().Add(60*time.Second)
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s (stuck at %d)", what, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// binDirs hold the binaries the tests build, removed by TestMain.
var binDirs struct {
	sync.Mutex
	dirs []string
}

// binDir makes a temporary directory for a built binary.
func binDir(pattern string) (string, error) {
	dir, err := os.MkdirTemp("", pattern)
	if err == nil {
		binDirs.Lock()
		binDirs.dirs = append(binDirs.dirs, dir)
		binDirs.Unlock()
	}
	return dir, err
}

func TestMain(m *testing.M) {
	code := m.Run()
	for _, dir := range binDirs.dirs {
		os.RemoveAll(dir)
	}
	os.Exit(code)
}

var buildOnce = sync.OnceValues(func() (string, error) {
	dir, err := binDir("otad-bin")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "otad")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		return "", &buildError{string(out), err}
	}
	return bin, nil
})

type buildError struct {
	out string
	err error
}

func (e *buildError) Error() string { return e.err.Error() + ": " + e.out }

// otadProcess is the real otad binary running as a child process.
type otadProcess struct {
	cmd     *exec.Cmd
	httpURL string
	stderr  *syncBuffer
	exited  chan error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var configRow = regexp.MustCompile("^\\| `(OTAD_[A-Z0-9_]+)` \\| `-([a-z0-9-]+)` \\| *`?([^`|]*?)`? *\\|")

var listenLine = regexp.MustCompile(`msg="console API listening".* addr=(\S+)`)

// startProcess runs the otad binary with env and waits until it listens.
func startProcess(t *testing.T, env map[string]string) *otadProcess {
	t.Helper()
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	if _, ok := env["OTAD_RATE_LIMIT"]; !ok {
		cmd.Env = append(cmd.Env, "OTAD_RATE_LIMIT=0") // as in startApp
	}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &otadProcess{cmd: cmd, stderr: &syncBuffer{}, exited: make(chan error, 1)}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-p.exited
		}
	})
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.stderr.Write(append(sc.Bytes(), '\n'))
			if m := listenLine.FindStringSubmatch(sc.Text()); m != nil {
				addr <- m[1]
			}
		}
		p.exited <- cmd.Wait()
	}()
	select {
	case p.httpURL = <-addr:
	case err := <-p.exited:
		p.exited <- err
		t.Fatalf("otad exited before listening: %v\n%s", err, p.stderr.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("otad did not listen within a minute:\n%s", p.stderr.String())
	}
	return p
}

func TestBinarySIGTERM(t *testing.T) {
	p := startProcess(t, map[string]string{
		"OTAD_HTTP_ADDR": "127.0.0.1:0", "OTAD_MQTT_ADDR": "127.0.0.1:0",
		"OTAD_DATA_DIR": t.TempDir(), "OTAD_API_TOKEN": testToken,
	})
	resp, err := http.Get(p.httpURL + "/readyz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("readyz: %v %v", resp, err)
	}
	resp.Body.Close()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.exited:
		if err != nil {
			t.Fatalf("otad exited with %v after SIGTERM:\n%s", err, p.stderr.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatal("otad did not exit within a minute of SIGTERM")
	}
	if !strings.Contains(p.stderr.String(), "shutting down") {
		t.Fatalf("no shutdown log:\n%s", p.stderr.String())
	}
}

// TestREADMEConfigReference keeps the README's configuration table and the
// settings otad reads saying the same thing.
func TestREADMEConfigReference(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	start := strings.Index(readme, "<!-- config-reference")
	end := strings.Index(readme, "<!-- end config-reference -->")
	if start < 0 || end < start {
		t.Fatal("README has no config-reference section")
	}
	rows := map[string]string{}
	for _, line := range strings.Split(readme[start:end], "\n") {
		if m := configRow.FindStringSubmatch(line); m != nil {
			rows[m[1]] = m[2] + " " + strings.TrimSpace(m[3])
		}
	}
	var c Config
	for _, v := range c.vars() {
		want := v.Flag + " " + v.Default
		if got, ok := rows[v.Env]; !ok {
			t.Errorf("README lacks %s", v.Env)
		} else if got != want {
			t.Errorf("README says %s is %q, code says %q", v.Env, got, want)
		}
		delete(rows, v.Env)
	}
	for env := range rows {
		t.Errorf("README documents %s, which otad does not read", env)
	}
}

// The real binary says why it cannot open its database and exits 1,
// without a panic: a password with a stray %, a data dir that cannot be
// created, a database file that cannot be opened.
func TestBinaryStoreOpenErrors(t *testing.T) {
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o600)
	dbDir := t.TempDir()
	os.Mkdir(filepath.Join(dbDir, "otad.db"), 0o700) // a directory where the file goes
	for _, c := range []struct {
		name, env, want string
	}{
		{"percent in password", "OTAD_DATABASE_URL=postgres://otad:50%off@127.0.0.1:1/otad", "otad: parse database url"},
		{"data dir under a file", "OTAD_DATA_DIR=" + filepath.Join(file, "data"), "otad: create data dir"},
		{"database file is a directory", "OTAD_DATA_DIR=" + dbDir, "otad: open sqlite"},
	} {
		for _, cmd := range []string{"serve", "migrate"} {
			cmdline := exec.Command(bin, cmd, "-http-addr", "127.0.0.1:0", "-mqtt-addr", "127.0.0.1:0")
			if cmd == "migrate" {
				cmdline = exec.Command(bin, cmd)
			}
			cmdline.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), c.env}
			out, err := cmdline.CombinedOutput()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 1 {
				t.Errorf("%s, otad %s: %v, want exit status 1:\n%s", c.name, cmd, err, out)
			}
			if !strings.Contains(string(out), c.want) || strings.Contains(string(out), "panic") || strings.Contains(string(out), "goroutine ") {
				t.Errorf("%s, otad %s printed:\n%s\nwant %q and no panic", c.name, cmd, out, c.want)
			}
			if strings.Contains(string(out), "50%off") {
				t.Errorf("%s: the password is in the output:\n%s", c.name, out)
			}
		}
	}
}
