package ota

import (
	"context"
	"encoding/json"
	"reflect"
	"sync"
	"testing"
	"testing/synctest"
)

// TestSignalJSON pins the wire form replicas of different versions exchange.
func TestSignalJSON(t *testing.T) {
	cases := []struct {
		s    Signal
		want string
	}{
		{Signal{Kind: SignalWake}, `{"kind":"wake"}`},
		{Signal{Kind: SignalWake, JobID: "j1"}, `{"kind":"wake","job_id":"j1"}`},
		{Signal{Kind: SignalDisconnect, ProductID: "p1", DeviceName: "d1"}, `{"kind":"disconnect","product_id":"p1","device_name":"d1"}`},
		{Signal{Kind: "k", ProductID: "p", DeviceName: "d", JobID: "j"}, `{"kind":"k","product_id":"p","device_name":"d","job_id":"j"}`},
	}
	for _, c := range cases {
		b, err := json.Marshal(c.s)
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != c.want {
			t.Errorf("Marshal(%+v) = %s, want %s", c.s, b, c.want)
		}
		var back Signal
		if err := json.Unmarshal(b, &back); err != nil || back != c.s {
			t.Errorf("Unmarshal(%s) = %+v, %v; want %+v", b, back, err, c.s)
		}
	}
}

// recorder is a Listen handle that keeps what it was given.
type recorder struct {
	mu  sync.Mutex
	got []Signal
}

func (r *recorder) handle(s Signal) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, s)
}

func (r *recorder) want(t *testing.T, name string, want ...Signal) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if !reflect.DeepEqual(r.got, want) {
		t.Fatalf("%s got %+v, want %+v", name, r.got, want)
	}
}

// listen runs b.Listen on a goroutine of the bubble until the returned
// cancel; done yields Listen's result.
func listen(t *testing.T, b Bus, handle func(Signal)) (cancel func(), done <-chan error) {
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() { errc <- b.Listen(ctx, handle) }()
	t.Cleanup(cancel)
	return cancel, errc
}

func TestLocalBus(t *testing.T) {
	wake := Signal{Kind: SignalWake, JobID: "j1"}
	disconnect := Signal{Kind: SignalDisconnect, ProductID: "p1", DeviceName: "d1"}
	late := Signal{Kind: SignalWake}

	t.Run("every listener gets every signal once, in order", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			b := NewLocalBus()
			if err := b.Send(t.Context(), wake); err != nil {
				t.Fatalf("send with no listener: %v", err)
			}
			var r1, r2 recorder
			listen(t, b, r1.handle)
			stop2, done2 := listen(t, b, r2.handle)
			synctest.Wait()

			for _, s := range []Signal{wake, disconnect} {
				if err := b.Send(t.Context(), s); err != nil {
					t.Fatal(err)
				}
			}
			synctest.Wait()
			r1.want(t, "listener 1", wake, disconnect)
			r2.want(t, "listener 2", wake, disconnect)

			stop2()
			synctest.Wait()
			select {
			case err := <-done2:
				if err != nil {
					t.Fatalf("Listen returned %v after its context ended, want nil", err)
				}
			default:
				t.Fatal("Listen still running after its context ended")
			}
			if err := b.Send(t.Context(), late); err != nil {
				t.Fatal(err)
			}
			synctest.Wait()
			r1.want(t, "listener 1", wake, disconnect, late)
			r2.want(t, "stopped listener 2", wake, disconnect)
		})
	})

	t.Run("handle may send", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			b := NewLocalBus()
			var r1, r2 recorder
			listen(t, b, func(s Signal) {
				r1.handle(s)
				if s.Kind == SignalDisconnect {
					b.Send(t.Context(), late)
				}
			})
			listen(t, b, r2.handle)
			synctest.Wait()
			if err := b.Send(t.Context(), disconnect); err != nil {
				t.Fatal(err)
			}
			synctest.Wait()
			r1.want(t, "sending listener", disconnect, late)
			r2.want(t, "other listener", disconnect, late)
		})
	})

	t.Run("refused sends deliver nothing", func(t *testing.T) {
		canceled, cancel := context.WithCancel(context.Background())
		cancel()
		cases := []struct {
			name string
			ctx  context.Context
			s    Signal
			code string
		}{
			{"no kind", context.Background(), Signal{ProductID: "p1"}, EINVALID},
			{"canceled context", canceled, wake, EINTERNAL},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					b := NewLocalBus()
					var r recorder
					listen(t, b, r.handle)
					synctest.Wait()
					if err := b.Send(c.ctx, c.s); ErrorCode(err) != c.code {
						t.Fatalf("Send = %v, want code %q", err, c.code)
					}
					synctest.Wait()
					r.want(t, "listener")
				})
			})
		}
	})

	t.Run("listen on an ended context returns at once", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if err := NewLocalBus().Listen(ctx, func(Signal) { t.Error("handle called") }); err != nil {
			t.Fatalf("Listen = %v, want nil", err)
		}
	})
}
