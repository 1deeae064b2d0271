package storetest

import (
	"encoding/json"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/otad/otad/internal/ota"
)

// tokenEvents returns the token events of the log, as "type id".
func tokenEvents(t *testing.T, s ota.Store) []string {
	t.Helper()
	evs, err := s.EventList(ctx(t), ota.EventListParams{Types: []string{"token.*"}, Limit: ota.MaxPageLimit})
	must(t, err)
	var out []string
	for _, e := range evs {
		var data struct{ ID string }
		mustJSON(t, e.Data, &data)
		out = append(out, e.Type+" "+data.ID)
	}
	return out
}

func testToken(t *testing.T, s ota.Store) {
	n, err := s.TokenCount(ctx(t))
	must(t, err)
	if n != 0 {
		t.Fatalf("TokenCount = %d on a new store", n)
	}
	exp := ota.Now().Add(time.Hour)
	tok := &ota.APIToken{ID: "t1", Name: "ci", Scope: ota.ScopeRead, Hash: "ab12", Origin: ota.TokenOriginAPI, ExpiresAt: &exp, CreatedBy: "t0"}
	must(t, s.TokenCreate(ctx(t), tok))
	if tok.CreatedAt.IsZero() {
		t.Fatal("CreatedAt not set")
	}
	got, err := s.TokenGetByHash(ctx(t), "ab12")
	must(t, err)
	if !reflect.DeepEqual(got, tok) {
		t.Fatalf("TokenGetByHash = %+v, want %+v", got, tok)
	}
	if got, err = s.TokenGet(ctx(t), "t1"); err != nil || !reflect.DeepEqual(got, tok) {
		t.Fatalf("TokenGet = %+v, %v, want %+v", got, err, tok)
	}
	_, err = s.TokenGetByHash(ctx(t), "ffff")
	wantCode(t, err, ota.ENOTFOUND)
	_, err = s.TokenGet(ctx(t), "nope")
	wantCode(t, err, ota.ENOTFOUND)
	wantCode(t, s.TokenCreate(ctx(t), &ota.APIToken{ID: "t2", Name: "x", Scope: ota.ScopeRead, Hash: "ab12"}), ota.ECONFLICT)

	// Last use: recorded, never moved back.
	used := ota.Now()
	must(t, s.TokenTouch(ctx(t), "t1", used))
	must(t, s.TokenTouch(ctx(t), "t1", used.Add(-time.Minute)))
	got, err = s.TokenGet(ctx(t), "t1")
	must(t, err)
	if got.LastUsedAt == nil || !got.LastUsedAt.Equal(used) {
		t.Fatalf("LastUsedAt = %v, want %v", got.LastUsedAt, used)
	}

	for i := range 4 {
		must(t, s.TokenCreate(ctx(t), &ota.APIToken{ID: fmt.Sprintf("t%d", i+2), Name: "n", Scope: ota.ScopeAdmin, Hash: fmt.Sprintf("h%d", i)}))
	}
	// A revoked token is kept (by hash and ID) but no longer listed.
	at := ota.Now()
	r, err := s.TokenRevoke(ctx(t), "t3", at)
	must(t, err)
	if r.RevokedAt == nil || !r.RevokedAt.Equal(at) || r.Name != "n" {
		t.Fatalf("revoked %+v", r)
	}
	_, err = s.TokenRevoke(ctx(t), "t3", at)
	wantCode(t, err, ota.ENOTFOUND)
	_, err = s.TokenRevoke(ctx(t), "nope", at)
	wantCode(t, err, ota.ENOTFOUND)
	if got, err = s.TokenGetByHash(ctx(t), "h1"); err != nil || got.RevokedAt == nil || got.Usable(ota.Now()) {
		t.Fatalf("revoked token read back as %+v, %v", got, err)
	}
	var ids []string
	after := ""
	for range 10 {
		page, err := s.TokenList(ctx(t), ota.TokenListParams{After: after, Limit: 2})
		must(t, err)
		for _, tk := range page {
			ids = append(ids, tk.ID)
		}
		if len(page) < 2 {
			break
		}
		after = page[len(page)-1].ID
	}
	if want := []string{"t1", "t2", "t4", "t5"}; !reflect.DeepEqual(ids, want) {
		t.Fatalf("listed %v, want %v", ids, want)
	}
	if n, err = s.TokenCount(ctx(t)); err != nil || n != 5 {
		t.Fatalf("TokenCount = %d, %v, want 5 (revoked ones count)", n, err)
	}
	if got, want := tokenEvents(t, s), []string{"token.created t1", "token.created t2", "token.created t3", "token.created t4",
		"token.created t5", "token.revoked t3"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("token events %v, want %v", got, want)
	}
}

