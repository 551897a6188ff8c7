package droneenv

import (
	"testing"

	"gopkg.in/yaml.v2"
)

// The cases of drone-runner-docker's encoder tests, through a YAML 1.1 parser as Drone uses.
func TestEncode(t *testing.T) {
	var settings map[any]any
	src := `
threshold: 80
ratio: 42.424242
dry_run: true
answer: yes
name: "prune"
stack_pattern: [foo, bar, baz]
numbers: [1, 1, 2, 3, 5, 8]
people: [{name: john}]
labels: {foo: bar}
token: {from_secret: prune_token}
missing: {from_secret: nope}
empty:
`
	if err := yaml.Unmarshal([]byte(src), &settings); err != nil {
		t.Fatal(err)
	}
	env, err := Encode(settings, map[string]string{"prune_token": "s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"PLUGIN_THRESHOLD": "80", "PLUGIN_RATIO": "42.424242", "PLUGIN_DRY_RUN": "true", "PLUGIN_ANSWER": "true",
		"PLUGIN_NAME": "prune", "PLUGIN_STACK_PATTERN": "foo,bar,baz", "PLUGIN_NUMBERS": "1,1,2,3,5,8",
		"PLUGIN_PEOPLE": `[{"name":"john"}]`, "PLUGIN_LABELS": `{"foo":"bar"}`, "PLUGIN_TOKEN": "s3cret", "PLUGIN_MISSING": "",
	}
	for k, v := range want {
		if got, ok := env[k]; !ok || got != v {
			t.Errorf("%s = %q (set %v), want %q", k, got, ok, v)
		}
	}
	if _, ok := env["PLUGIN_EMPTY"]; ok {
		t.Errorf("a nil setting must be skipped")
	}
	if len(env) != len(want) {
		t.Errorf("got %d variables, want %d: %v", len(env), len(want), env)
	}
}
