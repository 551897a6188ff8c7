// Package plugin acts on a Docker Engine for drone-gated-prune: it reads and validates the
// settings (one table, Settings), asks the engine the questions the gates need (Engine), carries
// out one gated run (Run: measure → gates → prune in order → measure again) and renders what the
// run did (text summary, Drone card, $DRONE_OUTPUT, JSON, Prometheus metrics). Main is the one
// entry point the command calls; the decisions themselves live in package gates.
package plugin