// testTokenRevokeLastAdmin: the last admin token usable now cannot be
// revoked; an expired one does not count as usable, and revoking a token
// that is not an admin's is never refused.
func testTokenRevokeLastAdmin(t *testing.T, s ota.Store) {
	past := ota.Now().Add(-time.Minute)
	for _, tk := range []*ota.APIToken{
		{ID: "admin", Name: "a", Scope: ota.ScopeAdmin, Hash: "h1"},
		{ID: "expired", Name: "e", Scope: ota.ScopeAdmin, Hash: "h2", ExpiresAt: &past},
		{ID: "op", Name: "o", Scope: ota.ScopeOperator, Hash: "h3"},
		{ID: "admin2", Name: "a2", Scope: ota.ScopeAdmin, Hash: "h4"},
	} {
		must(t, s.TokenCreate(ctx(t), tk))
	}
	_, err := s.TokenRevoke(ctx(t), "admin2", ota.Now())
	must(t, err)
	_, err = s.TokenRevoke(ctx(t), "admin", ota.Now())
	wantCode(t, err, ota.ECONFLICT)
	_, err = s.TokenRevoke(ctx(t), "expired", ota.Now())
	must(t, err)
	_, err = s.TokenRevoke(ctx(t), "op", ota.Now())
	must(t, err)
	if got, err := s.TokenGet(ctx(t), "admin"); err != nil || got.RevokedAt != nil {
		t.Fatalf("the last admin token: %+v, %v", got, err)
	}
}

// testTokenRevokeConcurrent: the only two admin tokens revoked at once,
// each the other's last fellow: exactly one revocation wins.
func testTokenRevokeConcurrent(t *testing.T, s ota.Store) {
	left := ""
	for round := range 5 {
		pair := []string{fmt.Sprintf("a%d", round), fmt.Sprintf("b%d", round)}
		for _, id := range pair {
			must(t, s.TokenCreate(ctx(t), &ota.APIToken{ID: id, Name: id, Scope: ota.ScopeAdmin, Hash: "h" + id}))
		}
		if left != "" { // the previous round's winner leaves the field to the pair
			_, err := s.TokenRevoke(ctx(t), left, ota.Now())
			must(t, err)
		}
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i, id := range pair {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i] = s.TokenRevoke(ctx(t), id, ota.Now())
			}()
		}
		wg.Wait()
		ok := 0
		for i, err := range errs {
			switch {
			case err == nil:
				ok++
			case ota.IsCode(err, ota.ECONFLICT):
				left = pair[i]
			default:
				t.Fatalf("revoke: %v", err)
			}
		}
		if ok != 1 {
			t.Fatalf("round %d: %d of two concurrent revocations of the last admin tokens won (%v)", round, ok, errs)
		}
	}
}

func mustJSON(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
}

