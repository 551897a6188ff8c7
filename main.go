// Command drone-gated-prune is a Drone CI plugin (and a plain CLI) that prunes the conservative
// tier of a Docker host — stopped containers, dangling images, unused build cache — only under disk
// pressure, with no CI run live and nothing converging. This file only wires flags and the
// environment to plugin.Config and maps the outcome to an exit code.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/joho/godotenv"
	"github.com/sirupsen/logrus"
	"github.com/urfave/cli/v2"

	"github.com/drone-gated-prune/drone-gated-prune/plugin"
)

// version is stamped at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(os.Args, os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fail := func(err error) int {
		fmt.Fprintln(stderr, "drone-gated-prune:", err)
		var coder interface{ ExitCode() int }
		if errors.As(err, &coder) {
			return coder.ExitCode()
		}
		return plugin.ExitInvalid
	}
	if path := plugin.EnvFilePath(args, os.Getenv); path != "" {
		if err := godotenv.Load(path); err != nil {
			return fail(&plugin.SettingError{Key: "env_file", Value: path, Accepted: "a readable env file (" + err.Error() + ")"})
		}
	}
	if err := plugin.CheckArgs(args[1:]); err != nil {
		return fail(err)
	}
	if err := plugin.CheckEnvironment(os.Environ()); err != nil {
		return fail(err)
	}
	code := plugin.ExitOK
	app := &cli.App{
		Name:      "drone-gated-prune",
		Usage:     "prune stopped containers, dangling images and unused build cache only under disk pressure, with no CI run live",
		Version:   version,
		Flags:     flags(),
		Writer:    stdout,
		ErrWriter: stderr,
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return fmt.Errorf("invalid command line: %w (see --help)", err)
		},
		Action: func(c *cli.Context) error {
			code = execute(c, stdout, stderr)
			return nil
		},
	}
	if err := app.Run(args); err != nil {
		return fail(err)
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

func execute(c *cli.Context, stdout, stderr io.Writer) int {
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
	cfg, err := plugin.ParseConfig(raw, time.Now())
	if err != nil {
		fmt.Fprintln(stderr, "drone-gated-prune:", err)
		return plugin.ExitInvalid
	}
	cfg.Runs.Own, cfg.CI = plugin.ReadCIEnvironment(os.Getenv)

	log := logrus.New()
	log.SetOutput(stderr)
	log.SetLevel(cfg.LogLevel)
	if cfg.LogFormat == "json" {
		log.SetFormatter(&logrus.JSONFormatter{})
	}

	engine, err := plugin.NewEngine(nil)
	if err != nil {
		report := plugin.FailedReport(version, cfg, err)
		if emitErr := plugin.Emit(stdout, cfg, report); emitErr != nil {
			log.WithError(emitErr).Error("writing the summary")
		}
		fmt.Fprintln(stderr, "drone-gated-prune:", err)
		return report.ExitCode
	}
	defer engine.Close()

	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(signals)
	go func() {
		if sig, ok := <-signals; ok {
			cancel(fmt.Errorf("received %s", sig))
		}
	}()

	r := &plugin.Run{Config: cfg, Engine: engine, Log: log, Version: version, PollInterval: 5 * time.Second}
	report, runErr := r.Exec(ctx)
	if err := plugin.Emit(stdout, cfg, report); err != nil {
		log.WithError(err).Error("writing the summary")
		if runErr == nil {
			runErr = &plugin.RuntimeError{What: "writing the summary", Err: err}
			report.ExitCode = plugin.ExitRuntime
		}
	}
	if runErr != nil {
		fmt.Fprintln(stderr, "drone-gated-prune:", runErr)
	}
	return report.ExitCode
}
