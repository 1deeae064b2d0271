package main

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/jackc/pgx/v5"

	"github.com/otad/otad/internal/ota"
	"github.com/otad/otad/internal/store/testdb"
)

// A database outage is answered 503 with Retry-After, not 500, and the
// API answers again once the database is back.
func TestDatabaseOutage503(t *testing.T) {
	dbURL := testdb.PostgresURL(t)
	a := startApp(t, "postgres", map[string]string{"OTAD_DATABASE_URL": dbURL})
	a.do("POST", "/v1/products", map[string]string{"id": "OUTAGE0001", "name": "o"}).wantStatus(t, 201)

	outage := newOutage(t, dbURL)
	// The outage: no new connections, and every open one cut.
	outage.start()
	outage.cut()

	r := a.do("GET", "/v1/products", nil)
	r.wantProblem(t, 503, "unavailable")
	if r.Header.Get("Retry-After") == "" {
		t.Fatal("503 without Retry-After")
	}
	outage.end()
	waitFor(t, "the API to answer again", func() bool { return a.do("GET", "/v1/products", nil).StatusCode == 200 })
}

// A database outage while 20 devices keep reporting (and reconnecting when
// dropped) and a console client keeps calling writes a bounded log: at
// most logBurst lines of any message a second, and a few KiB a second in
// all, where every refused report and request used to be a line of its
// own. The real binary, its stderr counted.
func TestOutageLogsQuiet(t *testing.T) {
	dbURL := testdb.PostgresURL(t)
	mqttAddr := freeAddr(t)
	p := startProcess(t, map[string]string{
		"OTAD_HTTP_ADDR": "127.0.0.1:0", "OTAD_MQTT_ADDR": mqttAddr, "OTAD_DATA_DIR": t.TempDir(),
		"OTAD_API_TOKEN": testToken, "OTAD_DATABASE_URL": dbURL,
	})
	c := &consoleClient{t: t, base: p.httpURL}
	pid := "OUTLOG0001"
	c.call("POST", "/v1/products", strings.NewReader(`{"id": "`+pid+`", "name": "o"}`), 201, nil)
	const devices = 20
	secrets := map[string]string{}
	for i := range devices {
		name := fmt.Sprintf("d%02d", i)
		var d struct{ Secret string }
		c.call("POST", "/v1/products/"+pid+"/devices", strings.NewReader(`{"name": "`+name+`", "version": "1.0"}`), 201, &d)
		secrets[name] = d.Secret
	}
	clients := map[string]paho.Client{}
	for name, secret := range secrets {
		clients[name] = connectDevice(t, mqttAddr, pid, name, secret).client
	}

	outage := newOutage(t, dbURL)
	before := len(p.stderr.String())
	start := time.Now()
	outage.start()
	outage.cut()

	// 10 rounds: every device reports (reconnecting first when it was
	// dropped, which needs the database too), the console lists devices.
	refused := 0
	for round := range 10 {
		var wg sync.WaitGroup
		for name, cl := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if !cl.IsConnectionOpen() {
					cl.Connect().WaitTimeout(time.Second)
					return
				}
				cl.Publish(ota.ReportTopic(pid, name), 1, false, fmt.Sprintf(`{"type":"report_version","report":{"version":"1.%d"}}`, round)).WaitTimeout(time.Second)
			}()
		}
		for range 3 {
			resp, err := http.DefaultClient.Do(authorized(t, "GET", p.httpURL+"/v1/products/"+pid+"/devices"))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode == 503 {
				refused++
			}
		}
		wg.Wait()
	}
	took := time.Since(start)
	outage.end()
	waitFor(t, "the API to answer again", func() bool {
		resp, err := http.DefaultClient.Do(authorized(t, "GET", p.httpURL+"/v1/products"))
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	logged := p.stderr.String()[before:]
	if refused == 0 {
		t.Fatal("no request was refused: the outage did not happen")
	}
	// At most logBurst lines of one message per second (the next line let
	// through says how many were held back).
	perSecond, perMessage := map[string]int{}, map[string]int{}
	lines := strings.Split(strings.TrimSpace(logged), "\n")
	for _, line := range lines {
		ts, _, _ := strings.Cut(strings.TrimPrefix(line, "time="), " ")
		_, msg, _ := strings.Cut(line, " msg=")
		if q, err := strconv.QuotedPrefix(msg); err == nil {
			msg = q // the whole message, not its first word
		} else {
			msg, _, _ = strings.Cut(msg, " ")
		}
		perMessage[msg]++
		if len(ts) >= 19 {
			perSecond[ts[:19]+" "+msg]++
		}
	}
	for k, n := range perSecond {
		if n > logBurst {
			t.Errorf("%d lines in one second: %s", n, k)
		}
	}
	perSec := float64(len(logged)) / took.Seconds()
	t.Logf("outage of %s: %d requests refused, %d log lines, %d bytes (%.0f bytes/s); lines by message: %v",
		took.Round(time.Millisecond), refused, len(lines), len(logged), perSec, perMessage)
	if limit := 64 << 10; len(logged) > limit+int(took.Seconds()*(16<<10)) {
		t.Errorf("the outage wrote %d bytes of log in %s:\n%.3000s", len(logged), took, logged)
	}
}

func authorized(t *testing.T, method, url string) *http.Request {
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+testToken)
	return req
}

// outage takes a test database away from its clients and gives it back,
// through an admin connection of its own.
type outage struct {
	t     *testing.T
	db    string
	admin *pgx.Conn
}

func newOutage(t *testing.T, dbURL string) *outage {
	t.Helper()
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	admin, err := pgx.Connect(context.Background(), os.Getenv("OTAD_TEST_POSTGRES_URL"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close(context.Background()) })
	return &outage{t: t, db: strings.TrimPrefix(u.Path, "/"), admin: admin}
}

func (o *outage) exec(q string) {
	o.t.Helper()
	if _, err := o.admin.Exec(context.Background(), q); err != nil {
		o.t.Fatal(err)
	}
}

// start refuses new connections to the database, until end or the test's
// end.
func (o *outage) start() {
	o.exec(`ALTER DATABASE ` + o.db + ` ALLOW_CONNECTIONS false`)
	o.t.Cleanup(func() { o.admin.Exec(context.Background(), `ALTER DATABASE `+o.db+` ALLOW_CONNECTIONS true`) })
}

// cut ends every open connection to it.
func (o *outage) cut() {
	o.exec(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '` + o.db + `' AND pid <> pg_backend_pid()`)
}

// end lets connections in again.
func (o *outage) end() { o.exec(`ALTER DATABASE ` + o.db + ` ALLOW_CONNECTIONS true`) }