// testTokenEnsure: the env token is stored once; a new one replaces
// (revokes) the previous one of its origin, not tokens of other origins;
// a revoked one is not brought back.
func testTokenEnsure(t *testing.T, s ota.Store) {
	env := func(id, hash string) *ota.APIToken {
		return &ota.APIToken{ID: id, Name: "bootstrap", Scope: ota.ScopeAdmin, Hash: hash, Origin: ota.TokenOriginEnv}
	}
	must(t, s.TokenCreate(ctx(t), &ota.APIToken{ID: "gen", Name: "bootstrap", Scope: ota.ScopeAdmin, Hash: "hg", Origin: ota.TokenOriginGenerated}))
	got, err := s.TokenEnsure(ctx(t), env("e1", "h1"))
	must(t, err)
	if got.ID != "e1" || got.RevokedAt != nil {
		t.Fatalf("first ensure = %+v", got)
	}
	// Again (a restart, or another replica), under a new ID: the stored one.
	if got, err = s.TokenEnsure(ctx(t), env("e1-again", "h1")); err != nil || got.ID != "e1" {
		t.Fatalf("second ensure = %+v, %v", got, err)
	}
	if got, err = s.TokenEnsure(ctx(t), env("e2", "h2")); err != nil || got.ID != "e2" {
		t.Fatalf("new env token = %+v, %v", got, err)
	}
	old, err := s.TokenGet(ctx(t), "e1")
	must(t, err)
	if old.RevokedAt == nil {
		t.Fatal("the previous env token was kept")
	}
	if g, err := s.TokenGet(ctx(t), "gen"); err != nil || g.RevokedAt != nil {
		t.Fatalf("a token of another origin was touched: %+v, %v", g, err)
	}
	// The revoked one named again is not re-added, and replaces nothing.
	if got, err = s.TokenEnsure(ctx(t), env("e1-back", "h1")); err != nil || got.ID != "e1" || got.RevokedAt == nil {
		t.Fatalf("revoked env token ensured again = %+v, %v", got, err)
	}
	if cur, err := s.TokenGet(ctx(t), "e2"); err != nil || cur.RevokedAt != nil {
		t.Fatalf("the current env token: %+v, %v", cur, err)
	}
	if got, want := tokenEvents(t, s), []string{"token.created gen", "token.created e1", "token.created e2", "token.revoked e1"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("token events %v, want %v", got, want)
	}
	// Replicas starting at once with the same new token: one is stored.
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if got, err := s.TokenEnsure(ctx(t), env(fmt.Sprintf("e3-%d", i), "h3")); err != nil || got.RevokedAt != nil {
				t.Errorf("concurrent ensure: %+v, %v", got, err)
			}
		}()
	}
	wg.Wait()
	list, err := s.TokenList(ctx(t), ota.TokenListParams{})
	must(t, err)
	var env3 []string
	for _, tk := range list {
		if tk.Origin == ota.TokenOriginEnv {
			env3 = append(env3, tk.ID)
		}
	}
	if len(list) != 2 || len(env3) != 1 || env3[0][:3] != "e3-" {
		t.Fatalf("unrevoked tokens %d, of OTAD_API_TOKEN %v; want the generated one and one e3-*", len(list), env3)
	}
}

