package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/otad/otad/internal/store/testdb"
)

// storedSecret reads a device's secret column straight from the database
// otad runs on, as someone holding a copy of it would.
func storedSecret(t *testing.T, cfg *Config, pid, name string) string {
	t.Helper()
	var v string
	if cfg.DatabaseURL != "" {
		conn, err := pgx.Connect(t.Context(), cfg.DatabaseURL)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		if err := conn.QueryRow(t.Context(), `SELECT secret FROM devices WHERE product_id = $1 AND name = $2`, pid, name).Scan(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	db, err := sql.Open("sqlite", filepath.Join(cfg.DataDir, "otad.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.QueryRowContext(t.Context(), `SELECT secret FROM devices WHERE product_id = ? AND name = ?`, pid, name).Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

// lockedBuffer collects log lines written from several goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// openWithLogs builds otad with env as startApp would, logging to a
// buffer, and returns the error newApp gives; a built app is closed.
func openWithLogs(t *testing.T, engine string, env map[string]string) (string, error) {
	t.Helper()
	cfg := testConfig(t, engine, env)
	var logs lockedBuffer
	a, err := newApp(t.Context(), cfg, cfg.logger(&logs), &bytes.Buffer{})
	if err == nil {
		a.Close(context.Background())
	}
	return logs.String(), err
}

// TestSecretsAtRest: with OTAD_SECRET_KEY, device secrets are encrypted
// in the database and devices still sign in; rows written before a key was
// set are encrypted at start; a wrong key, or none for encrypted rows,
// stops otad at start; OTAD_SECRET_KEY_OLD rotates the key; without a key
// otad warns.
func TestSecretsAtRest(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		env := map[string]string{"OTAD_DATA_DIR": t.TempDir(), "OTAD_LOG_LEVEL": "info"}
		if engine == "postgres" {
			env["OTAD_DATABASE_URL"] = testdb.PostgresURL(t)
		}
		key1 := hex.EncodeToString(bytes.Repeat([]byte{1}, 32))
		key2 := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{2}, 32))
		with := func(kv ...string) map[string]string {
			m := map[string]string{}
			for k, v := range env {
				m[k] = v
			}
			for i := 0; i+1 < len(kv); i += 2 {
				m[kv[i]] = kv[i+1]
			}
			return m
		}
		cfg := testConfig(t, engine, env)
		const pid = "SECRET0001"
		device := func(a *testApp, name string) string {
			t.Helper()
			var d struct{ Secret string }
			a.do("POST", "/v1/products/"+pid+"/devices", map[string]string{"name": name}).decode(t, &d)
			return d.Secret
		}

		// No key: stored as given, and otad says so.
		logs, err := openWithLogs(t, engine, env)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(logs, "device secrets are stored unencrypted") {
			t.Fatalf("no warning without a key:\n%s", logs)
		}
		a := startApp(t, engine, env)
		a.do("POST", "/v1/products", map[string]string{"id": pid, "name": "p"}).wantStatus(t, 201)
		plain := device(a, "before-key")
		if got := storedSecret(t, cfg, pid, "before-key"); got != plain {
			t.Fatalf("without a key the stored secret is %q, want %q", got, plain)
		}
		connectDevice(t, a.MQTTAddr(), pid, "before-key", plain).client.Disconnect(0)
		a.stop()

		// A key: the existing row is encrypted at start; new ones are
		// stored encrypted; both devices sign in.
		logs, err = openWithLogs(t, engine, with("OTAD_SECRET_KEY", key1))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(logs, "unencrypted") || !strings.Contains(logs, "encrypted device secrets") {
			t.Fatalf("start with a key logged:\n%s", logs)
		}
		a = startApp(t, engine, with("OTAD_SECRET_KEY", key1))
		fresh := device(a, "after-key")
		for name, secret := range map[string]string{"before-key": plain, "after-key": fresh} {
			stored := storedSecret(t, cfg, pid, name)
			if !strings.HasPrefix(stored, "v1:") || strings.Contains(stored, secret) {
				t.Fatalf("%s: stored %q, want it encrypted", name, stored)
			}
			connectDevice(t, a.MQTTAddr(), pid, name, secret).client.Disconnect(0)
		}
		a.stop()

		// Another key, or none: otad refuses to start, and changes nothing.
		before := storedSecret(t, cfg, pid, "after-key")
		for _, c := range []struct {
			env  map[string]string
			want string
		}{
			{with("OTAD_SECRET_KEY", key2), "OTAD_SECRET_KEY is not the key"},
			{env, "OTAD_SECRET_KEY is not set"},
		} {
			if _, err := openWithLogs(t, engine, c.env); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("start: %v, want an error saying %q", err, c.want)
			}
		}
		if storedSecret(t, cfg, pid, "after-key") != before {
			t.Fatal("a refused start changed a stored secret")
		}

		// Rotation: the old key opens, the new one seals.
		a = startApp(t, engine, with("OTAD_SECRET_KEY", key2, "OTAD_SECRET_KEY_OLD", key1))
		a.stop()
		if storedSecret(t, cfg, pid, "after-key") == before {
			t.Fatal("rotation did not re-encrypt")
		}
		a = startApp(t, engine, with("OTAD_SECRET_KEY", key2))
		connectDevice(t, a.MQTTAddr(), pid, "before-key", plain).client.Disconnect(0)
		connectDevice(t, a.MQTTAddr(), pid, "after-key", fresh).client.Disconnect(0)
		a.stop()
		if _, err := openWithLogs(t, engine, with("OTAD_SECRET_KEY", key1)); err == nil {
			t.Fatal("the key rotated away still opens the secrets")
		}
	})
}
