package main

import (
	"fmt"
	"strconv"
	"strings"
)

// Behaviours a simulated device can follow when otad orders an upgrade.
const (
	behaveOK       = "ok"       // download, check, burn, done, report the new version
	behaveFail     = "fail"     // download, then report fail with the code (default -5), every attempt
	behaveFlaky    = "flaky"    // fail the first attempt with the code (default -5), succeed on the next
	behaveTimeout  = "timeout"  // download, then never report again (the attempt times out)
	behaveStall    = "stall"    // stop half way through the download and never report again
	behaveOffline  = "offline"  // drop offline half way through the download, come back, resume with Range
	behaveRollback = "rollback" // report done, then report_version of the old version
)

// behaviour is what one device does with update_firmware.
type behaviour struct {
	kind string
	code int // fail, flaky: the result_code reported
}

func (b behaviour) String() string {
	if b.kind == behaveFail || b.kind == behaveFlaky {
		return b.kind + ":" + strconv.Itoa(b.code)
	}
	return b.kind
}

// parseBehaviour reads "ok", "fail:-4", "flaky", "timeout", "stall",
// "offline" or "rollback".
func parseBehaviour(s string) (behaviour, error) {
	kind, arg, hasArg := strings.Cut(strings.TrimSpace(s), ":")
	b := behaviour{kind: kind}
	switch kind {
	case behaveFail, behaveFlaky:
		b.code = -5
		if hasArg {
			n, err := strconv.Atoi(arg)
			if err != nil || n >= 0 {
				return b, fmt.Errorf("behaviour %q: the code must be a negative number such as -4", s)
			}
			b.code = n
		}
		return b, nil
	case behaveOK, behaveTimeout, behaveStall, behaveOffline, behaveRollback:
		if hasArg {
			return b, fmt.Errorf("behaviour %q takes no argument", s)
		}
		return b, nil
	}
	return b, fmt.Errorf("unknown behaviour %q (ok, fail:CODE, flaky:CODE, timeout, stall, offline, rollback)", s)
}

// behaviourMix assigns behaviours to shares of the devices, e.g.
// "fail:-4=10%,timeout=5%,offline=5%,rollback=2%"; the rest succeed.
type behaviourMix []struct {
	b   behaviour
	pct float64
}

func parseBehaviourMix(s string) (behaviourMix, error) {
	var mix behaviourMix
	total := 0.0
	for part := range strings.SplitSeq(s, ",") {
		if strings.TrimSpace(part) == "" {
			continue
		}
		name, share, ok := strings.Cut(part, "=")
		if !ok || !strings.HasSuffix(share, "%") {
			return nil, fmt.Errorf("-behaviour: %q is not NAME=PERCENT%%", part)
		}
		b, err := parseBehaviour(name)
		if err != nil {
			return nil, fmt.Errorf("-behaviour: %w", err)
		}
		pct, err := strconv.ParseFloat(strings.TrimSuffix(share, "%"), 64)
		if err != nil || pct < 0 {
			return nil, fmt.Errorf("-behaviour: bad share in %q", part)
		}
		total += pct
		mix = append(mix, struct {
			b   behaviour
			pct float64
		}{b, pct})
	}
	if total > 100 {
		return nil, fmt.Errorf("-behaviour: shares add up to %g%%, more than 100%%", total)
	}
	return mix, nil
}

// of gives device i of n its behaviour, deterministically: the shares are
// laid out in order over the device indexes, so the first devices of the
// file get the first behaviour listed. A share of p% of n devices is
// round(p*n/100) devices.
func (m behaviourMix) of(i, n int) behaviour {
	at := (float64(i) + 0.5) * 100 / float64(n) // the device's position, in percent
	cum := 0.0
	for _, e := range m {
		cum += e.pct
		if at < cum {
			return e.b
		}
	}
	return behaviour{kind: behaveOK}
}