func testAudit(t *testing.T, s ota.Store) {
	var ids []int64
	for i := range 5 {
		e := &ota.AuditEntry{TokenID: "t1", TokenName: "ci", Method: "POST", Route: "/v1/products/{pid}/devices",
			Params: map[string]string{"pid": "ABCDEF1234"}, Path: "/v1/products/ABCDEF1234/devices",
			Resource: fmt.Sprintf("/v1/products/ABCDEF1234/devices/d%d", i), Status: 201, ClientAddr: "192.0.2.1"}
		if i == 4 {
			e = &ota.AuditEntry{Method: "DELETE", Path: "/v1/nowhere", Status: 401, ClientAddr: "::1", Params: map[string]string{}}
		}
		must(t, s.AuditAppend(ctx(t), e))
		if e.ID == 0 || e.CreatedAt.IsZero() {
			t.Fatalf("appended %+v: no ID or time", e)
		}
		ids = append(ids, e.ID)
	}
	var got []*ota.AuditEntry
	var after int64
	for range 10 {
		page, err := s.AuditList(ctx(t), ota.AuditListParams{After: after, Limit: 2})
		must(t, err)
		got = append(got, page...)
		if len(page) < 2 {
			break
		}
		after = page[len(page)-1].ID
	}
	if len(got) != 5 {
		t.Fatalf("listed %d entries, want 5", len(got))
	}
	for i, e := range got {
		if e.ID != ids[i] {
			t.Fatalf("entry %d has ID %d, want %d", i, e.ID, ids[i])
		}
	}
	first := got[0]
	if first.TokenName != "ci" || first.Route != "/v1/products/{pid}/devices" || first.Params["pid"] != "ABCDEF1234" ||
		first.Resource != "/v1/products/ABCDEF1234/devices/d0" || first.Status != 201 || first.ClientAddr != "192.0.2.1" {
		t.Fatalf("entry read back as %+v", first)
	}
	if got[4].TokenID != "" || got[4].Params == nil || got[4].Status != 401 {
		t.Fatalf("refused entry read back as %+v", got[4])
	}
	// The event retention prunes the audit log too.
	n, err := s.EventsPrune(ctx(t), ota.Now().Add(time.Hour), 1000)
	must(t, err)
	if n < 5 {
		t.Fatalf("pruned %d rows, want at least the 5 audit entries", n)
	}
	left, err := s.AuditList(ctx(t), ota.AuditListParams{})
	must(t, err)
	if len(left) != 0 {
		t.Fatalf("%d audit entries left after pruning", len(left))
	}
}

func testDeviceSecret(t *testing.T, s ota.Store) {
	p := MustProduct(t, s)
	q := MustProduct(t, s)
	want := map[string]string{}
	for _, pid := range []string{p.ID, q.ID} {
		for i := range 3 {
			d := MustDevice(t, s, pid, fmt.Sprintf("d%d", i))
			want[pid+"/"+d.Name] = d.Secret
		}
	}
	got := map[string]string{}
	var last ota.DeviceSecret
	for range 10 {
		page, err := s.DeviceSecretList(ctx(t), ota.DeviceSecretListParams{AfterProduct: last.ProductID, AfterName: last.Name, Limit: 4})
		must(t, err)
		for _, d := range page {
			if _, ok := got[d.ProductID+"/"+d.Name]; ok {
				t.Fatalf("%s/%s listed twice", d.ProductID, d.Name)
			}
			got[d.ProductID+"/"+d.Name] = d.Stored
			last = d
		}
		if len(page) < 4 {
			break
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("secrets %v, want %v", got, want)
	}
	old := want[p.ID+"/d1"]
	must(t, s.DeviceSecretUpdate(ctx(t), ota.DeviceSecretUpdateParams{ProductID: p.ID, Name: "d1", Old: old, New: "v1:sealed"}))
	d, err := s.DeviceGet(ctx(t), p.ID, "d1")
	must(t, err)
	if d.Secret != "v1:sealed" {
		t.Fatalf("secret after update %q", d.Secret)
	}
	// Compare-and-set: the old value no longer matches; a missing device.
	wantCode(t, s.DeviceSecretUpdate(ctx(t), ota.DeviceSecretUpdateParams{ProductID: p.ID, Name: "d1", Old: old, New: "v1:other"}), ota.ECONFLICT)
	wantCode(t, s.DeviceSecretUpdate(ctx(t), ota.DeviceSecretUpdateParams{ProductID: p.ID, Name: "nope", Old: old, New: "x"}), ota.ECONFLICT)
	if d, _ := s.DeviceGet(ctx(t), p.ID, "d1"); d.Secret != "v1:sealed" {
		t.Fatalf("a lost compare-and-set wrote %q", d.Secret)
	}
}
