package main

import "testing"

func TestBehaviourMix(t *testing.T) {
	m, err := parseBehaviourMix("fail:-4=10%,timeout=5%,offline=5%,rollback=2%,flaky=3%")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{100, 1000, 37} {
		got := map[string]int{}
		for i := range n {
			got[m.of(i, n).String()]++
		}
		want := map[string]float64{"fail:-4": 10, "timeout": 5, "offline": 5, "rollback": 2, "flaky:-5": 3, "ok": 75}
		for k, pct := range want {
			if exp := pct * float64(n) / 100; float64(got[k]) < exp-1 || float64(got[k]) > exp+1 {
				t.Errorf("n=%d: %d devices %s, want about %g", n, got[k], k, exp)
			}
		}
		if a, b := m.of(3, n), m.of(3, n); a != b {
			t.Errorf("not deterministic: %v then %v", a, b)
		}
	}
	for _, bad := range []string{"fail:4=10%", "explode=1%", "ok=50%,fail=60%", "timeout=5", "timeout:1=5%", "fail:x=1%"} {
		if _, err := parseBehaviourMix(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if m, err := parseBehaviourMix(""); err != nil || m.of(0, 1).kind != behaveOK {
		t.Errorf("empty mix: %v %v", m, err)
	}
}
