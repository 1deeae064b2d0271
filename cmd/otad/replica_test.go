package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/otad/otad/internal/firmware/firmwaretest"
	"github.com/otad/otad/internal/ota"
	"github.com/otad/otad/internal/store/testdb"
)

// Three otad replicas (real binaries) on one PostgreSQL, devices (otasim)
// spread over them, each replica's devices failing over to the next one as
// behind a TCP load balancer. A job created through replica A with
// max_concurrent 2 never has more than 2 devices in flight on any poll;
// replica B is SIGKILLed half way, its devices reconnect to C, and the job
// completes with every device done and no update_firmware beyond one per
// attempt and reconnect. Disabling a device through A closes its session on
// C, and C refuses it afterwards.
func TestReplicas(t *testing.T) {
	url := testdb.PostgresURL(t)
	bucket := firmwaretest.S3Config(t, 0) // replicas share the bucket as they share the database
	const replicas, perReplica = 3, 3
	type replica struct {
		p    *otadProcess
		c    *consoleClient
		mqtt string
	}
	var reps []replica
	for range replicas {
		env := map[string]string{
			"OTAD_HTTP_ADDR": freeAddr(t), "OTAD_MQTT_ADDR": freeAddr(t), "OTAD_DATA_DIR": t.TempDir(),
			"OTAD_API_TOKEN": testToken, "OTAD_DATABASE_URL": url,
			"OTAD_S3_BUCKET": bucket.Bucket, "OTAD_S3_ENDPOINT": bucket.Endpoint, "OTAD_S3_PATH_STYLE": "true",
			"AWS_ACCESS_KEY_ID": bucket.AccessKeyID, "AWS_SECRET_ACCESS_KEY": bucket.SecretAccessKey, "AWS_REGION": bucket.Region,
		}
		p := startProcess(t, env)
		reps = append(reps, replica{p: p, c: &consoleClient{t: t, base: p.httpURL}, mqtt: env["OTAD_MQTT_ADDR"]})
	}
	a, c := reps[0].c, reps[2].c
	pid := "E2EREP0001"
	a.call("POST", "/v1/products", strings.NewReader(`{"id": "`+pid+`", "name": "replicas"}`), 201, nil)
	a.call("POST", "/v1/products/"+pid+"/firmware?version=2.0.0", strings.NewReader(strings.Repeat("firmware", 1024)), 201, nil)
	register := func(r replica, name string) string {
		var d struct{ Secret string }
		r.c.call("POST", "/v1/products/"+pid+"/devices", strings.NewReader(`{"name": "`+name+`", "version": "1.0.0"}`), 201, &d)
		return d.Secret
	}
	var sims []*simProcess
	for i, r := range reps {
		var csv strings.Builder
		csv.WriteString("product_id,device_name,secret\n")
		for k := range perReplica {
			name := fmt.Sprintf("r%d-%d", i, k)
			fmt.Fprintf(&csv, "%s,%s,%s\n", pid, name, register(r, name))
		}
		file := filepath.Join(t.TempDir(), "devices.csv")
		if err := os.WriteFile(file, []byte(csv.String()), 0o600); err != nil {
			t.Fatal(err)
		}
		// Each download takes about half a second.
		failover := r.mqtt + "," + reps[(i+1)%replicas].mqtt
		sims = append(sims, startSim(t, failover, file, "-download-rate", "16384", "-reconnect"))
	}

	var j jobJSON
	a.call("POST", "/v1/products/"+pid+"/jobs", strings.NewReader(`{"firmware_version": "2.0.0", "targets": {"all": true},
		"timeout_seconds": 60, "max_concurrent": 2, "max_retries": 2, "retry_backoff_seconds": 1}`), 201, &j)
	polls, maxSeen := 0, 0
	live := []replica{reps[0], reps[1], reps[2]}
	poll := func() {
		live[polls%len(live)].c.call("GET", "/v1/products/"+pid+"/jobs/"+j.ID, nil, 200, &j)
		polls++
		n := inFlight(j)
		maxSeen = max(maxSeen, n)
		if n > 2 {
			t.Fatalf("%d devices upgrading at once with max_concurrent 2 over %d replicas: %v", n, replicas, j.Counts)
		}
	}
	waitFor(t, "three devices done", func() bool { poll(); return j.Counts["done"] >= 3 })
	if j.CompletedAt != nil {
		t.Fatal("the job finished before a replica was killed")
	}
	reps[1].p.cmd.Process.Kill()
	<-reps[1].p.exited
	live = []replica{reps[0], reps[2]}
	waitFor(t, "the job to complete across the replicas left", func() bool { poll(); return j.CompletedAt != nil })
	if j.Status != "completed" || j.Counts["done"] != replicas*perReplica {
		t.Fatalf("job: %s %v", j.Status, j.Counts)
	}
	var xs struct{ Items []execJSON }
	a.call("GET", "/v1/products/"+pid+"/jobs/"+j.ID+"/devices", nil, 200, &xs)
	attempts := map[string]int{}
	for _, x := range xs.Items {
		attempts[x.DeviceName] = x.Attempts
	}
	for i, sim := range sims {
		devs, _ := sim.stop(t)
		for name, d := range devs {
			// At least once, and no more than the attempts and reconnects
			// explain: no replica notified a device another one holds.
			if d.Version != "2.0.0" || d.Updates < 1 || d.Updates > attempts[name]+d.Reconnects {
				t.Errorf("devices of replica %d, %s: %+v, %d attempts", i, name, d, attempts[name])
			}
		}
	}
	t.Logf("%d polls, at most %d devices in flight", polls, maxSeen)

	// A device held by C, disabled through A.
	secret := register(reps[2], "held-by-c")
	lost := make(chan error, 1)
	dev := connectReplicaDevice(t, reps[2].mqtt, pid, "held-by-c", secret, func(err error) { lost <- err })
	if tok := dev.Publish(ota.ReportTopic(pid, "held-by-c"), 1, false, `{"type":"report_version","report":{"version":"1.0.0"}}`); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		t.Fatalf("report before disabling: %v", tok.Error())
	}
	start := time.Now()
	a.call("PATCH", "/v1/products/"+pid+"/devices/held-by-c", strings.NewReader(`{"disabled": true}`), 200, nil)
	select {
	case <-lost:
		t.Logf("session on replica C closed %s after the disable through A", time.Since(start).Round(time.Millisecond))
	case <-time.After(30 * time.Second):
		t.Fatal("the session on replica C stayed open after the device was disabled through A")
	}
	var d struct{ Online bool }
	waitFor(t, "the device recorded offline", func() bool {
		c.call("GET", "/v1/products/"+pid+"/devices/held-by-c", nil, 200, &d)
		return !d.Online
	})
	// Signing in again through C is refused.
	o := replicaDeviceOptions(reps[2].mqtt, pid, "held-by-c", secret)
	cl := paho.NewClient(o)
	if tok := cl.Connect(); tok.WaitTimeout(30*time.Second) && tok.Error() == nil {
		cl.Disconnect(0)
		t.Fatal("a disabled device signed in again")
	}
}

func replicaDeviceOptions(addr, pid, name, secret string) *paho.ClientOptions {
	user := ota.ClientID(pid, name) + ";21010406;a1b2c;" + strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10)
	pass, _ := ota.SignDeviceUsername(secret, user, ota.SignHMACSHA256)
	return paho.NewClientOptions().AddBroker("tcp://" + addr).
		SetClientID(ota.ClientID(pid, name)).SetUsername(user).SetPassword(pass).
		SetProtocolVersion(4).SetCleanSession(true).SetAutoReconnect(false).SetConnectRetry(false).
		SetConnectTimeout(10 * time.Second)
}

// connectReplicaDevice signs a device in; lost is called when the broker
// closes its connection.
func connectReplicaDevice(t *testing.T, addr, pid, name, secret string, lost func(error)) paho.Client {
	t.Helper()
	o := replicaDeviceOptions(addr, pid, name, secret).SetConnectionLostHandler(func(_ paho.Client, err error) { lost(err) })
	cl := paho.NewClient(o)
	if tok := cl.Connect(); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		t.Fatalf("device connect: %v", tok.Error())
	}
	t.Cleanup(func() { cl.Disconnect(0) })
	return cl
}
