package plugin

import (
	"math"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Fuzz targets for every parser of user input. Each checks that the parser never panics and that
// whatever it accepts is inside the documented range and reads back the same. Seed corpora are in
// testdata/fuzz/<target>/; .ci/run runs each target briefly.

func FuzzParsePercent(f *testing.F) {
	for _, s := range []string{"80", "80%", "0", "100", "99.5%", "abc", "120", "-5", "80%%", "NaN", "1e2", "0x10", " 80 "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePercent(s)
		if err != nil {
			return
		}
		if math.IsNaN(p) || p < 0 || p > 100 {
			t.Fatalf("ParsePercent(%q) accepted %v", s, p)
		}
		if again, err := ParsePercent(strconv.FormatFloat(p, 'f', -1, 64) + "%"); err != nil || again != p {
			t.Fatalf("%v does not read back: %v %v", p, again, err)
		}
	})
}

func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"500MB", "20GiB", "20GB", "1024", "1.5KiB", "12XB", "-1GiB", "0", "1e9", "99999999999999999999TB", "5 MB"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseSize(s)
		if err != nil {
			return
		}
		if n == 0 {
			t.Fatalf("ParseSize(%q) accepted zero", s)
		}
		if again, err := ParseSize(strconv.FormatUint(n, 10)); err != nil || again != n {
			t.Fatalf("%d bytes do not read back: %d %v", n, again, err)
		}
	})
}

func FuzzParseInodeFloor(f *testing.F) {
	for _, s := range []string{"100000", "5%", "0", "0%", "150%", "lots", "-3", "1.5%"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		floor, err := ParseInodeFloor(s)
		if err != nil {
			return
		}
		if !floor.Set() || (floor.IsPercent && (floor.Percent <= 0 || floor.Percent > 100)) {
			t.Fatalf("ParseInodeFloor(%q) accepted %+v", s, floor)
		}
		if again, err := ParseInodeFloor(floor.String()); err != nil || again != floor {
			t.Fatalf("%+v does not read back: %+v %v", floor, again, err)
		}
	})
}

func FuzzParseDuration(f *testing.F) {
	for _, s := range []string{"0", "90s", "10m", "1h", "-5s", "forever", "1h30m", "9999999h"} {
		f.Add(s, true)
		f.Add(s, false)
	}
	f.Fuzz(func(t *testing.T, s string, allowZero bool) {
		d, err := ParseDuration(s, allowZero)
		if err != nil {
			return
		}
		if d < 0 || (d == 0 && !allowZero) {
			t.Fatalf("ParseDuration(%q, %v) accepted %v", s, allowZero, d)
		}
	})
}

func FuzzParseUntil(f *testing.F) {
	for _, s := range []string{"24h", "1s", "0", "-1h", "yesterday", "1700000000", "1700000000.25", "2026-11-01T10:00:00Z",
		"2099-01-01T00:00:00Z", "1e9", "+1h", "NaN", "2026-11-01T10:00:00.123456789+02:00"} {
		f.Add(s)
	}
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, s string) {
		u, err := ParseUntil(s, now)
		if err != nil {
			return
		}
		switch {
		case u.Age > 0:
		case u.At.Unix() > 0 && !u.At.After(now):
		default:
			t.Fatalf("ParseUntil(%q) accepted %+v: not a positive age nor a past time", s, u)
		}
		if c := u.Cutoff(now); c.After(now) {
			t.Fatalf("ParseUntil(%q) gives a cutoff %s after now", s, c)
		}
	})
}

func FuzzParsePatterns(f *testing.F) {
	for _, s := range []string{"^ci-", "^ci-,-run$", "ci-(", "a,,b", "", "(?i)CI", `\d+`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		res, err := ParsePatterns(s)
		if err != nil {
			return
		}
		// One pattern per list item, as SplitList cuts the list (commas inside brackets stay).
		items, err := SplitList(s)
		if err != nil || len(res) != len(items) {
			t.Fatalf("ParsePatterns(%q) gave %d patterns, SplitList %d items (%v)", s, len(res), len(items), err)
		}
		for i, re := range res {
			if strings.TrimSpace(re.String()) == "" || re.String() != items[i] {
				t.Fatalf("ParsePatterns(%q) pattern %d is %q, item %q", s, i, re.String(), items[i])
			}
		}
	})
}

func FuzzParseLabelSelectors(f *testing.F) {
	for _, s := range []string{"io.drone", "tier=ci", "a,b=c", "=x", "key with space", "!x", "a=b=c", "a,,b", "com.docker.stack.namespace=ci-1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sels, err := ParseLabelSelectors(s)
		if err != nil {
			return
		}
		var parts []string
		for _, sel := range sels {
			if sel.Key == "" || strings.ContainsAny(sel.Key, "=, \t\n!") {
				t.Fatalf("ParseLabelSelectors(%q) accepted key %q", s, sel.Key)
			}
			parts = append(parts, sel.String())
		}
		again, err := ParseLabelSelectors(strings.Join(parts, ","))
		if err != nil || len(again) != len(sels) {
			t.Fatalf("%v does not read back: %v %v", sels, again, err)
		}
		for i := range sels {
			if again[i] != sels[i] {
				t.Fatalf("%v does not read back: %v", sels, again)
			}
		}
	})
}
