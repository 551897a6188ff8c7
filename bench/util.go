package main

import (
	"encoding/json"
	"os/exec"
	"strings"
)

func jsonUnmarshal(data []byte, v any) error { return json.Unmarshal(data, v) }

func goEnv(key string) string {
	out, err := exec.Command("go", "env", key).Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}
