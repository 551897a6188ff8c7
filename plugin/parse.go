package plugin

import (
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"

	units "github.com/docker/go-units"
	"github.com/sirupsen/logrus"

	"github.com/drone-gated-prune/drone-gated-prune/gates"
)

// The parsers of user input. Each returns an error that says what is accepted; the caller adds the
// setting's name and value (see SettingError).

// ParsePercent reads "80" or "80%" as a percent from 0 to 100.
func ParsePercent(s string) (float64, error) {
	t := strings.TrimSpace(s)
	t = strings.TrimSuffix(t, "%")
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || f < 0 || f > 100 || strings.ContainsAny(t, "%eExXpP_") {
		return 0, fmt.Errorf("a percent from 0 to 100, like 80 or 80%%")
	}
	return f, nil
}

var sizePattern = regexp.MustCompile(`^\d+(\.\d+)?\s?([kKmMgGtTpP][iI]?)?[bB]?$`)

// ParseSize reads a byte size: "500MB" is decimal (500×10⁶), "20GiB" is binary (20×2³⁰), a bare
// number is bytes. Zero and negative sizes are refused.
func ParseSize(s string) (uint64, error) {
	t := strings.TrimSpace(s)
	accepted := fmt.Errorf("a positive size like 500MB, 20GB or 20GiB")
	if !sizePattern.MatchString(t) {
		return 0, accepted
	}
	var n int64
	var err error
	if strings.ContainsAny(t, "iI") {
		n, err = units.RAMInBytes(t)
	} else {
		n, err = units.FromHumanSize(t)
	}
	if err != nil || n <= 0 {
		return 0, accepted
	}
	return uint64(n), nil
}

// ParseInodeFloor reads a free-inode minimum: a count ("100000") or a percent of all inodes ("5%").
func ParseInodeFloor(s string) (gates.InodeFloor, error) {
	t := strings.TrimSpace(s)
	accepted := fmt.Errorf("a positive inode count like 100000, or a percent of all inodes like 5%%")
	if strings.HasSuffix(t, "%") {
		p, err := ParsePercent(t)
		if err != nil || p == 0 {
			return gates.InodeFloor{}, accepted
		}
		return gates.InodeFloor{Percent: p, IsPercent: true}, nil
	}
	n, err := strconv.ParseUint(t, 10, 64)
	if err != nil || n == 0 {
		return gates.InodeFloor{}, accepted
	}
	return gates.InodeFloor{Count: n}, nil
}

// ParseDuration reads a Go duration ("90s", "10m", "24h"); zero only where allowed.
func ParseDuration(s string, allowZero bool) (time.Duration, error) {
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil || d < 0 || (d == 0 && !allowZero) {
		if allowZero {
			return 0, fmt.Errorf("a duration of zero or more, like 0, 90s, 10m or 1h")
		}
		return 0, fmt.Errorf("a positive duration like 90s, 10m or 1h")
	}
	return d, nil
}

// Until is the age filter: either a duration before the daemon's clock, or a fixed time.
type Until struct {
	// Raw is the value as given.
	Raw string
	// Age is set for a duration.
	Age time.Duration
	// At is set for a Unix timestamp or an RFC 3339 time.
	At time.Time
}

// Cutoff is the moment before which an object is old enough, on the daemon's clock, truncated
// to whole seconds so that the engine's second-resolution lists agree with its prunes.
func (u Until) Cutoff(daemonNow time.Time) time.Time {
	if u.Age > 0 {
		return daemonNow.Add(-u.Age).Truncate(time.Second)
	}
	return u.At.Truncate(time.Second)
}

// ParseUntil reads the age filter: a positive Go duration, a Unix timestamp (seconds, optionally
// with a fraction) or an RFC 3339 time. Zero, negative and future times are refused: each would
// make every object old enough.
func ParseUntil(s string, now time.Time) (Until, error) {
	t := strings.TrimSpace(s)
	accepted := fmt.Errorf("a positive duration like 24h, a Unix timestamp or an RFC 3339 time, in the past")
	u := Until{Raw: t}
	if d, err := time.ParseDuration(t); err == nil {
		if d <= 0 {
			return Until{}, accepted
		}
		u.Age = d
		return u, nil
	}
	if f, err := strconv.ParseFloat(t, 64); err == nil && !strings.ContainsAny(t, "eEnNiI+-xX_") {
		sec, frac := math.Modf(f)
		u.At = time.Unix(int64(sec), int64(frac*1e9))
	} else if at, err := time.Parse(time.RFC3339Nano, t); err == nil {
		u.At = at
	} else {
		return Until{}, accepted
	}
	if u.At.Unix() <= 0 || u.At.After(now) {
		return Until{}, accepted
	}
	return u, nil
}

