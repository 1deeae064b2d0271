package sqltext

import "testing"

func TestSQLText(t *testing.T) {
	if got := Strings([]string{"queued", "notified"}); got != "('queued', 'notified')" {
		t.Errorf("Strings = %s", got)
	}
	if got := Qualify("x.", "a, b,\n\tc"); got != "x.a, x.b, x.c" {
		t.Errorf("Qualify = %s", got)
	}
}
