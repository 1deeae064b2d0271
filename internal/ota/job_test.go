package ota

import "testing"

func TestExecEnded(t *testing.T) {
	for _, s := range ExecStates {
		want := s == ExecDone || s == ExecFailed || s == ExecTimedOut || s == ExecCanceled || s == ExecRolledBack
		if ExecEnded(s) != want {
			t.Errorf("ExecEnded(%s) = %v", s, !want)
		}
		if ExecInFlight(s) != (s == ExecNotified || s == ExecDownloading || s == ExecBurning) {
			t.Errorf("ExecInFlight(%s) wrong", s)
		}
	}
}
