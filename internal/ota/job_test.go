package ota

import "testing"

func TestExecCanTransition(t *testing.T) {
	for _, c := range []struct {
		from, to string
		ok       bool
	}{
		{ExecQueued, ExecNotified, true},
		{ExecNotified, ExecDownloading, true},
		{ExecDownloading, ExecBurning, true},
		{ExecBurning, ExecDone, true},
		{ExecDownloading, ExecDone, true}, // SDK samples skip burning
		{ExecNotified, ExecDone, true},    // report_version equal to the target
		{ExecDownloading, ExecDownloading, false},
		{ExecBurning, ExecDownloading, false}, // late report
		{ExecDone, ExecDownloading, false},    // downloading after done changes nothing
		{ExecDone, ExecFailed, false},
		{ExecCanceled, ExecQueued, false},
		{ExecQueued, ExecCanceled, true},
		{ExecNotified, ExecTimedOut, true},
		{ExecBurning, ExecFailed, true},
		{ExecFailed, ExecQueued, true}, // retry
		{ExecTimedOut, ExecNotified, true},
		{ExecFailed, ExecDone, false},
	} {
		if got := ExecCanTransition(c.from, c.to); got != c.ok {
			t.Errorf("ExecCanTransition(%s, %s) = %v, want %v", c.from, c.to, got, c.ok)
		}
	}
	for _, s := range ExecStates {
		want := s == ExecDone || s == ExecFailed || s == ExecTimedOut || s == ExecCanceled
		if ExecTerminal(s) != want {
			t.Errorf("ExecTerminal(%s) = %v", s, !want)
		}
	}
}
