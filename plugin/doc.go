// Package plugin is drone-gated-prune's settings and its run: it reads and validates the settings
// (one table, Settings), carries out one gated run (Run: measure → gates → prune in order, the
// gates re-checked before each phase → measure again) and applies the prune rules (rules.go) to
// what it asks the engine through the Engine interface. Main is the one entry point the command
// calls. The decisions live in package gates, the engine adapter in internal/engine, the report
// and its renderers in internal/report.
package plugin
