// Package droneenv turns a step's `settings:` into the PLUGIN_* environment the way Drone's
// docker runner does (drone-runner-docker internal/encoder), so tests can run the plugin exactly
// as Drone would from a .drone.yml (drone-runner-docker's settings encoder, engine/compiler/step.go
// and internal/encoder/encoder.go in its sources).
package droneenv

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// Secret is a setting given as {from_secret: name}; Drone resolves it at run time.
type Secret struct{ Name string }

// Encode turns settings (as YAML 1.1 decodes them: strings, bools, ints, floats, lists, maps)
// into PLUGIN_<KEY> variables: scalars as text, lists of scalars comma-joined, anything else as
// JSON. Keys are upper-cased and otherwise kept. Nil values are skipped; secrets are looked up in
// secrets and arrive empty when missing, as Drone passes them.
func Encode(settings map[any]any, secrets map[string]string) (map[string]string, error) {
	env := map[string]string{}
	for k, v := range settings {
		key := "PLUGIN_" + strings.ToUpper(fmt.Sprint(k))
		if v == nil {
			continue
		}
		if m, ok := v.(map[any]any); ok {
			if name, ok := m["from_secret"]; ok {
				env[key] = secrets[fmt.Sprint(name)]
				continue
			}
		}
		s, err := encodeValue(v)
		if err != nil {
			return nil, fmt.Errorf("setting %v: %w", k, err)
		}
		env[key] = s
	}
	return env, nil
}

func encodeValue(v any) (string, error) {
	switch x := v.(type) {
	case string:
		return x, nil
	case bool:
		return strconv.FormatBool(x), nil
	case int:
		return strconv.Itoa(x), nil
	case int64:
		return strconv.FormatInt(x, 10), nil
	case uint64:
		return strconv.FormatUint(x, 10), nil
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64), nil
	case []any:
		items := make([]string, 0, len(x))
		for _, item := range x {
			switch item.(type) {
			case string, bool, int, int64, uint64, float64:
				s, _ := encodeValue(item)
				items = append(items, s)
			default:
				return jsonOf(x)
			}
		}
		return strings.Join(items, ","), nil
	default:
		return jsonOf(normalize(v))
	}
}

func jsonOf(v any) (string, error) {
	b, err := json.Marshal(normalize(v))
	return string(b), err
}

// normalize turns YAML v2's map[any]any into map[string]any so it marshals as a JSON object.
func normalize(v any) any {
	switch x := v.(type) {
	case map[any]any:
		m := map[string]any{}
		for k, val := range x {
			m[fmt.Sprint(k)] = normalize(val)
		}
		return m
	case []any:
		out := make([]any, len(x))
		for i, val := range x {
			out[i] = normalize(val)
		}
		return out
	}
	return v
}
