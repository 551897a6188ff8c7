// Command drone-gated-prune is a Drone CI plugin (and a plain CLI) that prunes the conservative
// tier of a Docker host — stopped containers, dangling images, unused build cache — only under disk
// pressure, with no CI run live and nothing converging. This file only wires flags and the
// environment to the plugin and returns its exit code.
package main

import (
	"context"
	"io"
	"os"
	"strconv"

	"github.com/urfave/cli/v2"

	"github.com/drone-gated-prune/drone-gated-prune/internal/outcome"
	"github.com/drone-gated-prune/drone-gated-prune/plugin"
)

// version is stamped at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(os.Args, os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if err := plugin.Prepare(args[1:], os.Getenv, os.Environ); err != nil {
		return plugin.Refuse(stderr, err)
	}
	code := outcome.ExitOK
	app := &cli.App{
		Name:      "drone-gated-prune",
		Usage:     "prune stopped containers, dangling images and unused build cache only under disk pressure, with no CI run live",
		Version:   version,
		Flags:     flags(),
		Writer:    stdout,
		ErrWriter: stderr,
		// The error is returned as it is: one that carried an exit code would make the flag
		// library exit the process itself. Refuse makes it a usage error (exit 2).
		OnUsageError: func(_ *cli.Context, err error, _ bool) error { return err },
		Action: func(c *cli.Context) error {
			code = plugin.Main(context.Background(), plugin.Invocation{Raw: given(c), Getenv: os.Getenv,
				Stdout: stdout, Stderr: stderr, Version: version, Signals: plugin.TerminationSignals()})
			return nil
		},
	}
	if err := app.Run(args); err != nil {
		return plugin.Refuse(stderr, err)
	}
	return code
}

// flags declares one flag per setting, bound to its PLUGIN_* variable.
func flags() []cli.Flag {
	var out []cli.Flag
	for _, s := range plugin.Settings {
		env := []string{plugin.EnvName(s.Key)}
		if s.Bool {
			out = append(out, &cli.BoolFlag{Name: plugin.FlagName(s.Key), Usage: s.Usage, EnvVars: env})
			continue
		}
		out = append(out, &cli.StringFlag{Name: plugin.FlagName(s.Key), Usage: s.Usage, EnvVars: env, Value: s.Default})
	}
	return out
}

// given is the settings set on the command line or in the environment, as raw values.
func given(c *cli.Context) map[string]string {
	raw := map[string]string{}
	for _, s := range plugin.Settings {
		name := plugin.FlagName(s.Key)
		switch {
		case !c.IsSet(name):
		case s.Bool:
			raw[s.Key] = strconv.FormatBool(c.Bool(name))
		default:
			raw[s.Key] = c.String(name)
		}
	}
	return raw
}
