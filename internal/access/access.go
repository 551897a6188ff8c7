// Package access is the Engine API the plugin may send: every call, with the section of the
// socket-proxy pattern (an HAProxy in front of the Docker socket allowing API sections such as
// INFO, CONTAINERS, IMAGES, and POST and DELETE apart, everything else 403) that lets it through.
// The same list drives the tests' recording proxy, the HAProxy configuration the tests run and
// docs/security.md, so the three cannot drift apart.
package access

import (
	"fmt"
	"regexp"
	"strings"
	"sync"
)

// Call is one Engine API request the plugin sends.
type Call struct {
	Method string
	// Path is as the Engine API reference writes it, without the version prefix; {name} stands for
	// one path segment.
	Path string
	// Section is the socket proxy's section for the path (the first segment, upper-cased).
	Section string
}

// Calls is every request the plugin may send, in the order the docs list them.
var Calls = []Call{
	// The client's API version negotiation: HEAD, and GET where a daemon refuses HEAD.
	{"HEAD", "/_ping", "PING"},
	{"GET", "/_ping", "PING"},
	{"GET", "/info", "INFO"},
	{"GET", "/containers/json", "CONTAINERS"},
	{"GET", "/containers/{id}/json", "CONTAINERS"},
	{"POST", "/containers/prune", "CONTAINERS"},
	{"GET", "/images/json", "IMAGES"},
	{"GET", "/images/{name}/json", "IMAGES"},
	{"POST", "/images/prune", "IMAGES"},
	{"DELETE", "/images/{name}", "IMAGES"},
	{"GET", "/system/df", "SYSTEM"},
	{"POST", "/build/prune", "BUILD"},
	{"GET", "/services", "SERVICES"},
	{"POST", "/services/create", "SERVICES"},
	{"DELETE", "/services/{id}", "SERVICES"},
	{"GET", "/tasks", "TASKS"},
	{"GET", "/tasks/{id}/logs", "TASKS"},
	{"GET", "/nodes", "NODES"},
}

var version = regexp.MustCompile(`^/v[0-9]+\.[0-9]+`)

// pathPattern is the path as a regular expression over a request's path, version prefix optional.
func (c Call) pathPattern() string {
	var b strings.Builder
	b.WriteString(`^(/v[0-9]+\.[0-9]+)?`)
	for _, seg := range strings.Split(strings.TrimPrefix(c.Path, "/"), "/") {
		b.WriteString("/")
		if strings.HasPrefix(seg, "{") {
			b.WriteString(`[^/]+`)
		} else {
			b.WriteString(regexp.QuoteMeta(seg))
		}
	}
	b.WriteString("$")
	return b.String()
}

// callPatterns are the calls' path patterns, in the order of Calls, compiled on first use: only
// a refusal or a test looks a request up, and compiling them at start-up cost every run 0.7 ms.
var callPatterns = sync.OnceValue(func() []*regexp.Regexp {
	out := make([]*regexp.Regexp, len(Calls))
	for i, c := range Calls {
		out[i] = regexp.MustCompile(c.pathPattern())
	}
	return out
})

// String is the call as the docs write it.
func (c Call) String() string { return c.Method + " " + c.Path }

// Allow is what the socket proxy must allow for the call: its section, and POST or DELETE for a
// call that changes something.
func (c Call) Allow() string {
	if c.Method == "POST" || c.Method == "DELETE" {
		return c.Section + " and " + c.Method
	}
	return c.Section
}

// Find is the call a request is, if the plugin may send it.
func Find(method, path string) (Call, bool) {
	for i, c := range Calls {
		if method == c.Method && callPatterns()[i].MatchString(path) {
			return c, true
		}
	}
	return Call{}, false
}

// Route is a request as the docs write it: the method and the path without the version prefix.
func Route(method, path string) string {
	return method + " " + version.ReplaceAllString(path, "")
}

// Section is the socket proxy's section for a path the list does not hold (for a refusal's text).
func Section(path string) string {
	seg, _, _ := strings.Cut(strings.TrimPrefix(version.ReplaceAllString(path, ""), "/"), "/")
	return strings.ToUpper(strings.TrimPrefix(seg, "_"))
}

// HAProxyConfig is an HAProxy configuration that listens on the unix socket listen and passes to
// the engine's unix socket exactly the calls given, each by its method and path, and answers
// everything else 403.
func HAProxyConfig(listen, engine string, calls []Call) string {
	var b strings.Builder
	fmt.Fprintf(&b, "global\n  maxconn 256\n\ndefaults\n  mode http\n  timeout connect 10s\n  timeout client 15m\n  timeout server 15m\n\n")
	fmt.Fprintf(&b, "frontend engine_api\n  bind unix@%s mode 666\n", listen)
	for _, c := range calls {
		fmt.Fprintf(&b, "  # %s: %s\n  http-request allow if { method %s } { path_reg %s }\n", c, c.Allow(), c.Method, c.pathPattern())
	}
	fmt.Fprintf(&b, "  http-request deny deny_status 403\n  default_backend engine\n\nbackend engine\n  server engine unix@%s\n", engine)
	return b.String()
}
