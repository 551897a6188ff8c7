package plugin

import (
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/drone-gated-prune/drone-gated-prune/gates"
	"github.com/drone-gated-prune/drone-gated-prune/internal/droneenv"
)

// The cc-ci deployment's run-stack pattern, with a comma inside its braces.
const ccciPattern = `^[a-z0-9]{1,4}-[0-9a-f]{6}_ci_commoninternet_net_`

// A list is split only at commas outside braces, brackets and parentheses and not escaped.
func TestSplitList(t *testing.T) {
	cases := map[string][]string{
		ccciPattern:                 {ccciPattern},
		"^ci-," + ccciPattern:       {"^ci-", ccciPattern},
		ccciPattern + ", -run$":     {ccciPattern, "-run$"},
		"a{2,},b":                   {"a{2,}", "b"},
		"[,;]x,y":                   {"[,;]x", "y"},
		"[]a,]b,c":                  {"[]a,]b", "c"},
		"[^],]b,c":                  {"[^],]b", "c"},
		"[[:alpha:],]x,y":           {"[[:alpha:],]x", "y"},
		"(foo,bar),baz":             {"(foo,bar)", "baz"},
		`a\,b,c`:                    {`a\,b`, "c"},
		`a\[,b`:                     {`a\[`, "b"},
		"io.drone,tier=ci":          {"io.drone", "tier=ci"},
		"  spaced , items  ":        {"spaced", "items"},
		"x{1,2}(y,[z,]){3},w":       {"x{1,2}(y,[z,]){3}", "w"},
		"unclosed{1,2,more":         {"unclosed{1,2,more"},
		"closing}first,then,commas": {"closing}first", "then", "commas"},
	}
	for in, want := range cases {
		got, err := SplitList(in)
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("SplitList(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "a,,b", ",a", "a,", " , "} {
		if got, err := SplitList(bad); err == nil {
			t.Errorf("SplitList(%q) = %q, want an error for an empty item", bad, got)
		}
	}
}

// The cc-ci pattern reaches the gate as one pattern whether written as one YAML string, as a
// one-item list or mixed with other items, through Drone's encoding; the halves of a split
// pattern are refused.
func TestPatternsThroughDroneEncoding(t *testing.T) {
	for name, value := range map[string]any{
		"one string":    ccciPattern,
		"one-item list": []any{ccciPattern},
		"mixed list":    []any{"^ci-", ccciPattern, `^build-\d{3,}$`},
	} {
		env, err := droneenv.Encode(map[any]any{"stack_pattern": value}, nil)
		if err != nil {
			t.Fatal(err)
		}
		res, err := ParsePatterns(env["PLUGIN_STACK_PATTERN"])
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var got []string
		for _, re := range res {
			got = append(got, re.String())
		}
		if !slices.Contains(got, ccciPattern) || !res[slices.Index(got, ccciPattern)].MatchString("ab12-c0ffee_ci_commoninternet_net_app") {
			t.Errorf("%s: parsed %q, want the pattern whole and matching the run stack", name, got)
		}
	}
	for _, bad := range []string{"^[a-z0-9]{1", "4}-[0-9a-f]{6}_ci_", "a{", "a{x}", "a]", "x{1,2", "^ci-{"} {
		if _, err := ParsePatterns(bad); err == nil {
			t.Errorf("ParsePatterns(%q) accepted a pattern regexp would read with a literal brace or bracket", bad)
		}
	}
	for _, good := range []string{`a\{1`, `[{}]`, `x{2}`, `x{2,}`, `\]`, `[]]`, `[^]]`, `[[:digit:]]{2}`} {
		if _, err := ParsePatterns(good); err != nil {
			t.Errorf("ParsePatterns(%q): %v", good, err)
		}
	}
}

// The no-run gate's summary line names every pattern exactly as the operator wrote it, whether the
// gate is open or closed.
func TestSummaryNamesEveryPatternAsParsed(t *testing.T) {
	items := []string{ccciPattern, `^ci-\d+$`, `[,;]x`, `(a,b)c`}
	patterns, err := ParsePatterns(strings.Join(items, ","))
	if err != nil {
		t.Fatal(err)
	}
	if len(patterns) != len(items) {
		t.Fatalf("%d patterns from %d items", len(patterns), len(items))
	}
	open := gates.LiveRuns(gates.Workload{}, gates.RunPolicy{Patterns: patterns})
	closed := gates.LiveRuns(gates.Workload{Containers: []gates.Container{{Name: "ci-7", State: "running"}}}, gates.RunPolicy{Patterns: patterns})
	if !open.Open || closed.Open {
		t.Fatalf("open %v, closed %v; want an open and a closed gate", open.Open, closed.Open)
	}
	for _, v := range []gates.Verdict{open, closed} {
		for _, item := range items {
			if !strings.Contains(v.Reason, strconv.Quote(item)) {
				t.Errorf("reason %q does not name pattern %q as written", v.Reason, item)
			}
		}
	}
}

// A label selector splits at its first "=": Docker label values may hold "=" themselves.
func TestLabelSelectorValueHoldsEquals(t *testing.T) {
	got, err := ParseLabelSelectors("key=a=b,plain,empty=")
	want := []gates.LabelSelector{{Key: "key", Value: "a=b", HasValue: true}, {Key: "plain"}, {Key: "empty", HasValue: true}}
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("ParseLabelSelectors = %v, %v; want %v", got, err, want)
	}
	if !got[0].Matches(map[string]string{"key": "a=b"}) || got[0].Matches(map[string]string{"key": "a"}) {
		t.Errorf("%v matches the wrong values", got[0])
	}
}