// SplitList splits a list setting into trimmed items. Drone joins a YAML list with commas, and a
// regular expression has commas of its own ({1,4}, [,;], (a,b)), so the list is split only at
// commas outside braces, brackets and parentheses and not escaped with a backslash. An empty item
// is an error.
func SplitList(s string) ([]string, error) {
	var out []string
	start, depth := 0, 0
	outsideClasses(s, func(i int) int {
		switch s[i] {
		case '{', '(':
			depth++
		case '}', ')':
			depth = max(depth-1, 0)
		case ',':
			if depth == 0 {
				out = append(out, s[start:i])
				start = i + 1
			}
		}
		return 0
	})
	out = append(out, s[start:])
	for i, item := range out {
		out[i] = strings.TrimSpace(item)
		if out[i] == "" {
			return nil, fmt.Errorf("a comma-separated list with no empty items")
		}
	}
	return out, nil
}

// outsideClasses calls visit with the index of each byte of s that is neither escaped by a
// backslash nor inside a character class ([...], where "[]a]", "[^]a]" and "[[:alpha:]]" keep
// their inner brackets); visit returns how many further bytes to skip.
func outsideClasses(s string, visit func(i int) int) {
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case '[':
			i = classEnd(s, i)
		default:
			i += visit(i)
		}
	}
}

// classEnd is the index of the ']' that closes the character class opened at open (len(s) when
// none does: regexp itself refuses that).
func classEnd(s string, open int) int {
	i := open + 1
	if i < len(s) && s[i] == '^' {
		i++
	}
	if i < len(s) && s[i] == ']' {
		i++
	}
	for ; i < len(s); i++ {
		switch {
		case s[i] == '\\':
			i++
		case s[i] == '[' && strings.HasPrefix(s[i:], "[:"):
			if end := strings.Index(s[i+2:], ":]"); end >= 0 {
				i += end + 3
			}
		case s[i] == ']':
			return i
		}
	}
	return len(s)
}

// ParsePatterns reads a list of regular expressions. Go's regexp reads a brace that does not form
// a repetition as a literal, so a pattern cut at a comma ("^[a-z]{1") would compile and match
// nothing; such an item is refused: every brace, bracket and parenthesis outside a character
// class must be balanced and every brace must form a repetition like {2}, {1,4} or {2,}.
func ParsePatterns(s string) ([]*regexp.Regexp, error) {
	items, err := SplitList(s)
	if err != nil {
		return nil, fmt.Errorf("a comma-separated list of regular expressions")
	}
	var out []*regexp.Regexp
	for _, item := range items {
		re, err := regexp.Compile(item)
		if err == nil {
			err = checkBrackets(item)
		}
		if err != nil {
			return nil, fmt.Errorf("a comma-separated list of well-formed regular expressions (%q: %v)", item, err)
		}
		out = append(out, re)
	}
	return out, nil
}

var repetition = regexp.MustCompile(`^\{[0-9]+(,[0-9]*)?\}`)

// checkBrackets finds a brace or bracket outside a character class that regexp would read as a
// literal: a '{' that starts no repetition, a stray '}' or ']'. (regexp refuses unbalanced
// parentheses itself.)
func checkBrackets(p string) error {
	var err error
	outsideClasses(p, func(i int) int {
		if err != nil {
			return 0
		}
		switch c := p[i]; c {
		case '{':
			m := repetition.FindString(p[i:])
			if m == "" {
				err = fmt.Errorf("unbalanced or stray '{' at offset %d (write \\{ for a literal brace)", i)
			}
			return max(len(m)-1, 0)
		case '}', ']':
			err = fmt.Errorf("stray '%c' at offset %d (write \\%c for a literal one)", c, i, c)
		}
		return 0
	})
	return err
}

var labelKeyPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._/-]*$`)

// ParseLabelSelectors reads a list of "key" or "key=value" selectors, split at the first "=": a
// label value may hold "=" itself, as the engine's label filters allow.
func ParseLabelSelectors(s string) ([]gates.LabelSelector, error) {
	accepted := fmt.Errorf("a comma-separated list of label selectors, each key or key=value")
	items, err := SplitList(s)
	if err != nil {
		return nil, accepted
	}
	var out []gates.LabelSelector
	for _, item := range items {
		key, value, hasValue := strings.Cut(item, "=")
		if !labelKeyPattern.MatchString(key) || strings.ContainsAny(value, ",\n") {
			return nil, fmt.Errorf("a comma-separated list of label selectors, each key or key=value (%q is neither)", item)
		}
		out = append(out, gates.LabelSelector{Key: key, Value: value, HasValue: hasValue})
	}
	return out, nil
}

// ParseLogLevel reads a logrus level.
func ParseLogLevel(s string) (logrus.Level, error) {
	l, err := logrus.ParseLevel(strings.TrimSpace(s))
	if err != nil {
		return 0, fmt.Errorf("one of panic, fatal, error, warn, info, debug, trace")
	}
	return l, nil
}

// ParseLogFormat reads the log format: text or json.
func ParseLogFormat(s string) (string, error) {
	f := strings.TrimSpace(s)
	if f != "text" && f != "json" {
		return "", fmt.Errorf("text or json")
	}
	return f, nil
}

// ParseBool reads true/false in the forms Drone and people write them.
func ParseBool(s string) (bool, error) {
	b, err := strconv.ParseBool(strings.TrimSpace(s))
	if err != nil {
		return false, fmt.Errorf("true or false")
	}
	return b, nil
}
